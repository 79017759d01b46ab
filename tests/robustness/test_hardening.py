"""No input crashes nnjit, no fault loses a run: hostile files, flags and faults."""
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from conftest import FUZZ_SEED, ROOT
from nnjit import NnjitError
from nnjit.checkpoint import load_checkpoint, save_checkpoint
from nnjit.data import read_idx, write_idx
from nnjit.images import load_image
from nnjit.spec import build_model
from one_process import run_in_one_process
from synthetic import write_dataset

TRAIN = str(ROOT / "scripts" / "train.py")
INFER = str(ROOT / "scripts" / "infer.py")
FUZZ = settings(max_examples=150, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def script(path, *args, **kwargs):
    return subprocess.run([sys.executable, path, *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kwargs)


def one_error_line(proc, code=2):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error:"), proc.stderr
    return proc.stderr


# -- checkpoints ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "real.json"
    model = build_model("conv:2:3,bn,relu,pool:2,dropout:0.2,dense:10,softmax", seed=0)
    from nnjit import Momentum

    save_checkpoint(model, path, Momentum(model.parameters(), lr=0.1), input_shape=[1, 28, 28])
    return path


@pytest.mark.parametrize("features", [1_000_000_000, 100_000])
def test_a_checkpoint_declaring_a_huge_layer_is_refused_before_allocating(real_checkpoint, tmp_path,
                                                                            features):
    doc = json.loads(real_checkpoint.read_text())
    dense = next(layer for layer in doc["architecture"] if layer["type"] == "Dense")
    dense["config"]["out_features"] = features
    bomb = tmp_path / "bomb.json"
    bomb.write_text(json.dumps(doc))
    (tmp_path / "image_sample.bin").write_bytes(bytes(784))
    tracemalloc.start()
    with pytest.raises(NnjitError, match="declares .* the file holds"):
        load_checkpoint(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * bomb.stat().st_size + (8 << 20), peak  # bounded by the file, not the layer
    err = one_error_line(script(INFER, bomb, tmp_path / "image_sample.bin"))
    assert "bomb.json" in err and f"{features:,}" not in err or "declares" in err


def json_paths(doc, prefix=()):
    """Every (path, value) in a JSON document, lists sampled to keep it small."""
    yield prefix, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i in sorted({0, len(doc) // 2, len(doc) - 1} if doc else ()):
            yield from json_paths(doc[i], prefix + (i,))


HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, -1, 2**31, 10**12]),
    st.floats(allow_nan=False), st.text(max_size=20), st.builds(list), st.builds(dict),
    st.lists(st.integers(-5, 5), max_size=5), st.builds(lambda: [[[[[[]]]]]]),
    st.sampled_from(["Dense", "Conv2D", "BatchNorm2D", "Dropout", "NoSuchLayer", "float64"]),
)


@seed(FUZZ_SEED)
@FUZZ
@given(data=st.data())
def test_fuzz_mutated_checkpoints_load_or_fail_cleanly(real_checkpoint, data):
    doc = json.loads(real_checkpoint.read_text())
    paths = [p for p, _ in json_paths(doc) if p]  # chosen before mutating: no cycles possible
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            action = data.draw(st.sampled_from(["delete", "replace", "nest"]))
            if action == "delete":
                del parent[path[-1]]
            elif action == "replace":
                parent[path[-1]] = data.draw(HOSTILE)
            else:
                parent[path[-1]] = [[parent[path[-1]]]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    text = json.dumps(doc)
    if data.draw(st.booleans()):
        text = text[:data.draw(st.integers(0, len(text)))]
    path = real_checkpoint.parent / "fuzz.json"
    path.write_text(text, encoding="utf-8")
    tracemalloc.start()
    try:
        load_checkpoint(path)
    except NnjitError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 50 * len(text) + (16 << 20), peak


def test_deeply_nested_and_non_utf8_checkpoints_are_one_clear_error(tmp_path):
    for name, data in [("deep.json", b"[" * 100_000 + b"]" * 100_000),
                       ("latin1.json", b'{"format": "nnjit-checkpoint", "x": "\xff\xfe"}')]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NnjitError):
            load_checkpoint(tmp_path / name)


# -- IDX files ------------------------------------------------------------------------
@seed(FUZZ_SEED)
@FUZZ
@given(data=st.data())
def test_fuzz_mutated_idx_files_read_or_fail_cleanly(tmp_path_factory, data):
    images = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    folder = tmp_path_factory.mktemp("idx")
    write_idx(folder / "x", images)
    raw = bytearray((folder / "x").read_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["byte", "truncate", "extend", "dim"]))
        if kind == "byte" and raw:
            raw[data.draw(st.integers(0, min(len(raw) - 1, 15)))] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            del raw[data.draw(st.integers(0, len(raw))):]
        elif kind == "extend":
            raw += bytes(data.draw(st.integers(1, 9)))
        elif kind == "dim" and len(raw) >= 8:
            at = 4 + 4 * data.draw(st.integers(0, max(0, min(raw[3], 3) - 1)))
            raw[at:at + 4] = data.draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    payload = gzip.compress(bytes(raw)) if data.draw(st.booleans()) else bytes(raw)
    (folder / "y").write_bytes(payload)
    try:
        array = read_idx(folder / "y")
    except NnjitError:
        return
    assert array.dtype == np.uint8 and array.size == len(raw) - 4 - 4 * raw[3]


def test_a_gzip_bomb_idx_stops_at_its_declared_size(tmp_path):
    header = bytes([0, 0, 8, 1]) + (1000).to_bytes(4, "big")
    with gzip.open(tmp_path / "bomb.gz", "wb") as f:  # declares 1,000 bytes, holds 200 MB
        f.write(header)
        for _ in range(200):
            f.write(bytes(1 << 20))
    tracemalloc.start()
    with pytest.raises(NnjitError, match="more"):
        read_idx(tmp_path / "bomb.gz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, peak
    huge = bytes([0, 0, 8, 3]) + b"".join((60000).to_bytes(4, "big") for _ in range(3))
    (tmp_path / "huge").write_bytes(huge)
    with pytest.raises(NnjitError, match="limit"):
        read_idx(tmp_path / "huge")


# -- images -----------------------------------------------------------------------------
def test_truncated_empty_and_bomb_images_are_one_clear_error(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.full((28, 28, 3), 200, np.uint8)).save(tmp_path / "ok.jpg")
    for name in ("ok.png", "ok.jpg"):
        data = (tmp_path / name).read_bytes()
        for cut in (0, 10, len(data) // 2):
            (tmp_path / f"cut{cut}_{name}").write_bytes(data[:cut])
            with pytest.raises(NnjitError):
                load_image(tmp_path / f"cut{cut}_{name}")
    # a PNG header declaring 100,000 x 100,000 pixels: Pillow's bomb guard refuses it
    png = bytearray((tmp_path / "ok.png").read_bytes())
    png[16:24] = (100_000).to_bytes(4, "big") * 2
    import zlib

    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    (tmp_path / "bomb.png").write_bytes(bytes(png))
    with pytest.raises(NnjitError, match="bomb.png"):
        load_image(tmp_path / "bomb.png")


# -- flags ------------------------------------------------------------------------------
FLAG_VALUES = st.sampled_from(["0", "-1", "1e309", "nan", "abc", "", "9" * 30, "0.5", "-0.0",
                               "2", "1e-40"])
TRAIN_FLAGS = ["--batch-size", "--nb-epochs", "--learning-rate", "--weight-decay", "--threads",
               "--checkpoint-stride", "--val-split", "--split-test", "--train-limit", "--seed",
               "--augment", "--model", "--channels", "--optimizer", "--lr-schedule", "--dataset"]


@seed(FUZZ_SEED)
@settings(max_examples=60, deadline=None, print_blob=True)
@given(flag=st.sampled_from(TRAIN_FLAGS), value=FLAG_VALUES)
def test_fuzz_train_flags_parse_or_exit_2(flag, value):
    import contextlib
    import io

    from nnjit.commands import train

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            train.parse_args([flag, value])
    except SystemExit as exit_:
        assert exit_.code == 2 and "error:" in err.getvalue()


INFER_FLAGS = ["--top", "--batch-size", "--save-sample", "--idx", "--data", "--output"]
EXPORT_FLAGS = ["--checkpoint-path", "--onnx-path"]


@seed(FUZZ_SEED)
@settings(max_examples=60, deadline=None, print_blob=True)
@given(script_name=st.sampled_from(["infer", "export"]), data=st.data())
def test_fuzz_infer_and_export_flags_end_in_a_clear_answer(script_name, data, tmp_path_factory):
    """The scripts' main() on hostile flag values: exit 0 or 2, never an exception."""
    import contextlib
    import importlib
    import io

    folder = tmp_path_factory.mktemp("flags")
    ckpt = folder / "c.json"
    save_checkpoint(build_model("mlp", seed=0), ckpt, input_shape=[1, 28, 28])
    (folder / "img.bin").write_bytes(bytes(784))
    flags = INFER_FLAGS if script_name == "infer" else EXPORT_FLAGS
    argv = [str(ckpt), str(folder / "img.bin")] if script_name == "infer" else \
        ["--checkpoint-path", str(ckpt), "--onnx-path", str(folder / "m.onnx")]
    for _ in range(data.draw(st.integers(1, 2))):
        argv += [data.draw(st.sampled_from(flags)),
                 data.draw(st.one_of(FLAG_VALUES, st.just(str(folder)), st.just(str(ckpt))))]
    module = importlib.import_module(f"nnjit.commands.{script_name}")
    out, err = io.StringIO(), io.StringIO()
    try:  # in the example's folder: a value like "-0.0" may become a file name
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                contextlib.chdir(folder):
            module.main(argv)
    except SystemExit as exit_:
        assert exit_.code in (0, 2, None), (argv, exit_.code, err.getvalue())
    except NnjitError:
        pass  # what run() turns into one error line


HOSTILE_FLAGS = [
    (["--batch-size", "1000000000000", "--nb-epochs", "1"], ""),
    (["--val-split", "0.9999999"], "--val-split"),
    (["--augment", "crop:100000"], ""),
    (["--model", "conv:100000000:3,dense:10,softmax"], ""),
    (["--model", "dense:" + "9" * 20], ""),
    (["--image-size", "100000", "100000"], "image folders"),
]


@pytest.fixture(scope="module")
def hostile_flag_runs(tmp_path_factory):
    """Each of HOSTILE_FLAGS on tiny data (in one child process, ``one_process``)."""
    runs = []
    for i, (args, _) in enumerate(HOSTILE_FLAGS):
        tmp = tmp_path_factory.mktemp(f"hostile{i}")
        write_dataset(tmp / "d", n_train=64, n_test=16)
        runs.append(("train", ["--train-data-dir", tmp / "d", "--checkpoint-folder", tmp / "ck",
                               "--model", "mlp", *args]))
    return run_in_one_process(runs, cwd=tmp_path_factory.mktemp("cwd"))


@pytest.mark.parametrize("case", range(len(HOSTILE_FLAGS)))
def test_hostile_flag_combinations_end_in_a_clear_answer(hostile_flag_runs, case):
    proc, match = hostile_flag_runs[case], HOSTILE_FLAGS[case][1]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 2), proc.stderr
    assert match in proc.stderr


# -- faults -----------------------------------------------------------------------------
def final_weights(folder):
    ckpt = load_checkpoint(folder / "latest.json")
    return ckpt.metadata["epoch"], {p.name: p.value.copy() for p in ckpt.model.parameters()}


def test_sigkill_at_random_moments_never_loses_the_run(tmp_path):
    """8 SIGKILLs, each a random moment after the run's first checkpoint write
    (in an epoch, in a checkpoint or loss-log write); each time latest.json loads
    and --resume from it finishes the run with exactly the uninterrupted run's
    weights."""
    write_dataset(tmp_path / "d", n_train=3000, n_test=100)
    common = ["--train-data-dir", tmp_path / "d", "--model", "mlp", "--nb-epochs", 40,
              "--batch-size", 50, "--quiet"]
    # The uninterrupted run trains alongside the killed ones, which spend most of
    # their time starting up.
    ref = subprocess.Popen([sys.executable, TRAIN, *map(str, common), "--checkpoint-folder",
                            str(tmp_path / "ref")], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    ck = tmp_path / "ck"
    latest = ck / "latest.json"

    def written():
        """latest.json's identity: a new one after every (atomic) checkpoint write."""
        try:
            st = latest.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    rng = random.Random(FUZZ_SEED)
    kills = 0
    while kills < 8:
        resume = ["--resume", latest] if latest.exists() else []
        before = written()
        proc = subprocess.Popen([sys.executable, TRAIN, *map(str, common), "--checkpoint-folder",
                                 str(ck), *map(str, resume)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Start-up (~1.5 s) writes nothing: wait for this run's first checkpoint,
        # then kill within the next few epochs (~0.1 s each, three writes after each).
        while written() == before and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.2))
        if proc.poll() is not None:
            break  # finished before the kill: the rest of the test checks the result
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if latest.exists():
            load_checkpoint(latest)  # always whole
    for _ in range(30):
        if (ck / "latest.json").exists() and final_weights(ck)[0] == 40:
            break
        resume = ["--resume", ck / "latest.json"] if (ck / "latest.json").exists() else []
        proc = script(TRAIN, *common, "--checkpoint-folder", ck, *resume)
        assert proc.returncode in (0, 2), proc.stderr
    ref_err = ref.communicate(timeout=600)[1]
    assert ref.returncode == 0, ref_err
    epoch, weights = final_weights(ck)
    _, want = final_weights(tmp_path / "ref")
    assert epoch == 40 and kills == 8, kills
    for name in want:
        np.testing.assert_array_equal(weights[name], want[name], err_msg=name)


def test_a_second_run_on_the_same_folder_is_refused_and_a_crashed_one_never_blocks(tmp_path):
    write_dataset(tmp_path / "d", n_train=20000, n_test=100)
    common = ["--train-data-dir", tmp_path / "d", "--model", "mlp", "--checkpoint-folder",
              tmp_path / "ck"]
    first = subprocess.Popen([sys.executable, TRAIN, *map(str, common), "--nb-epochs", "50"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "ck" / ".nnjit-train.lock").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    second = script(TRAIN, *common, "--nb-epochs", 1)
    err = one_error_line(second)
    assert f"pid {first.pid}" in err and "in use by another training run" in err
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = script(TRAIN, *common, "--nb-epochs", 1, "--train-limit", 100)
    assert third.returncode == 0, third.stderr  # the killed run's lock went with it


def test_a_full_or_unwritable_folder_stops_training_cleanly(tmp_path):
    """save_checkpoint failing with ENOSPC mid-run (a sitecustomize makes the
    third checkpoint write fail): one error line naming the folder, exit 74, the
    last good checkpoint intact, no temp files left."""
    write_dataset(tmp_path / "d", n_train=200, n_test=50)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, nnjit.fileio as f\n"
        "real, calls = f.atomic_write_bytes, [0]\n"
        "def failing(path, data):\n"
        "    calls[0] += 1\n"
        "    if calls[0] >= 5 and str(path).endswith('.json'):\n"
        "        import os, tempfile\n"
        "        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.tmp')\n"
        "        os.close(fd); os.remove(tmp)\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return real(path, data)\n"
        "f.atomic_write_bytes = failing\n")
    env = dict(os.environ, PYTHONPATH=f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    ck = tmp_path / "ck"
    proc = script(TRAIN, "--train-data-dir", tmp_path / "d", "--model", "mlp", "--nb-epochs", 5,
                  "--checkpoint-folder", ck, env=env)
    err = one_error_line(proc, code=74)
    assert "No space left on device" in err and str(ck) in err and "last good checkpoint" in err
    assert load_checkpoint(ck / "latest.json").metadata["epoch"] == 2
    assert not [p for p in ck.iterdir() if p.suffix == ".tmp" or ".json." in p.name]


def test_numba_cache_shared_by_two_first_compilations_and_surviving_corruption(tmp_path):
    """Two processes compiling into one empty NUMBA_CACHE_DIR at once both succeed;
    garbage written over every cached file is recompiled, not a crash."""
    code = ("import numpy as np\nfrom nnjit.spec import build_model\n"
            "m = build_model('dense:10,softmax', seed=0)\n"
            "x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)\n"
            "print(m.forward(x)[:2].sum())\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert float(outs[0][0]) == pytest.approx(2.0)
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.suffix in (".nbc", ".nbi")]
    assert cached
    for p in cached:
        p.write_bytes(b"garbage")
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]


def test_an_npz_declaring_a_huge_array_is_refused_before_allocating(tmp_path):
    import io
    import zipfile

    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        member, {"descr": "|u1", "fortran_order": False, "shape": (10**11, 28, 28)})
    member.write(bytes(1000))
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x_train.npy", member.getvalue())
        buf = io.BytesIO()
        np.save(buf, np.zeros(3, np.uint8))
        z.writestr("y_train.npy", buf.getvalue())
    tracemalloc.start()
    with pytest.raises(NnjitError, match="declares shape"):
        from nnjit.data import load_dataset

        load_dataset(str(tmp_path / "bomb.npz"))
    assert tracemalloc.get_traced_memory()[1] < 4 << 20
    tracemalloc.stop()


@seed(FUZZ_SEED)
@FUZZ
@given(data=st.data())
def test_fuzz_mutated_pictures_read_or_fail_cleanly(tmp_path_factory, data):
    from PIL import Image

    folder = tmp_path_factory.mktemp("img")
    ext = data.draw(st.sampled_from(["png", "jpg", "bmp"]))
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f"a.{ext}")
    raw = bytearray((folder / f"a.{ext}").read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        if data.draw(st.booleans()) and raw:
            raw[data.draw(st.integers(0, min(len(raw) - 1, 64)))] = data.draw(st.integers(0, 255))
        else:
            del raw[data.draw(st.integers(0, len(raw))):]
    (folder / f"b.{ext}").write_bytes(bytes(raw))
    channels = data.draw(st.sampled_from([1, 3]))
    try:
        image, _ = load_image(folder / f"b.{ext}", (channels, 28, 28))
    except NnjitError:
        return
    assert image.shape == (channels, 28, 28) and image.dtype == np.uint8


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """(data folder, latest.json) of a one-epoch mlp run on tiny data."""
    root = tmp_path_factory.mktemp("resume")
    write_dataset(root / "d", n_train=64, n_test=16)
    first = script(TRAIN, "--train-data-dir", root / "d", "--model", "mlp", "--nb-epochs", 1,
                   "--checkpoint-folder", root / "ck")
    assert first.returncode == 0, first.stderr
    return root / "d", root / "ck" / "latest.json"


NONSENSE_SETTINGS = [("best_accuracy", 7), ("batch_size", "64"), ("epoch", -3), ("val_split", 7.5),
                     ("image_size", [28]), ("augment", "spin"), ("learning_rate", "fast"),
                     ("lr_schedule", "wild"), ("dataset", 7),
                     ("optimizer", {"name": "SGD", "hyperparameters": {"lr": "x"}, "steps": 1,
                                    "state": {}})]


@pytest.fixture(scope="module")
def nonsense_resume_runs(one_epoch_run, tmp_path_factory):
    """--resume from one_epoch_run's checkpoint with each of NONSENSE_SETTINGS
    written into it (in one child process, ``one_process``)."""
    data, latest = one_epoch_run
    runs = []
    for i, (key, value) in enumerate(NONSENSE_SETTINGS):
        tmp = tmp_path_factory.mktemp(f"nonsense{i}")
        doc = json.loads(latest.read_text())
        if key == "optimizer":
            doc[key] = value
        else:
            doc["metadata"][key] = value
        (tmp / "bad.json").write_text(json.dumps(doc))
        runs.append(("train", ["--train-data-dir", data, "--resume", tmp / "bad.json",
                               "--nb-epochs", 2, "--checkpoint-folder", tmp / "ck2"]))
    return run_in_one_process(runs, cwd=tmp_path_factory.mktemp("cwd"))


@pytest.mark.parametrize("case", range(len(NONSENSE_SETTINGS)),
                         ids=[key for key, _ in NONSENSE_SETTINGS])
def test_resuming_from_a_checkpoint_with_nonsense_settings_is_one_clear_error(
        nonsense_resume_runs, case):
    """Also null settings: a null dataset keeps the command line's."""
    err = one_error_line(nonsense_resume_runs[case])
    assert NONSENSE_SETTINGS[case][0] in err


def test_resuming_with_null_settings_keeps_the_command_lines(one_epoch_run, tmp_path):
    data, latest = one_epoch_run
    doc = json.loads(latest.read_text())
    doc["metadata"].update(dataset=None, batch_size=None, model_spec=None, split_test=None)
    (tmp_path / "nulls.json").write_text(json.dumps(doc))
    proc = script(TRAIN, "--train-data-dir", data, "--resume", tmp_path / "nulls.json",
                  "--nb-epochs", 2, "--checkpoint-folder", tmp_path / "ck2")
    assert proc.returncode == 0, proc.stderr


NONSENSE_METADATA = [("input_shape", "x"), ("input_shape", [0, 28, 28]), ("input_shape", [1, 28]),
                     ("input_shape", [3, 32, 32]), ("class_names", 5), ("class_names", [1, None]),
                     ("preprocessing", {"pixels": "yes"}), ("preprocessing", [1]),
                     ("dataset", {"a": 1})]


@pytest.fixture(scope="module")
def nonsense_metadata_runs(real_checkpoint, tmp_path_factory):
    """infer and export on real_checkpoint with each of NONSENSE_METADATA written
    into it: (infer's, export's) results (in one child process, ``one_process``)."""
    runs = []
    for i, (key, value) in enumerate(NONSENSE_METADATA):
        tmp = tmp_path_factory.mktemp(f"metadata{i}")
        doc = json.loads(real_checkpoint.read_text())
        doc["metadata"][key] = value
        bad = tmp / "bad.json"
        bad.write_text(json.dumps(doc))
        (tmp / "img.bin").write_bytes(bytes(784))
        runs += [("infer", [bad, tmp / "img.bin", "--json"]),
                 ("export", ["--checkpoint-path", bad, "--onnx-path", tmp / "m.onnx"])]
    results = run_in_one_process(runs, cwd=tmp_path_factory.mktemp("cwd"))
    return list(zip(results[::2], results[1::2]))


@pytest.mark.parametrize("case", range(len(NONSENSE_METADATA)),
                         ids=[key for key, _ in NONSENSE_METADATA])
def test_infer_and_export_on_checkpoints_with_nonsense_metadata(nonsense_metadata_runs, case):
    for proc in nonsense_metadata_runs[case]:
        assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr


def test_a_huge_image_size_for_a_folder_is_one_clear_error(tmp_path):
    from PIL import Image

    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "train" / "a" / "x.png")
    err = one_error_line(script(TRAIN, "--dataset", tmp_path, "--val-split", "0.5",
                                "--image-size", 100000, 100000, "--checkpoint-folder",
                                tmp_path / "ck"))
    assert "--image-size" in err


@seed(FUZZ_SEED)
@FUZZ
@given(data=st.data())
def test_fuzz_mutated_npz_files_load_or_fail_cleanly(tmp_path_factory, data):
    from nnjit.data import load_dataset

    folder = tmp_path_factory.mktemp("npz")
    rng = np.random.default_rng(0)
    save = np.savez_compressed if data.draw(st.booleans()) else np.savez
    save(folder / "a.npz", x_train=rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8),
         y_train=np.arange(6) % 3, x_test=rng.integers(0, 256, size=(2, 5, 4), dtype=np.uint8),
         y_test=np.array([0, 2]))
    raw = bytearray((folder / "a.npz").read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        if data.draw(st.booleans()) and raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        else:
            del raw[data.draw(st.integers(0, len(raw))):]
    (folder / "b.npz").write_bytes(bytes(raw))
    tracemalloc.start()
    try:
        loaded = load_dataset(str(folder / "b.npz"))
        assert loaded.x_train.ndim == 4 and len(loaded.x_train) == len(loaded.y_train)
    except NnjitError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 64 << 20, peak


# -- files that are not what they seem ------------------------------------------------
def test_files_that_are_not_regular_are_refused_unread(real_checkpoint, tmp_path):
    """A device or a FIFO would be read without end (or never answer): one error line."""
    fifo = tmp_path / "model.json"
    os.mkfifo(fifo)
    for checkpoint in ("/dev/zero", fifo):
        err = one_error_line(script(INFER, checkpoint, tmp_path / "x.bin"))
        assert "not a regular file" in err
    image = tmp_path / "image.npy"
    os.mkfifo(image)
    for path in (image, "/dev/zero"):
        with pytest.raises(NnjitError, match="not a regular file"):
            load_image(path)
    assert "not a regular file" in one_error_line(script(INFER, real_checkpoint, tmp_path))


def test_npy_files_that_lie_about_their_size_are_refused_before_allocating(real_checkpoint,
                                                                          tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "text.npy").write_bytes(b"not an array at all")
    with open(tmp_path / "liar.npy", "wb") as f:  # declares 400 GB, holds 100 bytes
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000, 10)})
        f.write(bytes(100))
    with open(tmp_path / "short.npy", "wb") as f:  # declares one image, holds half
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": (28, 28)})
        f.write(bytes(392))
    tracemalloc.start()
    for name in ("empty.npy", "text.npy", "liar.npy", "short.npy"):
        with pytest.raises(NnjitError, match=name):
            load_image(tmp_path / name)
    assert tracemalloc.get_traced_memory()[1] < 8 << 20
    tracemalloc.stop()
    for name, words in (("empty.npy", "not a .npy"), ("liar.npy", "declares 100,000,000,000")):
        assert words in one_error_line(script(INFER, real_checkpoint, tmp_path / name))
    np.save(tmp_path / "ok.npy", np.zeros((28, 28), np.uint8))
    assert load_image(tmp_path / "ok.npy")[0].shape == (1, 28, 28)


def test_a_checkpoint_whose_activations_cannot_fit_is_refused_from_the_shapes(tmp_path):
    """Every parameter valid, but a conv padding of 20000 makes one image's
    activations larger than the machine: refused before anything is allocated."""
    from nnjit import Conv2D, Dense, Flatten, GlobalAvgPool2D, Sequential

    model = Sequential([Conv2D(1, 8, 3, padding=1), GlobalAvgPool2D(), Flatten(), Dense(8, 10)],
                       seed=0)
    save_checkpoint(model, tmp_path / "ok.json", input_shape=[1, 28, 28])
    doc = json.loads((tmp_path / "ok.json").read_text())
    doc["architecture"][0]["config"]["padding"] = [20000, 20000]
    (tmp_path / "huge.json").write_text(json.dumps(doc))
    (tmp_path / "x.bin").write_bytes(bytes(784))
    err = one_error_line(script(INFER, tmp_path / "huge.json", tmp_path / "x.bin"))
    assert "huge.json" in err and "GiB" in err and "more than this machine" in err
    from nnjit import memory

    with pytest.raises(MemoryError, match="larger than this machine's memory"):
        memory.empty((memory.physical_bytes() // 4 + 1,), np.float32)  # any layer buffer


# -- kills between and during writes ----------------------------------------------------
KILL_AFTER_FIRST_WRITE = """
import os, sys
from nnjit.cli import run
from nnjit.commands import train
real = train.atomic_write_text
def write_then_die(path, text):
    real(path, text)
    if path.name == "latest.json":
        os._exit(9)  # as a SIGKILL right after the first file of a checkpoint is written
train.atomic_write_text = write_then_die
run(lambda: train.main(sys.argv[1:]))
"""


def test_a_kill_between_checkpoint_files_leaves_a_latest_json_to_resume_from(tmp_path):
    write_dataset(tmp_path / "d", n_train=200, n_test=50)
    ck = tmp_path / "ck"
    common = ["--train-data-dir", tmp_path / "d", "--model", "mlp", "--nb-epochs", 2,
              "--checkpoint-folder", ck, "--quiet"]
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_WRITE, *map(str, common)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 9, proc.stderr
    assert load_checkpoint(ck / "latest.json").metadata["epoch"] == 1
    resumed = script(TRAIN, *common, "--resume", ck / "latest.json")
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(ck / "latest.json").metadata["epoch"] == 2


def test_stale_temp_files_of_killed_writes_are_removed_by_the_next_run(tmp_path):
    write_dataset(tmp_path / "d", n_train=200, n_test=50)
    ck = tmp_path / "ck"
    ck.mkdir()
    stale = [ck / "latest.json.k3j_9xQa.tmp", ck / "loss.csv.abcdefgh.tmp"]
    for path in stale:
        path.write_text("half a file")
    (ck / "notes.tmp").write_text("not ours")
    proc = script(TRAIN, "--train-data-dir", tmp_path / "d", "--model", "mlp", "--nb-epochs", 1,
                  "--checkpoint-folder", ck, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert not any(path.exists() for path in stale)
    assert (ck / "notes.tmp").exists()
    assert not list(ck.glob("*.*.tmp"))
