"""Batch normalisation over (N, C, P) activations: statistics per channel C,
over the batch N and the positions P (H*W for images, 1 for features).

Each ``prange`` iteration owns one channel: its sums, its outputs, its
running statistics. Sums accumulate in float64. Loops walk (N, C, P) views
row by row (measured 1.6x faster than computed flat indices).
"""
import numpy as np

from ._jit import helper, kernel, prange
from .pool import pool_plane


@helper(reassociate=True)
def channel_mean_var(x3, c):
    """Mean and biased variance (float64) of channel c of x3: (N, C, P).

    One pass over the values, summing their offsets from the channel's first
    value: the shift keeps sum(d * d) - sum(d)**2 / M free of the cancellation
    of raw sums whenever the values sit far from 0 (in float64, with a shift
    inside the data, as accurate as two passes for batch-norm inputs), and the
    channel is read once instead of twice.
    """
    N, _, P = x3.shape
    shift = np.float64(x3[0, c, 0])
    s = 0.0
    ss = 0.0
    for n in range(N):
        row = x3[n, c]
        for p in range(P):
            d = row[p] - shift
            s += d
            ss += d * d
    M = N * P
    mean = s / M
    return shift + mean, max(ss / M - mean * mean, 0.0)


@kernel(reassociate=True)
def batchnorm_forward_train(x, N, C, P, eps, momentum, weight, bias, relu, out, mean, invstd,
                            running_mean, running_var):
    """Normalise with the batch statistics (biased variance) and update the running ones.

    x: float (N*C*P,). Writes out = xhat * weight + bias (then max(0, .) with
    ``relu``, a fused ReLU), xhat = (x - mean) * invstd, like x; mean and
    invstd: float64 (C,), invstd = 1 / sqrt(var + eps)
    (``batchnorm_backward`` recomputes xhat from x with them: storing xhat
    cost a write of every activation); updates running_mean and running_var (C,) by
    ``momentum`` toward the batch mean and the unbiased batch variance
    (PyTorch's convention). Needs N*P > 1.
    """
    M = N * P
    x3, o3 = x.reshape((N, C, P)), out.reshape((N, C, P))
    for c in prange(C):
        mu, var = channel_mean_var(x3, c)
        inv = 1.0 / np.sqrt(var + eps)
        mean[c] = mu
        invstd[c] = inv
        w, b = weight[c], bias[c]
        for n in range(N):
            row, orow = x3[n, c], o3[n, c]
            for p in range(P):
                v = (row[p] - mu) * inv * w + b
                if relu and v < 0:
                    orow[p] = 0
                else:
                    orow[p] = v
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mu
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


@helper
def channel_affine(weight, bias, running_mean, running_var, eps, c):
    """(scale, shift), float64, of channel c of a batch norm at inference:
    scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale."""
    s = np.float64(weight[c]) / np.sqrt(np.float64(running_var[c]) + eps)
    return s, np.float64(bias[c]) - np.float64(running_mean[c]) * s


@kernel
def batchnorm_inference_affine(weight, bias, running_mean, running_var, eps, scale, shift):
    """The per-channel affine map of a batch norm at inference (``channel_affine``).
    All arrays (C,); writes scale and shift (the layer's dtype)."""
    for c in range(weight.size):
        scale[c], shift[c] = channel_affine(weight, bias, running_mean, running_var, eps, c)


@helper
def scale_rows(weight, scale, out):
    """out[c*K + k] = weight[c*K + k] * scale[c]: weight, out float (C*K,),
    scale (C,) of the same dtype."""
    C = scale.size
    K = weight.size // C
    for c in range(C):
        # Row slices, not one index over c*K..(c+1)*K: that loop did not
        # vectorise (64x576 weights: 26 against 5 us).
        row, scaled = weight[c * K:(c + 1) * K], out[c * K:(c + 1) * K]
        s = scale[c]
        for k in range(K):
            scaled[k] = row[k] * s


@kernel
def scaled_rows(scale, weight, out):
    """``scale_rows(weight, scale, out)`` as a kernel: where a conv that takes its
    norm's scale (``Conv2D.take_norm_scale``) runs an algorithm that cannot apply
    it, the conv scales its weight itself. scale comes first: the serial twin
    runs it (no prange)."""
    scale_rows(weight, scale, out)


@kernel
def fold_batchnorm(weight, bias, running_mean, running_var, eps, layer_weight, layer_bias,
                   has_bias, scale, folded_weight, folded_bias):
    """A batch norm folded into the conv or Dense layer before it: for each output
    channel c, scale[c] and shift[c] the norm's (``channel_affine``, in float64),
    writes scale[c] (rounded to the layer's dtype), folded_bias[c] = layer_bias[c]
    * scale[c] + shift[c] (shift[c] alone without ``has_bias``) and, unless
    folded_weight is empty (a conv that applies the scale itself),
    folded_weight[c, :] = layer_weight[c, :] * scale[c] (``scale_rows``: a
    float64 product rounded back did not vectorise, 64x576 weights 5.8 against
    3.5 us). layer_weight, folded_weight: float (C*K,), channel c's K weights
    at c*K; layer_bias, scale, folded_bias and the norm's arrays: (C,)
    (layer_bias not read without a bias). One call for a pair: folding with
    numpy took ~8 us a pair on each predict, ~90 of MobileNet's ~400 us on one
    image. The norm's (C,) weight comes first, so the kernel's serial twin
    always runs it (a loop without prange has nothing for the parallel one)."""
    for c in range(weight.size):
        s, shift = channel_affine(weight, bias, running_mean, running_var, eps, c)
        scale[c] = s
        folded_bias[c] = np.float64(layer_bias[c]) * s + shift if has_bias else shift
    if folded_weight.size:
        scale_rows(layer_weight, scale, folded_weight)


@kernel(reassociate=True)
def batchnorm_backward(dy, x, out, mean, invstd, weight, N, C, P, relu, need_dx, dx, dweight,
                       dbias):
    """Gradients of ``batchnorm_forward_train`` (batch statistics depend on x too).

    dy, x, out: float (N*C*P,); mean, invstd: float64 (C,) as the forward
    wrote them, and xhat = (x - mean) * invstd recomputed here in float64. With ``relu`` (fused), dy
    counts only where out > 0: call that g. Writes dweight = sum(g * xhat),
    dbias = sum(g) per channel and, with ``need_dx``, dx = weight * invstd /
    M * (M * g - sum(g) - xhat * sum(g * xhat)), M = N*P.
    """
    M = N * P
    d3, x3, o3, dx3 = (dy.reshape((N, C, P)), x.reshape((N, C, P)), out.reshape((N, C, P)),
                       dx.reshape((N, C, P)))
    for c in prange(C):
        mu, inv = mean[c], invstd[c]
        s = 0.0
        sx = 0.0
        for n in range(N):
            grow, xrow, orow = d3[n, c], x3[n, c], o3[n, c]
            for p in range(P):
                g = grow[p]
                if relu and not orow[p] > 0:
                    g = 0.0
                s += g
                sx += g * ((xrow[p] - mu) * inv)
        dweight[c] = sx
        dbias[c] = s
        if need_dx:
            k = weight[c] * inv / M
            for n in range(N):
                grow, xrow, orow, drow = d3[n, c], x3[n, c], o3[n, c], dx3[n, c]
                for p in range(P):
                    g = grow[p]
                    if relu and not orow[p] > 0:
                        g = 0.0
                    drow[p] = k * (M * g - s - (xrow[p] - mu) * inv * sx)


@kernel(reassociate=True)
def batchnorm_statistics(x, N, C, P, eps, momentum, weight, bias, mean, invstd, scale, shift,
                         running_mean, running_var):
    """The training statistics of ``batchnorm_forward_train`` without its output pass.

    x: float (N*C*P,). Writes mean, invstd, and the affine map of the output
    (out = x * scale + shift), all (C,); updates the running statistics.
    """
    M = N * P
    x3 = x.reshape((N, C, P))
    for c in prange(C):
        mu, var = channel_mean_var(x3, c)
        inv = 1.0 / np.sqrt(var + eps)
        mean[c] = mu
        invstd[c] = inv
        scale[c] = weight[c] * inv
        shift[c] = bias[c] - mu * weight[c] * inv
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mu
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * var * M / (M - 1)


@kernel
def affine_pool_forward(x, planes, C, H, W, scale, shift, relu, KH, KW, SH, SW, OH, OW, bounds,
                        scratch, out, argmax, winner):
    """Per-channel affine map (batch norm), optional ReLU, then max pooling,
    one plane at a time: the full-size output is only ever a plane in cache.

    x: float (planes*H*W,), plane i of channel i % C; scale, shift: (C,).
    bounds: int64 (parts+1,) plane ranges; scratch: float (parts, H*W).
    Writes out: float (planes*OH*OW,) and argmax: int32 (same), as
    ``maxpool_forward`` over relu(x * scale + shift) would, and winner
    (like out): the input x at each argmax, what backward's sums read.
    """
    x2 = x.reshape((planes, H * W))
    o2 = out.reshape((planes, OH * OW))
    a2 = argmax.reshape((planes, OH * OW))
    w2 = winner.reshape((planes, OH * OW))
    for part in prange(len(bounds) - 1):
        buf = scratch[part]
        plane = buf.reshape((H, W))
        for pl in range(bounds[part], bounds[part + 1]):
            a, b = scale[pl % C], shift[pl % C]
            src = x2[pl]
            for p in range(H * W):
                v = src[p] * a + b
                buf[p] = 0 if relu and v < 0 else v
            pos = a2[pl]
            pool_plane(plane, KH, KW, SH, SW, OH, OW, o2[pl], pos)
            wrow = w2[pl]
            for q in range(OH * OW):
                wrow[q] = src[pos[q]]


@kernel(reassociate=True)
def batchnorm_pool_coefficients(dy, out, winner, mean, invstd, weight, N, C, P, Q, relu,
                                dweight, dbias, coef):
    """Parameter gradients of ``batchnorm_statistics`` + ``affine_pool_forward`` in
    training, and the coefficients of its input gradient.

    dy, out, winner: (N*C*Q,) at the pooled output (winner: the input at each
    window's maximum). A pooled gradient counts as g (0 where out <= 0 with
    ``relu``) at its window's maximum. Writes dweight = sum(g * xhat), dbias =
    sum(g) (C,), and coef (4*C,) as rows (a, b, gk, m): the input gradient
    (``routed_affine_segment``) is dx = (x - m) * a + b, plus gk * g at each
    maximum. Reads only pooled-size arrays.
    """
    M = N * P
    g3, o3, w3 = dy.reshape((N, C, Q)), out.reshape((N, C, Q)), winner.reshape((N, C, Q))
    for c in prange(C):
        mu, inv = mean[c], invstd[c]
        s = 0.0
        sx = 0.0
        for n in range(N):
            grow, orow, wrow = g3[n, c], o3[n, c], w3[n, c]
            for q in range(Q):
                g = grow[q]
                if relu and not orow[q] > 0:
                    g = 0.0
                s += g
                sx += g * ((wrow[q] - mu) * inv)
        dweight[c] = sx
        dbias[c] = s
        # dx = k * (M * g - s - xhat * sx), xhat = (x - mu) * inv
        k = weight[c] * inv / M
        coef[c] = -k * inv * sx
        coef[C + c] = -k * s
        coef[2 * C + c] = k * M
        coef[3 * C + c] = mu


@helper(reassociate=True)
def routed_affine_segment(y, ys, lo, hi, coef, c, C, g, gout, garg, qs, q0, q1, relu, dst, d):
    """One plane segment of a batch norm's input gradient when a max-pool
    (and maybe a ReLU) follows it: dst[d:d + hi - lo] = (y[ys + lo:ys + hi] - m)
    * a + b, plus gk * g[qs + q] at each position garg[qs + q] inside [lo, hi),
    for q in [q0, q1), counted only where gout > 0 with ``relu``. (a, b, gk, m)
    are channel c's coefficients in coef (4*C,) (``batchnorm_pool_coefficients``).
    Returns the sum of the segment written (float64).
    """
    a, b, gk, m = coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c]
    src, out = y[ys + lo:ys + hi], dst[d:d + hi - lo]
    acc = 0.0
    for j in range(hi - lo):  # on views: a plain index vectorises (see conv.py)
        v = (src[j] - m) * a + b
        out[j] = v
        acc += v
    for q in range(qs + q0, qs + q1):
        pos = garg[q]
        if lo <= pos < hi and (not relu or gout[q] > 0):
            v = gk * g[q]
            out[pos - lo] += v
            acc += v
    return acc


@kernel
def batchnorm_pool_input_grad(x, dy, out, argmax, coef, N, C, P, Q, relu, dx):
    """The input gradient dx (N*C*P,) of a batch norm followed by a max-pool:
    every plane of x through ``routed_affine_segment``, with dy, out, argmax
    (N*C*Q,) at the pooled output and coef from ``batchnorm_pool_coefficients``."""
    for c in prange(C):
        for n in range(N):
            plane = n * C + c
            routed_affine_segment(x, plane * P, 0, P, coef, c, C, dy, out, argmax, plane * Q, 0,
                                  Q, relu, dx, plane * P)
