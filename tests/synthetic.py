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


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


def cifar_batch(n, rng, name):
    """One batch dict as the official archive holds it (Python 2 pickle: bytes keys)."""
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return {b"batch_label": name.encode(), b"labels": labels, b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def write_cifar_archive(path, n_per_batch=40, seed=0, extra_members=()):
    """Write a cifar-10-python.tar.gz in the official layout and pickle structure
    (protocol 2); return {member name: batch dict}. ``extra_members`` is a list
    of tarfile.TarInfo (with data None) to add, e.g. a link."""
    import io
    import pickle
    import tarfile

    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": cifar_batch(n_per_batch, rng, f"training batch {i} of 5")
               for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(n_per_batch, rng, "testing batch 1 of 1")
    meta = {b"num_cases_per_batch": n_per_batch, b"label_names": [n.encode() for n in CIFAR_NAMES],
            b"num_vis": 3072}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in [*batches.items(), ("batches.meta", meta), ("readme.html", None)]:
            data = b"<html></html>" if obj is None else pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra_members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return batches
