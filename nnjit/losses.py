"""Softmax cross-entropy, numerically stable and with its gradient fused."""
from __future__ import annotations

import numpy as np

from .kernels.loss import softmax_cross_entropy as _softmax_cross_entropy


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
