"""Elementwise ReLU and row-wise softmax over flat buffers."""
import numpy as np
from numba import njit

from ._jit import kernel, prange


@kernel
def relu_forward(x, out):
    """x: float (n,). Writes out: float (n,) = max(x, 0)."""
    for i in prange(x.size):
        # Separate stores, not a ternary: `v if ... else 0` would unify to float64.
        v = x[i]
        if v > 0:
            out[i] = v
        else:
            out[i] = 0


@kernel
def relu_backward(y, dy, dx):
    """y: ReLU output (n,), dy: (n,). Writes dx = dy where y > 0, else 0."""
    for i in prange(y.size):
        if y[i] > 0:
            dx[i] = dy[i]
        else:
            dx[i] = 0


@njit(cache=True, inline="always")
def row_shifted_exp(z, r, K, out):
    """Writes out[r:r+K] = exp(z[r:r+K] - m) for the row's maximum m; returns
    (m, s) with s = their sum (float64): the stable pieces of softmax and
    log-sum-exp (no exp can overflow), one exp per element."""
    m = z[r]
    for k in range(1, K):
        m = max(m, z[r + k])
    s = 0.0
    for k in range(K):
        e = np.exp(z[r + k] - m)
        out[r + k] = e
        s += e
    return m, s


@kernel
def softmax_forward(z, N, K, out):
    """z: float (N*K,) as (N, K) logits. Writes out: row-wise softmax.

    Subtracts each row's maximum first, so no exp overflows."""
    for n in prange(N):
        r = n * K
        _, s = row_shifted_exp(z, r, K, out)
        inv = 1.0 / s
        for k in range(K):
            out[r + k] *= inv


@kernel
def softmax_backward(y, dy, N, K, dx):
    """Vector-Jacobian product of softmax: dx = y * (dy - sum(dy * y)).

    y: softmax output (N*K,), dy: (N*K,). Writes dx: (N*K,)."""
    for n in prange(N):
        r = n * K
        dot = 0.0
        for k in range(K):
            dot += dy[r + k] * y[r + k]
        for k in range(K):
            dx[r + k] = y[r + k] * (dy[r + k] - dot)


@kernel
def dropout_forward(x, u, p, scale, out):
    """Inverted dropout. x, u: float (n,), u uniform in [0, 1). Writes out: float
    (n,) = x * scale where u >= p (kept, probability 1 - p), else 0."""
    for i in prange(x.size):
        if u[i] >= p:
            out[i] = x[i] * scale
        else:
            out[i] = 0


@kernel
def dropout_backward(dy, u, p, scale, dx):
    """Backward of ``dropout_forward`` with the same u: dx = dy * scale where kept, else 0."""
    for i in prange(dy.size):
        if u[i] >= p:
            dx[i] = dy[i] * scale
        else:
            dx[i] = 0
