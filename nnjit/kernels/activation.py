"""Elementwise ReLU, the other pointwise activations and dropout, row-wise
softmax, over flat buffers."""
import math

import numpy as np
from numba.cpython.unsafe.numbers import viewer

from ._jit import kernel, prange
from .cache import cached_njit


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


_F32 = np.float32
# Cephes' expf constants: log2(e); ln 2 in two parts (the first exact in a few
# bits, so n * _LN2_HI is exact); the polynomial for exp(r) - 1 - r on
# |r| <= ln(2)/2; the largest x whose exp is finite; the x below which exp
# rounds to 0 (half the smallest denormal).
_LOG2E, _LN2_HI, _LN2_LO = _F32(1.4426950408889634), _F32(0.693359375), _F32(-2.12194440e-4)
_P0, _P1, _P2 = _F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3)
_P3, _P4, _P5 = _F32(4.1665795894e-2), _F32(1.6666665459e-1), _F32(5.0000001201e-1)
_EXP_MAX, _EXP_MIN = _F32(88.72283), _F32(-103.97208)
_TWO_TO_MINUS_64 = _F32(2.0 ** -64)


@cached_njit(inline="always")
def exp_float32(x):
    """exp(x) for a float32 x, in float32 operations that vectorise (libm's expf
    does not: 23 vs 7 us for 10,000 values).

    Cephes' expf: x = n ln 2 + r with n = round(x / ln 2), exp(r) by a
    polynomial, times 2**n built in the exponent bits (with an extra factor for
    results below 2**-126 or at 2**128). Measured within 0.95 ulp of the exact
    value over [-110, 89] (libm 0.50), with the same zeros, infinities and NaNs.
    """
    xc = x if x > _EXP_MIN else _EXP_MIN  # NaN too: clamped here, returned below
    xc = xc if xc < _EXP_MAX else _EXP_MAX
    n = np.floor(xc * _LOG2E + _F32(0.5))
    r = xc - n * _LN2_HI - n * _LN2_LO
    p = _P0
    p = p * r + _P1
    p = p * r + _P2
    p = p * r + _P3
    p = p * r + _P4
    p = p * r + _P5
    p = p * r * r + r + _F32(1)
    low, high = n < _F32(-125), n > _F32(127)  # 2**n is denormal or overflows
    e = n + _F32(64) if low else (n - _F32(1) if high else n)
    v = p * viewer(np.int32((np.int32(e) + 127) << 23), np.float32)
    v = v * _TWO_TO_MINUS_64 if low else (v * _F32(2) if high else v)
    if x != x:
        return x
    if x > _EXP_MAX:
        return _F32(np.inf)
    if x < _EXP_MIN:
        return _F32(0)
    return v


#: Rows per block of the row-wise kernels (softmax, cross-entropy): a block's
#: exps run as one loop over all its values, which vectorises across rows (a
#: row of 10 classes alone does not).
ROWS_PER_BLOCK = 64


@cached_njit(inline="always")
def row_max(z, r, K):
    """The largest of z[r:r+K] (r: uint64)."""
    m = z[r]
    for k in range(np.uint64(1), np.uint64(K)):
        m = max(m, z[r + k])
    return m


@cached_njit()
def shifted_exp_rows(z, n0, n1, K, out):
    """out[r:r+K] = exp(z[r:r+K] - max(z[r:r+K])) for the rows r = n*K, n in
    [n0, n1): the stable exps of softmax and log-sum-exp (none overflows).
    z, out: float (>= n1*K,); float32 through ``exp_float32``, float64 np.exp."""
    for n in range(n0, n1):
        r = np.uint64(n * K)
        m = row_max(z, r, K)
        for k in range(np.uint64(K)):
            out[r + k] = z[r + k] - m
    # Unsigned indices: a signed one keeps a negative-index check that stops vectorisation.
    if out.itemsize == 4:
        for i in range(np.uint64(n0 * K), np.uint64(n1 * K)):
            out[i] = exp_float32(out[i])
    else:
        for i in range(np.uint64(n0 * K), np.uint64(n1 * K)):
            out[i] = np.exp(out[i])


@cached_njit(inline="always")
def row_sum(x, r, K):
    """sum(x[r:r+K]) (r: uint64), accumulated in float64."""
    s = 0.0
    for k in range(np.uint64(K)):
        s += x[r + k]
    return s


#: An exp per value, ~5 cycles: on 1000 rows of 10, two threads instead of one
#: made the mlp's predict 1-1.5% faster (alternating in one process).
@kernel(cost=16)
def softmax_forward(z, N, K, out):
    """z: float (N*K,) as (N, K) logits. Writes out: row-wise softmax.

    Subtracts each row's maximum first, so no exp overflows."""
    for b in prange((N + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK):
        n0, n1 = b * ROWS_PER_BLOCK, min(N, (b + 1) * ROWS_PER_BLOCK)
        shifted_exp_rows(z, n0, n1, K, out)
        for n in range(n0, n1):
            r = np.uint64(n * K)
            inv = 1.0 / row_sum(out, r, K)
            for k in range(np.uint64(K)):
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


@cached_njit(inline="always")
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


#: The pointwise activations ``pointwise_forward`` and ``pointwise_backward`` compute,
#: by code (one compiled kernel serves them all; ``alpha`` is LeakyReLU's slope).
LEAKY_RELU, SIGMOID, TANH, GELU, GELU_TANH, SILU, RELU6, HARDSWISH = range(8)
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715


@cached_njit(inline="always")
def _sigmoid(v):
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)  # no overflow for very negative v
    return e / (1.0 + e)


@cached_njit(inline="always")
def activate(v, op, alpha):
    """Activation ``op`` of one value (float64 arithmetic)."""
    if op == LEAKY_RELU:
        return v if v >= 0 else alpha * v
    if op == SIGMOID:
        return _sigmoid(v)
    if op == TANH:
        return math.tanh(v)
    if op == GELU:
        return 0.5 * v * (1.0 + math.erf(v * _SQRT_HALF))
    if op == GELU_TANH:
        return 0.5 * v * (1.0 + math.tanh(_SQRT_2_OVER_PI * (v + _GELU_CUBIC * v * v * v)))
    if op == SILU:
        return v * _sigmoid(v)
    if op == RELU6:
        return min(max(v, 0.0), 6.0)
    # HARDSWISH
    return v * min(max(v + 3.0, 0.0), 6.0) / 6.0


@cached_njit(inline="always")
def derivative(v, y, op, alpha):
    """d activation / d input at input v with output y, as PyTorch's backward
    takes it at the kinks (LeakyReLU: slope at 0; ReLU6: 0 at 0 and 6;
    Hardswish: (2v+3)/6 on [-3, 3])."""
    if op == LEAKY_RELU:
        return 1.0 if v > 0 else alpha
    if op == SIGMOID:
        return y * (1.0 - y)
    if op == TANH:
        return 1.0 - y * y
    if op == GELU:
        return 0.5 * (1.0 + math.erf(v * _SQRT_HALF)) + v * _INV_SQRT_2PI * math.exp(-0.5 * v * v)
    if op == GELU_TANH:
        inner = _SQRT_2_OVER_PI * (v + _GELU_CUBIC * v * v * v)
        t = math.tanh(inner)
        return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * _SQRT_2_OVER_PI * (
            1.0 + 3.0 * _GELU_CUBIC * v * v)
    if op == SILU:
        s = _sigmoid(v)
        return s * (1.0 + v * (1.0 - s))
    if op == RELU6:
        return 1.0 if 0 < v < 6 else 0.0
    if v < -3:
        return 0.0
    return v / 3.0 + 0.5 if v <= 3 else 1.0


@kernel(cost=8)
def pointwise_forward(x, op, alpha, out):
    """x: float (n,). Writes out: float (n,) = activation ``op`` of x (``activate``)."""
    for i in prange(x.size):
        out[i] = activate(np.float64(x[i]), op, alpha)


@kernel(cost=8)
def pointwise_backward(x, y, dy, op, alpha, dx):
    """x: the activation's input (n,), y: its output, dy: the gradient at y.
    Writes dx: float (n,) = dy * activation ``op``'s derivative (``derivative``)."""
    for i in prange(x.size):
        dx[i] = dy[i] * derivative(np.float64(x[i]), np.float64(y[i]), op, alpha)
