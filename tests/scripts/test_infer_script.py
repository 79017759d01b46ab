"""scripts/infer.py on every image format, with a hand-set model whose answers are known."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from nnjit.checkpoint import save_checkpoint
from nnjit.data import to_float, write_idx
from nnjit.spec import build_model
from synthetic import class_images

INFER = str(ROOT / "scripts" / "infer.py")
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]


def block_detector():
    """Flatten -> Dense(784, 10) -> Softmax whose row k sums the pixels of class k's block."""
    model = build_model("dense:10,softmax", seed=0)
    weight = model.parameters()[0].value
    weight[...] = 0
    for k in range(10):
        mask = class_images([k], np.random.default_rng(0))[0] == 220
        weight[k] = mask.reshape(-1) * 10.0
    return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "detector.json"
    save_checkpoint(block_detector(), path, input_shape=[1, 28, 28], class_names=FASHION,
                    dataset="fashion-mnist")
    return path


def run(*args):
    return subprocess.run([sys.executable, INFER, *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def picture(k, dark_on_light=False):
    pixels = class_images([k], np.random.default_rng(k))[0]
    return 255 - pixels if dark_on_light else pixels


def write_formats(folder, k):
    pixels = picture(k)
    (folder / "img.bin").write_bytes(pixels.tobytes())
    np.save(folder / "img_u8.npy", pixels)
    np.save(folder / "img_f.npy", pixels.astype(np.float32) / 255)
    Image.fromarray(pixels).save(folder / "img.png")
    # A "scan": dark digit on white paper, bigger than 28x28, as RGB JPEG.
    Image.fromarray(picture(k, dark_on_light=True)).resize((112, 112), Image.NEAREST).convert(
        "RGB").save(folder / "scan.jpg", quality=95)
    return ["img.bin", "img_u8.npy", "img_f.npy", "img.png", "scan.jpg"]


@pytest.mark.parametrize("k", [3, 8])
def test_every_format_gives_the_known_class(ckpt, tmp_path, k):
    for name in write_formats(tmp_path, k):
        proc = run(ckpt, tmp_path / name, "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["class"] == k and result["name"] == FASHION[k], (name, result)
        probs = result["probabilities"]
        assert abs(sum(probs.values()) - 1) < 1e-5 and max(probs, key=probs.get) == FASHION[k]
    assert "inverted" in json.loads(run(ckpt, tmp_path / "scan.jpg", "--json").stdout)["read_as"]


def test_human_output_names_the_class_and_draws_the_image(ckpt, tmp_path):
    write_formats(tmp_path, 1)
    proc = run(ckpt, tmp_path / "img.bin")
    assert proc.returncode == 0, proc.stderr
    assert "prediction: 1 (Trouser)" in proc.stdout
    assert "%%%%%%%%%%%%" in proc.stdout  # the 6-pixel block (220), drawn two characters a pixel
    assert "top 5" in proc.stdout


def test_idx_evaluation_equals_library_evaluation(ckpt, tmp_path):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 10, size=300).astype(np.uint8)
    images = class_images(labels, rng)
    images[:40] = rng.integers(0, 256, size=(40, 28, 28))  # some images it will get wrong
    write_idx(tmp_path / "i.gz", images)
    write_idx(tmp_path / "l.gz", labels)
    proc = run(ckpt, "--idx", tmp_path / "i.gz", tmp_path / "l.gz", "--json", "--batch-size", 64)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    _, accuracy = block_detector().evaluate(to_float(images), labels)
    assert result["accuracy"] == pytest.approx(accuracy) and 0.8 < accuracy < 1.0
    confusion = np.array(result["confusion"])
    assert confusion.sum() == 300 and np.trace(confusion) == round(accuracy * 300)
    human = run(ckpt, "--idx", tmp_path / "i.gz", tmp_path / "l.gz")
    assert f"accuracy {accuracy:.2%}" in human.stdout and "confusion matrix" in human.stdout


def test_a_checkpoint_trained_with_test_time_flips_is_evaluated_with_them(tmp_path):
    ckpt = tmp_path / "flip.json"
    save_checkpoint(block_detector(), ckpt, input_shape=[1, 28, 28], class_names=FASHION,
                    tta="flip")
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, size=200).astype(np.uint8)
    images = class_images(labels, rng)
    write_idx(tmp_path / "i.gz", images)
    write_idx(tmp_path / "l.gz", labels)
    x = to_float(images)
    single = block_detector().predict(x)
    mean = (single + block_detector().predict(x[..., ::-1].copy())) / 2
    for extra, probs in (((), mean), (("--tta", "none"), single), (("--tta", "flip"), mean)):
        proc = run(ckpt, "--idx", tmp_path / "i.gz", tmp_path / "l.gz", "--json", *extra)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["accuracy"] == np.mean(probs.argmax(1) == labels)
    assert np.mean(mean.argmax(1) == labels) < np.mean(single.argmax(1) == labels)  # they differ
    (tmp_path / "one.bin").write_bytes(images[0].tobytes())
    result = json.loads(run(ckpt, tmp_path / "one.bin", "--json").stdout)
    np.testing.assert_allclose([result["probabilities"][n] for n in FASHION], mean[0], atol=1e-6)
    save_checkpoint(block_detector(), ckpt, input_shape=[1, 28, 28], tta="rotate")
    proc = run(ckpt, tmp_path / "one.bin")
    assert proc.returncode == 2 and "metadata 'tta': tta must be one of" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_save_sample_writes_the_seed_format(tmp_path):
    images = class_images(np.arange(10), np.random.default_rng(0))
    write_idx(tmp_path / "i.gz", images)
    write_idx(tmp_path / "l.gz", np.arange(10, dtype=np.uint8))
    proc = run("--save-sample", 4, "--idx", tmp_path / "i.gz", tmp_path / "l.gz",
               "--output", tmp_path / "s.bin")
    assert proc.returncode == 0 and "label 4" in proc.stdout
    assert (tmp_path / "s.bin").read_bytes() == images[4].tobytes()


def short_raw(d):
    (d / "x.bin").write_bytes(b"\0" * 783)
    return [d / "x.bin"]


def garbage_png(d):
    (d / "x.png").write_bytes(b"not a png")
    return [d / "x.png"]


def small_npy(d):
    np.save(d / "x.npy", np.zeros((3, 3)))
    return [d / "x.npy"]


def small_idx(d):
    write_idx(d / "i.gz", np.zeros((2, 20, 20), np.uint8))
    write_idx(d / "l.gz", np.zeros(2, np.uint8))
    return ["--idx", d / "i.gz", d / "l.gz"]


@pytest.mark.parametrize("make,match", [
    (short_raw, "exactly 784 bytes"),
    (garbage_png, "not a readable image"),
    (small_npy, "not one 28x28 image"),
    (lambda d: [d / "missing.bin"], "cannot read"),
    (small_idx, "20x20, the checkpoint expects 28x28"),
])
def test_bad_input_exits_2(ckpt, tmp_path, make, match):
    proc = run(ckpt, *make(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert match in proc.stderr and "Traceback" not in proc.stderr


def test_mismatched_checkpoint_exits_2(tmp_path):
    save_checkpoint(build_model("mlp", input_shape=(1, 20, 20)), tmp_path / "c.json",
                    input_shape=[1, 28, 28])
    (tmp_path / "x.bin").write_bytes(bytes(784))
    proc = run(tmp_path / "c.json", tmp_path / "x.bin")
    assert proc.returncode == 2 and "does not take inputs of shape" in proc.stderr


def test_a_residual_network_answers_evaluates_and_exports(tmp_path):
    """infer.py (one image, a test set with its confusion matrix) and export_onnx.py
    on a graph model: the same answers as the library's."""
    from nnjit.data import to_float
    model = build_model("conv:4:3:same,bn,relu,res:4,res:8:2,dwsep:8,gap,dense:10,softmax",
                        seed=3)
    save_checkpoint(model, tmp_path / "res.json", input_shape=[1, 28, 28], class_names=FASHION)
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 10, size=50).astype(np.uint8)
    images = class_images(labels, rng)
    write_idx(tmp_path / "i.gz", images)
    write_idx(tmp_path / "l.gz", labels)
    proc = run(tmp_path / "res.json", "--idx", tmp_path / "i.gz", tmp_path / "l.gz", "--json")
    assert proc.returncode == 0, proc.stderr
    _, accuracy = model.evaluate(to_float(images), labels)
    assert json.loads(proc.stdout)["accuracy"] == pytest.approx(accuracy)
    Image.fromarray(images[0]).save(tmp_path / "one.png")
    one = run(tmp_path / "res.json", tmp_path / "one.png", "--json")
    assert one.returncode == 0, one.stderr
    want = FASHION[int(model.predict(to_float(images[:1][:, None]))[0].argmax())]
    assert want in one.stdout
    export = subprocess.run([sys.executable, str(ROOT / "scripts" / "export_onnx.py"),
                             "--checkpoint-path", tmp_path / "res.json", "--onnx-path",
                             tmp_path / "res.onnx", "--verify"], capture_output=True, text=True,
                            timeout=300)
    assert export.returncode == 0, export.stderr
