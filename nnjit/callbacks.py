"""Callbacks for ``Model.fit``, with Keras's names, arguments and rules.

A callback sees the run through six hooks (``on_train_begin/end``,
``on_epoch_begin/end``, ``on_batch_begin/end``) and acts on it through the
model: ``model.stop_training = True`` ends the run after the current batch,
``model.optimizer.lr`` is the learning rate of the next step. Epochs count
from 0 in the hooks (Keras's convention; printed from 1). Epoch logs hold
``loss`` and ``accuracy`` (the epoch's training figures), ``val_loss`` and
``val_accuracy`` with validation data, ``lr``, and whatever a callback
before added (``train.py`` adds ``test_loss`` and ``test_accuracy``); batch
logs hold the batch's ``loss``, the epoch's running ``accuracy`` so far and
``lr``.
"""
from __future__ import annotations

import csv
import math
import os
import time
import warnings

import numpy as np



class Callback:
    """Base class: every hook does nothing. ``self.model`` and ``self.params``
    (``epochs``, ``steps`` per epoch, ``batch_size``, ``samples``, ``verbose``,
    ``input_shape`` of one sample, ``rank``: 0 but on the other processes of a
    data-parallel run, where the callbacks that write files write nothing)
    are set by ``fit`` before ``on_train_begin``; ``self.epoch_result`` (the
    epoch's :class:`~nnjit.trainer.EpochResult`: seconds, images, optimizer
    steps) before each ``on_epoch_end``."""

    model = None
    params: dict = {}
    epoch_result = None
    #: True for callbacks that set the learning rate per epoch: they cannot be
    #: combined with a per-step ``lr_schedule`` (which would overwrite them).
    sets_learning_rate = False

    def set_model(self, model) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = params

    def on_train_begin(self, logs=None): ...

    def on_train_end(self, logs=None): ...

    def on_epoch_begin(self, epoch: int, logs=None): ...

    def on_epoch_end(self, epoch: int, logs=None): ...

    def on_batch_begin(self, batch: int, logs=None): ...

    def on_batch_end(self, batch: int, logs=None): ...


class CallbackList:
    """Calls each hook on every callback, in order (so a callback sees what the
    ones before it wrote into ``logs``)."""

    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        for c in self.callbacks:
            if not isinstance(c, Callback):
                raise TypeError(f"callbacks must be nnjit.callbacks.Callback instances, "
                                f"got {type(c).__name__}")
            c.set_model(model)
            c.set_params(params)

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args):
            for c in self.callbacks:
                getattr(c, hook)(*args)
        return call


class History(Callback):
    """What ``fit`` returns: ``history`` maps each epoch-log key (``loss``,
    ``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ...) to its per-epoch
    list; ``epoch`` lists the epochs done (from 0). ``interrupted`` is
    (epoch, batches done in it) when Ctrl-C ended the run inside an epoch,
    otherwise None."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.interrupted: tuple[int, int] | None = None

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


def _monitor_op(monitor: str, mode: str):
    """np.less for quantities to minimise, np.greater to maximise ("auto": the
    accuracies are maximised, the rest minimised, as Keras infers)."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        mode = "max" if "acc" in monitor else "min"
    return np.less if mode == "min" else np.greater


def _monitored(logs, monitor, who):
    value = (logs or {}).get(monitor)
    if value is None:
        warnings.warn(f"{who} monitors {monitor!r}, which the logs do not hold (they hold "
                      f"{', '.join(logs or {}) or 'nothing'})", stacklevel=3)
    return value


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs (Keras's rule: epochs before ``start_from_epoch`` are
    not watched; with ``baseline``, only improving on it resets the wait).
    With ``restore_best_weights``, the run ends with the weights (parameters
    and buffers) of the best epoch watched."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        self.monitor, self.patience, self.verbose = monitor, patience, verbose
        self.baseline, self.restore_best_weights = baseline, restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.monitor_op = _monitor_op(monitor, mode)
        self.min_delta = abs(min_delta) * (-1 if self.monitor_op is np.less else 1)
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best = math.inf if self.monitor_op is np.less else -math.inf
        self.best_weights = None

    def _improves(self, value, reference) -> bool:
        return bool(self.monitor_op(value - self.min_delta, reference))

    def on_epoch_end(self, epoch, logs=None):
        current = _monitored(logs, self.monitor, "EarlyStopping")
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if self._improves(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` (not below ``min_lr``) when
    ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs; then wait ``cooldown`` epochs before counting again (Keras's rule)."""

    sets_learning_rate = True

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        if not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau needs 0 < factor < 1, got {factor}")
        self.monitor, self.factor, self.patience, self.verbose = monitor, factor, patience, verbose
        self.min_delta, self.cooldown, self.min_lr = min_delta, cooldown, min_lr
        self.monitor_op = _monitor_op(monitor, mode)
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.monitor_op is np.less else -math.inf
        self.wait = self.cooldown_counter = 0

    def _improves(self, value) -> bool:
        shifted = self.best - self.min_delta if self.monitor_op is np.less else \
            self.best + self.min_delta
        return bool(self.monitor_op(value, shifted))

    def on_epoch_end(self, epoch, logs=None):
        current = _monitored(logs, self.monitor, "ReduceLROnPlateau")
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improves(current):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = self.model.optimizer.lr
                if old > np.float32(self.min_lr):
                    self.model.optimizer.lr = max(old * self.factor, self.min_lr)
                    if self.verbose:
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate "
                              f"to {self.model.optimizer.lr}.")
                    self.cooldown_counter, self.wait = self.cooldown, 0


class LearningRateScheduler(Callback):
    """At the start of each epoch, set the learning rate to ``schedule(epoch, lr)``
    (epoch from 0, lr the current rate)."""

    sets_learning_rate = True

    def __init__(self, schedule, verbose=0):
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        lr = float(self.schedule(epoch, self.model.optimizer.lr))
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"LearningRateScheduler: the schedule returned {lr} for epoch "
                             f"{epoch}; a learning rate must be a positive number")
        self.model.optimizer.lr = lr
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.")


class TerminateOnNaN(Callback):
    """End the run quietly when a batch's loss is nan or inf (that step is not
    applied): ``fit`` returns the History instead of raising
    :class:`~nnjit.errors.TrainingDiverged`."""

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: invalid loss, terminating training")
            self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback from plain functions: ``on_epoch_begin(epoch, logs)``,
    ``on_epoch_end(epoch, logs)``, ``on_batch_begin(batch, logs)``,
    ``on_batch_end(batch, logs)``, ``on_train_begin(logs)``, ``on_train_end(logs)``."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_batch_begin=None,
                 on_batch_end=None, on_train_begin=None, on_train_end=None):
        for name, fn in (("on_epoch_begin", on_epoch_begin), ("on_epoch_end", on_epoch_end),
                         ("on_batch_begin", on_batch_begin), ("on_batch_end", on_batch_end),
                         ("on_train_begin", on_train_begin), ("on_train_end", on_train_end)):
            if fn is not None:
                setattr(self, name, fn)


class CSVLogger(Callback):
    """One row per epoch: ``epoch`` (from 0) then the logs' keys in sorted order
    (Keras's layout), flushed as written; ``append`` continues an existing file."""

    def __init__(self, filename, separator=",", append=False):
        self.filename, self.separator, self.append = os.fspath(filename), separator, append
        self._file = self._writer = self._keys = None

    def on_train_begin(self, logs=None):
        if self.params.get("rank", 0):
            return
        exists = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename)
        if exists:
            with open(self.filename, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f, delimiter=self.separator), None)
            self._keys = header[1:] if header else None
        self._file = open(self.filename, "a" if exists else "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, delimiter=self.separator)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._file is None:
            return
        if self._keys is None:
            self._keys = sorted(logs)
            self._writer.writerow(["epoch", *self._keys])
        self._writer.writerow([epoch, *(logs.get(k, "") for k in self._keys)])
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None


class ModelCheckpoint(Callback):
    """Save the model (and its optimizer's state, so a run can resume) as an nnjit
    JSON checkpoint at the end of each epoch, atomically, with the epoch, the
    logs and the input shape as metadata (``nnjit infer`` reads it). ``filepath`` may hold
    format fields: ``{epoch}`` (from 1, as Keras names files) and any log key,
    e.g. ``"ckpt-{epoch:02d}-{val_loss:.3f}.json"``. With ``save_best_only``,
    only when ``monitor`` improved on the best so far."""

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 mode="auto"):
        self.filepath, self.monitor, self.verbose = os.fspath(filepath), monitor, verbose
        self.save_best_only = save_best_only
        self.monitor_op = _monitor_op(monitor, mode)
        self.best = math.inf if self.monitor_op is np.less else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        from .checkpoint import save_checkpoint

        logs = logs or {}
        if self.params.get("rank", 0):
            return
        path = self.filepath.format(epoch=epoch + 1, **logs)
        if self.save_best_only:
            current = _monitored(logs, self.monitor, "ModelCheckpoint")
            if current is None or not self.monitor_op(current, self.best):
                return
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best} to "
                      f"{current}, saving the model to {path}")
            self.best = current
        elif self.verbose:
            print(f"Epoch {epoch + 1}: saving the model to {path}")
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        shape = self.params.get("input_shape")
        save_checkpoint(self.model, path, getattr(self.model, "optimizer", None),
                        epoch=epoch + 1, **({"input_shape": list(shape)} if shape else {}),
                        **{k: float(v) for k, v in logs.items()})


class TensorBoard(Callback):
    """Scalars for TensorBoard (``tensorboard --logdir LOG_DIR``), in Keras's
    layout: ``LOG_DIR/train`` gets ``epoch_loss``, ``epoch_accuracy`` and
    ``epoch_learning_rate`` per epoch, ``LOG_DIR/validation`` the validation
    figures under the same names (and ``test`` any test_ figures); with
    ``update_freq`` N, the train folder also gets ``batch_loss`` and
    ``batch_accuracy`` every N batches (step: optimizer steps). Written with
    TensorBoard's own event writer: ``pip install "nnjit[tensorboard]"``."""

    def __init__(self, log_dir="logs", update_freq="epoch"):
        try:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            raise ImportError('the TensorBoard callback needs the tensorboard package: pip '
                              'install "nnjit[tensorboard]"') from None
        if update_freq != "epoch" and (isinstance(update_freq, bool) or
                                       not isinstance(update_freq, int) or update_freq < 1):
            raise ValueError(f"update_freq must be 'epoch' or a whole number of batches >= 1, "
                             f"got {update_freq!r}")
        self._writer_type = EventFileWriter
        self.log_dir, self.update_freq = os.fspath(log_dir), update_freq
        self._writers = {}

    def _write(self, folder: str, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        if self.params.get("rank", 0):
            return
        if folder not in self._writers:
            self._writers[folder] = self._writer_type(os.path.join(self.log_dir, folder))
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=tag, simple_value=float(value))])
        self._writers[folder].add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                                        summary=summary))

    def on_batch_end(self, batch, logs=None):
        if self.update_freq == "epoch" or (batch + 1) % self.update_freq:
            return
        step = self.model.optimizer.steps
        for key in ("loss", "accuracy"):
            if key in (logs or {}):
                self._write("train", f"batch_{key}", logs[key], step)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            folder, name = ("validation", key[4:]) if key.startswith("val_") else \
                ("test", key[5:]) if key.startswith("test_") else ("train", key)
            self._write(folder, "epoch_" + ("learning_rate" if name == "lr" else name), value,
                        epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


__all__ = ["Callback", "CallbackList", "History", "EarlyStopping", "ReduceLROnPlateau",
           "LearningRateScheduler", "TerminateOnNaN", "LambdaCallback", "CSVLogger",
           "ModelCheckpoint", "TensorBoard"]
