"""CIFAR-10 from its official python archive: found or downloaded, extracted
safely, read without trusting its pickles.

The archive ``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/`` with
five training batches ``data_batch_1``..``_5``, ``test_batch`` and
``batches.meta``: Python 2 pickles of dicts whose ``data`` is uint8
(10000, 3072), each row the red, green and blue 32x32 planes, and ``labels``
a list of ints; ``batches.meta`` has ``label_names``.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from .download import DownloadError, download_file
from .idx import DataError

ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
SHAPE = (3, 32, 32)

#: The only things a CIFAR pickle may build: numpy arrays (under numpy 1 and 2
#: module names) and the byte strings Python 2 pickles encode arrays with.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays; refuses every other global (a
    pickle that names e.g. ``os.system`` is an attack, not a dataset)."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to load {module}.{name} from a dataset pickle")


def read_batch(data: bytes, where: str) -> dict:
    """One CIFAR pickle's dict with str keys; DataError when it is anything else."""
    try:
        batch = _DataOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    except Exception as err:  # a malformed pickle raises almost anything
        raise DataError(f"{where}: not a CIFAR batch pickle ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{where}: expected a dict, got {type(batch).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _images_and_labels(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != np.prod(SHAPE):
        raise DataError(f"{where}: 'data' must be uint8 (N, 3072), got "
                        f"{getattr(data, 'dtype', type(data).__name__)} "
                        f"{getattr(data, 'shape', '')}")
    if not isinstance(labels, list) or len(labels) != len(data) \
            or not all(isinstance(v, int) and 0 <= v < 10 for v in labels):
        raise DataError(f"{where}: 'labels' must be a list of {len(data)} ints in 0..9")
    return data.reshape((-1, *SHAPE)), np.array(labels, dtype=np.uint8)


def check_members(archive: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    """The archive's members, after refusing links, devices and any name that
    is absolute or climbs out of the folder it is extracted into."""
    members = archive.getmembers()
    for m in members:
        parts = Path(m.name).parts
        if Path(m.name).is_absolute() or ".." in parts or m.name.startswith(("/", "\\")):
            raise DataError(f"{path}: member {m.name!r} would be written outside the target "
                            "folder; refusing to extract")
        if not (m.isfile() or m.isdir()):
            raise DataError(f"{path}: member {m.name!r} is a link or special file; refusing "
                            "to extract")
    return members


def extract(path: Path, target: Path) -> None:
    """Extract the archive into ``target`` after ``check_members``; regular
    files and folders only, written with default permissions."""
    try:
        with tarfile.open(path, "r:*") as archive:
            members = check_members(archive, path)
            for m in members:
                dest = target / m.name
                if m.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = archive.extractfile(m)
                tmp = dest.with_name(dest.name + ".part")
                with open(tmp, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                os.replace(tmp, dest)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{path}: cannot extract ({err})") from None


def find_or_fetch(data_dir: Path, download: bool, show_progress: bool, mirrors=None) -> Path:
    """The extracted ``cifar-10-batches-py`` folder under ``data_dir`` (or
    ``data_dir/cifar10``): extracted from the archive found there, or from one
    downloaded into ``data_dir/cifar10`` from the first of ``mirrors`` (default
    MIRRORS) that serves it whole with the right MD5."""
    def complete(folder):
        return all((folder / FOLDER / name).is_file() for name in (*TRAIN_BATCHES, "test_batch"))

    for folder in (data_dir, data_dir / "cifar10"):
        if complete(folder):
            return folder / FOLDER
    for folder in (data_dir, data_dir / "cifar10"):
        if (folder / ARCHIVE).is_file():
            extract(folder / ARCHIVE, folder)
            if not complete(folder):
                raise DataError(f"{folder / ARCHIVE}: holds no complete {FOLDER}/ (the five "
                                "data_batch files and test_batch)")
            return folder / FOLDER
    if not download:
        raise DataError(f"cifar10: neither {FOLDER}/ nor {ARCHIVE} found in {data_dir} or "
                        f"{data_dir / 'cifar10'}, and downloads are off. Put {ARCHIVE} (from "
                        f"{MIRRORS[0]}) there, or pass --train-data-dir to the folder that has it.")
    errors = []
    for mirror in mirrors or MIRRORS:
        try:
            download_file(mirror + ARCHIVE, data_dir / "cifar10" / ARCHIVE, ARCHIVE_MD5,
                          show_progress)
            break
        except DownloadError as err:
            errors.append(str(err))
    else:
        raise DataError(f"cifar10: {ARCHIVE} not found in {data_dir} and the download failed: "
                        f"{errors[-1]}. Put the file there by hand.")
    return find_or_fetch(data_dir, download=False, show_progress=show_progress)


def load_cifar10(data_dir, download: bool = True, show_progress: bool = True, mirrors=None):
    """(x_train uint8 (50000, 3, 32, 32), y_train uint8 (50000,), x_test (10000, 3, 32, 32),
    y_test, class names, the folder read)."""
    folder = find_or_fetch(Path(data_dir), download, show_progress, mirrors)
    parts = {}
    for name in (*TRAIN_BATCHES, "test_batch", "batches.meta"):
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
        batch = read_batch(data, str(path))
        parts[name] = batch if name == "batches.meta" else _images_and_labels(batch, str(path))
    names = parts["batches.meta"].get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{folder / 'batches.meta'}: 'label_names' must list 10 class names")
    names = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)
    x_train = np.concatenate([parts[b][0] for b in TRAIN_BATCHES])
    y_train = np.concatenate([parts[b][1] for b in TRAIN_BATCHES])
    x_test, y_test = parts["test_batch"]
    return x_train, y_train, x_test, y_test, names, folder
