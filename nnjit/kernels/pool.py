"""Max pooling over (N*C) independent planes (with implicit -inf padding or without).

Windows that do not fit are dropped (floor mode, like PyTorch's default).
Forward stores, per output, the flat index ``ih*W + iw`` of the maximum inside
its plane, so backward routes each gradient to exactly one input even on ties.
"""

from ._jit import kernel, prange
from .cache import cached_njit


@cached_njit(inline="always")
def pool_plane(plane, KH, KW, SH, SW, OH, OW, dst, pos):
    """Max-pool one plane: the loop shared by every pooling kernel.

    plane: float (H, W) view. Writes dst: (OH*OW,) window maxima and pos:
    int32 (OH*OW,) the flat index h*W + w of each window's first maximum
    (`not (v <= best)` also lets a NaN win, so NaN propagates). 2x2 windows
    with stride 2 take an unrolled path, ~7x faster than the general loop.
    """
    W = plane.shape[1]
    if KH == 2 and KW == 2 and SH == 2 and SW == 2:
        for oh in range(OH):
            r0 = plane[2 * oh]
            r1 = plane[2 * oh + 1]
            for ow in range(OW):
                w0 = 2 * ow
                best = r0[w0]
                at = 0
                v = r0[w0 + 1]
                if not (v <= best):
                    best = v
                    at = 1
                v = r1[w0]
                if not (v <= best):
                    best = v
                    at = W
                v = r1[w0 + 1]
                if not (v <= best):
                    best = v
                    at = W + 1
                dst[oh * OW + ow] = best
                pos[oh * OW + ow] = 2 * oh * W + w0 + at
        return
    for oh in range(OH):
        h0 = oh * SH
        for ow in range(OW):
            w0 = ow * SW
            best = plane[h0, w0]
            best_i = h0 * W + w0
            for kh in range(KH):
                row = plane[h0 + kh]
                for kw in range(KW):
                    v = row[w0 + kw]
                    if not (v <= best):
                        best = v
                        best_i = (h0 + kh) * W + w0 + kw
            dst[oh * OW + ow] = best
            pos[oh * OW + ow] = best_i


@kernel
def maxpool_forward(x, planes, H, W, KH, KW, SH, SW, OH, OW, out, argmax):
    """x: float (planes*H*W,). Writes out: float (planes*OH*OW,) and
    argmax: int32 (planes*OH*OW,). The first maximum in a window wins ties."""
    x3 = x.reshape((planes, H, W))
    o2 = out.reshape((planes, OH * OW))
    a2 = argmax.reshape((planes, OH * OW))
    for pl in prange(planes):
        pool_plane(x3[pl], KH, KW, SH, SW, OH, OW, o2[pl], a2[pl])


@kernel
def maxpool_forward_padded(x, planes, H, W, KH, KW, SH, SW, PH, PW, OH, OW, out, argmax):
    """Max pooling with PH, PW of implicit -inf padding (PyTorch's ``padding``):
    each window clipped to the plane, which keeps at least one value of it when
    PH <= KH // 2 and PW <= KW // 2. x: float (planes*H*W,). Writes out: float
    (planes*OH*OW,) and argmax: int32 (planes*OH*OW,), flat positions in the
    unpadded plane (``maxpool_backward`` takes them)."""
    x3 = x.reshape((planes, H, W))
    o2 = out.reshape((planes, OH * OW))
    a2 = argmax.reshape((planes, OH * OW))
    for pl in prange(planes):
        plane, dst, pos = x3[pl], o2[pl], a2[pl]
        for oh in range(OH):
            h0, h1 = max(oh * SH - PH, 0), min(oh * SH - PH + KH, H)
            for ow in range(OW):
                w0, w1 = max(ow * SW - PW, 0), min(ow * SW - PW + KW, W)
                best = plane[h0, w0]
                best_i = h0 * W + w0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        v = plane[h, w]
                        if not (v <= best):
                            best = v
                            best_i = h * W + w
                dst[oh * OW + ow] = best
                pos[oh * OW + ow] = best_i


@kernel
def maxpool_backward(dy, argmax, planes, H, W, OH, OW, dx):
    """dy: float (planes*OH*OW,), argmax: int32 from forward.
    Writes dx: float (planes*H*W,) (overwritten; overlapping windows summed)."""
    d2 = dy.reshape((planes, OH * OW))
    a2 = argmax.reshape((planes, OH * OW))
    x2 = dx.reshape((planes, H * W))
    for pl in prange(planes):
        dst = x2[pl]
        dst[:] = 0
        src = d2[pl]
        idx = a2[pl]
        for j in range(OH * OW):
            dst[idx[j]] += src[j]


@kernel(reassociate=True)
def avgpool_forward(x, planes, H, W, KH, KW, SH, SW, OH, OW, out):
    """Average pooling without padding. x: float (planes*H*W,).
    Writes out: float (planes*OH*OW,), each window's mean, summed in float64
    (reordered: on vector lanes). A window of whole rows (global pooling) is
    one run of KH*W values: rows of 8 summed one by one ran at 4.5 GB/s, and
    a plane's views per window cost more than its 64 values' sum (MobileNet's
    global pool, 128 planes of 8x8: 2.5 -> 2.0 us an image)."""
    scale = 1.0 / (KH * KW)
    if OH == 1 and OW == 1 and KW == W:
        for pl in prange(planes):
            acc = 0.0
            # A slice, not an index over pl*H*W..: that loop did not vectorise
            # (128 planes of 8x8 on 16 images, two threads: 71 -> 17 us).
            window = x[pl * H * W:pl * H * W + KH * W]
            for j in range(window.size):
                acc += window[j]
            out[pl] = acc * scale
        return
    x3 = x.reshape((planes, H, W))
    o3 = out.reshape((planes, OH, OW))
    for pl in prange(planes):
        plane = x3[pl]
        flat = x[pl * H * W:(pl + 1) * H * W]
        for oh in range(OH):
            for ow in range(OW):
                acc = 0.0
                if KW == W:
                    rows = flat[oh * SH * W:(oh * SH + KH) * W]
                    for j in range(rows.size):
                        acc += rows[j]
                else:
                    for kh in range(KH):
                        row = plane[oh * SH + kh]
                        for kw in range(KW):
                            acc += row[ow * SW + kw]
                o3[pl, oh, ow] = acc * scale


@kernel
def avgpool_backward(dy, planes, H, W, KH, KW, SH, SW, OH, OW, dx):
    """dy: float (planes*OH*OW,). Writes dx: float (planes*H*W,) (overwritten):
    each output's gradient / (KH*KW) spread over its window, overlaps summed."""
    scale = 1.0 / (KH * KW)
    if OH == 1 and OW == 1 and KW == W:  # one window of whole rows (global pooling)
        for pl in prange(planes):
            plane = dx[pl * H * W:(pl + 1) * H * W]  # a view: a plain index vectorises
            g = dy[pl] * scale
            for j in range(KH * W):
                plane[j] = g
            for j in range(KH * W, H * W):
                plane[j] = 0
        return
    d3 = dy.reshape((planes, OH, OW))
    x3 = dx.reshape((planes, H, W))
    for pl in prange(planes):
        dst = x3[pl]
        dst[:] = 0
        for oh in range(OH):
            for ow in range(OW):
                g = d3[pl, oh, ow] * scale
                for kh in range(KH):
                    row = dst[oh * SH + kh]
                    for kw in range(KW):
                        row[ow * SW + kw] += g
