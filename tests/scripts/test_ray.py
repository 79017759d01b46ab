"""Sweeps on Ray Tune (scripts/sweep.py) and folder inference on Ray Data
(scripts/infer.py --ray), on a local Ray shared by the whole run, with real MNIST."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from conftest import MNIST_DIR, ROOT

SWEEP, INFER, TRAIN = (str(ROOT / "scripts" / f"{name}.py") for name in ("sweep", "infer", "train"))
#: Every trial: 1,500 real MNIST images, 500 held out to validate on.
TRAIN_FLAGS = ["--dataset", "mnist", "--train-data-dir", str(MNIST_DIR), "--split-test", "2000",
               "--val-split", "500", "--nb-epochs", "2"]


def run(*cmd, timeout=300, env=None):
    return subprocess.run([sys.executable, *map(str, cmd)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


KILLED_ONCE = textwrap.dedent("""
    import os, signal, sys
    from nnjit.callbacks import Callback
    from nnjit.sweep import sweep

    class DieOnceAfterFirstEpoch(Callback):
        # Logs each epoch it starts in its folder; kills its own process (SIGKILL)
        # once, after the first epoch has been reported with its checkpoint.
        def __init__(self, folder):
            self.folder = folder
        def on_epoch_begin(self, epoch, logs=None):
            with open(os.path.join(self.folder, "epochs.log"), "a") as f:
                f.write(f"{epoch}\\n")
        def on_epoch_end(self, epoch, logs=None):
            marker = os.path.join(self.folder, "killed")
            if not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)

    rows = sweep(sys.argv[2], sys.argv[3:], trials=1, storage=sys.argv[1] + "/sweeps",
                 max_failures=1, callbacks=[DieOnceAfterFirstEpoch(sys.argv[1])], verbose=0)
    print("ROWS", [(r.status, r.epochs, r.val_accuracy) for r in rows])
""")


def test_a_killed_trial_resumes_from_its_checkpoint_and_nothing_is_left_running(tmp_path, request,
                                                                           mnist_test_set):
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[test]')")
    script, space = tmp_path / "killed_once.py", tmp_path / "space.json"
    script.write_text(KILLED_ONCE)
    space.write_text(json.dumps({"learning-rate": {"choice": [0.05]}}))
    # a local Ray of its own, started and stopped by sweep(), in a folder with a short
    # name (Ray's socket paths must fit in 107 bytes)
    ray_temp = tempfile.mkdtemp(prefix="nnjit-ray-")
    request.addfinalizer(lambda: shutil.rmtree(ray_temp, ignore_errors=True))
    flags = [a if a != "2" else "3" for a in TRAIN_FLAGS]  # 3 epochs
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = run(script, tmp_path, space, *flags, env={**env, "RAY_TMPDIR": str(ray_temp),
                                                     "RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "killed").exists()
    # epoch 0, the kill, then epochs 1 and 2 from the checkpoint (not 0 again)
    assert (tmp_path / "epochs.log").read_text().split() == ["0", "1", "2"]
    assert "ROWS [('done', 3, " in proc.stdout
    rows = read_csv(tmp_path / "sweeps" / "trials.csv")
    assert [r["status"] for r in rows] == ["done"]
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert ray_temp not in left, "a Ray process of the sweep is still running"


def test_sweep_refuses_bad_spaces_and_flags_in_one_line(tmp_path):
    from nnjit.sweep import SweepError, check_flags, read_space

    space = tmp_path / "space.json"
    cases = [({"learning-rat": {"choice": [0.1]}}, ["--val-split", "100"],
              "'learning-rat' is not a flag of nnjit train"),
             ({"learning-rate": {"loguniform": [0, 0.1]}}, ["--val-split", "100"],
              "loguniform takes [low, high], numbers with 0 < low < high"),
             ({"learning-rate": {"choice": [-1]}}, ["--val-split", "100"],
              "learning-rate = -1: argument --learning-rate: must be a positive number"),
             ({"threads": {"choice": [1, 2]}}, ["--val-split", "100"],
              "'threads' is set by the sweep for each trial"),
             ({"learning-rate": {"choice": [0.1]}}, ["--nb-epochs", "2"],
              "must include --val-split"),
             ({"learning-rate": {"choice": [0.1]}}, ["--val-split", "100", "--learning-rate", "1"],
              "--learning-rate is both swept (SPACE.json) and fixed")]
    for content, flags, message in cases:
        space.write_text(json.dumps(content))
        with pytest.raises(SweepError, match=re.escape(message)):
            check_flags(flags, read_space(space), tmp_path)
    # the command line: one error line, exit 2, nothing started or written
    space.write_text(json.dumps({"learning-rate": {"choice": [-1]}}))
    proc = run(SWEEP, space, "--trials", 2, "--", "--val-split", 100, timeout=60)
    assert proc.returncode == 2 and "error: learning-rate = -1: argument --learning-rate" \
        in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    space.write_text(json.dumps({"learning-rate": {"choice": [0.1]}}))
    proc = run(SWEEP, space, "--trials", 2, "--storage", "s3://bucket/sweeps", "--",
               "--val-split", 100, timeout=60)
    assert proc.returncode == 2 and "URIs such as s3:// are not supported" in proc.stderr
    assert not (tmp_path / "sweeps").exists()


def test_sweep_flags_become_train_words_with_absolute_paths(tmp_path):
    from nnjit.sweep import Dimension, check_flags, flag_arguments

    assert flag_arguments({"learning-rate": 0.1, "nesterov": True, "normalize": False,
                           "image-size": [8, 8], "model": "cnn"}) == \
        ["--learning-rate", "0.1", "--nesterov", "--image-size", "8", "8", "--model", "cnn"]
    (tmp_path / "d.npz").write_bytes(b"")
    fixed, args = check_flags(["--dataset=d.npz", "--val-split", "0.1"],
                              [Dimension("nb-epochs", "randint", (1, 4))], tmp_path)
    assert fixed == ["--dataset", str(tmp_path / "d.npz"), "--val-split", "0.1",
                     "--train-data-dir", str(tmp_path / "data")]
    assert Dimension("nb-epochs", "randint", (1, 4)).extremes() == [1, 3]


@pytest.fixture(scope="module")
def classified_folder(tmp_path_factory, mnist_test_set):
    """A checkpoint trained on 2,000 real MNIST images, and 3,000 other test images
    written as PNGs both in class folders and flat."""
    from PIL import Image

    root = tmp_path_factory.mktemp("ray_data")
    x, y = mnist_test_set
    for i in range(7000, 10000):
        for folder in (root / "classes" / str(y[i]), root / "flat"):
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(folder / f"{i}.png")
    proc = run(TRAIN, "--dataset", "mnist", "--train-data-dir", MNIST_DIR, "--split-test", 2000,
               "--nb-epochs", 1, "--quiet", "--checkpoint-folder", root / "ck", timeout=120)
    assert proc.returncode == 0, proc.stderr
    return root


def read_table(path):
    """A predictions table as a list of row dicts (CSV or Parquet), values as text."""
    if str(path).endswith(".csv"):
        return read_csv(path)
    import pyarrow.parquet as pq

    return [{k: str(v) for k, v in r.items()} for r in pq.read_table(path).to_pylist()]


@pytest.mark.parametrize("layout, out", [("classes", "results.csv"), ("flat", "results.parquet")])
def test_ray_data_classifies_a_folder_as_infer_does_in_one_process(classified_folder, tmp_path,
                                                                   ray_address, mnist_test_set,
                                                                   layout, out):
    ckpt, folder = classified_folder / "ck" / "latest.json", classified_folder / layout
    one = run(INFER, ckpt, "--data", folder, "--out", tmp_path / f"one-{out}", timeout=120)
    assert one.returncode == 0, one.stderr
    on_ray = run(INFER, ckpt, "--data", folder, "--ray", "--address", ray_address,
                 "--out", tmp_path / out)
    assert on_ray.returncode == 0, on_ray.stdout[-2000:] + on_ray.stderr[-3000:]
    table, one_table = read_table(tmp_path / out), read_table(tmp_path / f"one-{out}")
    x, y = mnist_test_set
    assert len(table) == 3000
    expected_columns = ["path", *(["label"] if layout == "classes" else []), "predicted",
                        "probability", *(f"p_{k}" for k in range(10))]
    assert list(table[0]) == expected_columns == list(one_table[0])
    # the same rows in the same order, the same predicted classes (and labels)
    for column in ("path", "predicted", *(["label"] if layout == "classes" else [])):
        assert [r[column] for r in table] == [r[column] for r in one_table], column
    # probabilities to float32 rounding: OpenBLAS's small-matrix GEMM (the Dense
    # layer's) computes a GEMM's last 1-3 rows by another path than the groups of 4
    # before them, and Ray's batches need not end where infer's do
    probs, one_probs = ([[float(r[f"p_{k}"]) for k in range(10)] for r in t]
                        for t in (table, one_table))
    np.testing.assert_allclose(probs, one_probs, rtol=0, atol=1e-6)
    index = [int(os.path.basename(r["path"])[:-4]) for r in table]
    assert sorted(index) == list(range(7000, 10000))
    predicted = np.array([int(r["predicted"]) for r in table])
    assert (predicted == y[index]).mean() > 0.9
    if layout == "classes":
        assert [int(r["label"]) for r in table] == list(y[index])
        assert "accuracy" in on_ray.stdout and "confusion matrix" in on_ray.stdout
    probs = np.array(probs)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (probs.argmax(axis=1) == predicted).all()
    np.testing.assert_array_equal(probs.max(axis=1), [float(r["probability"]) for r in table])


def test_infer_out_refuses_what_it_cannot_write(classified_folder, tmp_path):
    ckpt = classified_folder / "ck" / "latest.json"
    for flags, message in [(["--data", classified_folder / "flat", "--out", "r.txt"],
                            "must end in .csv or .parquet"),
                           (["--data", classified_folder / "flat", "--ray"], "--ray writes a table"),
                           (["--idx", "a", "b", "--out", "r.csv"], "--out needs --data FOLDER"),
                           (["--data", classified_folder / "flat", "--out", "no/such/r.csv"],
                            "does not exist")]:
        proc = run(INFER, ckpt, *flags, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, (flags, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_a_sweep_interrupted_and_resumed_keeps_the_best_trial_by_validation(
        tmp_path, ray_address, mnist_test_set):
    import signal
    import time

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning-rate": {"loguniform": [0.01, 0.1]},
                                 "model": {"choice": ["cnn", "cnn-bn"]}}))
    flags = [a if a != "2" else "4" for a in TRAIN_FLAGS]  # 4 epochs, none stopped by ASHA
    cmd = [sys.executable, SWEEP, str(space), "--trials", "4", "--storage", str(tmp_path / "s"),
           "--address", ray_address, "--grace-period", "4", "--", *flags]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120

    def reported(column="epoch"):
        """Each trial's reports so far (Tune's progress.csv), by its folder's name."""
        return {p.parent.name: [float(r[column]) for r in read_csv(p)]
                for p in (tmp_path / "s" / "sweep").glob("*/progress.csv") if p.stat().st_size}

    # Ctrl-C once a trial's second epoch has been taken in by Tune: its first
    # checkpoint is then in the experiment's state for certain (one reported just
    # before the Ctrl-C may not be, and that trial would start that epoch again)
    while not [t for t, epochs in reported().items() if len(epochs) >= 2]:
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment's state and stops
    out = first.communicate(timeout=120)[0]
    before = reported()
    assert first.returncode == 130 and "run the same command again to resume" in out, out[-3000:]
    interrupted = [t for t, epochs in before.items() if 2 <= len(epochs) < 4]
    assert interrupted, before  # (the Ctrl-C came too late to interrupt any trial)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = reported()
    for trial in interrupted:  # continued from its checkpoint, not from its first epoch
        assert after[trial][:len(before[trial])] == before[trial] == list(
            range(1, len(before[trial]) + 1))
        assert after[trial].count(1) == 1 and after[trial][-1] == 4, after[trial]
    for trial, epochs in before.items():
        if epochs[-1:] == [4]:  # finished before the Ctrl-C: not run again
            assert after[trial] == epochs

    rows = read_csv(tmp_path / "s" / "trials.csv")
    assert list(rows[0]) == ["trial_id", "learning-rate", "model", "val_accuracy", "status"]
    assert len({r["trial_id"] for r in rows}) == 4 and {r["status"] for r in rows} == {"done"}
    accuracies = reported("val_accuracy")
    for row in rows:  # each trial's best epoch, as its reports to Tune say
        (folder,) = [t for t in accuracies if f"_{row['trial_id']}_" in t]
        assert float(row["val_accuracy"]) == max(accuracies[folder])
    best = max(rows, key=lambda r: float(r["val_accuracy"]))

    from nnjit.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "s" / "best.json")
    meta, model = ckpt.metadata, ckpt.model
    # the best trial's best epoch, trained with the flags it was sampled with
    assert meta["val_accuracy"] == float(best["val_accuracy"])
    assert meta["learning_rate"] == float(best["learning-rate"])
    assert meta["model_spec"] == best["model"]
    assert meta["val_split"] == 500 and meta["split_test"] == 2000
    x, y = mnist_test_set
    predictions = model.predict(x[2000:3000, None] / np.float32(255)).argmax(axis=1)
    assert (predictions == y[2000:3000]).mean() > 0.8
    assert "best: trial " + best["trial_id"] in second.stdout


def test_ray_infer_names_an_unreadable_image_and_writes_nothing(classified_folder, tmp_path,
                                                                 ray_address):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(7000, 7040):
        (folder / f"{i}.png").write_bytes((classified_folder / "flat" / f"{i}.png").read_bytes())
    (folder / "7020.png").write_bytes(b"not a picture")
    proc = run(INFER, classified_folder / "ck" / "latest.json", "--data", folder, "--ray",
               "--address", ray_address, "--out", tmp_path / "out.csv")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {folder / '7020.png'}: not a readable image" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no table, no temp file


def test_a_diverged_trial_ends_without_retries(tmp_path, ray_address, mnist_test_set):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning-rate": {"choice": [1e30]}}))  # nan in the first epoch
    proc = run(SWEEP, space, "--trials", 1, "--max-failures", 2, "--storage", tmp_path / "s",
               "--address", ray_address, "--", *TRAIN_FLAGS)
    # it would diverge again from its checkpoint: it ends as stopped, where an error
    # would be retried twice and end as failed
    assert [r["status"] for r in read_csv(tmp_path / "s" / "trials.csv")] == ["stopped"], \
        proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 1 and "error: no trial finished an epoch" in proc.stderr
    assert not (tmp_path / "s" / "best.json").exists()
