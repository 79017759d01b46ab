"""A tiny learnable MNIST look-alike written as IDX files."""
import numpy as np

from nnjit.data import write_idx
from nnjit.data.datasets import SPLIT_FILES


def class_images(labels, rng):
    """uint8 (N, 28, 28): class k is a bright 6x6 block at a class-specific place, plus noise."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        r, c = 3 + 8 * (k // 4), 3 + 6 * (k % 4)
        images[i, r:r + 6, c:c + 6] = 220
    return images


def write_dataset(folder, n_train, n_test, seed=0):
    """Write train and test IDX files (gzip) into ``folder``; return the test labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        images_stem, labels_stem = SPLIT_FILES[split]
        write_idx(folder / (images_stem + ".gz"), class_images(y, rng))
        write_idx(folder / (labels_stem + ".gz"), y)
        labels[split] = y
    return labels
