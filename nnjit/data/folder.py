"""Image folders: ``PATH/train/<class>/*.png|jpg|jpeg|bmp`` and optionally
``PATH/test/<class>/...`` (torchvision's ImageFolder, Keras's
``image_dataset_from_directory``), decoded on every core.

Decoding runs in worker processes, not threads: for small images Pillow's
per-file work is mostly Python and holds the GIL (measured on 70,000 28x28
PNGs, 2 cores: 20.4 s with 2 threads, against ~150 us per file on one).
Workers write pixels straight into shared memory; only sizes and modes come
back through pipes.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..images import read_picture
from .idx import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
#: Modes Pillow reports for single-channel images.
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;gray")
#: Largest --image-size, in pixels per image (8192 x 8192).
MAX_IMAGE_PIXELS = 1 << 26
#: Most bytes of decoded pixels an image folder may produce (16 GiB).
MAX_DECODED_BYTES = 1 << 34
#: Files per task handed to a worker process: enough to amortise the hand-off.
FILES_PER_TASK = 256


def scan(split_dir: Path, classes: list[str] | None = None) -> tuple[list[str], list[Path], np.ndarray]:
    """(class names, image paths, uint8 labels) of one split folder, classes
    sorted by name (or the given ``classes``, which every subfolder must be one
    of); files in sorted order within each class."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: not a folder")
    found = sorted(d.name for d in split_dir.iterdir()  # not .ipynb_checkpoints and the like
                   if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataError(f"{split_dir}: holds no class folders (expected {split_dir}/<class>/*.png)")
    if classes is None:
        classes = found
        if len(classes) > 256:
            raise DataError(f"{split_dir}: {len(classes)} class folders; at most 256 are supported")
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{split_dir}: class folders {unknown} are not among the training "
                            f"classes {classes}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = split_dir / name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS) \
            if folder.is_dir() else []
        if not files and name in found:
            raise DataError(f"{folder}: empty class folder (no {'/'.join(EXTENSIONS)} files)")
        paths += files
        labels += [label] * len(files)
    return classes, paths, np.array(labels, dtype=np.uint8)


def _headers(paths):
    """(size (W, H), mode) of each picture, from its header alone."""
    return [read_picture(p)[:2] for p in paths]


def decode(path, channels: int, size: tuple[int, int], data: bytes | None = None) -> np.ndarray:
    """One picture of a folder as a model's input: uint8 (channels, H, W), converted
    to grayscale or RGB and resized (bilinear) to ``size`` (W, H) where it differs.
    ``data``: the file's bytes when already read. DataError naming the file."""
    _, _, pixels = read_picture(path, "L" if channels == 1 else "RGB", size, "BILINEAR", data)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _decode(task):
    """Decode paths into rows [start, start + len(paths)) of the shared (N, C, H, W) array."""
    shm_name, shape, start, paths, size, channels = task
    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        out = np.ndarray(shape, dtype=np.uint8, buffer=shm.buf)
        for i, path in enumerate(paths):
            out[start + i] = decode(path, channels, size)
        del out
    finally:
        shm.close()
    return len(paths)


def _in_parallel(fn, tasks, sizes, what, show_progress):
    """fn(task) for every task in worker processes (one per core), with one
    progress bar advancing by each task's size; returns the results in order."""
    columns = [TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    workers = max(1, min(os.cpu_count() or 1, len(tasks)))
    with Progress(*columns, transient=True, disable=not show_progress) as bar, \
            ProcessPoolExecutor(max_workers=workers) as pool:
        task = bar.add_task(what, total=sum(sizes))
        futures = [pool.submit(fn, t) for t in tasks]
        results = []
        try:
            for future, size in zip(futures, sizes):
                results.append(future.result())
                bar.update(task, advance=size)
        except BrokenProcessPool:
            raise DataError(f"{what}: a worker process died (out of memory?)") from None
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def _chunks(items):
    return [items[i:i + FILES_PER_TASK] for i in range(0, len(items), FILES_PER_TASK)]


def read_images(paths: list[Path], channels: int, size: tuple[int, int],
                show_progress: bool = True) -> np.ndarray:
    """Decode ``paths`` on every core into uint8 (N, channels, H, W), converted to
    grayscale or RGB and resized (bilinear) to ``size`` (H, W) where they differ."""
    h, w = size
    shape = (len(paths), channels, h, w)
    if not paths:
        return np.empty(shape, np.uint8)
    total = len(paths) * channels * h * w
    if total > MAX_DECODED_BYTES:
        raise DataError(f"{len(paths)} images of {channels}x{h}x{w} would take {total:,} bytes, "
                        f"over the {MAX_DECODED_BYTES:,}-byte limit: choose a smaller --image-size")
    try:
        shm = shared_memory.SharedMemory(create=True, size=total)
    except OSError as err:
        raise DataError(f"cannot hold {len(paths)} decoded images of {channels}x{h}x{w} "
                        f"({total:,} bytes) in shared memory: {err.strerror or err}") from None
    try:
        chunks = _chunks(paths)
        tasks = [(shm.name, shape, i * FILES_PER_TASK, chunk, (w, h), channels)
                 for i, chunk in enumerate(chunks)]
        _in_parallel(_decode, tasks, [len(c) for c in chunks], "decoding images", show_progress)
        return np.ndarray(shape, np.uint8, buffer=shm.buf).copy()
    finally:
        shm.close()
        shm.unlink()


def load_image_folder(root, channels: int | None = None, image_size=None,
                      show_progress: bool = True):
    """Load ``root/train`` (and ``root/test`` when present).

    channels: 1 or 3, or None to detect (1 when every image is grayscale).
    image_size: (H, W), or None for the most common size among the training
    images; others are resized (bilinear).
    Returns (x_train uint8 (N, C, H, W), y_train uint8 (N,), x_test, y_test
    (None when there is no test folder), class names, a sentence on how the
    images were read).
    """
    root = Path(root)
    if image_size is not None and image_size[0] * image_size[1] > MAX_IMAGE_PIXELS:
        raise DataError(f"--image-size {image_size[0]} {image_size[1]} is "
                        f"{image_size[0] * image_size[1]:,} pixels per image, over the limit of "
                        f"{MAX_IMAGE_PIXELS:,}")
    classes, train_paths, y_train = scan(root / "train")
    has_test = (root / "test").is_dir()
    test_paths, y_test = scan(root / "test", classes)[1:] if has_test else ([], None)
    every = train_paths + test_paths
    chunks = _chunks(every)
    headers = [h for chunk in _in_parallel(_headers, chunks, [len(c) for c in chunks],
                                            "reading image headers", show_progress)
               for h in chunk]
    sizes = Counter(size for size, _ in headers[:len(train_paths)])
    (w, h), _ = sizes.most_common(1)[0]
    how = f"most common size {h}x{w}"
    if image_size is not None:
        h, w = image_size
        how = f"--image-size {h}x{w}"
    resized = sum(size != (w, h) for size, _ in headers)
    if channels is None:
        channels = 1 if all(mode in GRAY_MODES for _, mode in headers) else 3
        how += f", {'grayscale' if channels == 1 else 'colour'} (detected)"
    else:
        how += f", {channels} channel{'s' if channels > 1 else ''} (--channels)"
    if resized:
        how += f", {resized} images resized"
    x = read_images(every, channels, (h, w), show_progress)
    n = len(train_paths)
    x_test = x[n:] if has_test else None
    return x[:n], y_train, x_test, y_test, tuple(classes), how
