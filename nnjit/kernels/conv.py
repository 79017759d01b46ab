"""im2col / col2im and the channel-major <-> NCHW moves around the convolution GEMM.

Layout conventions (all buffers flat, C-contiguous):

- ``x``: (N, C, H, W) images.
- ``cols``: (C*KH*KW, N*OH*OW); row ``(c, kh, kw)``, column ``(n, oh, ow)``.
  Rows are patches of one input plane, so unfolding and folding both walk
  memory contiguously along ``ow``.
- ``ymat``: (OC, N*OH*OW) = ``weight.reshape(OC, C*KH*KW) @ cols``, the
  convolution with channels first and the batch inside.
"""
from numba import njit

from ._jit import kernel, prange
from .pool import pool_plane


@njit(cache=True, inline="always")
def valid_range(k, S, P, W, OW):
    """Output columns [lo, hi) whose input column ow*S + k - P lies inside [0, W).

    Splitting loops at these bounds keeps the bounds test out of the inner
    loop, so it vectorises."""
    lo = max(0, (P - k + S - 1) // S)
    hi = min(OW, (W - 1 + P - k) // S + 1)
    return lo, max(lo, hi)


@kernel
def im2col(x, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, cols):
    """Unfold zero-padded patches of ``x`` into ``cols``.

    x: float (N*C*H*W,); writes cols: float (C*KH*KW * N*OH*OW,).
    Each parallel iteration owns one (row, n) block of OH*OW columns.
    """
    K = C * KH * KW
    x4 = x.reshape((N, C, H, W))
    c4 = cols.reshape((K, N, OH, OW))
    for rn in prange(K * N):
        row = rn // N
        n = rn % N
        c = row // (KH * KW)
        kh = (row // KW) % KH
        kw = row % KW
        hlo, hhi = valid_range(kh, SH, PH, H, OH)
        wlo, whi = valid_range(kw, SW, PW, W, OW)
        block = c4[row, n]
        if hlo > 0 or hhi < OH or wlo > 0 or whi < OW:
            block[:, :] = 0
        if hlo < hhi and wlo < whi:
            ih, iw = hlo * SH + kh - PH, wlo * SW + kw - PW
            # Slice copies, not computed flat indices: those keep a sign check
            # per element and do not vectorise.
            block[hlo:hhi, wlo:whi] = x4[n, c, ih:ih + (hhi - hlo - 1) * SH + 1:SH,
                                         iw:iw + (whi - wlo - 1) * SW + 1:SW]


@kernel
def col2im(dcols, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, dx):
    """Fold patch gradients back onto the image: the adjoint of ``im2col``.

    dcols: float (C*KH*KW * N*OH*OW,); writes dx: float (N*C*H*W,)
    (overwritten; overlapping patches summed). Each parallel iteration owns
    one (n, c) plane of dx, so overlapping windows never race.
    """
    K = C * KH * KW
    dx4 = dx.reshape((N, C, H, W))
    c4 = dcols.reshape((K, N, OH, OW))
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        plane = dx4[n, c]
        plane[:, :] = 0
        for kh in range(KH):
            hlo, hhi = valid_range(kh, SH, PH, H, OH)
            for kw in range(KW):
                wlo, whi = valid_range(kw, SW, PW, W, OW)
                src = c4[(c * KH + kh) * KW + kw, n]
                ih, iw = hlo * SH + kh - PH, wlo * SW + kw - PW
                dst = plane[ih:ih + (hhi - hlo - 1) * SH + 1:SH, iw:iw + (whi - wlo - 1) * SW + 1:SW]
                for i in range(hhi - hlo):
                    for j in range(whi - wlo):
                        dst[i, j] += src[hlo + i, wlo + j]


@kernel
def ymat_to_nchw(ymat, bias, N, P, OC, relu, out):
    """Move the GEMM output to NCHW, adding the bias and optionally ReLU.

    ymat: float (OC*N*P,) as (OC, N, P); bias: float (OC,); P = OH*OW.
    Writes out: float (N*OC*P,) as (N, OC, P). ``relu`` (bool) fuses max(0, .).
    """
    y3 = ymat.reshape((OC, N, P))
    o3 = out.reshape((N, OC, P))
    for noc in prange(N * OC):
        n = noc // OC
        oc = noc % OC
        b = bias[oc]
        src = y3[oc, n]
        dst = o3[n, oc]
        if relu:
            for p in range(P):
                dst[p] = max(src[p] + b, 0)
        else:
            for p in range(P):
                dst[p] = src[p] + b


@kernel
def nchw_to_ymat(dy, y, N, P, OC, relu, dymat, dbias):
    """Move an NCHW gradient to the GEMM layout and reduce it for the bias.

    dy: float (N*OC*P,) as (N, OC, P). With ``relu``, dy is the gradient at
    the output of a fused ReLU whose output is y (same layout), and is passed
    through only where y > 0; without, y is not read. Writes dymat: float
    (OC*N*P,) as (OC, N, P) and dbias: float (OC,) = sum of dymat over N and P.
    Each parallel iteration owns one output channel and sums the batch serially.
    """
    d3 = dy.reshape((N, OC, P))
    y3 = y.reshape((N, OC, P))
    m3 = dymat.reshape((OC, N, P))
    for oc in prange(OC):
        acc = 0.0
        for n in range(N):
            src = d3[n, oc]
            dst = m3[oc, n]
            if relu:
                out = y3[n, oc]
                for p in range(P):
                    if out[p] > 0:
                        v = src[p]
                        dst[p] = v
                        acc += v
                    else:
                        dst[p] = 0
            else:
                for p in range(P):
                    v = src[p]
                    dst[p] = v
                    acc += v
        dbias[oc] = acc


@kernel
def ymat_to_pooled_nchw(ymat, bias, N, OH, OW, OC, relu, KH, KW, SH, SW, PH, PW, out, argmax):
    """Bias, optional ReLU and max pooling straight from the GEMM output.

    The conv output (OC, N, OH, OW) is never written out: each pooled value is
    max(window) + bias (then max(0, .) with ``relu``; ReLU commutes with max).
    ymat: float (OC*N*OH*OW,); bias: float (OC,). Writes out: float
    (N*OC*PH*PW,) and argmax: int32 (same), the position oh*OW + ow of each
    window's first maximum in its conv plane.
    """
    y4 = ymat.reshape((OC, N, OH, OW))
    o3 = out.reshape((N, OC, PH * PW))
    a3 = argmax.reshape((N, OC, PH * PW))
    for noc in prange(N * OC):
        n = noc // OC
        oc = noc % OC
        dst = o3[n, oc]
        pos = a3[n, oc]
        b = bias[oc]
        pool_plane(y4[oc, n], KH, KW, SH, SW, PH, PW, dst, pos)
        for j in range(PH * PW):
            v = dst[j] + b
            if relu and v < 0:
                dst[j] = 0
            else:
                dst[j] = v


@kernel
def pooled_grad_to_ymat(dy, out, argmax, N, P, OC, PP, relu, dymat, dbias):
    """Backward of ``ymat_to_pooled_nchw``: route pooled gradients to the GEMM layout.

    dy, out: float (N*OC*PP,) (gradient at, and value of, the pooled output);
    argmax: int32 from forward. Each gradient goes to its window's maximum,
    and with ``relu`` only where the output is > 0. Writes dymat: float
    (OC*N*P,) as (OC, N, P) and dbias: float (OC,). Each parallel iteration
    owns one output channel, so scattered adds from overlapping windows never race.
    """
    d3 = dy.reshape((N, OC, PP))
    o3 = out.reshape((N, OC, PP))
    a3 = argmax.reshape((N, OC, PP))
    m3 = dymat.reshape((OC, N, P))
    for oc in prange(OC):
        acc = 0.0
        for n in range(N):
            dst = m3[oc, n]
            dst[:] = 0
            g = d3[n, oc]
            o = o3[n, oc]
            pos = a3[n, oc]
            for j in range(PP):
                if not relu or o[j] > 0:
                    dst[pos[j]] += g[j]
                    acc += g[j]
        dbias[oc] = acc


@kernel
def pooled_weight_grad(dy, out, argmax, cols, N, P, OC, PP, K, relu, accumulate, dweight, dbias):
    """dW and db of a fused conv -> (ReLU) -> max-pool from the pooled gradients alone.

    Only one conv output per pooling window receives gradient, so
    dW[oc, :] = sum over windows of dy * cols[:, window's argmax] touches a
    quarter of the columns a GEMM over the full (mostly zero) gradient would,
    and the full-size gradient is never written. Used when the input gradient
    is not needed (the first layer).

    dy, out: float (N*OC*PP,); argmax: int32 (N*OC*PP,); cols: float
    (K*N*P,) as (K, N*P). Writes (or with ``accumulate`` adds to) dweight:
    float (OC*K,) and dbias: float (OC,). Each parallel iteration owns one
    output channel.
    """
    d3 = dy.reshape((N, OC, PP))
    o3 = out.reshape((N, OC, PP))
    a3 = argmax.reshape((N, OC, PP))
    c2 = cols.reshape((K, N * P))
    w2 = dweight.reshape((OC, K))
    for oc in prange(OC):
        row = w2[oc]
        if not accumulate:
            row[:] = 0
        acc = 0.0
        for n in range(N):
            g = d3[n, oc]
            o = o3[n, oc]
            pos = a3[n, oc]
            for j in range(PP):
                if not relu or o[j] > 0:
                    v = g[j]
                    acc += v
                    col = n * P + pos[j]
                    for k in range(K):
                        row[k] += v * c2[k, col]
        if accumulate:
            dbias[oc] += acc
        else:
            dbias[oc] = acc
