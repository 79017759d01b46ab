"""The training loop: epochs of shuffled mini-batches, with stop and divergence checks.

No printing here: callers (``fit``) observe progress through the
``on_batch`` callback and the returned :class:`EpochResult`.
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from .fileio import atomic_write_text
from .model import Model
from .optim import Optimizer

#: val_loss and val_accuracy are empty in runs without a validation split.
CSV_COLUMNS = ("epoch", "step", "train_loss", "test_loss", "test_accuracy", "seconds",
               "images_per_second", "val_loss", "val_accuracy")


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled sample order of ``epoch``: int64 (n,), a function of (seed, epoch) only.

    Deriving it afresh each epoch (rather than from one running generator)
    lets a resumed run see exactly the batches an uninterrupted run would.
    """
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass
class EpochResult:
    """What one (possibly partial) epoch did.

    ``epoch`` counts from 1; ``batches_done`` < ``batches`` when stopped early.
    """

    epoch: int
    step: int
    batches_done: int
    batches: int
    train_loss: float
    train_accuracy: float
    images: int
    seconds: float
    stopped: bool = False
    diverged: bool = False
    #: seconds spent evaluating after the epoch (validation, test), filled in by the caller
    evaluation_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class Trainer:
    """Runs epochs of mini-batch training of ``model`` with ``optimizer``.

    ``lr_at(step)``, when given, sets the optimizer's learning rate before
    each step (``step`` counts optimizer steps from 0), e.g. a cosine schedule.
    ``augment`` (an :class:`~nnjit.augment.Augment`) transforms each batch,
    drawing from a generator seeded by (seed, epoch, batch), so a resumed run
    sees the same augmented batches. With ``shuffle`` False every epoch takes
    the samples in order. With ``group`` (an ``nnjit.distributed.MPIGroup``)
    this process trains on its share of every global batch of ``batch_size``
    and the ranks' gradients are summed before each step (see
    ``nnjit.distributed``); the loss and accuracy reported are the global
    batch's.
    """

    def __init__(self, model: Model, optimizer: Optimizer, batch_size: int, seed: int,
                 lr_at=None, augment=None, shuffle: bool = True, group=None):
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.model, self.optimizer = model, optimizer
        self.batch_size, self.seed = batch_size, seed
        self.lr_at = lr_at
        self.augment = augment
        self.shuffle = shuffle
        self.group = group
        self._sync = None
        if group is not None:
            from .distributed import BufferSync
            self._sync = BufferSync(group, [b for _, b in model.named_buffers()])

    def run_epoch(self, x: np.ndarray, y: np.ndarray, epoch: int, start_batch: int = 0,
                  on_batch=None, should_stop=lambda: False, before_batch=None) -> EpochResult:
        """Train one epoch (``epoch`` counts from 1).

        x: float32 (N, C, H, W), or a streaming dataset (``nnjit.data.streaming``)
        of N images; y: int (N,). ``start_batch`` skips the first batches
        (resuming mid-epoch).

        on_batch(batches_done, batches, loss, running_accuracy, images_per_second)
        is called after every step, ``before_batch(batch)`` (the batch's index in
        the epoch, from 0) before each; ``should_stop()`` is checked after every
        step too, and a True ends the epoch early (``stopped``). A nan or inf
        loss ends it before the optimizer applies that step (``diverged``), with
        the model's buffers (batch norms' running statistics) as before that
        batch's forward pass: the model is left as the last good step left it.
        """
        n, bs = len(x), self.batch_size
        batches = math.ceil(n / bs)
        order = epoch_order(self.seed, epoch, n) if self.shuffle else np.arange(n)
        loss_sum, correct, seen, done = 0.0, 0, 0, start_batch
        start = time.perf_counter()
        result = EpochResult(epoch, self.optimizer.steps, done, batches, math.nan, 0.0, 0, 0.0)
        buffers = [b for _, b in self.model.named_buffers()]
        kept = [b.copy() for b in buffers]  # small: a few values per channel
        batches_of = [order[s:s + bs] for s in range(start_batch * bs, n, bs)]  # global
        shares = [slice(*self.group.share(len(g))) if self.group else slice(None)
                  for g in batches_of]
        reading = _batches(x, [g[share] for g, share in zip(batches_of, shares)])
        # a global batch's loss sum and correct answers, and whether any rank asks to stop
        stats = np.zeros(3)
        try:
            for b, (idx, batch) in enumerate(reading, start_batch):
                if before_batch is not None:
                    before_batch(b)
                whole = len(batches_of[b - start_batch])
                if self.augment is not None:
                    share = shares[b - start_batch]
                    batch = self.augment(batch, np.random.default_rng([self.seed, epoch, b]),
                                         of=(share.start or 0, whole))
                labels = y[idx]
                for live, saved in zip(buffers, kept):
                    np.copyto(saved, live)
                if len(idx):
                    probs = self.model.forward(batch)
                    loss = self.model.backward(labels)
                    stats[:2] = loss * len(idx), np.count_nonzero(probs.argmax(axis=1) == labels)
                else:  # a batch smaller than the ranks: this one has none of it
                    self.optimizer.zero_grad()
                    stats[:2] = 0
                if self.group is not None:  # the global batch's mean: shares weighed by size
                    # Whether to stop is asked here and summed with the statistics: every
                    # rank stops after the same batch (a Ctrl-C reaches them at different
                    # moments).
                    stats[2] = bool(should_stop())
                    self.optimizer.flat.grads *= len(idx) / whole
                    self.group.sum_(self.optimizer.flat.grads)
                    self.group.sum_(stats)
                loss = stats[0] / whole
                if not math.isfinite(loss):
                    for live, saved in zip(buffers, kept):
                        np.copyto(live, saved)
                    result.diverged = True
                    break
                if self.lr_at is not None:
                    self.optimizer.lr = self.lr_at(self.optimizer.steps)
                self.optimizer.step()
                if self._sync is not None:
                    self._sync()
                done += 1
                loss_sum += stats[0]
                correct += int(stats[1])
                seen += whole
                elapsed = time.perf_counter() - start
                if on_batch is not None:
                    on_batch(done, batches, loss, correct / seen,
                             seen / elapsed if elapsed else 0.0)
                stop = stats[2] if self.group is not None else should_stop()
                if stop and done < batches:
                    result.stopped = True
                    break
        finally:
            reading.close()
        result.step, result.batches_done = self.optimizer.steps, done
        result.train_loss = loss_sum / seen if seen else math.nan
        result.train_accuracy = correct / seen if seen else 0.0
        result.images, result.seconds = seen, time.perf_counter() - start
        return result


def _batches(x, index_arrays):
    """(indices, network input) for each of ``index_arrays``: from an array,
    gathered into one reused buffer; from a streaming dataset
    (``nnjit.data.streaming``), read ahead by it."""
    if not isinstance(x, np.ndarray):
        yield from x.read_ahead(index_arrays)
        return
    most = max((len(i) for i in index_arrays), default=0)
    xb = np.empty((most,) + x.shape[1:], dtype=x.dtype)
    for idx in index_arrays:
        yield idx, np.take(x, idx, axis=0, out=xb[:len(idx)])


class LossLog:
    """The per-epoch CSV: header first, one flushed row per epoch.

    Appends to an existing file when ``append`` (a resumed run), so a run
    killed at any point still leaves a valid CSV; ``up_to_epoch`` first drops
    rows of later epochs (written by a run killed before it checkpointed them,
    which the resumed run computes again).
    """

    def __init__(self, path: str | os.PathLike, append: bool = False,
                 up_to_epoch: int | None = None):
        exists = append and os.path.exists(path) and os.path.getsize(path) > 0
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        if exists:
            _rewrite(path, up_to_epoch)
        self._file = open(path, "a" if exists else "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if not exists:
            self._write(CSV_COLUMNS)

    def _write(self, row) -> None:
        self._writer.writerow(row)
        self._file.flush()
        os.fsync(self._file.fileno())

    def add(self, epoch, step, train_loss, test_loss, test_accuracy, seconds, images_per_second,
            val_loss=None, val_accuracy=None):
        """Append one epoch's row (validation figures None without a validation split)."""
        val = ["", ""] if val_loss is None else [f"{val_loss:.6f}", f"{val_accuracy:.6f}"]
        self._write([epoch, step, f"{train_loss:.6f}", f"{test_loss:.6f}", f"{test_accuracy:.6f}",
                     f"{seconds:.3f}", f"{images_per_second:.1f}", *val])

    def close(self) -> None:
        self._file.close()


def _rewrite(path, up_to_epoch) -> None:
    """Before appending: give a CSV from an older version (fewer columns) today's
    header, its rows padded with empty cells, and drop rows after ``up_to_epoch``
    (and a torn last line); rewritten atomically, and only when something changes."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = rows[0] if rows else []
    if header != list(CSV_COLUMNS[:len(header)]):
        return  # not ours: leave it
    padding = [""] * (len(CSV_COLUMNS) - len(header))
    body = [row + padding for row in rows[1:] if len(row) == len(header) and row[0].isdigit()
            and (up_to_epoch is None or int(row[0]) <= up_to_epoch)]
    if header == list(CSV_COLUMNS) and len(body) == len(rows) - 1:
        return
    out = io.StringIO()
    csv.writer(out).writerows([list(CSV_COLUMNS)] + body)
    atomic_write_text(path, out.getvalue())


def read_loss_log(path) -> dict[str, list[float]]:
    """Columns of a LossLog CSV as lists of floats, keyed by CSV_COLUMNS (nan where
    empty, and for columns a CSV from an older version lacks)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {c: [float(r.get(c) or "nan") for r in rows] for c in CSV_COLUMNS}
