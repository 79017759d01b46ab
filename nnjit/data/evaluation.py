"""Test sets for evaluating a trained model: an image folder or an .npz's test part."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .idx import DataError


def load_test_part(path, shape: tuple[int, int, int], class_names: list[str]):
    """(images (N, C, H, W), uint8 labels) to evaluate a model taking ``shape``
    samples with classes ``class_names``.

    A folder: PATH/test/<class>/... when PATH/test exists, else PATH/<class>/...;
    each class folder must be named after one of ``class_names`` (labels are
    that name's index), images are read with the model's channels and resized
    to its H x W. An .npz: its x_test and y_test, labels below len(class_names).
    """
    path = Path(path)
    if path.suffix.lower() == ".npz" and path.is_file():
        from .npz import load_npz

        _, _, x, y, _ = load_npz(path)
        if x is None:
            raise DataError(f"{path}: has no x_test/y_test to evaluate on")
        if len(y) and y.max() >= len(class_names):
            raise DataError(f"{path}: label {y.max()} is outside the model's "
                            f"{len(class_names)} classes")
        return x, y
    if not path.is_dir():
        raise DataError(f"--data {path}: neither a folder nor an .npz file")
    from .folder import read_images

    _, paths, labels = list_images(path, class_names)
    if labels is None:
        raise DataError(f"{path}: no class folders (PATH/<class>/...) to evaluate on")
    return read_images(paths, shape[0], shape[1:]), labels


def list_images(path, class_names: list[str]) -> tuple[Path, list[Path], np.ndarray | None]:
    """(the folder the images are in or under, its images to classify, sorted,
    uint8 labels): the labels are indices into ``class_names`` when the folder has
    the class layout (PATH/test/<class>/... when PATH/test exists, else
    PATH/<class>/...), None for a flat folder of images."""
    from .folder import EXTENSIONS, scan

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: not a folder")
    folder = path / "test" if (path / "test").is_dir() else path
    if any(d.is_dir() and not d.name.startswith(".") for d in folder.iterdir()):
        _, paths, labels = scan(folder, list(class_names))
        if not paths:
            raise DataError(f"{folder}: no images in class folders named after the model's "
                            "classes")
        return folder, paths, labels
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)
    if not paths:
        raise DataError(f"{folder}: no {'/'.join(EXTENSIONS)} images")
    return folder, paths, None
