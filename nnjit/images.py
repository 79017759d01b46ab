"""Reading one image for inference: raw bytes, .npy arrays, PNG/JPEG; grayscale or colour."""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib

import numpy as np

from .data import DataError
from .fileio import read_npy, regular_file_size

#: Largest file read as one image (a 4096 x 4096 RGB float32 array is 192 MB).
MAX_IMAGE_FILE_BYTES = 256 << 20


def load_image(path, shape=(1, 28, 28)) -> tuple[np.ndarray, str]:
    """Read one image for a model taking samples of ``shape`` (C, H, W), as uint8 pixels.

    - ``.npy``: uint8 holding exactly C*H*W values, as (C, H, W), (H, W, C),
      (H, W) for C = 1, or flat; or floats in [0, 1], taken as pixels / 255.
    - ``.png``, ``.jpg``, ``.jpeg`` (and anything Pillow reads): resized to
      H x W; for C = 1 converted to grayscale and inverted when it is dark on
      light (a scan: the digit datasets are light on dark); for C = 3 read as
      RGB, never converted to grayscale.
    - anything else: raw bytes, exactly C*H*W of them, plane by plane, row by
      row (the seed's 784-byte ``image_sample.bin``).

    Returns (uint8 (C, H, W), a sentence saying how the file was read).
    Raises DataError for an unreadable file or one of the wrong size.
    """
    path = os.fspath(path)
    c, h, w = shape
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":  # (read_npy checks the file itself)
            return _from_npy(read_npy(path, MAX_IMAGE_FILE_BYTES), shape, path)
        regular_file_size(path, MAX_IMAGE_FILE_BYTES)
        if ext in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"):
            return _from_picture(path, shape)
        with open(path, "rb") as f:
            data = f.read(c * h * w + 1)
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    except ValueError as err:
        raise DataError(f"{path}: not a readable .npy array: {err}") from None
    kind = "grayscale" if c == 1 else f"{c}-channel"
    if len(data) != c * h * w:
        raise DataError(f"{path}: a raw image must be exactly {c * h * w} bytes ({h}x{w} {kind}), "
                        f"this one has {'more' if len(data) > c * h * w else len(data)}")
    return np.frombuffer(data, np.uint8).reshape(shape), f"raw {h}x{w} {kind} bytes"


def _from_npy(array, shape, path):
    c, h, w = shape
    if array.size != c * h * w:
        size = f"{h}x{w}" if c == 1 else f"{c}x{h}x{w}"
        raise DataError(f"{path}: array of shape {array.shape} is not one {size} image")
    if array.ndim == 3 and array.shape == (h, w, c) and array.shape != shape:
        array, layout = array.transpose(2, 0, 1), "(H, W, C)"
    else:
        array, layout = array.reshape(shape), "(C, H, W)" if array.ndim == 3 else str(array.shape)
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array), f".npy uint8 array {layout}"
    if np.issubdtype(array.dtype, np.floating) and np.all((array >= 0) & (array <= 1)):
        return (np.rint(array * 255).astype(np.uint8),
                f".npy float array {layout} in [0, 1], scaled by 255")
    raise DataError(f"{path}: .npy must hold uint8 pixels or floats in [0, 1], got {array.dtype}")


def read_picture(path, mode: str | None = None, size: tuple[int, int] | None = None,
                 resample: str = "LANCZOS", data: bytes | None = None):
    """Decode a picture with Pillow: (its original (W, H), its mode, uint8 pixels
    (H, W) or (H, W, 3)), converted to ``mode`` ("L" or "RGB") and resized to
    ``size`` (W, H) when given; with ``mode`` None only the header is read and
    pixels is None. ``data``: the file's bytes, already read (``path`` then
    only names it in errors).

    Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, ~89 M
    pixels) is enforced as an error, not its usual warning. DataError naming
    the file for anything unreadable, or when Pillow is missing.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError("reading PNG/JPEG needs Pillow: pip install 'nnjit[image]'") from None
    source = path if data is None else io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                original, found = img.size, img.mode
                if found == "P" and _palette_is_gray(img):
                    found = "P;gray"
                if mode is None:
                    return original, found, None
                img = img.convert(mode)
                if size is not None and img.size != tuple(size):
                    img = img.resize(tuple(size), getattr(Image.Resampling, resample))
                return original, found, np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise DataError(f"{path}: not a readable image "
                        f"({str(err).replace(repr(source), repr(str(path)))})") from None
    except (SyntaxError, IndexError, TypeError, struct.error, zlib.error, EOFError) as err:
        # what Pillow's decoders raise on some malformed files
        raise DataError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None


def _palette_is_gray(img) -> bool:
    palette = img.getpalette() or []
    rgb = np.array(palette[:len(palette) // 3 * 3]).reshape(-1, 3)
    return bool(np.all(rgb == rgb[:, :1]))


def _from_picture(path, shape):
    c, h, w = shape
    if c not in (1, 3):
        raise DataError(f"{path}: pictures can feed 1- or 3-channel models, this one takes {c}")
    size, _, pixels = read_picture(path, "L" if c == 1 else "RGB", (w, h))
    steps = [f"{size[0]}x{size[1]} picture " + ("converted to grayscale" if c == 1 else "read as RGB")]
    if size != (w, h):
        steps.append(f"resized to {w}x{h}")
    if c == 3:
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)), ", ".join(steps)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127:
        pixels = 255 - pixels
        steps.append("inverted (dark on light, like a scan)")
    return pixels[None], ", ".join(steps)
