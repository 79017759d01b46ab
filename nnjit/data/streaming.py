"""Datasets read batch by batch, for data larger than memory: ``.npy``/``.npz``
arrays memory-mapped, image folders decoded in worker processes.

``Model.fit`` takes one in place of arrays (``model.fit(stream, epochs=...)``)
and ``Model.evaluate`` as x (``model.evaluate(stream, stream.labels)``). Each
batch is read when it is needed, one or more batches ahead on a background
thread (``prefetch``), and converted to network input there (uint8 pixels
/ 255, then the optional per-channel standardisation). What a stream holds in
memory: its labels (one byte per image), for a folder the file names, and
``prefetch`` + 1 batches of float32 input; the mapped file's pages are the
operating system's cache, which it reclaims under pressure. The batches,
shuffling and augmentation are the ones the same data in memory gets, so a
run is reproducible and resumable the same way.
"""
from __future__ import annotations

import os
import queue
import threading
import zipfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from ..fileio import read_npy_header, regular_file_size
from .folder import GRAY_MODES, _decode, _headers, scan
from .idx import DataError
from .npz import CHANNELS, _labels
from .preprocess import Preprocessing

#: Batches read ahead of the one being trained on.
PREFETCH = 2
#: Image headers read to choose a folder's size and channels when not given.
HEADER_SAMPLE = 1000


class StreamingDataset:
    """Images (N, C, H, W) read on demand. ``labels``: uint8 (N,);
    ``sample_shape``: (C, H, W); ``class_names``; ``preprocessing``: how stored
    images become network input (default: uint8 pixels / 255, floats as they
    are). Indexing (``stream[a:b]``, ``stream[[i, j]]``) returns float32
    network input; ``batches`` iterates an epoch with prefetching."""

    labels: np.ndarray
    sample_shape: tuple[int, int, int]
    class_names: tuple[str, ...]

    def __init__(self, preprocessing: Preprocessing | None = None):
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.sample_shape)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """The stored images at ``indices`` (int (n,)): uint8 or float32 (n, C, H, W)."""
        raise NotImplementedError

    def __getitem__(self, key) -> np.ndarray:
        indices = np.arange(len(self))[key]
        stored = self.read(np.atleast_1d(indices))
        prep = self.preprocessing or Preprocessing(pixels=stored.dtype == np.uint8)
        out = prep.apply(stored)
        return out if np.ndim(indices) else out[0]

    def subset(self, indices) -> "StreamingDataset":
        """The images at ``indices`` (int (n,)), as a stream of its own (no copy)."""
        return _Subset(self, np.asarray(indices, dtype=np.int64))

    def batches(self, order: np.ndarray, batch_size: int, prefetch: int = PREFETCH):
        """Yield (indices, float32 network input (n, C, H, W)) for consecutive
        ``batch_size`` slices of ``order``, read ``prefetch`` batches ahead on a
        background thread. Closing the generator stops the reading."""
        slices = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        yield from self.read_ahead(slices, prefetch)

    def read_ahead(self, slices, prefetch: int = PREFETCH):
        """Yield (indices, float32 network input) for each int array of
        ``slices``, read ``prefetch`` ahead on a background thread (``batches``)."""
        if prefetch < 1:
            for idx in slices:
                yield idx, self[idx]
            return
        ready: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def produce():
            for idx in slices:
                try:
                    item = (idx, self[idx])
                except BaseException as err:  # noqa: BLE001  (re-raised in the consumer)
                    item = err
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set() or isinstance(item, BaseException):
                    return

        reader = threading.Thread(target=produce, name="nnjit-prefetch", daemon=True)
        reader.start()
        try:
            for _ in slices:
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            reader.join()

    def close(self) -> None:
        """Release what the stream holds open (worker processes, mapped files)."""


class _Subset(StreamingDataset):
    def __init__(self, base: StreamingDataset, indices: np.ndarray):
        super().__init__(base.preprocessing)
        self.base, self.indices = base, indices
        self.labels = base.labels[indices]
        self.sample_shape, self.class_names = base.sample_shape, base.class_names

    def read(self, indices):
        return self.base.read(self.indices[indices])


class ArrayStream(StreamingDataset):
    """Images from an array: in memory, or memory-mapped from a ``.npy`` or an
    uncompressed ``.npz`` member (``from_npy``, ``from_npz``), so that only the
    rows of each batch are read. x: uint8 or float (N, C, H, W), (N, H, W) or
    channels-last (N, H, W, C); y: int (N,)."""

    def __init__(self, x, y, class_names=None, preprocessing: Preprocessing | None = None,
                 where: str = "x"):
        super().__init__(preprocessing)
        if x.dtype != np.uint8 and x.dtype.kind != "f":
            raise DataError(f"{where}: images must be uint8 or float, got dtype {x.dtype}")
        if x.ndim == 3:
            self._layout, c, h, w = "NHW", 1, *x.shape[1:]
        elif x.ndim == 4 and x.shape[3] in CHANNELS and x.shape[1] not in CHANNELS:
            self._layout, (h, w, c) = "NHWC", x.shape[1:]
        elif x.ndim == 4 and x.shape[1] in CHANNELS:
            self._layout, (c, h, w) = "NCHW", x.shape[1:]
        else:
            raise DataError(f"{where}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W) "
                            f"with 1, 3 or 4 channels, got shape {x.shape}")
        self.x, self.sample_shape = x, (int(c), int(h), int(w))
        self.labels = _labels(np.asarray(y), len(x), where.replace("x", "y", 1))
        count = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.class_names = tuple(class_names) if class_names is not None else \
            tuple(str(i) for i in range(count))

    def read(self, indices):
        # Rows in increasing file order, then put back in the order asked: a
        # memory map reads each page once and sequentially where rows are close.
        order = np.argsort(indices, kind="stable")
        rows = np.empty((len(indices), *self.x.shape[1:]), self.x.dtype)
        rows[order] = self.x[indices[order]]
        if self._layout == "NHW":
            return rows[:, None]
        if self._layout == "NHWC":
            return np.ascontiguousarray(rows.transpose(0, 3, 1, 2))
        return rows

    @classmethod
    def from_npy(cls, x_path, y, class_names=None) -> "ArrayStream":
        """Images memory-mapped from the ``.npy`` file ``x_path``; labels y: an int
        array or the path of a ``.npy`` of them (read into memory)."""
        x = _mapped_npy(x_path)
        if isinstance(y, (str, os.PathLike)):
            y = np.load(_regular_file(y), allow_pickle=False)
        return cls(x, y, class_names, where=str(x_path))

    @classmethod
    def from_npz(cls, path, split: str = "train", class_names=None) -> "ArrayStream":
        """``x_{split}`` memory-mapped from the ``.npz`` at ``path`` (saved with
        ``np.savez``: compressed members cannot be mapped), ``y_{split}`` read."""
        path = _regular_file(path)
        names = (f"x_{split}.npy", f"y_{split}.npy")
        try:
            with zipfile.ZipFile(path) as archive:
                infos = {i.filename: i for i in archive.infolist()}
                missing = [n for n in names if n not in infos]
                if missing:
                    raise DataError(f"{path}: has no {', '.join(missing)} (it has "
                                    f"{', '.join(sorted(infos))})")
                info = infos[names[0]]
                if info.compress_type != zipfile.ZIP_STORED:
                    raise DataError(f"{path}: {names[0]} is compressed, which cannot be "
                                    "memory-mapped: save the arrays with np.savez (not "
                                    "savez_compressed), or load them with nnjit.data.load_dataset")
                with archive.open(names[1]) as f:
                    y = np.lib.format.read_array(f, allow_pickle=False)
                with archive.open(info) as f:
                    shape, fortran, dtype = read_npy_header(f)
                    header = f.tell()
                if dtype.hasobject:
                    raise DataError(f"{path}: {names[0]} holds Python objects, not numbers")
            with open(path, "rb") as f:  # the member's data: after its local zip header
                f.seek(info.header_offset + 26)
                name_len, extra_len = np.frombuffer(f.read(4), "<u2")
                start = info.header_offset + 30 + int(name_len) + int(extra_len) + header
        except (zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
            raise DataError(f"{path}: not a readable .npz file ({err})") from None
        if fortran:
            raise DataError(f"{path}: {names[0]} is stored in Fortran order; save it C-ordered")
        if start + int(np.prod(shape)) * dtype.itemsize > os.path.getsize(path):
            raise DataError(f"{path}: {names[0]} is truncated")
        x = np.memmap(path, dtype=dtype, mode="r", offset=start, shape=tuple(shape))
        return cls(x, y, class_names, where=f"{path}: x_{split}")


def _regular_file(path) -> str:
    """``path`` as a string, when it names a regular file; DataError otherwise."""
    path = os.fspath(path)
    try:
        regular_file_size(path)
    except OSError as err:
        raise DataError(f"{path}: {err.strerror or err}") from None
    return path


def _mapped_npy(path) -> np.ndarray:
    path = _regular_file(path)
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = read_npy_header(f)
        if fortran:
            raise DataError(f"{path}: stored in Fortran order; save it C-ordered")
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        raise DataError(f"{path}: not a readable .npy file ({err})") from None


class FolderStream(StreamingDataset):
    """An image folder (``ROOT/<split>/<class>/*.png|jpg|jpeg|bmp``, or a split
    folder given directly) decoded batch by batch in ``workers`` processes
    (default: half the cores, the rest train), resized (bilinear) to
    ``image_size`` (H, W) and converted to ``channels`` (1 or 3). Unset, both
    are chosen from the first HEADER_SAMPLE images' headers (the most common
    size; grayscale when all are). ``classes``: the class names to expect (a
    test split takes the training split's). Call ``close()`` (or use ``with``)
    to stop the workers."""

    def __init__(self, root, split: str | None = "train", channels: int | None = None,
                 image_size: tuple[int, int] | None = None, classes=None, workers: int | None = None,
                 preprocessing: Preprocessing | None = None):
        super().__init__(preprocessing)
        folder = Path(root) / split if split and (Path(root) / split).is_dir() else Path(root)
        self.class_names, self.paths, self.labels = scan(folder, classes)
        self.class_names = tuple(self.class_names)
        sample = _headers(self.paths[:HEADER_SAMPLE]) if image_size is None or channels is None \
            else []
        if image_size is None:
            sizes = [size for size, _ in sample]
            w, h = max(set(sizes), key=sizes.count)
            image_size = (h, w)
        if channels is None:
            channels = 1 if all(mode in GRAY_MODES for _, mode in sample) else 3
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        self.sample_shape = (channels, *map(int, image_size))
        self.workers = max(1, workers or (os.cpu_count() or 2) // 2)
        self._pool: ProcessPoolExecutor | None = None

    def read(self, indices):
        c, h, w = self.sample_shape
        shape = (len(indices), c, h, w)
        if not len(indices):
            return np.empty(shape, np.uint8)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers)
        shm = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)))
        try:
            step = -(-len(indices) // self.workers)
            tasks = [(shm.name, shape, s, [self.paths[i] for i in indices[s:s + step]], (w, h), c)
                     for s in range(0, len(indices), step)]
            for done in [self._pool.submit(_decode, t) for t in tasks]:
                done.result()
            return np.ndarray(shape, np.uint8, buffer=shm.buf).copy()
        finally:
            shm.close()
            shm.unlink()

    def close(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()
