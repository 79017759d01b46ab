"""im2col / col2im and the row<->NCHW transposes around the convolution GEMM.

Layout conventions (all buffers flat, C-contiguous):

- ``x``: (N, C, H, W) images.
- ``cols``: (N*OH*OW, C*KH*KW); row ``(n, oh, ow)``, column ``(c, kh, kw)``.
  ``cols @ weight.reshape(OC, C*KH*KW).T`` is the convolution in "rows" layout.
- ``rows``: (N*OH*OW, OC), the GEMM output (channels last).
"""
from ._jit import kernel, prange


@kernel
def im2col(x, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, cols):
    """Unfold zero-padded patches of ``x`` into ``cols``.

    x: float (N*C*H*W,); writes cols: float (N*OH*OW*C*KH*KW,).
    Each parallel iteration owns the rows of one output line (n, oh).
    """
    K = C * KH * KW
    for line in prange(N * OH):
        n = line // OH
        oh = line % OH
        for ow in range(OW):
            base = ((n * OH + oh) * OW + ow) * K
            for c in range(C):
                plane = (n * C + c) * H
                for kh in range(KH):
                    ih = oh * SH + kh - PH
                    dst = base + (c * KH + kh) * KW
                    if ih < 0 or ih >= H:
                        for kw in range(KW):
                            cols[dst + kw] = 0
                        continue
                    src = (plane + ih) * W
                    for kw in range(KW):
                        iw = ow * SW + kw - PW
                        if iw < 0 or iw >= W:
                            cols[dst + kw] = 0
                        else:
                            cols[dst + kw] = x[src + iw]


@kernel
def col2im(dcols, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, dx):
    """Fold patch gradients back onto the image: the adjoint of ``im2col``.

    dcols: float (N*OH*OW*C*KH*KW,); writes dx: float (N*C*H*W,) (overwritten,
    overlapping patches summed). Each parallel iteration owns one (n, c) plane,
    so overlapping windows never race.
    """
    K = C * KH * KW
    HW = H * W
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        out = nc * HW
        for i in range(HW):
            dx[out + i] = 0
        for oh in range(OH):
            for ow in range(OW):
                base = ((n * OH + oh) * OW + ow) * K + c * KH * KW
                for kh in range(KH):
                    ih = oh * SH + kh - PH
                    if ih < 0 or ih >= H:
                        continue
                    for kw in range(KW):
                        iw = ow * SW + kw - PW
                        if iw >= 0 and iw < W:
                            dx[out + ih * W + iw] += dcols[base + kh * KW + kw]


@kernel
def rows_to_nchw(rows, bias, N, P, OC, relu, out):
    """Transpose GEMM rows to NCHW, adding the bias and optionally ReLU.

    rows: float (N*P*OC,) as (N, P, OC); bias: float (OC,); P = OH*OW.
    Writes out: float (N*OC*P,) as (N, OC, P). ``relu`` (bool) fuses max(0, .).
    """
    for noc in prange(N * OC):
        n = noc // OC
        oc = noc % OC
        b = bias[oc]
        src = n * P * OC + oc
        dst = noc * P
        for p in range(P):
            v = rows[src + p * OC] + b
            if relu and v < 0:
                out[dst + p] = 0
            else:
                out[dst + p] = v


@kernel
def nchw_to_rows(dy, N, P, OC, rows, dbias):
    """Transpose an NCHW gradient to GEMM rows and reduce it for the bias.

    dy: float (N*OC*P,) as (N, OC, P). Writes rows: float (N*P*OC,) as
    (N, P, OC) and dbias: float (OC,) = sum of dy over N and P. Each parallel
    iteration owns one output channel; the batch is summed serially inside it.
    """
    for oc in prange(OC):
        acc = 0.0
        for n in range(N):
            src = (n * OC + oc) * P
            dst = n * P * OC + oc
            for p in range(P):
                v = dy[src + p]
                rows[dst + p * OC] = v
                acc += v
        dbias[oc] = acc
