"""Bias add and bias reduction for row-major (N, F) activations."""
from ._jit import kernel, prange


@kernel
def bias_add_rows(out, bias, N, F, relu):
    """out: float (N*F,) as (N, F), updated in place: out[n, f] += bias[f],
    then max(0, .) when ``relu`` (a fused ReLU)."""
    o2 = out.reshape((N, F))
    for n in prange(N):
        row = o2[n]
        for f in range(F):
            v = row[f] + bias[f]
            if relu and v < 0:
                row[f] = 0
            else:
                row[f] = v


@kernel
def bias_grad_rows(dy, N, F, dbias):
    """dy: float (N*F,) as (N, F). Writes dbias: float (F,) = dy.sum(axis=0).

    Each parallel iteration owns one feature and sums the batch serially."""
    for f in prange(F):
        acc = 0.0
        for n in range(N):
            acc += dy[n * F + f]
        dbias[f] = acc
