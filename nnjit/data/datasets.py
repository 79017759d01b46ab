"""Datasets by name (MNIST, Fashion-MNIST, CIFAR-10) or path (image folder, .npz)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .download import DownloadError, download_file
from .idx import DataError, read_idx

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DatasetInfo:
    """What nnjit knows about a named dataset.

    ``md5`` holds the checksums of the gzip files as published on the mirrors
    (the ones torchvision checks), keyed by file name.
    """

    name: str
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...]
    md5: dict
    system_dirs: tuple[str, ...] = ()


DATASETS = {
    "mnist": DatasetInfo(
        name="mnist",
        class_names=tuple(str(d) for d in range(10)),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        md5={"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                     "Sneaker", "Bag", "Ankle boot"),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        md5={"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
             "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
             "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
             "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        system_dirs=("/usr/share/datasets/fashion-mnist",),  # Debian: dataset-fashion-mnist
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` for ``name``; DataError listing the known names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def _find_in(folder: Path, stem: str) -> Path | None:
    # Accept gzip or raw, and the "train-images.idx3-ubyte" spelling some archives use.
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def search_dirs(info: DatasetInfo, data_dir: str | os.PathLike) -> list[Path]:
    """Folders searched in order: data_dir, data_dir/<name>, then system folders."""
    data_dir = Path(data_dir)
    return [data_dir, data_dir / info.name] + [Path(d) for d in info.system_dirs]


def locate(info: DatasetInfo, data_dir, splits=("train", "test"), download: bool = True,
           mirrors=None, show_progress: bool = True) -> dict[str, tuple[Path, Path]]:
    """Paths of (images, labels) for each split, downloading them if absent.

    All files come from the first folder that holds every file needed. With
    none, the files are downloaded into ``data_dir/<name>/`` from the first
    mirror that works (``mirrors`` overrides the dataset's own).

    Raises
    ------
    DataError
        when ``data_dir`` does not exist, or the files are nowhere and cannot
        be downloaded: the message lists where it looked and how to provide them.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist (or is not a folder)")
    stems = [stem for split in splits for stem in SPLIT_FILES[split]]
    dirs = search_dirs(info, data_dir)
    for folder in dirs:
        found = [_find_in(folder, stem) for stem in stems]
        if all(found):
            return {split: (found[2 * i], found[2 * i + 1]) for i, split in enumerate(splits)}
    if not download:
        raise DataError(_not_found_message(info, dirs, stems, "downloads are off"))
    target = data_dir / info.name
    errors = []
    for stem in stems:
        name = stem + ".gz"
        if (target / name).is_file():
            continue
        for mirror in mirrors or info.mirrors:
            try:
                download_file(mirror + name, target / name, info.md5[name], show_progress)
                break
            except DownloadError as err:
                errors.append(str(err))
        else:
            raise DataError(_not_found_message(info, dirs, stems, "download failed: " + errors[-1]))
    return locate(info, data_dir, splits, download=False)


def _not_found_message(info, dirs, stems, why) -> str:
    where = ", ".join(str(d) for d in dirs)
    files = ", ".join(s + "[.gz]" for s in stems)
    hint = (" (or `apt-get install dataset-fashion-mnist`)" if info.name == "fashion-mnist" else
            "; offline, --dataset fashion-mnist uses the Debian package dataset-fashion-mnist, and "
            "--split-test N trains on a folder that has only the t10k files")
    return (f"{info.name}: files not found in {where}; {why}. Put {files} in {dirs[0]} "
            f"or pass --train-data-dir to a folder that has them{hint}.")


def load_split(images_path, labels_path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check one split.

    Returns uint8 images (N, H, W) and uint8 labels (N,); raises DataError when
    the files disagree in count or hold labels outside [0, num_classes).
    """
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected images (N, H, W), got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected labels (N,), got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has "
                        f"{len(labels)} labels")
    if len(labels) and labels.max() >= num_classes:
        raise DataError(f"{labels_path}: label {labels.max()} is outside 0..{num_classes - 1}")
    return images, labels


@dataclass
class Dataset:
    """A loaded train/test pair, still as stored.

    x_train, x_test: uint8 pixels (or float32 values from an .npz) (N, C, H, W);
    y_train, y_test: uint8 (N,). x_test and y_test are None for a dataset
    without a test part.
    """

    name: str
    class_names: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    description: str


def load_dataset(name: str, data_dir="data", split_test: int | None = None,
                 train_limit: int | None = None, download: bool = True, mirrors=None,
                 show_progress: bool = True, channels: int | None = None,
                 image_size: tuple[int, int] | None = None) -> Dataset:
    """Load a dataset by name ("mnist", "fashion-mnist", "cifar10") or path (a
    folder of class folders, see ``nnjit.data.folder``, or an ``.npz``).

    ``split_test=N`` trains on the first N images of the test part and
    evaluates on the rest (for machines that have only the test files); a
    dataset with no test part splits its training part that way instead.
    ``train_limit=N`` keeps the first N training images. ``channels`` and
    ``image_size`` apply to image folders. Images come back as (N, C, H, W).
    """
    if (channels is not None or image_size is not None) and (name in DATASETS or name == "cifar10"
                                                            or not Path(name).is_dir()):
        raise DataError("--channels and --image-size apply to image folders only")
    if name in DATASETS:
        data = _load_idx(name, data_dir, split_test is not None, download, mirrors, show_progress)
    elif name == "cifar10":
        from .cifar import load_cifar10

        x, y, xt, yt, names, folder = load_cifar10(data_dir, download, show_progress, mirrors)
        data = Dataset("cifar10", names, x, y, xt, yt, f"train {len(x)} images from {folder}, "
                       f"test {len(xt)}")
    else:
        data = _load_path(name, channels, image_size, show_progress)
    if split_test is not None:
        source, part = (data.x_test, "test") if data.x_test is not None else (data.x_train, "training")
        labels = data.y_test if data.x_test is not None else data.y_train
        if not 0 < split_test < len(source):
            raise DataError(f"--split-test must be between 1 and {len(source) - 1} (the {part} "
                            f"part holds {len(source)} images), got {split_test}")
        data.x_train, data.y_train = source[:split_test], labels[:split_test]
        data.x_test, data.y_test = source[split_test:], labels[split_test:]
        data.description += (f"; {part} part split: first {split_test} images train, last "
                             f"{len(source) - split_test} evaluate")
    if train_limit is not None:
        if train_limit < 1:
            raise DataError(f"--train-limit must be positive, got {train_limit}")
        data.x_train, data.y_train = data.x_train[:train_limit], data.y_train[:train_limit]
        data.description += f" (limited to the first {len(data.x_train)} training images)"
    return data


def _load_idx(name, data_dir, test_only, download, mirrors, show_progress) -> Dataset:
    info = dataset_info(name)
    n = len(info.class_names)
    splits = ("test",) if test_only else ("train", "test")
    paths = locate(info, data_dir, splits, download, mirrors, show_progress)
    x_test, y_test = load_split(*paths["test"], n)
    if test_only:
        return Dataset(info.name, info.class_names, x_test[:0, None], y_test[:0], x_test[:, None],
                       y_test, f"test files {paths['test'][0].parent}")
    x_train, y_train = load_split(*paths["train"], n)
    return Dataset(info.name, info.class_names, x_train[:, None], y_train, x_test[:, None], y_test,
                   f"train {len(x_train)} images from {paths['train'][0].parent}, test {len(x_test)}")


def _load_path(name, channels, image_size, show_progress) -> Dataset:
    path = Path(name)
    if path.suffix.lower() == ".npz" and path.is_file():
        from .npz import load_npz

        x, y, xt, yt, how = load_npz(path)
        labels = y if yt is None else np.concatenate([y, yt])
        names = tuple(str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0))
    elif path.is_dir():
        from .folder import load_image_folder

        x, y, xt, yt, names, how = load_image_folder(path, channels, image_size, show_progress)
    else:
        raise DataError(f"unknown dataset {name!r}: not one of {', '.join([*DATASETS, 'cifar10'])}, "
                        "nor an image folder (PATH/train/<class>/*.png) or an .npz file")
    test = f"test {len(xt)}" if xt is not None else "no test part"
    return Dataset(path.name, names, x, y, xt, yt,
                   f"train {len(x)} images from {path} ({how}), {test}")
