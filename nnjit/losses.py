"""Softmax cross-entropy, numerically stable and with its gradient fused; with
class weights and label smoothing as PyTorch's ``CrossEntropyLoss``."""
from __future__ import annotations

import math

import numpy as np

from .kernels.loss import softmax_cross_entropy as _softmax_cross_entropy
from .kernels.loss import weighted_cross_entropy


def check_labels(labels, n: int, num_classes: int) -> np.ndarray:
    """Validate class labels for a batch of ``n``; return them as int64 (n,)."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from "
                         f"{labels.min()} to {labels.max()}")
    return np.ascontiguousarray(labels, dtype=np.int64)


def softmax_cross_entropy(logits: np.ndarray, labels) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against integer labels.

    Computed as logsumexp(z) - z[label] with the row maximum subtracted, so it
    stays finite for logits of any finite magnitude.

    Parameters
    ----------
    logits : float32 or float64 (N, K)
    labels : int (N,), values in [0, K)

    Returns
    -------
    loss : float
        mean over the batch.
    dlogits : same dtype as logits, (N, K)
        d loss / d logits = (softmax(logits) - onehot(labels)) / N.
    """
    logits = np.ascontiguousarray(logits)
    if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"logits must be a float (N, K) array, got {logits.dtype} {logits.shape}")
    n, k = logits.shape
    labels = check_labels(labels, n, k)
    losses = np.empty(n, dtype=np.float64)
    dlogits = np.empty_like(logits)
    _softmax_cross_entropy(logits.reshape(-1), labels, n, k, losses, dlogits.reshape(-1))
    return float(losses.mean()), dlogits


class CrossEntropyLoss:
    """Mean cross-entropy of softmax(logits) against integer labels, with
    PyTorch's ``CrossEntropyLoss(weight=..., label_smoothing=...)`` rules:

    loss = (1 - e) * sum_n w[y_n] (-log p_n[y_n]) / W
           + (e / K) * sum_n sum_c w[c] (-log p_n[c]) / W,    W = sum_n w[y_n]

    (w all ones without ``weight``: W = N). A model's ``loss`` attribute; its
    ``backward`` and ``evaluate`` call it.

    Parameters
    ----------
    weight : sequence of K non-negative floats, optional
        Per-class weights (``class_weights("balanced", labels)`` makes them from
        the class frequencies).
    label_smoothing : float in [0, 1), default 0
    """

    def __init__(self, weight=None, label_smoothing: float = 0.0):
        if not isinstance(label_smoothing, (int, float)) or isinstance(label_smoothing, bool) \
                or not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self.weight = None
        if weight is not None:
            w = np.asarray(weight, dtype=np.float64)
            if w.ndim != 1 or not w.size or not np.all(np.isfinite(w)) or np.any(w < 0) \
                    or not w.sum() > 0:
                raise ValueError(f"weight must be K finite non-negative numbers, not all 0, "
                                 f"got {weight!r}")
            self.weight = np.ascontiguousarray(w)

    def config(self) -> dict:
        """The constructor's arguments, JSON-safe."""
        return {"weight": None if self.weight is None else self.weight.tolist(),
                "label_smoothing": self.label_smoothing}

    def __call__(self, logits: np.ndarray, labels) -> tuple[float, np.ndarray]:
        """(loss, d loss / d logits) for logits float (N, K) and labels int (N,)."""
        if self.weight is None and self.label_smoothing == 0:
            return softmax_cross_entropy(logits, labels)
        logits = np.ascontiguousarray(logits)
        if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating):
            raise ValueError(f"logits must be a float (N, K) array, got {logits.dtype} "
                             f"{logits.shape}")
        n, k = logits.shape
        labels = check_labels(labels, n, k)
        weight = np.ones(k) if self.weight is None else self.weight
        if weight.size != k:
            raise ValueError(f"weight holds {weight.size} classes, the logits {k}")
        total = float(weight[labels].sum())
        if not total > 0:  # every label of the batch weighs 0: nothing to learn from it
            return 0.0, np.zeros_like(logits)
        losses = np.empty(n, dtype=np.float64)
        dlogits = np.empty_like(logits)
        weighted_cross_entropy(logits.reshape(-1), labels, n, k, weight, self.label_smoothing,
                               total, losses, dlogits.reshape(-1))
        return math.fsum(losses) / total, dlogits

    def __repr__(self) -> str:
        return (f"CrossEntropyLoss(weight={None if self.weight is None else self.weight.tolist()}"
                f", label_smoothing={self.label_smoothing})")


def class_weights(spec, labels, num_classes: int) -> np.ndarray:
    """Per-class weights: ``"balanced"`` (scikit-learn's and Keras's rule,
    N / (K * count of class c); a class absent from ``labels`` weighs 0) or a
    comma-separated list / sequence of K numbers. Raises ValueError naming
    what is wrong."""
    if isinstance(spec, str) and spec == "balanced":
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
        return np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    values = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        w = np.array([float(v) for v in values])
    except (TypeError, ValueError):
        raise ValueError(f"class weights must be 'balanced' or {num_classes} numbers, "
                         f"got {spec!r}") from None
    if w.size != num_classes:
        raise ValueError(f"class weights: {w.size} numbers for {num_classes} classes")
    return w
