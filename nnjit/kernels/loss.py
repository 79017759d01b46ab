"""Fused softmax cross-entropy."""
import numpy as np

from ._jit import kernel, prange
from .activation import ROWS_PER_BLOCK, row_max, row_sum, shifted_exp_rows


@kernel
def softmax_cross_entropy(z, labels, N, K, losses, dz):
    """Per-row cross-entropy of softmax(z) and its gradient, fused.

    z: float (N*K,) logits as (N, K); labels: int64 (N,) in [0, K).
    Writes losses: float64 (N,) = logsumexp(z_n) - z_n[label_n] and
    dz: float (N*K,) = (softmax(z) - onehot(labels)) / N, the gradient of the
    *mean* loss. Log-sum-exp with the row max subtracted: finite for any
    finite logits.
    """
    for b in prange((N + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK):
        n0, n1 = b * ROWS_PER_BLOCK, min(N, (b + 1) * ROWS_PER_BLOCK)
        shifted_exp_rows(z, n0, n1, K, dz)
        for n in range(n0, n1):
            r = np.uint64(n * K)  # unsigned, as the row helpers take it
            s = row_sum(dz, r, K)
            at = r + np.uint64(labels[n])
            losses[n] = row_max(z, r, K) + np.log(s) - z[at]
            scale = 1.0 / (s * N)
            for k in range(np.uint64(K)):
                dz[r + k] *= scale
            dz[at] -= 1.0 / N


@kernel
def weighted_cross_entropy(z, labels, N, K, weight, smoothing, total_weight, losses, dz):
    """Cross-entropy of softmax(z) with per-class weights and label smoothing,
    PyTorch's ``CrossEntropyLoss(weight=w, label_smoothing=e)`` rules.

    z: float (N*K,) logits as (N, K); labels: int64 (N,); weight: float64
    (K,); total_weight: the sum of weight[labels] (the mean's divisor).
    Writes losses: float64 (N,), row n's (1-e) w[y](lse - z_y) + (e/K) sum_c
    w[c](lse - z_c) (lse: log-sum-exp of the row), and dz: float (N*K,), the
    gradient of sum(losses) / total_weight: ((1-e) w[y](p - onehot(y)) +
    (e/K)(sum(w) p - w)) / total_weight, p = softmax(z_n).
    """
    spread = smoothing / K
    weight_sum = 0.0
    for k in range(K):
        weight_sum += weight[k]
    for b in prange((N + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK):
        n0, n1 = b * ROWS_PER_BLOCK, min(N, (b + 1) * ROWS_PER_BLOCK)
        shifted_exp_rows(z, n0, n1, K, dz)
        for n in range(n0, n1):
            r = np.uint64(n * K)
            s = row_sum(dz, r, K)
            lse = row_max(z, r, K) + np.log(s)
            y = labels[n]
            smooth = 0.0
            for k in range(K):
                smooth += weight[k] * (lse - z[r + np.uint64(k)])
            losses[n] = (1.0 - smoothing) * weight[y] * (lse - z[r + np.uint64(y)]) \
                + spread * smooth
            for k in range(K):
                p = dz[r + np.uint64(k)] / s
                g = spread * (weight_sum * p - weight[k])
                g += (1.0 - smoothing) * weight[y] * (p - (1.0 if k == y else 0.0))
                dz[r + np.uint64(k)] = g / total_weight
