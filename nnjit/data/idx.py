"""The IDX file format of MNIST and Fashion-MNIST, and image normalisation.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number
of dimensions), one big-endian uint32 per dimension, then the values. Files may
be gzip-compressed (recognised by content, not by name).
"""
from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from ..errors import DataError  # re-exported: nnjit.data.DataError

UBYTE = 0x08
#: Largest IDX payload read (4 GiB, 70x the MNIST training images): a header
#: declaring more is refused before anything is read or allocated.
MAX_IDX_BYTES = 1 << 32


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an unsigned-byte IDX file (raw or gzip) and validate it.

    Returns
    -------
    uint8 array shaped as the header says, e.g. (N, 28, 28) for images or
    (N,) for labels.

    Raises
    ------
    DataError
        Unreadable file, bad magic number, unsupported type, or a length that
        does not match the header (truncated or padded file).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            f = gzip.GzipFile(fileobj=raw) if gzipped else raw
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DataError(f"{path}: not an IDX file (bad magic number)")
            if head[2] != UBYTE:
                raise DataError(f"{path}: IDX type code 0x{head[2]:02x} is not supported "
                                "(only unsigned bytes)")
            ndim = head[3]
            dim_bytes = f.read(4 * ndim)
            if ndim == 0 or len(dim_bytes) < 4 * ndim:
                raise DataError(f"{path}: IDX header is truncated or declares {ndim} dimensions")
            dims = tuple(int.from_bytes(dim_bytes[4 * i: 4 * i + 4], "big") for i in range(ndim))
            size = math.prod(dims)
            if size > MAX_IDX_BYTES:
                raise DataError(f"{path}: header declares shape {dims} ({size:,} bytes), over "
                                f"the {MAX_IDX_BYTES:,}-byte limit for one IDX file")
            if not gzipped and os.fstat(raw.fileno()).st_size - 4 - 4 * ndim < size:
                raise DataError(f"{path}: header says shape {dims} ({4 + 4 * ndim + size} bytes) "
                                f"but the file has {os.fstat(raw.fileno()).st_size} bytes: "
                                "truncated or corrupt")
            data = f.read(size + 1)  # never more than declared: a gzip bomb stops here
    except OSError as err:  # includes gzip.BadGzipFile
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    except (EOFError, zlib.error) as err:
        raise DataError(f"{path}: corrupt or truncated gzip data ({err})") from None
    header = 4 + 4 * ndim
    if len(data) != size:
        raise DataError(f"{path}: header says shape {dims} ({header + size} bytes) but the file "
                        f"has {'more' if len(data) > size else header + len(data)} bytes: "
                        "truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8 array as an IDX file (gzip when ``compress`` or the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, UBYTE, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()
    if compress if compress is not None else os.fspath(path).endswith(".gz"):
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)


#: How pixel bytes become network input; stored in checkpoints so inference repeats it.
NORMALISATION = "x / 255 (float32 in [0, 1])"


def to_float(images: np.ndarray) -> np.ndarray:
    """The one place where pixels become network input.

    images: uint8 (N, H, W) or (N, C, H, W). Returns float32 (N, C, H, W)
    (C = 1 when absent) with values x / 255 in [0, 1].
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(f"images must be uint8 pixels, got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]  # (N, 1, H, W)
    if images.ndim != 4:
        raise DataError(f"images must be (N, H, W) or (N, C, H, W), got shape {images.shape}")
    return np.multiply(images, np.float32(1 / 255), dtype=np.float32)
