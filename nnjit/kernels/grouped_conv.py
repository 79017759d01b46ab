"""Convolutions with groups and dilation, by direct loops over each output plane.

Output channel oc of a conv with G groups reads the C/G input channels of its
group, (oc // (OC/G)) * C/G onwards: a depthwise conv (G = C) reads one. Each
tap (kh, kw) of each input channel is one pass over the output plane adding
w * x shifted, (ih, iw) = (oh*SH - PH + kh*DH, ow*SW - PW + kw*DW), over the
rows and columns where that lands inside the input (the padding adds
nothing). Nothing is unfolded: a depthwise conv moves each input once per tap
and does 2 flops per value moved, so it is bound by memory, not arithmetic.

Each plane is first copied into a zero-bordered one (Hp, Wp), split into its
SH*SW phases for strides (SH, SW) (``phase_planes``: phase (a, b) holds the
padded plane's rows a, a+SH, ... and columns b, b+SW, ..., as (Hq, Wq) =
(ceil(Hp/SH), ceil(Wp/SW)); at stride 1 the padded plane itself): output
(oh, ow) of tap (kh, kw) reads padded row SH*oh + kh*DH, which is row oh +
kh*DH // SH of a phase (kh*DH % SH, .), and likewise along the columns, so a
tap is one contiguous run of OH*Wq values of one phase, the outputs' rows at
the phase width, whose last Wq - OW columns are dropped (the gradient's are
zero). On 16x16 planes the row-by-row loops ran 16 values at a time: 2.5 ms
for a 64-channel depthwise forward at batch 128; at stride 2 (one gathered
value per tap and output) a 32-channel depthwise on 32x32 at batch 1000 took
17.5 ms.

Layouts (flat, C-contiguous): x (N, C, H, W); weight (OC, C/G, KH, KW);
out and dy (N, OC, OH, OW). ``g`` is the ``ConvGeometry`` (C, H, W, KH, KW,
SH, SW, PH, PW, OH, OW).
"""
import numpy as np
from numba import njit

from ._jit import kernel, prange
from .conv import padded_image
from .runs import copy_run, zero_run

U = np.uint64


@njit(cache=True, inline="always")
def tap_range(k, D, S, P, size, out_size):
    """The outputs [o0, o1) along one axis whose input o*S - P + k*D (tap k,
    dilation D, stride S, padding P) lies in [0, size)."""
    shift = k * D - P
    o0 = -(shift // S) if shift < 0 else 0
    o1 = min(out_size, (size - 1 - shift) // S + 1) if size - 1 - shift >= 0 else 0
    return o0, max(o0, o1)


@njit(cache=True, inline="always")
def chunks_of(count):
    """How many pieces a prange over ``count`` planes is cut into: each piece
    allocates its padded planes once."""
    return min(count, 64)


@njit(cache=True, inline="always")
def phase_geometry(H, W, PH, PW, KW, DW, SH, SW):
    """(Hq, Wq, F) of ``phase_planes``: a phase's rows and columns, and the
    floats from one phase to the next (Hq*Wq, then the slack a tap's run reads
    past the last row: (KW-1)*DW // SW)."""
    Hq, Wq = -(-(H + 2 * PH) // SH), -(-(W + 2 * PW) // SW)
    return Hq, Wq, Hq * Wq + (KW - 1) * DW // SW


@njit(cache=True, inline="always")
def _tap_offset(dh, dw, SH, SW, Wq, F):
    """Where padded row dh, column dw lands in ``phase_planes``'s output."""
    return ((dh % SH) * SW + dw % SW) * F + (dh // SH) * Wq + dw // SW


@njit(cache=True)
def tap_offsets(KH, KW, DH, DW, SH, SW, Wq, F):
    """int64 (KH*KW,): where the run of each tap (kh, kw) starts in
    ``phase_planes``'s output. Computed once per call: on 16x16 planes the
    divisions, done per tap and plane, took as long as the taps' sums."""
    offsets = np.empty(KH * KW, np.int64)
    for kh in range(KH):
        for kw in range(KW):
            offsets[kh * KW + kw] = _tap_offset(kh * DH, kw * DW, SH, SW, Wq, F)
    return offsets


@njit(cache=True, inline="always")
def phase_planes(x, plane, H, W, PH, PW, SH, SW, Hq, Wq, F, out):
    """out[(a*SW + b)*F + r*Wq + q] = the zero-bordered plane ``plane`` of x
    (PH rows, PW columns of zeros around (H, W)) at row SH*r + a, column SW*q
    + b, for the SH*SW phases (a, b) (``phase_geometry``); zero past its
    edges. The F - Hq*Wq values after each phase are left as they are (zero)."""
    if SH == 1 and SW == 1:
        padded_image(x, plane, 1, H, W, PH, PW, 0, H + 2 * PH, out)
        return
    xp = x[plane * H * W:(plane + 1) * H * W]
    for a in range(SH):
        for b in range(SW):
            base = (a * SW + b) * F
            q0, q1 = tap_range(b, 1, SW, PW, W, Wq)  # the columns q with SW*q + b - PW in [0, W)
            for r in range(Hq):
                d = U(base + r * Wq)
                h = SH * r + a - PH
                if h < 0 or h >= H:
                    zero_run(out, d, U(Wq))
                    continue
                zero_run(out, d, U(q0))
                src = U(h * W + SW * q0 + b - PW)
                if SW == 2:  # a constant stride: the loop vectorises (de-interleaving loads)
                    for i in range(U(q1 - q0)):
                        out[d + U(q0) + i] = xp[src + U(2) * i]
                else:
                    for i in range(U(q1 - q0)):
                        out[d + U(q0) + i] = xp[src + U(SW) * i]
                zero_run(out, d + U(q1), U(Wq - q1))


@kernel(cost=16)
def grouped_conv_forward(x, weight, bias, g, groups, DH, DW, relu, out):
    """out = conv(x, weight) + bias with ``groups`` and dilation (DH, DW), then
    max(., 0) with ``relu``. x: float (N*C*H*W,); weight (OC*C/G*KH*KW,);
    bias (OC,). Writes out: (N*OC*OH*OW,). Parallel over output planes."""
    C, H, W, KH, KW, SH, SW, PH, PW, OH, OW = g
    OC = bias.size
    N = x.size // (C * H * W)
    CG, OCG = C // groups, OC // groups
    P = OH * OW
    Hq, Wq, F = phase_geometry(H, W, PH, PW, KW, DW, SH, SW)
    offsets = tap_offsets(KH, KW, DH, DW, SH, SW, Wq, F)
    pieces = chunks_of(N * OC)
    for piece in prange(pieces):
        pad = np.zeros(SH * SW * F, x.dtype)
        acc = np.empty(OH * Wq, x.dtype)
        for plane in range(piece * N * OC // pieces, (piece + 1) * N * OC // pieces):
            n, oc = plane // OC, plane % OC
            for j in range(OH * Wq):
                acc[j] = bias[oc]
            for ci in range(CG):
                c = (oc // OCG) * CG + ci
                phase_planes(x, n * C + c, H, W, PH, PW, SH, SW, Hq, Wq, F, pad)
                for kh in range(KH):
                    for kw in range(KW):
                        wv = weight[((oc * CG + ci) * KH + kh) * KW + kw]
                        off = offsets[kh * KW + kw]
                        for j in range(U(OH * Wq)):
                            acc[j] += wv * pad[U(off) + j]
            o = out[plane * P:(plane + 1) * P]
            for oh in range(OH):
                for ow in range(OW):
                    v = acc[oh * Wq + ow]
                    if relu and v < 0:  # separate stores: a ternary would widen to float64
                        o[oh * OW + ow] = 0
                    else:
                        o[oh * OW + ow] = v


@kernel(cost=16)
def grouped_conv_input_grad(dy, weight, g, groups, DH, DW, dx):
    """dx = the gradient of ``grouped_conv_forward`` at x for the gradient dy:
    float (N*OC*OH*OW,) at its output (masked by a fused ReLU beforehand).
    Writes dx: (N*C*H*W,). Parallel over input planes: each owns its plane."""
    C, H, W, KH, KW, SH, SW, PH, PW, OH, OW = g
    N = dx.size // (C * H * W)
    OC = dy.size // (N * OH * OW)
    CG, OCG = C // groups, OC // groups
    P = OH * OW
    Hq, Wq, F = phase_geometry(H, W, PH, PW, KW, DW, SH, SW)
    offsets = tap_offsets(KH, KW, DH, DW, SH, SW, Wq, F)
    # where each input row and column lands among the phases
    at_row, at_col = np.empty(H, np.int64), np.empty(W, np.int64)
    for h in range(H):
        at_row[h] = _tap_offset(h + PH, 0, SH, SW, Wq, F)
    for w in range(W):
        at_col[w] = _tap_offset(0, w + PW, SH, SW, Wq, F)
    pieces = chunks_of(N * C)
    for piece in prange(pieces):
        dpad = np.empty(SH * SW * F, dy.dtype)
        wide = np.zeros(OH * Wq, dy.dtype)  # columns OW.. stay 0
        for plane in range(piece * N * C // pieces, (piece + 1) * N * C // pieces):
            n, c = plane // C, plane % C
            ci = c % CG
            zero_run(dpad, U(0), U(dpad.size))
            for oco in range(OCG):
                oc = (c // CG) * OCG + oco
                gp = dy[(n * OC + oc) * P:(n * OC + oc + 1) * P]
                for oh in range(OH):
                    for ow in range(OW):
                        wide[oh * Wq + ow] = gp[oh * OW + ow]
                for kh in range(KH):
                    for kw in range(KW):
                        wv = weight[((oc * CG + ci) * KH + kh) * KW + kw]
                        off = offsets[kh * KW + kw]
                        for j in range(U(OH * Wq)):
                            dpad[U(off) + j] += wv * wide[j]
            d = dx[plane * H * W:(plane + 1) * H * W]
            for h in range(H):
                if SW == 1:  # a contiguous run
                    copy_run(d, U(h * W), dpad, U(at_row[h] + PW), U(W))
                    continue
                for w in range(W):
                    d[h * W + w] = dpad[at_row[h] + at_col[w]]


@kernel(cost=16, reassociate=True)
def grouped_conv_weight_grad(x, dy, g, groups, DH, DW, dweight, dbias):
    """The gradients of ``grouped_conv_forward``'s weight and bias for the
    gradient dy: float (N*OC*OH*OW,) at its output. Writes dweight
    (OC*C/G*KH*KW,) and dbias (OC,). Parallel over output channels: each owns
    its filters, and walks the batch once, every tap of an (image, channel)
    plane summed while the plane is in cache. Its sums may be reordered
    (``reassociate``): they then run on vector lanes."""
    C, H, W, KH, KW, SH, SW, PH, PW, OH, OW = g
    OC = dbias.size
    N = x.size // (C * H * W)
    CG, OCG = C // groups, OC // groups
    P = OH * OW
    T = KH * KW
    zero = dy[:1].sum() * 0  # the arrays' float type: a float32 sum stays on float32 lanes
    Hq, Wq, F = phase_geometry(H, W, PH, PW, KW, DW, SH, SW)
    offsets = tap_offsets(KH, KW, DH, DW, SH, SW, Wq, F)
    for oc in prange(OC):
        pad = np.zeros(SH * SW * F, x.dtype)
        wide = np.zeros(OH * Wq, dy.dtype)
        sums = np.zeros(CG * T, dy.dtype)
        total = zero
        for n in range(N):
            gp = dy[(n * OC + oc) * P:(n * OC + oc + 1) * P]
            for oh in range(OH):
                for ow in range(OW):
                    v = gp[oh * OW + ow]
                    wide[oh * Wq + ow] = v
                    total += v
            for ci in range(CG):
                c = (oc // OCG) * CG + ci
                phase_planes(x, n * C + c, H, W, PH, PW, SH, SW, Hq, Wq, F, pad)
                for kh in range(KH):
                    for kw in range(KW):
                        off = offsets[kh * KW + kw]
                        acc = zero
                        for j in range(U(OH * Wq)):
                            acc += wide[j] * pad[U(off) + j]
                        sums[ci * T + kh * KW + kw] += acc
        dbias[oc] = total
        for j in range(CG * T):
            dweight[oc * CG * T + j] = sums[j]
