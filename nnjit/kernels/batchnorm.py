"""Batch normalisation over (N, C, P) activations: statistics per channel C,
over the batch N and the positions P (H*W for images, 1 for features).

Each ``prange`` iteration owns one channel: its sums, its outputs, its
running statistics. Sums accumulate in float64. Loops walk (N, C, P) views
row by row (measured 1.6x faster than computed flat indices).
"""
import numpy as np

from ._jit import kernel, prange


@kernel(reassociate=True)
def batchnorm_forward_train(x, N, C, P, eps, momentum, weight, bias, relu, out, xhat, invstd,
                            running_mean, running_var):
    """Normalise with the batch statistics (biased variance) and update the running ones.

    x: float (N*C*P,). Writes out = xhat * weight + bias (then max(0, .) with
    ``relu``, a fused ReLU) and xhat (both like x), invstd: (C,) =
    1 / sqrt(var + eps); updates running_mean and running_var (C,) by
    ``momentum`` toward the batch mean and the unbiased batch variance
    (PyTorch's convention). Needs N*P > 1.
    """
    M = N * P
    x3, o3, h3 = x.reshape((N, C, P)), out.reshape((N, C, P)), xhat.reshape((N, C, P))
    for c in prange(C):
        acc = 0.0
        for n in range(N):
            row = x3[n, c]
            for p in range(P):
                acc += row[p]
        mean = acc / M
        acc = 0.0
        for n in range(N):
            row = x3[n, c]
            for p in range(P):
                d = row[p] - mean
                acc += d * d
        var = acc / M
        inv = 1.0 / np.sqrt(var + eps)
        invstd[c] = inv
        w, b = weight[c], bias[c]
        for n in range(N):
            row, hrow, orow = x3[n, c], h3[n, c], o3[n, c]
            for p in range(P):
                h = (row[p] - mean) * inv
                hrow[p] = h
                v = h * w + b
                if relu and v < 0:
                    orow[p] = 0
                else:
                    orow[p] = v
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * var * M / (M - 1)


@kernel
def batchnorm_forward_eval(x, N, C, P, eps, weight, bias, running_mean, running_var, relu, out):
    """out = (x - running_mean) / sqrt(running_var + eps) * weight + bias, per channel
    (then max(0, .) with ``relu``). x, out: float (N*C*P,)."""
    x3, o3 = x.reshape((N, C, P)), out.reshape((N, C, P))
    for c in prange(C):
        scale = weight[c] / np.sqrt(running_var[c] + eps)
        shift = bias[c] - running_mean[c] * scale
        for n in range(N):
            row, orow = x3[n, c], o3[n, c]
            for p in range(P):
                v = row[p] * scale + shift
                if relu and v < 0:
                    orow[p] = 0
                else:
                    orow[p] = v


@kernel(reassociate=True)
def batchnorm_backward(dy, xhat, out, invstd, weight, N, C, P, relu, need_dx, dx, dweight, dbias):
    """Gradients of ``batchnorm_forward_train`` (batch statistics depend on x too).

    dy, xhat, out: float (N*C*P,); with ``relu`` (fused), dy counts only
    where out > 0: call that g. Writes dweight = sum(g * xhat), dbias =
    sum(g) per channel and, with ``need_dx``, dx = weight * invstd / M *
    (M * g - sum(g) - xhat * sum(g * xhat)), M = N*P.
    """
    M = N * P
    d3, h3, x3 = dy.reshape((N, C, P)), xhat.reshape((N, C, P)), dx.reshape((N, C, P))
    o3 = out.reshape((N, C, P))
    for c in prange(C):
        s = 0.0
        sx = 0.0
        for n in range(N):
            grow, hrow, orow = d3[n, c], h3[n, c], o3[n, c]
            for p in range(P):
                g = grow[p]
                if relu and not orow[p] > 0:
                    g = 0.0
                s += g
                sx += g * hrow[p]
        dweight[c] = sx
        dbias[c] = s
        if need_dx:
            k = weight[c] * invstd[c] / M
            for n in range(N):
                grow, hrow, xrow, orow = d3[n, c], h3[n, c], x3[n, c], o3[n, c]
                for p in range(P):
                    g = grow[p]
                    if relu and not orow[p] > 0:
                        g = 0.0
                    xrow[p] = k * (M * g - s - hrow[p] * sx)
