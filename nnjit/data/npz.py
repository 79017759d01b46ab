"""``.npz`` datasets in the layout of Keras's ``mnist.npz``: ``x_train``,
``y_train`` and optionally ``x_test``, ``y_test``."""
from __future__ import annotations

import math
import zipfile
import zlib

import numpy as np

from ..fileio import read_npy_header

from .idx import DataError

#: Channel counts recognised when guessing where the channel axis is.
CHANNELS = (1, 3, 4)


def channels_first(x: np.ndarray, where: str) -> tuple[np.ndarray, str]:
    """(N, C, H, W) view or copy of images given as (N, H, W), (N, H, W, C) or
    (N, C, H, W), and how it was read. Channels-last wins when the last axis
    is a channel count (1, 3, 4) and axis 1 is not (Keras's layout); channels-
    first when axis 1 is one and the last is not; both: channels-last."""
    if x.ndim == 3:
        return x[:, None], "(N, H, W) grayscale"
    if x.ndim != 4:
        raise DataError(f"{where}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W), "
                        f"got shape {x.shape}")
    if x.shape[3] in CHANNELS and (x.shape[1] not in CHANNELS or x.shape[1] > x.shape[3]):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "(N, H, W, C) channels-last"
    if x.shape[1] in CHANNELS:
        return x, "(N, C, H, W) channels-first"
    raise DataError(f"{where}: shape {x.shape} has no channel axis of 1, 3 or 4 first or last")


def _images(x, where):
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise DataError(f"{where}: holds nan or inf values")
        return x.astype(np.float32, copy=False)
    raise DataError(f"{where}: images must be uint8 or float, got dtype {x.dtype}")


def _labels(y, n, where):
    if y.ndim == 2 and y.shape[1] == 1:  # Keras's cifar10.load_data() gives (N, 1)
        y = y[:, 0]
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise DataError(f"{where}: labels must be integers of shape (N,), got {y.dtype} {y.shape}")
    if len(y) != n:
        raise DataError(f"{where}: {len(y)} labels for {n} images")
    if len(y) and (y.min() < 0 or y.max() > 255):
        raise DataError(f"{where}: labels must be in 0..255, got {y.min()}..{y.max()}")
    return y.astype(np.uint8)


#: Largest array read from an .npz (4 GiB), as for IDX files.
MAX_ARRAY_BYTES = 1 << 32


def check_headers(path: str) -> None:
    """Refuse an .npz whose arrays declare more bytes than their zip members hold
    or than MAX_ARRAY_BYTES, before numpy allocates them (numpy sizes its array
    from the header, then fills it)."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as f:
                try:
                    shape, _, dtype = read_npy_header(f)
                except (EOFError, ValueError) as err:
                    raise DataError(f"{path}: {info.filename}: {err}") from None
                declared = math.prod(shape) * dtype.itemsize
                if declared > MAX_ARRAY_BYTES or declared > info.file_size:
                    raise DataError(f"{path}: {info.filename} declares shape {shape} of {dtype} "
                                    f"({declared:,} bytes) but holds {info.file_size:,} bytes "
                                    f"(limit {MAX_ARRAY_BYTES:,})")


def load_npz(path):
    """Read an .npz dataset (``allow_pickle=False``: object arrays are refused).

    Returns (x_train (N, C, H, W) uint8 or float32, y_train uint8 (N,), x_test,
    y_test (None without them), how the images were read).
    """
    path = str(path)
    try:
        check_headers(path)
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if not {"x_train", "y_train"} <= keys:
                raise DataError(f"{path}: needs arrays x_train and y_train (and optionally "
                                f"x_test, y_test); it has {sorted(keys)}")
            if ("x_test" in keys) != ("y_test" in keys):
                raise DataError(f"{path}: x_test and y_test come together")
            arrays = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test") if k in keys}
    except DataError:
        raise
    except ValueError as err:  # pickled (object) arrays, malformed headers
        why = "pickled (object) arrays are refused" if "pickle" in str(err) else "malformed"
        raise DataError(f"{path}: cannot read ({err}): {why}") from None
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, KeyError, zlib.error,
            NotImplementedError, RuntimeError) as err:  # corrupt, truncated, encrypted zips
        raise DataError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from None
    x_train, how = channels_first(_images(arrays["x_train"], f"{path}: x_train"), f"{path}: x_train")
    y_train = _labels(arrays["y_train"], len(x_train), f"{path}: y_train")
    x_test = y_test = None
    if "x_test" in arrays:
        x_test, _ = channels_first(_images(arrays["x_test"], f"{path}: x_test"), f"{path}: x_test")
        if x_test.shape[1:] != x_train.shape[1:] or x_test.dtype != x_train.dtype:
            raise DataError(f"{path}: x_test is {x_test.dtype} {x_test.shape[1:]} per sample, "
                            f"x_train {x_train.dtype} {x_train.shape[1:]}")
        y_test = _labels(arrays["y_test"], len(x_test), f"{path}: y_test")
    return x_train, y_train, x_test, y_test, how
