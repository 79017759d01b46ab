"""Holding out a validation set: seeded, stratified by class."""
from __future__ import annotations

import numpy as np

from .idx import DataError


def validation_size(value: float, n: int) -> int:
    """How many of ``n`` samples ``--val-split value`` holds out: a count (an
    integer >= 1) or a fraction in (0, 1). DataError unless it leaves both
    parts non-empty."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DataError(f"--val-split must be a count or a fraction, got {value!r}")
    if 0 < value < 1:
        size = int(round(value * n))
    elif value >= 1 and float(value).is_integer():
        size = int(value)
    else:
        raise DataError(f"--val-split must be a whole count >= 1 or a fraction in (0, 1), "
                        f"got {value}")
    if not 0 < size < n:
        raise DataError(f"--val-split {value} would hold out {size} of the {n} training "
                        f"samples: it must leave at least one on each side")
    return size


def stratified_split(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation) of a seeded split holding out ``size`` samples.

    labels: int (N,). Each class gives the validation part its share of
    ``size`` (largest remainders settle the rounding), drawn at random from
    ``np.random.default_rng(seed)``; both index arrays are int64 and sorted,
    so the training part keeps the data's order. Same labels, size and seed:
    same split.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 < size < n:
        raise DataError(f"cannot hold out {size} of {n} samples")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (size / n)
    share = np.floor(exact).astype(np.int64)
    short = size - int(share.sum())
    share[np.argsort(-(exact - share), kind="stable")[:short]] += 1
    rng = np.random.default_rng(seed)
    held = np.zeros(n, dtype=bool)
    for cls, take in zip(classes, share):
        members = np.flatnonzero(labels == cls)
        held[rng.choice(members, size=take, replace=False)] = True
    return np.flatnonzero(~held), np.flatnonzero(held)
