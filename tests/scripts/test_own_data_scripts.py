"""train.py, infer.py and export_onnx.py on colour images, folders, .npz and CIFAR-10."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from nnjit.checkpoint import load_checkpoint
from nnjit.data.preprocess import Preprocessing
from synthetic import write_cifar_archive
from test_own_data import write_folder
from test_train_script import run as train

INFER = str(ROOT / "scripts" / "infer.py")
EXPORT = str(ROOT / "scripts" / "export_onnx.py")
COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


def infer(*args):
    return subprocess.run([sys.executable, INFER, *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def colour_images(colour, n, rng, size=(12, 10)):
    """uint8 (n, H, W, 3) images of one dominant colour, with noise."""
    images = rng.integers(0, 80, size=(n, *size, 3), dtype=np.uint8)
    images[..., np.nonzero(COLOURS[colour])[0]] += 170
    return images


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """A colour image folder (train and test) and a checkpoint trained on it with --normalize."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    write_folder(root / "data", {c: colour_images(c, 40, rng) for c in COLOURS})
    write_folder(root / "data", {c: colour_images(c, 10, rng) for c in COLOURS}, split="test")
    ck = root / "ck"
    proc = train("--dataset", root / "data", "--model", "cnn", "--nb-epochs", 3, "--batch-size", 16,
                 "--learning-rate", "0.01", "--normalize", "--augment", "crop:1,flip",
                 "--checkpoint-folder", ck)
    assert proc.returncode == 0, proc.stderr
    return root, ck / "latest.json", proc


def test_a_colour_folder_trains_with_normalize_and_augment(colour_run):
    root, ckpt_path, proc = colour_run
    assert "most common size 12x10, colour (detected)" in proc.stdout
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.metadata["input_shape"] == [3, 12, 10]
    assert ckpt.metadata["class_names"] == ["blue", "green", "red"]
    prep = Preprocessing.from_metadata(ckpt.metadata)
    assert prep.mean is not None and len(prep.mean) == 3
    assert ckpt.metadata["test_accuracy"] == 1.0  # a dominant colour is easy to tell apart


def test_infer_reads_colour_pictures_and_npy_with_the_stored_preprocessing(colour_run, tmp_path):
    root, ckpt_path, _ = colour_run
    ckpt = load_checkpoint(ckpt_path)
    prep = Preprocessing.from_metadata(ckpt.metadata)
    rng = np.random.default_rng(9)
    for k, colour in enumerate(COLOURS):
        pixels = colour_images(colour, 1, rng, size=(24, 20))[0]  # resized to 12x10 on reading
        Image.fromarray(pixels).save(tmp_path / f"{colour}.jpg", quality=95)
        proc = infer(ckpt_path, tmp_path / f"{colour}.jpg", "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["name"] == colour and "read as RGB" in result["read_as"], result
        small = colour_images(colour, 1, rng)[0]
        np.save(tmp_path / f"{colour}.npy", small.transpose(2, 0, 1))  # (C, H, W)
        result = json.loads(infer(ckpt_path, tmp_path / f"{colour}.npy", "--json").stdout)
        want = ckpt.model.predict(prep.apply(small.transpose(2, 0, 1)[None]))[0]
        np.testing.assert_allclose([result["probabilities"][c] for c in COLOURS], want, rtol=1e-5)
        assert result["class"] == k


def test_infer_evaluates_a_folder_and_an_npz(colour_run, tmp_path):
    root, ckpt_path, _ = colour_run
    proc = infer(ckpt_path, "--data", root / "data", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["images"] == 30 and result["accuracy"] == 1.0
    assert np.trace(result["confusion"]) == 30
    # classes matched by name: a folder holding only "red" images
    write_folder(tmp_path / "only_red", {"red": colour_images("red", 4, np.random.default_rng(3))},
                 split="test")
    result = json.loads(infer(ckpt_path, "--data", tmp_path / "only_red", "--json").stdout)
    assert result["confusion"][2][2] == 4 and result["images"] == 4
    rng = np.random.default_rng(4)
    x = np.concatenate([colour_images(c, 5, rng) for c in COLOURS])
    np.savez(tmp_path / "t.npz", x_train=x, y_train=np.repeat([0, 1, 2], 5), x_test=x,
             y_test=np.repeat([0, 1, 2], 5))
    result = json.loads(infer(ckpt_path, "--data", tmp_path / "t.npz", "--json").stdout)
    assert result["images"] == 15 and result["accuracy"] == 1.0


def test_export_takes_the_input_shape_from_the_checkpoint(colour_run, tmp_path):
    _, ckpt_path, _ = colour_run
    proc = subprocess.run([sys.executable, EXPORT, "--checkpoint-path", ckpt_path, "--onnx-path",
                           tmp_path / "m.onnx", "--verify"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "(batch, 3, 12, 10)" in proc.stdout and "max |difference|" in proc.stdout


def test_cifar10_and_npz_train_end_to_end(tmp_path):
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", n_per_batch=20)
    proc = train("--dataset", "cifar10", "--train-data-dir", tmp_path, "--no-download",
                 "--nb-epochs", 1, "--model", "cnn-bn", "--checkpoint-folder", tmp_path / "ck")
    assert proc.returncode == 0, proc.stderr
    meta = load_checkpoint(tmp_path / "ck" / "latest.json").metadata
    assert meta["input_shape"] == [3, 32, 32] and meta["class_names"][0] == "airplane"
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, size=(64, 8, 8), dtype=np.uint8),
             y_train=rng.integers(0, 3, 64))
    proc = train("--dataset", tmp_path / "d.npz", "--nb-epochs", 1, "--model", "mlp",
                 "--checkpoint-folder", tmp_path / "ck2")
    assert proc.returncode == 2 and "no test part" in proc.stderr and "--val-split" in proc.stderr
    proc = train("--dataset", tmp_path / "d.npz", "--nb-epochs", 1, "--model", "mlp",
                 "--val-split", 16, "--checkpoint-folder", tmp_path / "ck2")
    assert proc.returncode == 0, proc.stderr
    assert "no test part" in proc.stdout and (tmp_path / "ck2" / "best.json").is_file()
    proc = train("--dataset", tmp_path / "d.npz", "--split-test", 48, "--nb-epochs", 1,
                 "--model", "flatten,dense:10,softmax", "--checkpoint-folder", tmp_path / "ck3")
    assert proc.returncode == 2 and "3 classes" in proc.stderr and "dense:3" in proc.stderr


def test_real_mnist_as_a_png_folder_trains_like_the_idx_files(mnist_test_set, tmp_path):
    """The real MNIST test split written out as PNG class folders decodes to the same
    pixels and trains to the same accuracy as from IDX (same seed and recipe; the
    order of the training images differs: folders group them by class)."""
    images, labels = mnist_test_set
    for split, part in (("train", slice(0, 8000)), ("test", slice(8000, 10000))):
        write_folder(tmp_path / "digits", {str(k): images[part][labels[part] == k]
                                           for k in range(10)}, split=split)
    from nnjit.data import load_dataset

    folder = load_dataset(str(tmp_path / "digits"), show_progress=False)
    order = np.argsort(labels[:8000], kind="stable")
    np.testing.assert_array_equal(folder.x_train[:, 0], images[:8000][order])
    common = ["--nb-epochs", 2, "--model", "cnn", "--seed", 0]
    from conftest import MNIST_DIR

    idx = train("--dataset", "mnist", "--train-data-dir", MNIST_DIR, "--split-test", 8000,
                "--checkpoint-folder", tmp_path / "a", *common)
    png = train("--dataset", tmp_path / "digits", "--checkpoint-folder", tmp_path / "b", *common)
    assert idx.returncode == 0 and png.returncode == 0, idx.stderr + png.stderr
    acc = [load_checkpoint(tmp_path / d / "latest.json").metadata["test_accuracy"] for d in "ab"]
    assert min(acc) > 0.96 and abs(acc[0] - acc[1]) < 0.01, acc
