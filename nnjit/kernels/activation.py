"""Elementwise ReLU and dropout, row-wise softmax, over flat buffers."""
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


#: SplitMix64's increment and output mix (Steele, Lea, Flood 2014).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@njit(cache=True, inline="always")
def mixed_bits(key, i):
    """64 random-looking bits for position i (int) under key (uint64): the
    SplitMix64 output for state key + (i + 1) * golden ratio. Counter-based:
    any element's bits are computed alone, so threads need no shared state."""
    z = key + (np.uint64(i) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@kernel
def dropout_forward(x, key, threshold, scale, out):
    """Inverted dropout. x: float (n,). Element i is kept (out = x * scale)
    when the top 32 bits of ``mixed_bits(key, i)`` are >= threshold (uint64,
    p * 2**32: dropped with probability p), else out = 0. Writes out: (n,)."""
    for i in prange(x.size):
        if mixed_bits(key, i) >> np.uint64(32) >= threshold:
            out[i] = x[i] * scale
        else:
            out[i] = 0


@kernel
def dropout_backward(dy, key, threshold, scale, dx):
    """Backward of ``dropout_forward`` with the same key: dx = dy * scale where
    kept, else 0 (the mask is recomputed, never stored)."""
    for i in prange(dy.size):
        if mixed_bits(key, i) >> np.uint64(32) >= threshold:
            dx[i] = dy[i] * scale
        else:
            dx[i] = 0
