"""Bias add and bias reduction for row-major (N, F) activations."""
from ._jit import kernel, prange


@kernel
def bias_add_rows(out, bias, N, F):
    """out: float (N*F,) as (N, F), updated in place: out[n, f] += bias[f]."""
    for n in prange(N):
        r = n * F
        for f in range(F):
            out[r + f] += bias[f]


@kernel
def bias_grad_rows(dy, N, F, dbias):
    """dy: float (N*F,) as (N, F). Writes dbias: float (F,) = dy.sum(axis=0).

    Each parallel iteration owns one feature and sums the batch serially."""
    for f in prange(F):
        acc = 0.0
        for n in range(N):
            acc += dy[n * F + f]
        dbias[f] = acc
