"""scripts/train.py end to end, as a subprocess on small synthetic IDX data."""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from nnjit.checkpoint import load_checkpoint
from nnjit.trainer import CSV_COLUMNS
from one_process import run_in_one_process
from synthetic import write_dataset

TRAIN = str(ROOT / "scripts" / "train.py")


def run(*args, timeout=600, **kwargs):
    return subprocess.run([sys.executable, TRAIN, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    write_dataset(folder, n_train=512, n_test=128)
    return folder


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_runs_writes_csv_checkpoints_and_learns(tiny_data, tmp_path):
    ck = tmp_path / "ck"
    proc = run("--train-data-dir", tiny_data, "--model", "mlp", "--nb-epochs", 3,
               "--checkpoint-folder", ck, "--checkpoint-stride", 2, "--batch-size", 32)
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(ck / "loss.csv")
    assert rows[0] == list(CSV_COLUMNS)
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]
    assert [r[1] for r in rows[1:]] == ["16", "32", "48"]  # 512 / 32 steps per epoch
    assert float(rows[-1][4]) > 0.9, rows  # the blocks are easy to tell apart
    names = sorted(p.name for p in ck.glob("checkpoint-*.json"))
    assert names == ["checkpoint-e002-s0000032.json", "checkpoint-e003-s0000048.json"]
    latest = load_checkpoint(ck / "latest.json")
    assert latest.metadata["epoch"] == 3 and latest.metadata["dataset"] == "mnist"
    assert "epoch 3/3" in proc.stdout and "best test accuracy" in proc.stdout


def straight_and_resumed(common, first, total, tiny_data, tmp_path):
    """The latest checkpoints of a run of ``total`` epochs in one go (in tmp_path/a)
    and of one stopped after ``first`` and resumed up to ``total`` (tmp_path/b)."""
    straight = run(*common, "--nb-epochs", total, "--checkpoint-folder", tmp_path / "a")
    stopped = run(*common, "--nb-epochs", first, "--checkpoint-folder", tmp_path / "b")
    resumed = run("--resume", tmp_path / "b" / "latest.json", "--nb-epochs", total,
                  "--train-data-dir", tiny_data, "--checkpoint-folder", tmp_path / "b")
    for proc in (straight, stopped, resumed):
        assert proc.returncode == 0, proc.stderr
    return (load_checkpoint(tmp_path / "a" / "latest.json"),
            load_checkpoint(tmp_path / "b" / "latest.json"))


RESUME_ARGS = ["--model", "conv:4:3,relu,pool:2,dense:10,softmax", "--optimizer", "adam",
               "--learning-rate", "0.002", "--batch-size", 50]


@pytest.mark.parametrize("model", [None, "conv:4:3,relu,pool:2,dropout:0.3,dense:10,softmax",
                                   "conv:4:3,bn,relu,pool:2,dropout:0.3,dense:10,softmax"])
def test_two_epochs_then_two_more_equal_four_in_one_go(model, tiny_data, tmp_path):
    """Also with dropout (its mask generator's state travels in the checkpoint) and batch
    norm (its running statistics too, untouched by the start-up's warm-up steps)."""
    common = ["--train-data-dir", tiny_data, "--lr-schedule", "constant", *RESUME_ARGS]
    if model:
        common += ["--model", model]
    a, b = straight_and_resumed(common, 2, 4, tiny_data, tmp_path)
    assert b.metadata["epoch"] == 4 and b.optimizer_state["steps"] == a.optimizer_state["steps"]
    assert np.array_equal(a.model.flat.values, b.model.flat.values)
    for (name, x), (_, y) in zip(a.model.named_buffers(), b.model.named_buffers(), strict=True):
        assert np.array_equal(x, y), name
    assert len(read_csv(tmp_path / "b" / "loss.csv")) == 5  # header + 4 epochs, appended


def test_resuming_a_cosine_run_continues_its_schedule_exactly(tiny_data, tmp_path):
    straight = run("--train-data-dir", tiny_data, *RESUME_ARGS, "--nb-epochs", 4,
                   "--checkpoint-folder", tmp_path / "a")
    assert straight.returncode == 0, straight.stderr
    resumed = run("--resume", tmp_path / "a" / "checkpoint-e002-s0000022.json", "--nb-epochs", 4,
                  "--train-data-dir", tiny_data, "--checkpoint-folder", tmp_path / "b")
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "a" / "latest.json")
    b = load_checkpoint(tmp_path / "b" / "latest.json")
    assert np.array_equal(a.model.flat.values, b.model.flat.values)
    assert a.optimizer_state["hyperparameters"]["lr"] == b.optimizer_state["hyperparameters"]["lr"] < 1e-4


def test_ctrl_c_saves_a_loadable_checkpoint_and_valid_csv(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, n_train=30000, n_test=200)  # epochs of several seconds: SIGINT lands mid-epoch
    ck = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, TRAIN, "--train-data-dir", str(data), "--nb-epochs", "50",
                             "--checkpoint-folder", str(ck), "--model", "cnn"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (ck / "latest.json").exists():
        time.sleep(0.2)
    time.sleep(1.0)  # now mid-way through epoch 2
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in out.lower()
    saved = sorted(ck.glob("checkpoint-*-interrupted.json"))
    assert saved, out
    ckpt = load_checkpoint(saved[-1])
    assert ckpt.metadata["epoch"] == 1 and ckpt.metadata["batches_done"] > 0
    rows = read_csv(ck / "loss.csv")
    assert rows[0] == list(CSV_COLUMNS) and all(len(r) == len(CSV_COLUMNS) for r in rows)


def test_divergence_stops_with_a_learning_rate_hint(tiny_data, tmp_path):
    proc = run("--train-data-dir", tiny_data, "--model", "mlp", "--nb-epochs", 3,
               "--optimizer", "sgd", "--learning-rate", "1e30", "--checkpoint-folder", tmp_path)
    assert proc.returncode == 1
    assert "learning rate" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("checkpoint-*.json"))


def corrupt(folder):
    write_dataset(folder, 64, 32)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])


def mismatched(folder):
    write_dataset(folder, 64, 32)
    from nnjit.data import write_idx
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(31, np.uint8))


BAD_INPUTS = [
    (["--train-data-dir", "{tmp}/missing"], None, "does not exist"),
    (["--train-data-dir", "{tmp}/d"], corrupt, "truncated|corrupt"),
    (["--train-data-dir", "{tmp}/d"], mismatched, "32 images but .* 31 labels"),
    (["--batch-size", "0"], None, "must be positive"),
    (["--learning-rate", "-0.1"], None, "positive number"),
    (["--learning-rate", "0"], None, "positive number"),
    (["--model", "conv:8,relu"], None, "model spec"),
    (["--model", "dense:7,softmax"], None, "7"),
    (["--model", "conv:8:4:same,relu,dense:10"], None, 'padding="same" needs stride 1 and odd'),
    (["--model", "conv:8:3:2:same,dense:10"], None, 'padding="same" needs stride 1'),
    (["--weight-decay", "-1"], None, "must be a number >= 0"),
    (["--nesterov", "--optimizer", "adam"], None, "--nesterov needs --optimizer momentum"),
    (["--optimizer", "rmsprop"], None, "invalid choice"),
    (["--resume", "{tmp}/nope.json"], None, "cannot read"),
    (["--label-smoothing", "1"], None, "below 1"),
    (["--class-weights", "1,2"], None, "2 numbers for 10 classes"),
    (["--class-weights", "heavy"], None, "balanced"),
    (["--model", "res:8:0"], None, "stride"),
]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory, tiny_data):
    """Each of BAD_INPUTS run as a command line (in one child process, ``one_process``)."""
    runs = []
    for i, (args, setup, _) in enumerate(BAD_INPUTS):
        tmp = tmp_path_factory.mktemp(f"bad{i}")
        if setup:
            setup(tmp / "d")
        args = [a.format(tmp=tmp) for a in args]
        if "--train-data-dir" not in args:
            args += ["--train-data-dir", str(tiny_data)]
        runs.append(("train", [*args, "--checkpoint-folder", tmp / "ck", "--nb-epochs", 1]))
    return run_in_one_process(runs, timeout=300, cwd=tmp_path_factory.mktemp("cwd"))


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)), ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_gets_one_line_and_exit_2(bad_input_runs, case):
    import re

    proc, match = bad_input_runs[case], BAD_INPUTS[case][2]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(match, proc.stderr), proc.stderr


def test_plot_is_written(tiny_data, tmp_path):
    proc = run("--train-data-dir", tiny_data, "--model", "mlp", "--nb-epochs", 1,
               "--checkpoint-folder", tmp_path, "--plot", tmp_path / "curves.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_what_to_install(tiny_data, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('matplotlib is blocked here')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker))
    proc = run("--train-data-dir", tiny_data, "--model", "mlp", "--nb-epochs", 1,
               "--checkpoint-folder", tmp_path, "--plot", tmp_path / "curves.png", env=env)
    assert proc.returncode == 2 and "pip install 'nnjit[plot]'" in proc.stderr, proc.stderr


def test_help_explains_every_flag():
    out = run("--help").stdout
    for flag in ("--learning-rate", "--batch-size", "--nb-epochs", "--train-data-dir",
                 "--checkpoint-folder", "--checkpoint-stride", "--loss-csv-path", "--dataset",
                 "--model", "--optimizer", "--seed", "--threads", "--resume", "--quiet",
                 "--split-test", "--train-limit", "--plot"):
        assert flag in out


def test_default_recipe_reaches_98_percent_on_real_mnist(mnist_test_set, tmp_path):
    from conftest import MNIST_DIR
    proc = run("--dataset", "mnist", "--train-data-dir", MNIST_DIR, "--split-test", 8000,
               "--nb-epochs", 3, "--checkpoint-folder", tmp_path, "--quiet", timeout=900)
    assert proc.returncode == 0, proc.stderr
    accuracy = float(read_csv(tmp_path / "loss.csv")[-1][4])
    assert accuracy >= 0.98, f"test accuracy {accuracy:.4f}"


@pytest.mark.parametrize("flags,name,hyper", [
    (["--nesterov", "--weight-decay", "5e-4", "--lr-schedule", "onecycle"], "Momentum",
     {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
    (["--optimizer", "adamw", "--learning-rate", "0.01"], "AdamW", {"weight_decay": 0.01}),
    (["--optimizer", "sgd", "--weight-decay", "0.001"], "SGD", {"weight_decay": 0.001}),
])
def test_optimizer_flags_reach_the_optimizer_and_the_checkpoint(flags, name, hyper, tiny_data,
                                                                 tmp_path):
    ck = tmp_path / "ck"
    proc = run("--train-data-dir", tiny_data, "--model", "mlp", "--nb-epochs", 2,
               "--checkpoint-folder", ck, *flags)
    assert proc.returncode == 0, proc.stderr
    state = load_checkpoint(ck / "latest.json").optimizer_state
    assert state["name"] == name
    assert hyper.items() <= state["hyperparameters"].items()
    rows = read_csv(ck / "loss.csv")
    assert float(rows[-1][4]) > 0.9, rows  # still learns the easy blocks


def test_cnn_bn_preset_brings_its_recipe_and_flags_still_win(tiny_data, tmp_path):
    proc = run("--train-data-dir", tiny_data, "--model", "cnn-bn", "--nb-epochs", 1,
               "--checkpoint-folder", tmp_path / "a", "--train-limit", 256)
    assert proc.returncode == 0, proc.stderr
    meta = load_checkpoint(tmp_path / "a" / "latest.json")
    hyper = meta.optimizer_state["hyperparameters"]
    assert hyper["nesterov"] is True and hyper["weight_decay"] == 5e-4
    assert meta.metadata["batch_size"] == 64 and meta.metadata["lr_schedule"] == "onecycle"
    proc = run("--train-data-dir", tiny_data, "--model", "cnn-bn", "--nb-epochs", 1,
               "--optimizer", "adamw", "--batch-size", 32, "--checkpoint-folder", tmp_path / "b",
               "--train-limit", 256)
    assert proc.returncode == 0, proc.stderr
    meta = load_checkpoint(tmp_path / "b" / "latest.json")
    assert meta.optimizer_state["name"] == "AdamW" and meta.metadata["batch_size"] == 32


def test_resnet_mini_brings_its_recipe_and_none_turns_its_flips_off(tiny_data, tmp_path):
    proc = run("--train-data-dir", tiny_data, "--model", "resnet-mini", "--nb-epochs", 1,
               "--checkpoint-folder", tmp_path / "a", "--train-limit", 256, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "(--tta flip)" in proc.stdout
    meta = load_checkpoint(tmp_path / "a" / "latest.json")
    assert meta.metadata["augment"] == "flip" and meta.metadata["batch_size"] == 128
    assert meta.metadata["tta"] == "flip" and meta.metadata["learning_rate"] == 0.08
    assert meta.optimizer_state["hyperparameters"]["nesterov"] is True
    proc = run("--train-data-dir", tiny_data, "--model", "resnet-mini", "--nb-epochs", 1,
               "--augment", "none", "--tta", "none", "--checkpoint-folder", tmp_path / "b",
               "--train-limit", 256, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "--tta" not in proc.stdout
    meta = load_checkpoint(tmp_path / "b" / "latest.json").metadata
    assert meta["augment"] == "none" and meta["tta"] == "none"


def test_test_time_flips_give_the_test_figures_and_stay_on_when_resumed(tiny_data, tmp_path):
    from nnjit.data import read_idx, to_float
    from nnjit.data.datasets import SPLIT_FILES

    images, labels = (read_idx(tiny_data / (stem + ".gz")) for stem in SPLIT_FILES["test"])
    x = to_float(images)
    common = ["--train-data-dir", tiny_data, "--model", "conv:4:3,relu,pool:2,dense:10,softmax",
              "--batch-size", 64, "--checkpoint-folder", tmp_path / "ck", "--quiet"]
    proc = run(*common, "--nb-epochs", 1, "--tta", "flip")
    assert proc.returncode == 0, proc.stderr
    proc = run("--resume", tmp_path / "ck" / "latest.json", "--nb-epochs", 2, "--quiet",
               "--checkpoint-folder", tmp_path / "ck", "--train-data-dir", tiny_data)
    assert proc.returncode == 0, proc.stderr
    for epoch in (1, 2):
        (path,) = (tmp_path / "ck").glob(f"checkpoint-e00{epoch}-*.json")
        ckpt = load_checkpoint(path)
        assert ckpt.metadata["tta"] == "flip"
        probs = (ckpt.model.predict(x) + ckpt.model.predict(x[..., ::-1].copy())) / 2
        assert ckpt.metadata["test_accuracy"] == np.mean(probs.argmax(1) == labels)
        row = read_csv(tmp_path / "ck" / "loss.csv")[epoch]
        assert float(row[CSV_COLUMNS.index("test_loss")]) == pytest.approx(
            -np.mean(np.log(probs[np.arange(len(labels)), labels])), rel=1e-4)


def test_the_default_data_folder_is_made_where_the_command_runs(tmp_path):
    """Run from a folder without data/ (the tests run in their temp dir): the
    default --train-data-dir is made there (downloads go into it), and a dataset
    missing offline is one line saying where it looked, not that data/ is absent."""
    proc = run("--dataset", "mnist", "--no-download", "--checkpoint-folder", tmp_path / "ck")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "does not exist" not in proc.stderr
    assert "files not found in data" in proc.stderr and "downloads are off" in proc.stderr
    assert (tmp_path / "data").is_dir()


def test_a_batch_larger_than_the_training_set_trains_on_all_of_it(tiny_data, tmp_path):
    """The memory check counts the batches a run makes, not the flag's value."""
    proc = run("--train-data-dir", tiny_data, "--checkpoint-folder", tmp_path / "ck", "--model",
               "mlp", "--batch-size", 10**12, "--nb-epochs", 1, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ck" / "latest.json").is_file()


def test_a_residual_network_trains_with_smoothing_and_class_weights_and_resumes(tiny_data,
                                                                               tmp_path):
    """A spec with residual blocks trains from the command line with the loss
    options; they travel in the checkpoint, and a resumed run continues exactly."""
    common = ["--train-data-dir", tiny_data, "--model",
              "conv:4:3:same,bn,relu,res:4,res:8:2,gap,dense:10,softmax", "--batch-size", 64,
              "--label-smoothing", 0.1, "--class-weights", "balanced", "--lr-schedule",
              "constant"]
    a, b = straight_and_resumed(common, 1, 2, tiny_data, tmp_path)
    assert a.metadata["label_smoothing"] == 0.1 and a.metadata["class_weights"] == "balanced"
    assert type(a.model).__name__ == "Model"
    assert np.array_equal(a.model.flat.values, b.model.flat.values)
