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
    for pl in prange(planes):
        src = pl * H * W
        dst = pl * OH * OW
        for oh in range(OH):
            for ow in range(OW):
                h0 = oh * SH
                w0 = ow * SW
                best_i = h0 * W + w0
                best = x[src + best_i]
                for kh in range(KH):
                    row = (h0 + kh) * W
                    for kw in range(KW):
                        i = row + w0 + kw
                        v = x[src + i]
                        # `not (v <= best)` also lets a NaN win, so NaN propagates.
                        if not (v <= best):
                            best = v
                            best_i = i
                out[dst + oh * OW + ow] = best
                argmax[dst + oh * OW + ow] = best_i


@kernel
def maxpool_backward(dy, argmax, planes, H, W, OH, OW, dx):
    """dy: float (planes*OH*OW,), argmax: int32 from forward.
    Writes dx: float (planes*H*W,) (overwritten; overlapping windows summed)."""
    for pl in prange(planes):
        dst = pl * H * W
        for i in range(H * W):
            dx[dst + i] = 0
        src = pl * OH * OW
        for j in range(OH * OW):
            dx[dst + argmax[src + j]] += dy[src + j]
