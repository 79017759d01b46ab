"""Fused softmax cross-entropy."""
import numpy as np

from ._jit import kernel, prange
from .activation import row_shifted_exp


@kernel
def softmax_cross_entropy(z, labels, N, K, losses, dz):
    """Per-row cross-entropy of softmax(z) and its gradient, fused.

    z: float (N*K,) logits as (N, K); labels: int64 (N,) in [0, K).
    Writes losses: float64 (N,) = logsumexp(z_n) - z_n[label_n] and
    dz: float (N*K,) = (softmax(z) - onehot(labels)) / N, the gradient of the
    *mean* loss. Log-sum-exp with the row max subtracted: finite for any
    finite logits.
    """
    for n in prange(N):
        r = n * K
        m, s = row_shifted_exp(z, r, K, dz)
        lab = labels[n]
        losses[n] = m + np.log(s) - z[r + lab]
        scale = 1.0 / (s * N)
        for k in range(K):
            dz[r + k] *= scale
        dz[r + lab] -= 1.0 / N
