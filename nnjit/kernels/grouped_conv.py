"""Convolutions with groups and dilation, by direct loops over each output plane.

Output channel oc of a conv with G groups reads the C/G input channels of its
group, (oc // (OC/G)) * C/G onwards: a depthwise conv (G = C) reads one.
Output (oh, ow) of tap (kh, kw) reads the input at (ih, iw) = (oh*SH - PH +
kh*DH, ow*SW - PW + kw*DW). Nothing is unfolded: a depthwise conv does 2 flops
per tap and value, so it is bound by moving values, not by arithmetic.

Each plane is first copied into a zero-bordered one (Hp, Wp), split into its
SH*SW phases for strides (SH, SW) (``phase_planes``: phase (a, b) holds the
padded plane's rows a, a+SH, ... and columns b, b+SW, ..., as (Hq, Wq) =
(ceil(Hp/SH), ceil(Wp/SW)); at stride 1 the padded plane itself): output
(oh, ow) of tap (kh, kw) reads padded row SH*oh + kh*DH, which is row oh +
kh*DH // SH of a phase (kh*DH % SH, .), and likewise along the columns, so a
tap reads one contiguous run of OH*Wq values of one phase: the outputs' rows
at the phase width, whose last Wq - OW columns are dropped (the gradient's are
zero). A pass over the plane adds up to nine taps' runs at once
(``tap_sums``, ``tap_dots``), and the buffers' zero borders are written once
per thread, not once per plane. A 64-channel depthwise 3x3 on 16x16 at batch
128, two threads, per image: forward 11 -> 5.7 us, input gradient 11-12 ->
7.4, weight gradient 17-19 -> 10.5, against a pass per tap that re-bordered
every plane (and summed the weight gradient in float64). A depthwise 3x3
forward whose output rows fill half a vector or more sums each row straight
into the output (``nine_tap_rows``) instead of summing the plane at the
padded width and copying its rows out: 6.9 -> 4.8 us an image on the same
conv at batch 64; 128 channels of 8x8 (two rows to a vector) 5.6 -> 4.3.

A depthwise 3x3 conv with padding 1 whose planes fit the vectors
(``planes_in_registers``) copies nothing: at stride 1 each output vector's
nine taps are loads straight from the input plane, the lanes outside it
masked off (rows of a quarter or half a vector several to a vector, or of
whole vectors); at stride 2 each tap is one two-source shuffle of input
vectors picking the even or odd columns. MobileNet's, per pass of 16 images
on two threads: 16 channels of 32x32 ~62 -> 31 us, 64 of 16x16 ~70 -> 35,
128 of 8x8 49.5 -> 30, at stride 2 64 of 16x16 61 -> 18 and 32 of 32x32 71
-> 26. The input gradient at stride 1 takes the same path: the output
gradient convolved with each filter turned round.

Layouts (flat, C-contiguous): x (N, C, H, W); weight (OC, C/G, KH, KW);
out and dy (N, OC, OH, OW). ``g`` is the ``ConvGeometry`` (C, H, W, KH, KW,
SH, SW, PH, PW, OH, OW).
"""
import numpy as np

from ._jit import call_part, helper, kernel, prange
from .cache import cached_njit
from .runs import (copy_run, deinterleave_run, interleave_run, nine_tap_plane, nine_tap_plane_fits,
                   nine_tap_rows, relu_copy_run, strided_nine_tap_plane,
                   strided_nine_tap_plane_fits)

U = np.uint64


@cached_njit(inline="always")
def tap_range(k, D, S, P, size, out_size):
    """The outputs [o0, o1) along one axis whose input o*S - P + k*D (tap k,
    dilation D, stride S, padding P) lies in [0, size)."""
    shift = k * D - P
    o0 = -(shift // S) if shift < 0 else 0
    o1 = min(out_size, (size - 1 - shift) // S + 1) if size - 1 - shift >= 0 else 0
    return o0, max(o0, o1)


@cached_njit(inline="always")
def chunks_of(count, threads):
    """How many pieces a prange over ``count`` planes is cut into on ``threads``
    threads: two a thread, each of at least 8 planes. Each piece allocates its
    scratch (padded planes, offsets) once, and the prange hands each thread an
    equal run of pieces, so more pieces only add allocations: up to 64 pieces
    took 61-83 against 53-61 us (128 planes of 8x8, 16 images, two threads),
    77 against 70 at stride 2 on 16x16 (and as many pieces as planes,
    MobileNet's five depthwise convs on one image took 95 against 83 us)."""
    return max(1, min(count // 8, 2 * threads))


@cached_njit(inline="always")
def phase_geometry(H, W, PH, PW, KW, DW, SH, SW):
    """(Hq, Wq, F) of ``phase_planes``: a phase's rows and columns, and the
    floats from one phase to the next (Hq*Wq, then the slack a tap's run reads
    past the last row: (KW-1)*DW // SW)."""
    Hq, Wq = -(-(H + 2 * PH) // SH), -(-(W + 2 * PW) // SW)
    return Hq, Wq, Hq * Wq + (KW - 1) * DW // SW


@cached_njit(inline="always")
def _tap_offset(dh, dw, SH, SW, Wq, F):
    """Where padded row dh, column dw lands in ``phase_planes``'s output."""
    return ((dh % SH) * SW + dw % SW) * F + (dh // SH) * Wq + dw // SW


@cached_njit()
def tap_offsets(KH, KW, DH, DW, SH, SW, Wq, F):
    """int64 (KH*KW,): where the run of each tap (kh, kw) starts in
    ``phase_planes``'s output. Computed once per call: on 16x16 planes the
    divisions, done per tap and plane, took as long as the taps' sums."""
    offsets = np.empty(KH * KW, np.int64)
    for kh in range(KH):
        for kw in range(KW):
            offsets[kh * KW + kw] = _tap_offset(kh * DH, kw * DW, SH, SW, Wq, F)
    return offsets


@cached_njit(inline="always")
def stride2_columns(PW, F):
    """At column stride 2, where an input row's even and odd columns start in a
    phase row of ``phase_planes``'s output (padded column w + PW lies in
    phase (w + PW) % 2 at (w + PW) // 2)."""
    return (PW % 2) * F + PW // 2, ((PW + 1) % 2) * F + (PW + 1) // 2


@cached_njit(inline="always")
def phase_planes(x, plane, H, W, PH, PW, SH, SW, Hq, Wq, F, out):
    """out[(a*SW + b)*F + r*Wq + q] = plane ``plane`` of x at row SH*r + a - PH,
    column SW*q + b - PW, for the SH*SW phases (a, b) (``phase_geometry``), where
    that lies inside the plane. Nothing else is written: out's zero border,
    zeroed once, stays zero for every plane of one geometry."""
    xp = x[plane * H * W:(plane + 1) * H * W]
    if SH == 1 and SW == 1:
        for h in range(H):
            copy_run(out, U((h + PH) * Wq + PW), xp, U(h * W), U(W))
        return
    if SW == 2:  # each row split into its even and odd columns (``stride2_columns``)
        even, odd = stride2_columns(PW, F)
        for h in range(H):
            row = _tap_offset(h + PH, 0, SH, SW, Wq, F)
            deinterleave_run(out, U(row + even), U(row + odd), xp, U(h * W), U(W))
        return
    for a in range(SH):
        r0, r1 = tap_range(a, 1, SH, PH, H, Hq)  # the rows r with SH*r + a - PH in [0, H)
        for b in range(SW):
            base = (a * SW + b) * F
            q0, q1 = tap_range(b, 1, SW, PW, W, Wq)
            for r in range(r0, r1):
                d = U(base + r * Wq + q0)
                src = U((SH * r + a - PH) * W + SW * q0 + b - PW)
                for i in range(U(q1 - q0)):
                    out[d + i] = xp[src + U(SW) * i]


@cached_njit(inline="always")
def planes_in_registers(g, CG, DH, DW, itemsize):
    """True for a depthwise 3x3 conv (CG = 1 input channel a group) with padding 1,
    no dilation, whose planes ``nine_tap_plane`` (stride 1) or
    ``strided_nine_tap_plane`` (stride 2) take: rows of a few to a vector, of a
    vector or two at stride 2."""
    C, H, W, KH, KW, SH, SW, PH, PW, OH, OW = g
    if KH != 3 or KW != 3 or CG != 1 or DH != 1 or DW != 1 or PH != 1 or PW != 1 or SH != SW:
        return False
    if SH == 1:
        return nine_tap_plane_fits(H, W, itemsize)
    return SH == 2 and strided_nine_tap_plane_fits(H, W, itemsize)


@cached_njit(inline="always")
def nine_weights(weight, k):
    """The 9-tuple weight[k:k+9] (one 3x3 filter), as ``nine_tap_rows`` takes it."""
    return (weight[k], weight[k + 1], weight[k + 2], weight[k + 3], weight[k + 4],
            weight[k + 5], weight[k + 6], weight[k + 7], weight[k + 8])


@cached_njit(inline="always")
def nine_weights_turned(weight, k):
    """The 3x3 filter weight[k:k+9] turned round (both axes flipped) as a 9-tuple:
    the filter whose conv takes a stride-1 depthwise conv's output gradient to
    its input gradient."""
    return (weight[k + 8], weight[k + 7], weight[k + 6], weight[k + 5], weight[k + 4],
            weight[k + 3], weight[k + 2], weight[k + 1], weight[k])


@cached_njit(inline="always")
def tap_sums(out, o, src, weight, wbase, taps, offsets, t, n, init, b):
    """out[o + j] = (b if init else out[o + j]) + the sum over entries e of
    weight[wbase + taps[e]] * src[offsets[e] + j], for j < n and the entries e
    from t on: nine of them where nine are left, else three, else one. Returns
    how many it took. One pass over out for up to nine taps: a pass per tap
    loaded and stored out nine times."""
    left = taps.size - t
    o, k = U(o), wbase
    if left >= 9:
        w0, w1, w2 = weight[k + taps[t]], weight[k + taps[t + 1]], weight[k + taps[t + 2]]
        w3, w4, w5 = weight[k + taps[t + 3]], weight[k + taps[t + 4]], weight[k + taps[t + 5]]
        w6, w7, w8 = weight[k + taps[t + 6]], weight[k + taps[t + 7]], weight[k + taps[t + 8]]
        s0, s1, s2 = U(offsets[t]), U(offsets[t + 1]), U(offsets[t + 2])
        s3, s4, s5 = U(offsets[t + 3]), U(offsets[t + 4]), U(offsets[t + 5])
        s6, s7, s8 = U(offsets[t + 6]), U(offsets[t + 7]), U(offsets[t + 8])
        for j in range(U(n)):
            start = b if init else out[o + j]
            out[o + j] = (start + w0 * src[s0 + j] + w1 * src[s1 + j] + w2 * src[s2 + j]
                          + w3 * src[s3 + j] + w4 * src[s4 + j] + w5 * src[s5 + j]
                          + w6 * src[s6 + j] + w7 * src[s7 + j] + w8 * src[s8 + j])
        return 9
    if left >= 3:
        w0, w1, w2 = weight[k + taps[t]], weight[k + taps[t + 1]], weight[k + taps[t + 2]]
        s0, s1, s2 = U(offsets[t]), U(offsets[t + 1]), U(offsets[t + 2])
        for j in range(U(n)):
            start = b if init else out[o + j]
            out[o + j] = start + w0 * src[s0 + j] + w1 * src[s1 + j] + w2 * src[s2 + j]
        return 3
    w0, s0 = weight[k + taps[t]], U(offsets[t])
    for j in range(U(n)):
        start = b if init else out[o + j]
        out[o + j] = start + w0 * src[s0 + j]
    return 1


@cached_njit(inline="always")
def tap_dots(sums, sbase, wide, src, offsets, t, n):
    """sums[sbase + t + e] += the sum over j < n of wide[j] * src[offsets[t + e] + j]
    for the entries e from t on: nine where nine are left, else three, else one
    (one pass over wide for them all). Returns how many it took."""
    left = offsets.size - t
    zero = np.float32(0)  # float32 sums of float32 products; float64 ones of float64
    if left >= 9:
        s0, s1, s2 = U(offsets[t]), U(offsets[t + 1]), U(offsets[t + 2])
        s3, s4, s5 = U(offsets[t + 3]), U(offsets[t + 4]), U(offsets[t + 5])
        s6, s7, s8 = U(offsets[t + 6]), U(offsets[t + 7]), U(offsets[t + 8])
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = zero
        for j in range(U(n)):
            v = wide[j]
            a0 += v * src[s0 + j]
            a1 += v * src[s1 + j]
            a2 += v * src[s2 + j]
            a3 += v * src[s3 + j]
            a4 += v * src[s4 + j]
            a5 += v * src[s5 + j]
            a6 += v * src[s6 + j]
            a7 += v * src[s7 + j]
            a8 += v * src[s8 + j]
        i = sbase + t
        sums[i] += a0
        sums[i + 1] += a1
        sums[i + 2] += a2
        sums[i + 3] += a3
        sums[i + 4] += a4
        sums[i + 5] += a5
        sums[i + 6] += a6
        sums[i + 7] += a7
        sums[i + 8] += a8
        return 9
    if left >= 3:
        s0, s1, s2 = U(offsets[t]), U(offsets[t + 1]), U(offsets[t + 2])
        a0 = a1 = a2 = zero
        for j in range(U(n)):
            v = wide[j]
            a0 += v * src[s0 + j]
            a1 += v * src[s1 + j]
            a2 += v * src[s2 + j]
        sums[sbase + t] += a0
        sums[sbase + t + 1] += a1
        sums[sbase + t + 2] += a2
        return 3
    s0 = U(offsets[t])
    a0 = zero
    for j in range(U(n)):
        a0 += wide[j] * src[s0 + j]
    sums[sbase + t] += a0
    return 1


@helper(reassociate=True)
def grouped_conv_forward_part(piece, x, weight, bias, g, groups, DH, DW, relu, out,
                              threads):
    """Piece ``piece`` of ``grouped_conv_forward`` (same arguments): its share of
    the output planes (``chunks_of``)."""
    C, H, W, KH, KW, SH, SW, PH, PW, OH, OW = g
    OC = bias.size
    N = x.size // (C * H * W)
    CG, OCG = C // groups, OC // groups
    P = OH * OW
    T = KH * KW
    pieces = chunks_of(N * OC, threads)
    first, last = piece * N * OC // pieces, (piece + 1) * N * OC // pieces
    if planes_in_registers(g, CG, DH, DW, x.itemsize):
        # Each output vector's taps come straight from x, under masks or by
        # shuffles (``nine_tap_plane``, ``strided_nine_tap_plane``): no padded
        # copy. Output plane ``plane`` reads input plane plane // OCG, counted
        # here: with three divisions a plane, 128 channels of 8x8 on 16 images took
        # 44 against 35-37 us.
        oc, source, k = first % OC, first // OCG, first % OCG
        for plane in range(first, last):
            if SH == 1:
                nine_tap_plane(out, U(plane * P), x, U(source * H * W), U(H), U(W),
                               nine_weights(weight, oc * 9), bias[oc], relu)
            else:
                strided_nine_tap_plane(out, U(plane * P), x, U(source * H * W), U(H), U(W),
                                       nine_weights(weight, oc * 9), bias[oc], relu)
            oc, k = oc + 1, k + 1
            if oc == OC:
                oc = 0
            if k == OCG:
                source, k = source + 1, 0
        return
    Hq, Wq, F = phase_geometry(H, W, PH, PW, KW, DW, SH, SW)
    offsets = tap_offsets(KH, KW, DH, DW, SH, SW, Wq, F)
    taps = np.arange(T)
    # A depthwise 3x3 conv whose output rows fill half a vector or more sums
    # its rows in place (``nine_tap_rows``): no pass over a plane of sums with
    # the padded width, no copy of its rows out.
    rows_in_place = T == 9 and CG == 1 and OW >= 32 // x.itemsize
    o9 = np.zeros(9, np.int64)
    o9[:min(T, 9)] = offsets[:min(T, 9)]
    offsets9 = (U(o9[0]), U(o9[1]), U(o9[2]), U(o9[3]), U(o9[4]), U(o9[5]), U(o9[6]),
                U(o9[7]), U(o9[8]))
    pad = np.zeros(SH * SW * F, x.dtype)
    acc = np.empty(OH * Wq, x.dtype)
    for plane in range(first, last):
        n, oc = plane // OC, plane % OC
        if rows_in_place:
            phase_planes(x, n * C + oc // OCG, H, W, PH, PW, SH, SW, Hq, Wq, F, pad)
            nine_tap_rows(out, U(plane * P), U(OW), pad, U(0), U(Wq), offsets9,
                          nine_weights(weight, oc * 9), U(OH), U(OW), bias[oc], relu)
            continue
        for ci in range(CG):
            c = (oc // OCG) * CG + ci
            phase_planes(x, n * C + c, H, W, PH, PW, SH, SW, Hq, Wq, F, pad)
            t = 0
            while t < T:
                t += tap_sums(acc, 0, pad, weight, (oc * CG + ci) * T, taps, offsets, t,
                              OH * Wq, ci == 0 and t == 0, bias[oc])
        for oh in range(OH):
            d, s = U(plane * P + oh * OW), U(oh * Wq)
            if relu:
                relu_copy_run(out, d, acc, s, U(OW))
            else:
                copy_run(out, d, acc, s, U(OW))


@kernel(cost=16, parts=(grouped_conv_forward_part,))
def grouped_conv_forward(grouped_conv_forward_part, x, weight, bias, g, groups, DH, DW, relu,
                         out, threads):
    """out = conv(x, weight) + bias with ``groups`` and dilation (DH, DW), then
    max(., 0) with ``relu``. x: float (N*C*H*W,); weight (OC*C/G*KH*KW,);
    bias (OC,). Writes out: (N*OC*OH*OW,). Parallel over output planes, in
    ``chunks_of(planes, threads)`` pieces (threads: int64, the thread count).
    The taps' sums may be reordered (``reassociate``)."""
    for piece in prange(chunks_of(x.size // (g[0] * g[1] * g[2]) * bias.size, threads)):
        call_part(grouped_conv_forward_part, np.int64(piece), x, weight, bias, g, groups, DH, DW,
                  relu, out, threads)


@helper(reassociate=True)
def grouped_conv_input_grad_part(piece, dy, weight, g, groups, DH, DW, dx, threads):
    """Piece ``piece`` of ``grouped_conv_input_grad`` (same arguments): its share
    of the input planes (``chunks_of``)."""
    C, H, W, KH, KW, SH, SW, PH, PW, OH, OW = g
    N = dx.size // (C * H * W)
    OC = dy.size // (N * OH * OW)
    CG, OCG = C // groups, OC // groups
    P = OH * OW
    T = KH * KW
    pieces = chunks_of(N * C, threads)
    if SH == 1 and OCG == 1 and planes_in_registers(g, CG, DH, DW, dx.itemsize):
        # A depthwise 3x3, stride 1, padding 1: dx's plane is dy's convolved the
        # same way with the filter turned round (``nine_tap_plane``, no copies).
        for plane in range(piece * N * C // pieces, (piece + 1) * N * C // pieces):
            channel = plane % C  # its filter's too: one filter a channel
            nine_tap_plane(dx, U(plane * H * W), dy, U(plane * H * W), U(H), U(W),
                           nine_weights_turned(weight, channel * 9), dx.dtype.type(0), False)
        return
    Hq, Wq, F = phase_geometry(H, W, PH, PW, KW, DW, SH, SW)
    offsets = tap_offsets(KH, KW, DH, DW, SH, SW, Wq, F)
    phases = SH * SW
    # Tap t adds w[t] * wide[j] to dpad[offsets[t] + j]: phase p's value i gathers
    # wide[i - (offsets[t] - p*F)] over its taps, read at ``margin`` into a copy
    # of wide with zeros before and after.
    margin = 0
    for t in range(T):
        margin = max(margin, offsets[t] % F)
    taps = np.empty(T, np.int64)  # the taps, phase by phase
    gather = np.empty(T, np.int64)  # where each reads in the bordered copy
    first = np.zeros(phases + 1, np.int64)  # phase p's taps: taps[first[p]:first[p + 1]]
    k = 0
    for p in range(phases):
        first[p] = k
        for t in range(T):
            if offsets[t] // F == p:
                taps[k] = t
                gather[k] = margin - offsets[t] % F
                k += 1
    first[phases] = k
    # where each input row and column lands among the phases
    at_row, at_col = np.empty(H, np.int64), np.empty(W, np.int64)
    for h in range(H):
        at_row[h] = _tap_offset(h + PH, 0, SH, SW, Wq, F)
    for w in range(W):
        at_col[w] = _tap_offset(0, w + PW, SH, SW, Wq, F)
    even, odd = stride2_columns(PW, F)
    dpad = np.zeros(phases * F, dy.dtype)  # phases without taps stay 0
    wide = np.zeros(margin + max(Hq, OH) * Wq, dy.dtype)  # its zeros stay 0
    for plane in range(piece * N * C // pieces, (piece + 1) * N * C // pieces):
        n, c = plane // C, plane % C
        ci = c % CG
        for oco in range(OCG):
            oc = (c // CG) * OCG + oco
            for oh in range(OH):
                copy_run(wide, U(margin + oh * Wq), dy, U((n * OC + oc) * P + oh * OW), U(OW))
            for p in range(phases):
                e = first[p]
                while e < first[p + 1]:
                    e += tap_sums(dpad, p * F, wide, weight, (oc * CG + ci) * T,
                                  taps[:first[p + 1]], gather[:first[p + 1]], e, Hq * Wq,
                                  oco == 0 and e == first[p], np.float32(0))
        d = dx[plane * H * W:(plane + 1) * H * W]
        for h in range(H):
            if SW == 1:  # a contiguous run
                copy_run(d, U(h * W), dpad, U(at_row[h] + PW), U(W))
            elif SW == 2:
                interleave_run(d, U(h * W), dpad, U(at_row[h] + even), U(at_row[h] + odd),
                               U(W))
            else:
                for w in range(W):
                    d[h * W + w] = dpad[at_row[h] + at_col[w]]


@kernel(cost=16, parts=(grouped_conv_input_grad_part,))
def grouped_conv_input_grad(grouped_conv_input_grad_part, dy, weight, g, groups, DH, DW, dx,
                            threads):
    """dx = the gradient of ``grouped_conv_forward`` at x for the gradient dy:
    float (N*OC*OH*OW,) at its output (masked by a fused ReLU beforehand).
    Writes dx: (N*C*H*W,). Parallel over input planes (``chunks_of``, as the
    forward): each owns its plane, gathering for each of its values the taps
    that reach it (one pass per phase, ``tap_sums``) from a zero-bordered copy
    of each dy plane."""
    for piece in prange(chunks_of(dx.size // (g[1] * g[2]), threads)):
        call_part(grouped_conv_input_grad_part, np.int64(piece), dy, weight, g, groups, DH, DW,
                  dx, threads)


@helper(reassociate=True)
def grouped_conv_weight_grad_part(oc, x, dy, g, groups, DH, DW, dweight, dbias):
    """Output channel ``oc`` of ``grouped_conv_weight_grad`` (same arguments)."""
    C, H, W, KH, KW, SH, SW, PH, PW, OH, OW = g
    OC = dbias.size
    N = x.size // (C * H * W)
    CG, OCG = C // groups, OC // groups
    P = OH * OW
    T = KH * KW
    zero = np.float32(0)  # float32 sums of float32 values; float64 ones of float64
    Hq, Wq, F = phase_geometry(H, W, PH, PW, KW, DW, SH, SW)
    offsets = tap_offsets(KH, KW, DH, DW, SH, SW, Wq, F)
    pad = np.zeros(SH * SW * F, x.dtype)
    wide = np.zeros(OH * Wq, dy.dtype)  # columns OW.. stay 0
    sums = np.zeros(CG * T, dy.dtype)
    total = zero
    for n in range(N):
        at = (n * OC + oc) * P
        for j in range(P):
            total += dy[at + j]
        for oh in range(OH):
            copy_run(wide, U(oh * Wq), dy, U(at + oh * OW), U(OW))
        for ci in range(CG):
            c = (oc // OCG) * CG + ci
            phase_planes(x, n * C + c, H, W, PH, PW, SH, SW, Hq, Wq, F, pad)
            t = 0
            while t < T:
                t += tap_dots(sums, ci * T, wide, pad, offsets, t, OH * Wq)
    dbias[oc] = total
    for j in range(CG * T):
        dweight[oc * CG * T + j] = sums[j]


@kernel(cost=16, parts=(grouped_conv_weight_grad_part,))
def grouped_conv_weight_grad(grouped_conv_weight_grad_part, x, dy, g, groups, DH, DW, dweight,
                             dbias):
    """The gradients of ``grouped_conv_forward``'s weight and bias for the
    gradient dy: float (N*OC*OH*OW,) at its output. Writes dweight
    (OC*C/G*KH*KW,) and dbias (OC,). Parallel over output channels: each owns
    its filters, and walks the batch once, every tap of an (image, channel)
    plane summed while the plane is in cache (up to nine in one pass,
    ``tap_dots``). Its sums may be reordered (``reassociate``): they then run
    on vector lanes."""
    for oc in prange(dbias.size):
        call_part(grouped_conv_weight_grad_part, np.int64(oc), x, dy, g, groups, DH, DW, dweight,
                  dbias)
