"""Streaming datasets: equal to the same data in memory batch for batch and in training,
and training in bounded memory on a file several times larger than the memory allowed."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import nnjit
from nnjit.data import ArrayStream, DataError, FolderStream, load_dataset
from nnjit.data.preprocess import Preprocessing


def images_and_labels(n=150, shape=(1, 10, 10), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 4, n)


def small_model():
    return nnjit.Sequential([nnjit.Conv2D(1, 3, 3), nnjit.BatchNorm2D(3), nnjit.ReLU(),
                             nnjit.Flatten(), nnjit.Dropout(0.1), nnjit.Dense(3 * 8 * 8, 4),
                             nnjit.Softmax()], seed=0)


def test_memory_mapped_npy_trains_exactly_as_the_arrays_in_memory(tmp_path):
    x, y = images_and_labels()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    stream = ArrayStream.from_npy(tmp_path / "x.npy", tmp_path / "y.npy")
    assert isinstance(stream.x, np.memmap) and stream.shape == x.shape
    np.testing.assert_array_equal(stream[3:9], x[3:9] * np.float32(1 / 255))
    order = np.random.default_rng(1).permutation(150)
    for idx, batch in stream.batches(order, 32):
        np.testing.assert_array_equal(batch, x[idx] * np.float32(1 / 255))

    kwargs = dict(epochs=2, batch_size=16, validation_split=0.2, augment="crop:1,flip", seed=4,
                  verbose=0, lr_schedule="cosine")
    streamed, in_memory = small_model(), small_model()
    history = streamed.fit(stream, **kwargs)
    expected = in_memory.fit(x, y, **kwargs)
    for a, b in zip(streamed.get_weights(), in_memory.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert history.history["val_loss"] == expected.history["val_loss"]
    loss, accuracy = streamed.evaluate(stream, stream.labels, batch_size=40)
    assert (loss, accuracy) == pytest.approx(streamed.evaluate(x * np.float32(1 / 255), y))


def test_npz_members_are_mapped_in_any_layout_and_compressed_ones_refused(tmp_path):
    x, y = images_and_labels(n=40, shape=(6, 7, 3))  # channels-last colour
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:5, :, :, 0], y_test=y[:5])
    stream = ArrayStream.from_npz(tmp_path / "d.npz")
    assert isinstance(stream.x, np.memmap) and stream.sample_shape == (3, 6, 7)
    idx = np.array([7, 2, 30, 2])
    np.testing.assert_array_equal(stream.read(idx), x[idx].transpose(0, 3, 1, 2))
    test = ArrayStream.from_npz(tmp_path / "d.npz", split="test")
    np.testing.assert_array_equal(test.read(np.arange(5)), x[:5, None, :, :, 0])
    np.savez_compressed(tmp_path / "c.npz", x_train=x, y_train=y)
    with pytest.raises(DataError, match="compressed, which cannot be memory-mapped"):
        ArrayStream.from_npz(tmp_path / "c.npz")
    with pytest.raises(DataError, match="has no x_valid.npy"):
        ArrayStream.from_npz(tmp_path / "d.npz", split="valid")
    with pytest.raises(DataError, match="labels for"):
        ArrayStream(x, y[:-1])
    with pytest.raises(DataError, match="not a regular file"):
        ArrayStream.from_npy(tmp_path, y)


def write_folder(root, x, y, names):
    for i, (pixels, label) in enumerate(zip(x, y)):
        folder = root / "train" / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[0]).save(folder / f"{i:05d}.png")


def test_a_folder_streams_the_batches_load_dataset_reads(tmp_path):
    x, y = images_and_labels(n=90, shape=(1, 10, 10))
    write_folder(tmp_path, x, y, ["ant", "bee", "cat", "dog"])
    data = load_dataset(str(tmp_path), show_progress=False)
    with FolderStream(tmp_path, workers=2) as stream:
        assert stream.class_names == data.class_names and stream.sample_shape == (1, 10, 10)
        np.testing.assert_array_equal(stream.labels, data.y_train)
        order = np.random.default_rng(0).permutation(90)
        for idx, batch in stream.batches(order, 25):
            np.testing.assert_array_equal(batch, data.x_train[idx] * np.float32(1 / 255))
        # resized and in colour when asked, as the loader does
        colour = load_dataset(str(tmp_path), show_progress=False, channels=3, image_size=(8, 9))
        with FolderStream(tmp_path, channels=3, image_size=(8, 9), workers=1) as resized:
            np.testing.assert_array_equal(resized.read(np.arange(10)), colour.x_train[:10])
        a, b = small_model(), small_model()
        a.fit(stream, epochs=1, batch_size=16, verbose=0, seed=2)
        b.fit(data.x_train, data.y_train, epochs=1, batch_size=16, verbose=0, seed=2)
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)


def test_a_broken_image_fails_the_fit_with_its_error(tmp_path):
    x, y = images_and_labels(n=40, shape=(1, 10, 10))
    write_folder(tmp_path, x, y, ["a", "b", "c", "d"])
    bad = sorted((tmp_path / "train" / "c").iterdir())[0]
    bad.write_bytes(b"not a png")
    with FolderStream(tmp_path, image_size=(10, 10), channels=1, workers=1) as stream:
        with pytest.raises(DataError, match=bad.name):
            small_model().fit(stream, epochs=1, batch_size=8, verbose=0)


def test_normalisation_applies_per_batch():
    x, y = images_and_labels(n=30)
    prep = Preprocessing(True, (0.5,), (0.25,))
    stream = ArrayStream(x, y, preprocessing=prep)
    np.testing.assert_allclose(stream[:7], prep.apply(x[:7]))


UNDER_A_LIMIT = """
import resource, sys
import numpy as np
import nnjit
from nnjit.data import ArrayStream, FolderStream, load_dataset
source, allowance = sys.argv[1], int(sys.argv[2])
model = nnjit.Sequential([nnjit.AvgPool2D({pool}), nnjit.Flatten(), nnjit.Dense(64, {classes}),
                          nnjit.Softmax()], seed=0)
# the limit binds after start-up (the compiler, on a cold cache, and the thread
# pools run first): what the process has then, plus the allowance
model.fit(np.zeros((8, 1, {side}, {side}), np.uint8), np.zeros(8, int), verbose=0)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
limit = int(status["VmData"].split()[0]) * 1024 + allowance
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
try:
    {load_whole}
    print("loaded in memory")  # the limit does not bind: the test would prove nothing
except {refusals}:
    pass
stream = {stream}
history = model.fit(stream, epochs=1, batch_size={batch}, verbose=0)
print("trained", len(stream), history.history["loss"][0])
"""


def trains_under_a_limit(source, images, **script):
    """Run UNDER_A_LIMIT on ``source`` with 256 MB allowed beyond start-up: the
    whole data must not load, the stream must train all ``images``."""
    proc = subprocess.run([sys.executable, "-c", UNDER_A_LIMIT.format(**script), str(source),
                           str(256 << 20)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded in memory" not in proc.stdout
    assert f"trained {images}" in proc.stdout, proc.stdout


def test_a_file_several_times_the_memory_limit_trains(tmp_path):
    """1.2 GB of images trained with 256 MB allowed on top of what the process
    holds after start-up, as a limit on its private memory (RLIMIT_DATA: what
    malloc, numpy and thread stacks take; a mapped file's pages are the
    operating system's cache, outside it)."""
    n = 300_000
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8,
                                  shape=(n, 1, 64, 64))
    for start in range(0, n, 50_000):  # a pattern per image, written in chunks
        x[start:start + 50_000] = (np.arange(start, min(start + 50_000, n)) % 251).astype(
            np.uint8)[:, None, None, None]
    x.flush()
    del x
    trains_under_a_limit(tmp_path / "x.npy", n, pool=8, classes=10, side=64,
                         load_whole="np.load(source)", refusals="MemoryError",
                         stream='ArrayStream.from_npy(source, np.arange(len(np.load(source, '
                                'mmap_mode="r"))) % 10)', batch=1024)


def test_a_folder_several_times_the_memory_limit_trains(tmp_path):
    """2,400 PNGs of 512x512 (600 MB decoded, as uint8; 2.4 GB as float32 input)
    trained with 256 MB allowed beyond what the process holds after start-up:
    decoded batch by batch in a worker process, never all at once."""
    rng = np.random.default_rng(0)
    for label in range(4):
        folder = tmp_path / "train" / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(600):  # flat images with a little noise: small files, quick to write
            pixels = np.full((512, 512), 40 * label + i % 7, np.uint8)
            pixels[:8] = rng.integers(0, 256, (8, 512), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png", compress_level=1)
    trains_under_a_limit(tmp_path, 2400, pool=64, classes=4, side=512,
                         load_whole="load_dataset(source, show_progress=False)",
                         refusals="(MemoryError, nnjit.DataError)",
                         stream="FolderStream(source, image_size=(512, 512), channels=1, "
                                "workers=1)", batch=32)
