"""Max pooling over (N*C) independent planes, without padding.

Windows that do not fit are dropped (floor mode, like PyTorch's default).
Forward stores, per output, the flat index ``ih*W + iw`` of the maximum inside
its plane, so backward routes each gradient to exactly one input even on ties.
"""
from ._jit import kernel, prange


@kernel
def maxpool_forward(x, planes, H, W, KH, KW, SH, SW, OH, OW, out, argmax):
    """x: float (planes*H*W,). Writes out: float (planes*OH*OW,) and
    argmax: int32 (planes*OH*OW,). The first maximum in a window wins ties."""
    x3 = x.reshape((planes, H, W))
    o3 = out.reshape((planes, OH, OW))
    a3 = argmax.reshape((planes, OH, OW))
    for pl in prange(planes):
        src = x3[pl]
        for oh in range(OH):
            orow = o3[pl, oh]
            arow = a3[pl, oh]
            h0 = oh * SH
            for ow in range(OW):
                w0 = ow * SW
                win = src[h0:h0 + KH, w0:w0 + KW]
                best = win[0, 0]
                best_i = h0 * W + w0
                for kh in range(KH):
                    for kw in range(KW):
                        v = win[kh, kw]
                        # `not (v <= best)` also lets a NaN win, so NaN propagates.
                        if not (v <= best):
                            best = v
                            best_i = (h0 + kh) * W + w0 + kw
                orow[ow] = best
                arow[ow] = best_i


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
