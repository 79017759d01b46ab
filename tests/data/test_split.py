"""--val-split: a seeded, stratified hold-out, and train.py's use of it."""
import csv
import json

import numpy as np
import pytest

from nnjit.data import DataError
from nnjit.data.split import stratified_split, validation_size
from test_train_script import run


@pytest.mark.parametrize("seed", [0, 7])
def test_split_is_disjoint_complete_stratified_and_reproducible(seed):
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, size=1003, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    train, val = stratified_split(labels, 200, seed)
    assert len(val) == 200 and len(train) == 803
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(1003))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # data order kept
    for cls in range(5):
        share = np.count_nonzero(labels == cls) * 200 / 1003
        assert abs(np.count_nonzero(labels[val] == cls) - share) < 1, cls
    again_train, again_val = stratified_split(labels, 200, seed)
    np.testing.assert_array_equal(val, again_val)
    np.testing.assert_array_equal(train, again_train)
    _, other_val = stratified_split(labels, 200, seed + 1)
    assert not np.array_equal(val, other_val)


def test_validation_size_takes_counts_and_fractions():
    assert validation_size(0.1, 1000) == 100
    assert validation_size(250, 1000) == 250
    for bad in (0, 1000, 5000, 1.5, -3, 0.0001, "10", True):
        with pytest.raises(DataError):
            validation_size(bad, 1000)


def test_train_script_validates_per_epoch_and_picks_best_json_on_validation(tmp_path):
    from synthetic import write_dataset

    write_dataset(tmp_path / "data", n_train=400, n_test=100)
    ck = tmp_path / "ck"
    proc = run("--train-data-dir", tmp_path / "data", "--model", "mlp", "--nb-epochs", 3,
               "--batch-size", 32, "--val-split", "0.25", "--checkpoint-folder", ck)
    assert proc.returncode == 0, proc.stderr
    with open(ck / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    steps = [int(r["step"]) for r in rows]
    assert steps == [10, 20, 30]  # 300 training images left, batches of 32
    val = [float(r["val_accuracy"]) for r in rows]
    best = json.loads((ck / "best.json").read_text())["metadata"]
    assert best["val_accuracy"] == pytest.approx(max(val), abs=1e-6)
    assert best["epoch"] == 1 + int(np.argmax(val))
    assert "val accuracy" in proc.stdout and "best validation accuracy" in proc.stdout


def test_val_split_that_leaves_nothing_to_train_is_one_clear_error(tmp_path):
    from synthetic import write_dataset

    write_dataset(tmp_path / "data", n_train=50, n_test=20)
    proc = run("--train-data-dir", tmp_path / "data", "--val-split", "50",
               "--checkpoint-folder", tmp_path / "ck")
    assert proc.returncode == 2 and "--val-split" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("--train-data-dir", tmp_path / "data", "--val-split", "2.5")
    assert proc.returncode == 2 and "--val-split" in proc.stderr

