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
