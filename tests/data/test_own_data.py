"""Own data: CIFAR-10 archives, image folders, .npz, preprocessing, augmentation."""
import json
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from nnjit import Conv2D, SpecError
from nnjit.augment import Augment
from nnjit.data import DataError, load_dataset
from nnjit.data.cifar import read_batch
from nnjit.data.preprocess import Preprocessing
from nnjit.spec import build_model
from synthetic import CIFAR_NAMES, write_cifar_archive


# -- CIFAR-10 -------------------------------------------------------------------
def test_cifar_archive_loads_to_the_right_arrays_and_labels(tmp_path):
    batches = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", n_per_batch=30)
    data = load_dataset("cifar10", tmp_path, download=False)
    assert data.x_train.shape == (150, 3, 32, 32) and data.x_test.shape == (30, 3, 32, 32)
    assert data.class_names == tuple(CIFAR_NAMES)
    second = batches["data_batch_2"]
    # row = 1024 red, 1024 green, 1024 blue values, each plane row by row
    np.testing.assert_array_equal(data.x_train[30 + 7, 1].reshape(-1), second[b"data"][7, 1024:2048])
    np.testing.assert_array_equal(data.y_train[30:60], second[b"labels"])
    np.testing.assert_array_equal(data.y_test, batches["test_batch"][b"labels"])
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()  # extracted once
    again = load_dataset("cifar10", tmp_path, download=False)  # from the extracted folder
    np.testing.assert_array_equal(again.x_test, data.x_test)


def evil(name, kind=tarfile.REGTYPE, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, target, 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("member,match", [
    (evil("../escaped.txt"), "outside"),
    (evil("cifar-10-batches-py/../../escaped.txt"), "outside"),
    (evil("/tmp/absolute.txt"), "outside"),
    (evil("cifar-10-batches-py/link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
    (evil("cifar-10-batches-py/hard", tarfile.LNKTYPE, "cifar-10-batches-py/test_batch"), "link"),
])
def test_archive_members_that_escape_or_link_are_refused(tmp_path, member, match):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_cifar_archive(data_dir / "cifar-10-python.tar.gz", n_per_batch=2, extra_members=[member])
    with pytest.raises(DataError, match=match):
        load_dataset("cifar10", data_dir, download=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (data_dir / "cifar-10-batches-py").exists()  # nothing extracted before the check


def test_a_pickle_naming_code_is_refused():
    class Attack:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(DataError, match=r"refusing to load \S*print"):
        read_batch(pickle.dumps({b"data": Attack()}, protocol=2), "batch")
    with pytest.raises(DataError, match="not a CIFAR batch"):
        read_batch(b"\x80\x02garbage", "batch")


def test_an_archive_without_the_batches_is_one_clear_error(tmp_path):
    import io

    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("something-else/readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DataError, match="holds no complete"):
        load_dataset("cifar10", tmp_path, download=False)


def test_missing_cifar_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path, download=False)


# -- image folders ----------------------------------------------------------------
def write_folder(root, images_by_class, split="train", ext="png"):
    for name, images in images_by_class.items():
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, pixels in enumerate(images):
            Image.fromarray(pixels).save(folder / f"{i:04d}.{ext}")


def test_folder_with_mixed_sizes_resizes_to_the_most_common_and_says_so(tmp_path, rng):
    gray = lambda h, w: rng.integers(0, 256, size=(h, w), dtype=np.uint8)  # noqa: E731
    write_folder(tmp_path, {"b_cat": [gray(20, 24), gray(20, 24)], "a_dog": [gray(20, 24), gray(9, 9)]})
    write_folder(tmp_path, {"a_dog": [gray(20, 24)]}, split="test")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are no class
    data = load_dataset(str(tmp_path), show_progress=False)
    assert data.class_names == ("a_dog", "b_cat")  # sorted folder names
    assert data.x_train.shape == (4, 1, 20, 24) and data.x_test.shape == (1, 1, 20, 24)
    np.testing.assert_array_equal(data.y_train, [0, 0, 1, 1])
    assert "most common size 20x24" in data.description and "grayscale" in data.description
    assert "1 images resized" in data.description
    first = np.asarray(Image.open(tmp_path / "train" / "a_dog" / "0000.png"))
    np.testing.assert_array_equal(data.x_train[0, 0], first)  # PNG is lossless
    sized = load_dataset(str(tmp_path), image_size=(8, 10), channels=3, show_progress=False)
    assert sized.x_train.shape == (4, 3, 8, 10)
    assert np.array_equal(sized.x_train[:, 0], sized.x_train[:, 2])  # gray -> equal R, G, B


def test_colour_is_detected_and_kept_in_channel_order(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(3, 12, 12, 3), dtype=np.uint8)
    write_folder(tmp_path, {"x": [rgb[0], rgb[1]], "y": [rgb[2][:, :, 0]]})
    data = load_dataset(str(tmp_path), show_progress=False)
    assert data.x_train.shape == (3, 3, 12, 12) and "colour" in data.description
    np.testing.assert_array_equal(data.x_train[1], rgb[1].transpose(2, 0, 1))
    assert data.x_test is None


@pytest.mark.parametrize("setup,match", [
    (lambda root: (root / "train" / "empty").mkdir(parents=True), "empty class folder"),
    (lambda root: (root / "train" / "ok" / "bad.png").write_bytes(b"not a png"), "bad.png"),
    (lambda root: (root / "test" / "stranger").mkdir(parents=True), "not among the training"),
    (lambda root: (root / "train" / "ok" / "trunc.png").write_bytes(
        (root / "train" / "ok" / "0000.png").read_bytes()[:40]), "trunc.png"),
])
def test_bad_folders_are_one_clear_error(tmp_path, rng, setup, match):
    write_folder(tmp_path, {"ok": [rng.integers(0, 256, size=(8, 8), dtype=np.uint8)]})
    setup(tmp_path)
    with pytest.raises(DataError, match=match):
        load_dataset(str(tmp_path), show_progress=False)


# -- .npz ------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_npz_layouts_and_dtypes(tmp_path, rng, layout, dtype):
    nchw = rng.integers(0, 256, size=(6, 3 if layout != "NHW" else 1, 5, 7)).astype(dtype)
    stored = {"NHW": nchw[:, 0], "NHWC": nchw.transpose(0, 2, 3, 1), "NCHW": nchw}[layout]
    y = np.array([0, 1, 2, 0, 1, 3])
    np.savez(tmp_path / "d.npz", x_train=stored, y_train=y, x_test=stored[:2],
             y_test=y[:2, None])  # (N, 1), as Keras's cifar10.load_data() gives
    data = load_dataset(str(tmp_path / "d.npz"))
    np.testing.assert_array_equal(data.x_train, nchw)
    assert data.x_train.dtype == dtype and data.class_names == ("0", "1", "2", "3")
    assert {"NHW": "(N, H, W)", "NHWC": "channels-last", "NCHW": "channels-first"}[layout] \
        in data.description


def test_pickled_or_incomplete_npz_is_refused(tmp_path):
    np.savez(tmp_path / "p.npz", x_train=np.array([{"a": 1}] * 2, dtype=object), y_train=[0, 1])
    with pytest.raises(DataError, match="pickled"):
        load_dataset(str(tmp_path / "p.npz"))
    np.savez(tmp_path / "q.npz", x_train=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="y_train"):
        load_dataset(str(tmp_path / "q.npz"))
    np.savez(tmp_path / "r.npz", x_train=np.zeros((2, 4, 4), np.uint8), y_train=[0, -1])
    with pytest.raises(DataError, match="0..255"):
        load_dataset(str(tmp_path / "r.npz"))


# -- preprocessing and augmentation ------------------------------------------------
def test_normalize_uses_training_channel_statistics_and_round_trips(rng):
    x = rng.integers(0, 256, size=(50, 3, 4, 4), dtype=np.uint8)
    x[:, 2] //= 4
    prep = Preprocessing.fit(x, normalize=True)
    out = prep.apply(x).astype(np.float64)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, rtol=1e-4)
    again = Preprocessing.from_metadata(json.loads(json.dumps({"preprocessing": prep.to_metadata()})))
    assert again == prep
    assert Preprocessing.from_metadata({}) == Preprocessing()  # checkpoints before it: x / 255
    with pytest.raises(DataError):
        Preprocessing.from_metadata({"preprocessing": {"pixels": True, "mean": [0.5], "std": [0]}})


def numpy_shift_flip(x, dy, dx, flip):
    """Zero-pad, crop at (p + dy, p + dx), then mirror the images whose flip is set."""
    n, c, h, w = x.shape
    p = int(max(np.abs(dy).max(), np.abs(dx).max(), 1))
    padded = np.zeros((n, c, h + 2 * p, w + 2 * p), x.dtype)
    padded[:, :, p:p + h, p:p + w] = x
    out = np.stack([padded[i, :, p + dy[i]:p + dy[i] + h, p + dx[i]:p + dx[i] + w]
                    for i in range(n)])
    out[flip] = out[flip][..., ::-1]
    return out


@pytest.mark.parametrize("spec", ["crop:3", "flip", "crop:2,flip"])
def test_augmentation_kernel_equals_numpy_and_is_seeded(spec, rng):
    x = rng.normal(size=(9, 2, 7, 6)).astype(np.float32)
    aug = Augment.parse(spec)
    out = aug(x, np.random.default_rng(5)).copy()
    dy, dx, flip = aug.draw(np.random.default_rng(5), len(x))
    np.testing.assert_array_equal(out, numpy_shift_flip(x, dy, dx, flip))
    np.testing.assert_array_equal(aug(x, np.random.default_rng(5)), out)  # same seed, same batch
    assert not np.array_equal(aug(x, np.random.default_rng(6)), out)
    with pytest.raises(ValueError, match="--augment"):
        Augment.parse("rotate:10")


def test_random_erasing_zeroes_one_rectangle_drawn_as_torchvision_does(rng):
    """erase:P after the shifts and flips: with probability P one rectangle of
    2-40% of the image, aspect 0.3-3.3, each side below the image's, zero in every
    channel; the rest as without it. Statistics over 4,000 images of 12 x 20."""
    n, h, w = 4000, 12, 20
    x = rng.uniform(1, 2, size=(n, 3, h, w)).astype(np.float32)  # no zero before erasing
    aug = Augment.parse("flip,erase:0.3")
    assert str(aug) == "flip,erase:0.3" and str(Augment.parse("erase:1")) == "erase:1"
    out = aug(x, np.random.default_rng(7)).copy()
    plain = Augment(flip=True)(x, np.random.default_rng(7))
    zero = out == 0
    assert (zero.all(axis=1) == zero.any(axis=1)).all()  # every channel, or none
    np.testing.assert_array_equal(out[~zero], plain[~zero])
    zero = zero[:, 0]
    erased = zero.any(axis=(1, 2))
    assert 0.27 < erased.mean() < 0.33
    areas, ratios = [], []
    for i in np.flatnonzero(erased):
        rows, cols = np.flatnonzero(zero[i].any(axis=1)), np.flatnonzero(zero[i].any(axis=0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        assert zero[i, top:bottom, left:right].all()  # one solid rectangle
        assert bottom - top < h and right - left < w
        areas.append((bottom - top) * (right - left) / (h * w))
        ratios.append((bottom - top) / (right - left))
    # sides are rounded to whole pixels: the bounds hold to about a pixel a side
    assert 0.01 < min(areas) < 0.03 and 0.3 < max(areas) < 0.45, (min(areas), max(areas))
    assert 0.15 < min(ratios) < 0.4 and 2.5 < max(ratios) < 6, (min(ratios), max(ratios))
    np.testing.assert_array_equal(aug(x, np.random.default_rng(7)), out)  # seeded
    # with shifts too: erased after them, their draws unchanged
    shifted = Augment.parse("crop:2,flip,erase:0.3")
    both = shifted(x, np.random.default_rng(7)).copy()
    alone = Augment(crop=2, flip=True)(x, np.random.default_rng(7))
    np.testing.assert_array_equal(both[both != 0], alone[both != 0])
    assert (both == 0).sum() > (alone == 0).sum()
    # a rank's share of a batch is erased as that share of the whole batch
    share = shifted(x[1000:1500], np.random.default_rng(7), of=(1000, n))
    np.testing.assert_array_equal(share, both[1000:1500])
    for bad in ("erase:0", "erase:1.5", "erase:x", "erase"):
        with pytest.raises(ValueError, match="--augment"):
            Augment.parse(bad)


# -- presets adapt --------------------------------------------------------------
def test_presets_adapt_to_input_shape_and_class_count():
    for preset in ("cnn", "mlp", "cnn-bn"):
        model = build_model(preset, (3, 32, 32), num_classes=7, seed=0)
        assert model.summary((3, 32, 32))[-1][1] == (7,)
        assert model.predict(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 7)


def test_resnet_mini_keeps_its_128_channel_conv_where_the_map_allows_it():
    """From 16x16 images the pooled map is 6x6 or more: the 3x3 conv to 128
    channels runs on it; smaller images get the network without that conv, and
    images too small for any variant get the last variant's error."""
    def conv_channels(shape):
        model = build_model("resnet-mini", shape, num_classes=7, seed=0)
        assert model.predict(np.zeros((2, *shape), np.float32)).shape == (2, 7)
        return [layer.out_channels for layer in model.layers if isinstance(layer, Conv2D)]

    for shape in ((1, 28, 28), (1, 16, 16), (3, 32, 32), (3, 17, 23)):
        assert conv_channels(shape)[-1] == 128, shape
    for shape in ((1, 15, 15), (3, 12, 12), (1, 8, 8), (1, 28, 12)):
        assert 128 not in conv_channels(shape), shape
    with pytest.raises(SpecError, match="resnet-mini.*Conv2D"):
        build_model("resnet-mini", (1, 4, 4))
