"""``Model.fit``: epochs of training with validation, callbacks, progress and Ctrl-C, Keras's way.

The batches themselves run in :class:`~nnjit.trainer.Trainer` (one epoch of
shuffled mini-batches); this module is the loop around it: it prepares the
data, evaluates validation data after each epoch, drives the callbacks
(``nnjit.callbacks``) and turns Ctrl-C into a clean stop. ``nnjit train``
is a driver over the same function.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time

import numpy as np

from .augment import check_tta
from .callbacks import Callback, CallbackList, History
from .data.preprocess import Preprocessing
from .data.streaming import StreamingDataset
from .errors import DataError, TrainingDiverged
from .optim import Adam, AdamW, Momentum, Optimizer, SGD, cosine_lr, one_cycle_lr
from .trainer import Trainer

#: lr_schedule names: step -> learning rate, from the optimizer's rate at the start of fit.
LR_SCHEDULES = {"constant": None, "cosine": cosine_lr, "onecycle": one_cycle_lr}
#: optimizer names fit accepts, with the learning rate each gets.
OPTIMIZERS = {"sgd": (SGD, {"lr": 0.01}), "momentum": (Momentum, {"lr": 0.05, "momentum": 0.9}),
              "adam": (Adam, {"lr": 1e-3}), "adamw": (AdamW, {"lr": 1e-3})}


def training_arrays(x, y, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Network input and labels from what ``fit`` accepts.

    x: an array (N, C, H, W) or (N, H, W), uint8 pixels (divided by 255, as
    ``train.py`` does) or float; or an nnjit dataset (``nnjit.data.load_dataset``:
    its training part, with y None); or a streaming dataset
    (``nnjit.data.streaming``, y None), returned as it is. y: int (N,).
    Returns (x as ``dtype`` (N, C, H, W) or the stream, y as int64 (N,)).
    DataError for anything else.
    """
    if isinstance(x, StreamingDataset):
        if y is not None:
            raise DataError("a streaming dataset brings its labels: pass y=None")
        return x, x.labels.astype(np.int64)
    if y is None:
        if not hasattr(x, "x_train"):
            raise DataError("fit needs labels: fit(x, y), or a dataset from nnjit.data.load_dataset")
        x, y = x.x_train, x.y_train
    x = np.asarray(x)
    if x.ndim not in (3, 4):
        raise DataError(f"x must be images (N, C, H, W) or (N, H, W), got shape {x.shape}")
    if x.dtype == np.uint8:
        x = Preprocessing(pixels=True).apply(x)
    elif x.dtype.kind != "f":
        raise DataError(f"x must be uint8 pixels or floats, got dtype {x.dtype}")
    elif x.ndim == 3:
        x = x[:, None]
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x) or (y.size and y.dtype.kind not in "iu"):
        raise DataError(f"y must be integer class labels, one per image: got {y.dtype} "
                        f"shape {y.shape} for {len(x)} images")
    return x.astype(dtype, copy=False), y.astype(np.int64, copy=False)


def make_optimizer(model, optimizer) -> Optimizer:
    """The optimizer ``fit`` trains with: an Optimizer over the model's
    parameters, a name in OPTIMIZERS, or None (the model's from an earlier fit,
    else momentum)."""
    if optimizer is None:
        optimizer = getattr(model, "optimizer", None) or "momentum"
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)} or an "
                             f"nnjit Optimizer, got {optimizer!r}")
        kind, kwargs = OPTIMIZERS[optimizer]
        return kind(model.parameters(), **kwargs)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a name or an nnjit Optimizer, got "
                        f"{type(optimizer).__name__}")
    if optimizer.flat is not model.flat:
        raise ValueError("the optimizer updates other parameters than this model's: make it "
                         "with model.parameters()")
    return optimizer


class _InterruptFlag:
    """While active (main thread only): the first Ctrl-C asks ``model`` to stop
    after the batch; a second raises KeyboardInterrupt at once."""

    def __init__(self, model, message):
        self.model, self.message, self.requested = model, message, False

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.model.stop_training = True
        if self.message:
            print(self.message, flush=True)

    @contextlib.contextmanager
    def active(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def fit(model, x, y=None, *, epochs: int = 1, batch_size: int = 32, optimizer=None,
        lr_schedule="constant", validation_data=None, validation_split: float = 0.0,
        augment=None, callbacks=(), shuffle: bool = True, seed: int = 0, verbose: int = 1,
        initial_epoch: int = 0, initial_batch: int = 0, distributed=None, tta=None,
        interrupt_message: str = "\nCtrl-C: stopping after this batch "
                                 "(Ctrl-C again to quit at once)") -> History:
    """Train ``model`` (``Model.fit`` calls this; see there for the arguments)."""
    batch_size = 32 if batch_size is None else batch_size  # Keras's default for None
    x, y = training_arrays(x, y, model.dtype)
    check_tta(tta)
    if validation_data is not None and validation_split:
        raise ValueError("pass validation_data or validation_split, not both")
    if not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    if validation_split:  # Keras's rule: the last fraction, before any shuffling
        cut = int(len(x) * (1 - validation_split))
        if cut == 0 or cut == len(x):
            raise ValueError(f"validation_split {validation_split} of {len(x)} images leaves "
                             "no training or no validation images")
        if isinstance(x, StreamingDataset):
            validation_data = (x.subset(np.arange(cut, len(x))), None)
            x = x.subset(np.arange(cut))
        else:
            validation_data = (x[cut:], y[cut:])
            x = x[:cut]
        y = y[:cut]
    if validation_data is not None:
        if len(validation_data) != 2:
            raise ValueError("validation_data must be (x, y), or (stream, None)")
        validation_data = training_arrays(*validation_data, model.dtype)
    if len(x) == 0:
        raise DataError("fit got no training images")
    if isinstance(augment, str):
        from .augment import Augment
        augment = Augment.parse(augment) or None  # "none": no copy of every batch
    for name, value, least in (("epochs", epochs, 1), ("batch_size", batch_size, 1),
                               ("initial_epoch", initial_epoch, 0),
                               ("initial_batch", initial_batch, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    opt = make_optimizer(model, optimizer)
    group = _group(distributed)
    rank = group.rank if group is not None else 0
    verbose = verbose if rank == 0 else 0
    steps = math.ceil(len(x) / batch_size)
    lr_at = _lr_at(lr_schedule, opt.lr, epochs * steps)
    callbacks = list(callbacks or ())
    if lr_at is not None and any(c.sets_learning_rate for c in callbacks):
        raise ValueError("a per-step lr_schedule would overwrite what "
                         + ", ".join(type(c).__name__ for c in callbacks if c.sets_learning_rate)
                         + " sets: use lr_schedule='constant' with it")
    model.optimizer, model.stop_training = opt, False
    history = History()
    progress = None
    if verbose:  # last: its line shows what the other callbacks added to the logs
        from .progress import ProgressBar
        progress = ProgressBar(bar=verbose == 1)
        callbacks.append(progress)
    params = {"epochs": epochs, "steps": steps, "batch_size": batch_size, "samples": len(x),
              "verbose": verbose, "input_shape": tuple(x.shape[1:]), "rank": rank}
    hooks = CallbackList([*callbacks, history], model, params)
    trainer = Trainer(model, opt, batch_size, seed, lr_at, augment, shuffle, group)
    flag = _InterruptFlag(model, interrupt_message)

    def on_batch(done, total, loss, accuracy, images_per_second):
        hooks.on_batch_end(done - 1, {"loss": loss, "accuracy": accuracy, "lr": opt.lr,
                                      "images_per_second": images_per_second})

    prepare_kernels(model, x, y, batch_size, show=verbose > 0)
    logs = {}
    with flag.active(), _closing(progress):
        hooks.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            hooks.on_epoch_begin(epoch)
            result = trainer.run_epoch(x, y, epoch + 1, initial_batch if epoch == initial_epoch
                                       else 0, on_batch, lambda: model.stop_training,
                                       hooks.on_batch_begin)
            if result.diverged:
                hooks.on_batch_end(result.batches_done, {"loss": math.nan, "lr": opt.lr})
                if not model.stop_training:
                    raise TrainingDiverged(epoch, result.batches_done)
                break
            if result.stopped:
                # Ctrl-C here, or on another rank (which stopped them all): not a callback's
                # own decision on this rank
                if flag.requested or (group is not None and not model.stop_training):
                    history.interrupted = (epoch, result.batches_done)
                break
            logs = {"loss": result.train_loss, "accuracy": result.train_accuracy}
            if validation_data is not None:
                start = time.perf_counter()
                logs["val_loss"], logs["val_accuracy"] = model.evaluate(*validation_data,
                                                                        batch_size=256, tta=tta)
                result.evaluation_seconds += time.perf_counter() - start
            logs["lr"] = opt.lr
            for c in hooks.callbacks:
                c.epoch_result = result
            hooks.on_epoch_end(epoch, logs)
            if model.stop_training:
                if flag.requested:
                    history.interrupted = (epoch, result.batches_done)
                break
        hooks.on_train_end(logs)
    return history


@contextlib.contextmanager
def _closing(progress):
    """Take a progress bar off the screen however the run ends (an error, a
    second Ctrl-C): a live bar left running would garble what follows."""
    try:
        yield
    finally:
        if progress is not None:
            progress.close()


def prepare_kernels(model, x, y, batch_size: int, show: bool = True, load: bool = False) -> int:
    """Compile the kernels that training ``model`` on (x, y) in batches of
    ``batch_size`` (the last, shorter batch included) and predicting need, and
    the kernel cache lacks: on every core at once, with a progress bar when
    ``show`` (``nnjit.progress.compile_with_progress``). With ``load``, then
    run those calls for real, so that the first step loads nothing either.
    x: float (N, C, H, W); y: int (N,). Leaves the model as it was (weights,
    batch-norm statistics, dropout's generator). Returns the signatures compiled.
    """
    from .progress import compile_with_progress

    state, buffers = model.get_extra_state(), [b.copy() for _, b in model.named_buffers()]

    def first_calls():
        for size in {min(batch_size, len(x)), len(x) % batch_size or batch_size}:
            model.forward(x[:size])
            model.backward(y[:size])
        model.predict(x[:batch_size])

    try:
        compiled = compile_with_progress(first_calls, show)
        if load:
            first_calls()
    finally:
        model.set_extra_state(state)
        for (_, live), saved in zip(model.named_buffers(), buffers):
            live[...] = saved
    return compiled


def _group(distributed):
    """The MPI group ``fit(distributed=...)`` asks for: None (one process),
    "mpi" (this process's group when an MPI launcher started it, else None), or
    an ``nnjit.distributed.MPIGroup``."""
    if distributed is None:
        return None
    if distributed == "mpi":
        from .distributed import mpi_group
        return mpi_group()
    from .distributed import MPIGroup
    if isinstance(distributed, MPIGroup):
        return distributed if distributed.size > 1 else None
    raise ValueError(f"distributed must be None, 'mpi' or an MPIGroup, got {distributed!r}")


def _lr_at(schedule, base_lr: float, total_steps: int):
    """step -> learning rate for ``schedule`` (a name in LR_SCHEDULES or a
    function of the step), or None for a constant rate."""
    if callable(schedule):
        return schedule
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)} or a function "
                         f"of the step, got {schedule!r}")
    curve = LR_SCHEDULES[schedule]
    return None if curve is None else (lambda step: curve(base_lr, step, total_steps))


__all__ = ["fit", "training_arrays", "make_optimizer", "prepare_kernels", "Callback",
           "LR_SCHEDULES", "OPTIMIZERS"]
