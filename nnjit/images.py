"""Reading one image for inference: raw 784-byte files, .npy arrays, PNG/JPEG."""
from __future__ import annotations

import os

import numpy as np

from .data import DataError


def load_image(path, shape=(28, 28)) -> tuple[np.ndarray, str]:
    """Read one grayscale image as uint8 pixels.

    - ``.npy``: uint8 of shape ``shape``, (1, *shape) or (H*W,); or float in
      [0, 1], taken as pixels / 255.
    - ``.png``, ``.jpg``, ``.jpeg`` (and anything Pillow reads): converted to
      grayscale, resized to ``shape``, inverted when it is dark on light (a
      scan), since the datasets are light on dark.
    - anything else: raw bytes, exactly H*W of them, row by row (the seed's
      ``image_sample.bin``).

    Returns (uint8 (H, W), a sentence saying how the file was read).
    Raises DataError for an unreadable file or one of the wrong size.
    """
    path = os.fspath(path)
    h, w = shape
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            return _from_npy(np.load(path, allow_pickle=False), shape, path)
        if ext in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"):
            return _from_picture(path, shape)
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    except ValueError as err:
        raise DataError(f"{path}: not a readable .npy array ({err})") from None
    if len(data) != h * w:
        raise DataError(f"{path}: a raw image must be exactly {h * w} bytes ({h}x{w} grayscale), "
                        f"this one has {len(data)}")
    return np.frombuffer(data, np.uint8).reshape(shape), f"raw {h}x{w} grayscale bytes"


def _from_npy(array, shape, path):
    h, w = shape
    if array.size != h * w:
        raise DataError(f"{path}: array of shape {array.shape} is not one {h}x{w} image")
    array = array.reshape(shape)
    if array.dtype == np.uint8:
        return array, f".npy uint8 array {h}x{w}"
    if np.issubdtype(array.dtype, np.floating) and np.all((array >= 0) & (array <= 1)):
        return np.rint(array * 255).astype(np.uint8), ".npy float array in [0, 1], scaled by 255"
    raise DataError(f"{path}: .npy must hold uint8 pixels or floats in [0, 1], got {array.dtype}")


def _from_picture(path, shape):
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError("reading PNG/JPEG needs Pillow: pip install 'nnjit[image]'") from None
    try:
        with Image.open(path) as img:
            size = img.size
            gray = img.convert("L")
            if gray.size != (shape[1], shape[0]):
                gray = gray.resize((shape[1], shape[0]), Image.Resampling.LANCZOS)
            pixels = np.asarray(gray, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable image ({err})") from None
    steps = [f"{size[0]}x{size[1]} picture converted to grayscale"]
    if size != (shape[1], shape[0]):
        steps.append(f"resized to {shape[1]}x{shape[0]}")
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127:
        pixels = 255 - pixels
        steps.append("inverted (dark on light, like a scan)")
    return pixels, ", ".join(steps)
