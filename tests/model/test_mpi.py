"""Data-parallel training over MPI: mpiexec -n 2, one thread per rank, against the same
training in one process."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from synthetic import write_dataset

MPIEXEC = shutil.which("mpiexec")


@pytest.fixture(autouse=True)
def mpi_installed():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        missing = "mpi4py"
    else:
        missing = None if MPIEXEC else "mpiexec"
    if missing:
        message = f'{missing} is not installed (pip install "nnjit[mpi]")'
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


SCRIPT = """
import json, sys
import numpy as np
import nnjit
from nnjit.cli import run
from nnjit.distributed import mpi_group

nnjit.set_num_threads(1)
mode = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (200, 1, 12, 12), dtype=np.uint8)
y = rng.integers(0, 3, 200)
model = nnjit.Sequential([nnjit.Conv2D(1, 4, 3), nnjit.ReLU(), nnjit.MaxPool2D(2),
                          nnjit.Flatten(), nnjit.Dense(4 * 5 * 5, 3), nnjit.Softmax()], seed=0)
group = mpi_group()
rank = group.rank if group else 0


def main():
    loss = None
    if mode == "step":  # one SGD step at lr 1 on one global batch: the update is the gradient
        before = model.flat.values.copy()
        model.fit(x[:30], y[:30], epochs=1, batch_size=30, shuffle=False, verbose=0,
                  optimizer=nnjit.SGD(model.parameters(), lr=1.0), distributed="mpi")
        values = (before - model.flat.values).tolist()
    else:
        def fail_on_rank_1(batch, logs):
            if mode == "raise" and rank == 1 and batch == 2:
                raise RuntimeError("rank 1 fails on purpose")
        history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, distributed="mpi",
                            augment="crop:1", lr_schedule="cosine",
                            callbacks=[nnjit.callbacks.LambdaCallback(
                                on_batch_end=fail_on_rank_1)])
        values, loss = model.flat.values.tolist(), history.history["loss"]
    with open(f"{sys.argv[2]}/rank{rank}.json", "w") as f:  # ranks' stdout lines may interleave
        json.dump({"rank": rank, "values": values, "loss": loss}, f)


run(main)
"""


def run_script(mode, ranks, folder, timeout=300):
    out = folder / f"{mode}-{ranks}"
    out.mkdir()
    cmd = [sys.executable, "-c", SCRIPT, mode, str(out)]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks)] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return proc, [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def test_two_ranks_hold_identical_parameters_equal_to_one_process(tmp_path):
    proc, (r0, r1) = run_script("train", 2, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert r0["values"] == r1["values"] and r0["loss"] == r1["loss"]  # bit-identical
    proc, (alone,) = run_script("train", 1, tmp_path)
    assert proc.returncode == 0, proc.stderr
    # The same global batches, augmentation and steps; the gradient is summed from two
    # half-batch means instead of one mean, so float32 rounding differs (~1e-7 a step,
    # grown over 14 steps).
    np.testing.assert_allclose(r0["values"], alone["values"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r0["loss"], alone["loss"], rtol=1e-4)


def test_the_summed_gradient_is_the_shares_gradients_weighed_by_size(tmp_path):
    import nnjit

    proc, (r0, r1) = run_script("step", 2, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert r0["values"] == r1["values"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 1, 12, 12), dtype=np.uint8)[:30].astype(np.float32) / 255
    y = rng.integers(0, 3, 200)[:30]
    grads = []
    for share in (slice(0, 15), slice(15, 30)):  # rank 0's and rank 1's images
        model = nnjit.Sequential([nnjit.Conv2D(1, 4, 3), nnjit.ReLU(), nnjit.MaxPool2D(2),
                                  nnjit.Flatten(), nnjit.Dense(4 * 5 * 5, 3), nnjit.Softmax()],
                                 seed=0)
        model.forward(x[share])
        model.backward(y[share])
        grads.append(model.flat.grads.astype(np.float64))
    np.testing.assert_allclose(r0["values"], 0.5 * grads[0] + 0.5 * grads[1], rtol=1e-4,
                               atol=1e-6)


def test_a_rank_that_raises_ends_the_job_within_seconds(tmp_path):
    proc, _ = run_script("raise", 2, tmp_path, timeout=120)  # its peer would otherwise wait
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr


def test_train_script_under_mpiexec_writes_once_and_resumes_exactly(tmp_path):
    data = tmp_path / "d"
    write_dataset(data, n_train=300, n_test=60)
    train = [MPIEXEC, "-n", "2", sys.executable, str(ROOT / "scripts" / "train.py"),
             "--train-data-dir", str(data), "--model", "mlp", "--batch-size", "25",
             "--lr-schedule", "constant"]  # a run of 1 epoch, resumed to 2: the same rates
    proc = subprocess.run(train + ["--nb-epochs", "2", "--checkpoint-folder", str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("done in") == 1  # rank 0 alone reports
    assert proc.stdout.count("epoch 2/2  train loss") == 1
    assert "threads: 1" in proc.stdout  # two ranks share the two cores
    straight = nnjit_values(tmp_path / "a" / "latest.json")
    proc = subprocess.run(train + ["--nb-epochs", "1", "--checkpoint-folder", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(train + ["--nb-epochs", "2", "--checkpoint-folder", str(tmp_path / "b"),
                                   "--resume", str(tmp_path / "b" / "latest.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(nnjit_values(tmp_path / "b" / "latest.json"), straight)


def nnjit_values(path):
    from nnjit.checkpoint import load_checkpoint

    return load_checkpoint(path).model.flat.values.copy()
