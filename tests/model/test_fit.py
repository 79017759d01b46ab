"""Model.fit and the callbacks: against a hand-written loop, scripted metric sequences
worked out by hand from Keras's rules, and the real MNIST test set."""
import csv
import math
import os
import signal

import numpy as np
import pytest

import nnjit
from nnjit.callbacks import (Callback, CSVLogger, EarlyStopping, LambdaCallback,
                             LearningRateScheduler, ModelCheckpoint, ReduceLROnPlateau,
                             TerminateOnNaN)
from nnjit.data.datasets import Dataset


def small_model(seed=0):
    return nnjit.Sequential([nnjit.Conv2D(1, 4, 3), nnjit.BatchNorm2D(4), nnjit.ReLU(),
                             nnjit.MaxPool2D(2), nnjit.Flatten(), nnjit.Dropout(0.2),
                             nnjit.Dense(4 * 5 * 5, 3), nnjit.Softmax()], seed=seed)


def small_data(n=90, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 1, 12, 12), dtype=np.uint8), rng.integers(0, 3, n)


def test_fit_equals_a_hand_written_loop():
    x, y = small_data()
    model = small_model()
    history = model.fit(x, y, epochs=2, batch_size=16, seed=7, verbose=0,
                        optimizer=nnjit.Momentum(model.parameters(), lr=0.05),
                        validation_split=0.2)

    by_hand = small_model()
    opt = nnjit.Momentum(by_hand.parameters(), lr=0.05)
    xf = x.astype(np.float32) * np.float32(1 / 255)  # how nnjit reads pixels
    train_x, train_y = xf[:72], y[:72]  # Keras's rule: the last 20% validate
    for epoch in (1, 2):
        order = np.random.default_rng([7, epoch]).permutation(72)
        for start in range(0, 72, 16):
            idx = order[start:start + 16]
            by_hand.forward(train_x[idx])
            by_hand.backward(train_y[idx])
            opt.step()
    for a, b in zip(model.get_weights(), by_hand.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert history.epoch == [0, 1]
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert all(len(v) == 2 for v in history.history.values())
    val_loss, val_accuracy = by_hand.evaluate(xf[72:], y[72:])
    assert history.history["val_loss"][-1] == pytest.approx(val_loss)
    assert history.history["val_accuracy"][-1] == pytest.approx(val_accuracy)


def test_fit_takes_datasets_floats_and_unshuffled_order():
    x, y = small_data()
    data = Dataset("toy", ("a", "b", "c"), x, y, None, None, "")
    a, b = small_model(), small_model()
    a.fit(data, epochs=1, batch_size=30, verbose=0)
    b.fit(x[:, 0].astype(np.float32) * np.float32(1 / 255), y, epochs=1, batch_size=30, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    # shuffle=False: batches in order, as a loop over slices does
    c, by_hand = small_model(), small_model()
    c.fit(x, y, epochs=1, batch_size=30, shuffle=False, verbose=0, optimizer="sgd")
    opt = nnjit.SGD(by_hand.parameters(), lr=0.01)
    for start in range(0, 90, 30):
        by_hand.forward(x[start:start + 30].astype(np.float32) * np.float32(1 / 255))
        by_hand.backward(y[start:start + 30])
        opt.step()
    for wc, wh in zip(c.get_weights(), by_hand.get_weights()):
        np.testing.assert_array_equal(wc, wh)
    history = c.fit(x, y, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "lr"}


@pytest.mark.parametrize("kwargs, message", [
    ({"y": np.zeros(5, int)}, "one per image"),
    ({"y": np.zeros(90)}, "integer class labels"),
    ({"epochs": 0}, "epochs must be"),
    ({"validation_split": 1.5}, "validation_split"),
    ({"optimizer": "rmsprop"}, "optimizer must be"),
    ({"lr_schedule": "step"}, "lr_schedule must be"),
])
def test_fit_refuses_bad_arguments_clearly(kwargs, message):
    x, y = small_data()
    args = {"y": y, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        small_model().fit(x, verbose=0, **args)


def test_fit_takes_kerass_none_for_callbacks_and_batch_size_on_a_graph_model():
    x, y = small_data(n=64)
    inputs = nnjit.Input((1, 12, 12))
    h = nnjit.ReLU()(nnjit.Conv2D(1, 4, 3, padding=1)(inputs))
    h = nnjit.Add()([h, nnjit.Conv2D(1, 4, 1)(inputs)])
    outputs = nnjit.Softmax()(nnjit.Dense(4 * 12 * 12, 3)(nnjit.Flatten()(h)))
    model = nnjit.Model(inputs, outputs, seed=0)
    history = model.fit(x, y, epochs=2, batch_size=None, callbacks=None, verbose=0,
                        validation_data=(x[:16], y[:16].astype(np.uint8)))
    assert len(history.history["val_accuracy"]) == 2 and model.optimizer.steps == 4


def test_fit_refuses_an_optimizer_over_other_parameters():
    x, y = small_data()
    other = small_model()
    with pytest.raises(ValueError, match="other parameters"):
        small_model().fit(x, y, verbose=0, optimizer=nnjit.SGD(other.parameters(), lr=0.1))


class Scripted:
    """A stand-in model for driving a callback by hand: weights are the epoch's
    number, the optimizer only a learning rate."""

    def __init__(self, lr=0.1):
        self.stop_training = False
        self.optimizer = type("Opt", (), {"lr": lr})()
        self.weights = None
        self.now = None

    def get_weights(self):
        return [self.now]

    def set_weights(self, weights):
        self.weights = weights


def drive(callback, values, monitor="val_loss", model=None):
    """Feed ``values`` of ``monitor`` epoch by epoch; return (model, epochs run, lr after each)."""
    model = model or Scripted()
    callback.set_model(model)
    callback.on_train_begin()
    lrs = []
    for epoch, value in enumerate(values):
        model.now = epoch
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {monitor: value})
        lrs.append(model.optimizer.lr)
        if model.stop_training:
            break
    callback.on_train_end()
    return model, epoch + 1, lrs


def test_early_stopping_follows_keras_rules():
    # patience 2: epoch 1 is the best, epochs 2 and 3 do not improve -> stop after epoch 3
    model, ran, _ = drive(EarlyStopping(patience=2, restore_best_weights=True),
                          [1.0, 0.8, 0.9, 0.85, 0.5])
    assert ran == 4 and model.weights == [1]
    # min_delta: 0.79 is not better than 0.8 by more than 0.05
    _, ran, _ = drive(EarlyStopping(patience=1, min_delta=0.05), [0.8, 0.79, 0.7])
    assert ran == 2
    # accuracies are maximised in "auto" mode
    model, ran, _ = drive(EarlyStopping(monitor="val_accuracy", patience=1,
                                        restore_best_weights=True),
                          [0.5, 0.9, 0.8, 0.95], monitor="val_accuracy")
    assert ran == 3 and model.weights == [1]
    # a baseline not beaten: improving on the best no longer resets the wait
    _, ran, _ = drive(EarlyStopping(patience=2, baseline=0.1), [1.0, 1.1, 0.9, 1.2])
    assert ran == 2
    _, ran, _ = drive(EarlyStopping(patience=2), [1.0, 1.1, 0.9, 1.2])
    assert ran == 4
    # nothing watched before start_from_epoch
    _, ran, _ = drive(EarlyStopping(patience=1, start_from_epoch=3), [1, 2, 3, 4, 5, 6])
    assert ran == 5


def test_reduce_lr_on_plateau_cooldown_and_min_lr():
    # Worked out from Keras's rule: a reduction at epoch 1, the cooldown of 2 skips
    # epoch 2 and counts down at 3, and so on; 0.0125 is floored at min_lr 0.02, and
    # at 0.02 (not above min_lr) nothing changes any more.
    cb = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2, min_lr=0.02, min_delta=0)
    _, _, lrs = drive(cb, [1.0] * 8)
    assert lrs == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025, 0.02, 0.02, 0.02])
    # an improvement larger than min_delta resets the wait
    cb = ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.01)
    _, _, lrs = drive(cb, [1.0, 0.95, 0.945, 0.94])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05])
    with pytest.raises(ValueError, match="factor"):
        ReduceLROnPlateau(factor=1.5)


def test_every_hook_is_called_in_keras_order():
    x, y = small_data(n=40)
    calls = []

    class Recorder(Callback):
        def on_train_begin(self, logs=None):
            calls.append("train_begin")

        def on_epoch_begin(self, epoch, logs=None):
            calls.append(f"epoch_begin {epoch}")

        def on_batch_begin(self, batch, logs=None):
            calls.append(f"batch_begin {batch}")

        def on_batch_end(self, batch, logs=None):
            calls.append(f"batch_end {batch}")

        def on_epoch_end(self, epoch, logs=None):
            calls.append(f"epoch_end {epoch}")

        def on_train_end(self, logs=None):
            calls.append("train_end")

    small_model().fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[Recorder()])
    epoch = lambda e: [f"epoch_begin {e}"] + [f"batch_{w} {b}" for b in range(3)  # noqa: E731
                                              for w in ("begin", "end")] + [f"epoch_end {e}"]
    assert calls == ["train_begin"] + epoch(0) + epoch(1) + ["train_end"]


def test_learning_rate_scheduler_sets_each_epoch_and_refuses_a_step_schedule():
    x, y = small_data()
    model = small_model()
    history = model.fit(x, y, epochs=3, verbose=0, optimizer=nnjit.SGD(model.parameters(), lr=1),
                        callbacks=[LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5 ** epoch)])
    assert history.history["lr"] == pytest.approx([0.1, 0.05, 0.025])
    with pytest.raises(ValueError, match="lr_schedule"):
        model.fit(x, y, epochs=1, verbose=0, lr_schedule="cosine",
                  callbacks=[ReduceLROnPlateau()])


def test_restore_best_weights_restores_the_best_epoch_exactly():
    x, y = small_data(n=120)
    seen = {}
    model = small_model()
    record = LambdaCallback(on_epoch_end=lambda epoch, logs: seen.update(
        {epoch: (logs["val_loss"], model.get_weights())}))
    stop = EarlyStopping(patience=1, restore_best_weights=True)
    model.fit(x, y, epochs=6, batch_size=16, validation_split=0.25, verbose=0,
              callbacks=[record, stop], optimizer=nnjit.SGD(model.parameters(), lr=0.5))
    best = min(seen, key=lambda e: seen[e][0])
    assert len(seen) >= 2
    for a, b in zip(model.get_weights(), seen[best][1]):
        np.testing.assert_array_equal(a, b)


def test_a_nan_loss_raises_unless_terminate_on_nan_stops_the_run():
    x, y = small_data()
    x = x.astype(np.float32)
    x[5] = np.nan
    model = small_model()
    before = model.get_weights()
    with pytest.raises(nnjit.TrainingDiverged, match="nan or inf in epoch 1") as err:
        model.fit(x, y, epochs=2, batch_size=10, shuffle=False, verbose=0)
    assert err.value.epoch == 0 and err.value.batch == 0
    for a, b in zip(model.get_weights(), before):  # the bad step left nothing behind
        np.testing.assert_array_equal(a, b)
    history = model.fit(x, y, epochs=2, batch_size=10, shuffle=False, verbose=0,
                        callbacks=[TerminateOnNaN()])
    assert history.epoch == [] and all(np.isfinite(w).all() for w in model.get_weights())


def test_csv_logger_and_model_checkpoint(tmp_path):
    x, y = small_data(n=120)
    model = small_model()
    weights = {}
    path = str(tmp_path / "ckpt-{epoch:02d}.json")
    history = model.fit(
        x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0,
        callbacks=[LambdaCallback(on_epoch_end=lambda e, logs: weights.update(
                       {e: model.get_weights()})),
                   CSVLogger(tmp_path / "log.csv"),
                   ModelCheckpoint(path, monitor="val_accuracy", save_best_only=True)])
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "accuracy", "loss", "lr", "val_accuracy", "val_loss"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    assert [float(r[5]) for r in rows[1:]] == pytest.approx(history.history["val_loss"])
    # save_best_only: a file for each epoch that beat every one before it
    accs = history.history["val_accuracy"]
    improving = [e for e in range(3) if all(accs[e] > a for a in accs[:e])]
    saved = sorted(os.listdir(tmp_path))
    assert saved == sorted([f"ckpt-{e + 1:02d}.json" for e in improving] + ["log.csv"])
    last = improving[-1]
    ckpt = nnjit.load_checkpoint(tmp_path / f"ckpt-{last + 1:02d}.json")
    for a, b in zip(ckpt.model.get_weights(), weights[last]):
        np.testing.assert_array_equal(a, b)
    assert ckpt.metadata["epoch"] == last + 1 and ckpt.make_optimizer() is not None
    assert ckpt.input_shape() == (1, 12, 12)


def test_ctrl_c_stops_after_the_batch_and_returns_the_history():
    x, y = small_data(n=160)
    model = small_model()
    previous = signal.getsignal(signal.SIGINT)

    class Interrupt(Callback):
        def on_batch_end(self, batch, logs=None):
            if self.params and batch == 2 and not hasattr(self, "sent"):
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)

    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[Interrupt()],
                        interrupt_message="")
    assert history.interrupted == (0, 3) and history.epoch == []
    assert signal.getsignal(signal.SIGINT) is previous
    # it stopped where a run of three batches stops
    by_hand = small_model()
    by_hand.fit(x, y, epochs=1, batch_size=16, verbose=0,
                callbacks=[LambdaCallback(on_batch_end=lambda b, logs: b == 2 and setattr(
                    by_hand, "stop_training", True))])
    for a, b in zip(model.get_weights(), by_hand.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_resuming_with_initial_epoch_and_batch_repeats_the_uninterrupted_run():
    x, y = small_data(n=100)
    straight = small_model()
    straight.fit(x, y, epochs=2, batch_size=16, verbose=0, lr_schedule="cosine", seed=3,
                 augment="flip")

    first = small_model()
    first.fit(x, y, epochs=2, batch_size=16, verbose=0, lr_schedule="cosine", seed=3,
              augment="flip", callbacks=[LambdaCallback(
                  on_batch_end=lambda b, logs: b == 3 and setattr(first, "stop_training", True))])
    assert first.optimizer.steps == 4
    first.fit(x, y, epochs=2, batch_size=16, verbose=0, seed=3, augment="flip",
              lr_schedule=lambda step: nnjit.optim.cosine_lr(0.05, step, 2 * 7),
              initial_epoch=0, initial_batch=4)
    for a, b in zip(first.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fit_with_early_stopping_learns_real_mnist(mnist_test_set):
    images, labels = mnist_test_set
    model = nnjit.Sequential([nnjit.Conv2D(1, 16, 3), nnjit.ReLU(), nnjit.MaxPool2D(2),
                              nnjit.Flatten(), nnjit.Dense(16 * 13 * 13, 10), nnjit.Softmax()],
                             seed=0)
    history = model.fit(images[:8000], labels[:8000], epochs=3, batch_size=32,
                        validation_split=0.1, lr_schedule="cosine", verbose=0,
                        callbacks=[EarlyStopping(monitor="val_accuracy", patience=1,
                                                 restore_best_weights=True)])
    _, accuracy = model.evaluate(images[8000:].astype(np.float32)[:, None] / 255, labels[8000:])
    assert accuracy >= 0.96, f"test accuracy {accuracy:.4f}"
    assert max(history.history["val_accuracy"]) >= 0.95
    assert math.isfinite(history.history["loss"][-1])


def test_tensorboard_events_read_back_with_tensorboards_reader(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = small_data(n=120)
    model = small_model()
    history = model.fit(x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0,
                        callbacks=[nnjit.callbacks.TensorBoard(tmp_path / "logs", update_freq=2)])

    def scalars(folder, tag):
        acc = EventAccumulator(str(tmp_path / "logs" / folder))
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    for folder, prefix in (("train", ""), ("validation", "val_")):
        for name in ("loss", "accuracy"):
            got = scalars(folder, f"epoch_{name}")
            assert [s for s, _ in got] == [0, 1, 2]
            assert [v for _, v in got] == pytest.approx(history.history[prefix + name], rel=1e-6)
    assert [v for _, v in scalars("train", "epoch_learning_rate")] == pytest.approx([0.05] * 3)
    batches = scalars("train", "batch_loss")  # every 2nd of 6 batches per epoch
    assert [s for s, _ in batches] == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    with pytest.raises(ValueError, match="update_freq"):
        nnjit.callbacks.TensorBoard(tmp_path, update_freq=0)


def test_the_readme_fit_example_runs_as_written(rng):
    import re

    from conftest import ROOT

    text = (ROOT / "README.md").read_text()
    (example,) = re.findall(r"```python\n(import numpy as np\nimport nnjit\n.*?)```", text, re.S)
    y = rng.integers(0, 10, 96)
    x = (y[:, None, None] * 25 + rng.integers(0, 5, (96, 28, 28))).astype(np.uint8)
    namespace = {"x": x, "y": y, "x_new": x[:5].astype(np.float32)[:, None] / 255}
    exec(example, namespace)  # noqa: S102  (the project's own README)
    history = namespace["history"]
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert os.path.exists("best.json")  # ModelCheckpoint, in the test's own folder
    assert namespace["slow"].shape == (5, 10)
