"""A 3x3 convolution followed by a 2x2 max-pool, forward and backward, by
Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms
for Convolutional Neural Networks", 2016).

The 2x2 conv outputs under one pooling window come from a 4x4 input tile d:
Y = A^T [(G g G^T) . (B^T d B)] A for a 3x3 filter g, with . the element-wise
product. Over all channels that is 16 independent GEMMs, one per element xi
of the transformed 4x4 tile, here in transposed form:
Mt[xi] (L, OC) = Vt[xi] (L, C) @ Ut[xi] (C, OC), Vt the transformed tiles of
L pooling windows and Ut the transformed filters: 16*C*OC multiply-adds per
window instead of 36*C*OC (2.25x fewer). Each window's 2x2 outputs are
pooled at once (max, then bias, then the optional ReLU, as
``block_to_pool_major`` does): the conv output is never stored.

Without a pool every 2x2 output of a tile is written (its 2x2 tiles take
the windows' place). Backward is the exact adjoint, per chunk of windows:
dM = A dY A^T from each window's winner (kept by forward), or from the
tile's four output gradients without a pool; dU[xi] (C, OC) += Vt[xi]^T
dM[xi] for the weight (dW = G^T dU G), and dV[xi] = dM[xi] U[xi]^T, whose tiles'
B dV B^T are added back onto the image for the input gradient.

Channels are the contiguous axis of every transform (the image is first
copied channels-last), so the transforms run as vector loops over channels:
a tile's 16 inputs are 16 channel vectors. (Transforming one tile of one
channel at a time, the image left channels-first, cost twice the GEMMs.)

Layouts (flat, C-contiguous): x (N, C, H, W); weight (OC, C, 3, 3); Ut (16,
C, OC); per part: image (H+2PH, W+2PW, C) zero-bordered, Vt (16, Lp, C),
Mt (16, Lp, OC), pooled (T, OC), with T = POH*POW windows per image and Lp
(``padded_rows``) at least a chunk's windows, the rows apart of the 16
matrices (the products cover the windows' rows only); out (N, OC, POH, POW).
"""
import numpy as np

from ._jit import call_part, helper, kernel, prange
from .blas import TRANS
from .cache import cached_njit
from .merge import add_run
from .runs import copy_run, zero_run
from .tiles import batched_product, product, refresh_kept, transpose_slice

U = np.uint64
#: Channels per block of the transforms: each writes its 16 outputs for a
#: block of channels into a small staging buffer at constant offsets, then
#: copies them out as 16 runs. Written straight to their 16 destinations
#: (runtime offsets) the loops did not vectorise: a channels-last tile's
#: transform took 9.0 vs 3.8 us per image (32 channels, 16x16).
STAGE_CHANNELS = 64
_HALF = np.float32(0.5)  # float32: a float64 literal would widen float32 code


@cached_njit(inline="always")
def _input_rows(a0, a1, a2, a3):
    """B^T times a column of 4 values (B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]])."""
    return a0 - a2, a1 + a2, a2 - a1, a1 - a3


@cached_njit(inline="always")
def _filter_rows(g0, g1, g2):
    """G times a column of 3 filter taps (G = [[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]])."""
    return g0, (g0 + g1 + g2) * _HALF, (g0 - g1 + g2) * _HALF, g2


@cached_njit(inline="always")
def _filter_adjoint(a0, a1, a2, a3):
    """G^T times a column of 4 values: the adjoint of ``_filter_rows``."""
    return a0 + (a1 + a2) * _HALF, (a1 - a2) * _HALF, (a1 + a2) * _HALF + a3


@cached_njit(inline="always")
def _filter_row_adjoint(dUt, s, step, r):
    """G^T times row r of a 4x4 gradient, element xi at dUt[s + xi*step]."""
    return _filter_adjoint(dUt[s + (4 * r) * step], dUt[s + (4 * r + 1) * step],
                           dUt[s + (4 * r + 2) * step], dUt[s + (4 * r + 3) * step])


@cached_njit(inline="always")
def _input_adjoint(a0, a1, a2, a3):
    """B times a column of 4 values: the adjoint of ``_input_rows``."""
    return a0, a1 - a2 + a3, a1 + a2 - a0, -a3


@cached_njit(inline="always")
def _output_rows(m0, m1, m2, m3):
    """A^T times a column of 4 values (A^T = [[1,1,1,0],[0,1,-1,-1]])."""
    return m0 + m1 + m2, m1 - m2 - m3


@helper
def transform_filters(weight, C, oc0, oc1, OC, c_step, oc_step, Ut):
    """Ut[xi*C*OC + c*c_step + oc*oc_step] = (G g G^T)[xi] for the filters
    g = weight[oc, c] (3x3) of output channels [oc0, oc1): Ut as (16, C, OC)
    with (c_step, oc_step) = (OC, 1), as (16, OC, C) with (1, C).
    weight: float (OC*C*9,); Ut: (16*C*OC,)."""
    for oc in range(oc0, oc1):
        for c in range(C):
            g = (oc * C + c) * 9
            # G g column by column (each a tuple of its 4 rows), then G along the rows.
            h0 = _filter_rows(weight[g], weight[g + 3], weight[g + 6])
            h1 = _filter_rows(weight[g + 1], weight[g + 4], weight[g + 7])
            h2 = _filter_rows(weight[g + 2], weight[g + 5], weight[g + 8])
            for r in range(4):
                u = _filter_rows(h0[r], h1[r], h2[r])
                for q in range(4):
                    Ut[(r * 4 + q) * C * OC + c * c_step + oc * oc_step] = u[q]


@helper
def filter_gradients(dUt, C, oc0, oc1, OC, dweight):
    """The adjoint of ``transform_filters``: dweight[oc, c] = G^T dU G for the
    4x4 gradients dU = dUt[:, c, oc] of output channels [oc0, oc1).
    dUt: float (16*C*OC,) as (16, C, OC); writes dweight: (OC*C*9,)."""
    for oc in range(oc0, oc1):
        for c in range(C):
            s = c * OC + oc
            # G^T along each row of dU (a tuple of 3 columns), then down the columns.
            h0 = _filter_row_adjoint(dUt, s, C * OC, 0)
            h1 = _filter_row_adjoint(dUt, s, C * OC, 1)
            h2 = _filter_row_adjoint(dUt, s, C * OC, 2)
            h3 = _filter_row_adjoint(dUt, s, C * OC, 3)
            g = (oc * C + c) * 9
            for q in range(3):
                col = _filter_adjoint(h0[q], h1[q], h2[q], h3[q])
                for r in range(3):
                    dweight[g + r * 3 + q] = col[r]


@helper
def filters_changed(weight, scale, C, oc0, oc1, OC, kept):
    """True when the filters of output channels [oc0, oc1) or their scale ((OC,),
    or size 0: none) differ from kept (OC*C*9 + OC,: the filters, then the
    scale, as last transformed), which then takes them (``refresh_kept``).
    Both Winograd transforms keep their filters this way."""
    changed = refresh_kept(weight, kept, oc0 * C * 9, oc1 * C * 9)
    if scale.size:
        changed |= refresh_kept(scale, kept[OC * C * 9:], oc0, oc1)
    return changed


@helper
def refresh_filters(weight, scale, C, oc0, oc1, OC, kept, Ut):
    """Keep Ut the transform of the filters of output channels [oc0, oc1), each
    output channel's times scale[oc] (scale (OC,), or size 0: none), redone
    only when filters or scale changed (``refresh_kept``: kept (OC*C*9 + OC,)
    holds them as last transformed, the scale after the filters). A batch norm
    folded into the conv comes in as that scale: at inference the weights are
    then read once a call (to compare), not also scaled and written (ResNet-20,
    one image: 6% of its time)."""
    if filters_changed(weight, scale, C, oc0, oc1, OC, kept):
        transform_filters(weight, C, oc0, oc1, OC, OC, 1, Ut)
        if scale.size:
            for xi_c in range(16 * C):
                for oc in range(oc0, oc1):
                    Ut[xi_c * OC + oc] *= scale[oc]


@helper
def channels_last(x, n, C, H, W, PH, PW, r0, r1, image):
    """Rows [r0, r1) of image (H+2PH, W+2PW, C) = image n of x (N*C*H*W,)
    channels-last, in a border of zeros PH rows and PW columns wide. The
    border is written at every call: a buffer of the same size may have held
    an image of another shape (10x10 and 7x14 padded by 1 are both 144
    positions)."""
    Wp = W + 2 * PW
    h0, h1 = min(max(r0 - PH, 0), H), max(min(r1 - PH, H), 0)  # the rows of x among them
    for hp in range(r0, r1):
        if hp < PH + h0 or hp >= PH + h1:
            zero_run(image, U(hp * Wp * C), U(Wp * C))
    plane = x[n * C * H * W:]
    if PW == 0:  # the rows are contiguous: (C, rows*W) into (rows*W, C) at once
        transpose_slice(plane, H * W, h0 * W, (h1 - h0) * W, 0, C, C,
                        image[(PH + h0) * Wp * C:])
        return
    for h in range(h0, h1):  # row h of every channel, (C, W), into (W, C)
        row = (h + PH) * Wp * C
        zero_run(image, U(row), U(PW * C))
        zero_run(image, U(row + (PW + W) * C), U(PW * C))
        transpose_slice(plane, H * W, h * W, W, 0, C, C, image[row + PW * C:])


@cached_njit(inline="always")
def _input_column(image, s, row):
    """B^T times the 4 values image[s + a*row], a < 4 (a tile's column, one channel)."""
    return _input_rows(image[s], image[s + row], image[s + U(2) * row], image[s + U(3) * row])


@cached_njit(inline="always")
def _output_column(Mt, s, q, step):
    """A^T times column q of a window's 4x4 M, element xi at Mt[s + xi*step]."""
    return _output_rows(Mt[s + U(q) * step], Mt[s + U(4 + q) * step],
                        Mt[s + U(8 + q) * step], Mt[s + U(12 + q) * step])


@helper
def transform_tiles(image, C, Wp, POW, t0, t1, row0, Vt, Lp, stage):
    """Vt[xi, row0 + t - t0, :] = (B^T d B)[xi] over the C channels, for the 4x4
    tile d of image (channels-last, zero-bordered, Wp columns) under each
    pooling window t = i*POW + j in [t0, t1): input rows 2i .. 2i+3, columns
    2j .. 2j+3. stage: workspace (>= 16*STAGE_CHANNELS,) (see STAGE_CHANNELS)."""
    step = U(Lp * C)  # from Vt[xi] to Vt[xi+1]
    row, col = U(Wp * C), U(C)
    for t in range(t0, t1):
        base = U(((2 * (t // POW)) * Wp + 2 * (t % POW)) * C)
        dst = U((row0 + t - t0) * C)
        for c0 in range(0, C, STAGE_CHANNELS):
            width = U(min(STAGE_CHANNELS, C - c0))
            for c in range(width):
                s = base + U(c0) + c
                e0 = _input_column(image, s, row)
                e1 = _input_column(image, s + col, row)
                e2 = _input_column(image, s + U(2) * col, row)
                e3 = _input_column(image, s + U(3) * col, row)
                for r in range(4):
                    v = _input_rows(e0[r], e1[r], e2[r], e3[r])
                    for q in range(4):
                        stage[U((r * 4 + q) * STAGE_CHANNELS) + c] = v[q]
            for xi in range(16):
                copy_run(Vt, U(xi) * step + dst + U(c0), stage, U(xi * STAGE_CHANNELS), width)


@cached_njit(inline="always")
def _tile_outputs(Mt, s, step):
    """A^T M A: the 2x2 conv outputs (y00, y01, y10, y11) of the tile whose 4x4 M
    has element xi at Mt[s + xi*step]."""
    f0 = _output_column(Mt, s, 0, step)
    f1 = _output_column(Mt, s, 1, step)
    f2 = _output_column(Mt, s, 2, step)
    f3 = _output_column(Mt, s, 3, step)
    y00, y01 = _output_rows(f0[0], f1[0], f2[0], f3[0])
    y10, y11 = _output_rows(f0[1], f1[1], f2[1], f3[1])
    return y00, y01, y10, y11


@helper
def pool_windows(Mt, bias, OC, T, row0, Lp, relu, pooled, train, argmax):
    """pooled[t, oc] = max of window t's 2x2 conv outputs (A^T M A, from rows
    row0 + t of Mt), plus bias[oc], then max(0, .) with ``relu``, for the T
    windows and every output channel oc: the first maximum in row-major order
    wins and a NaN propagates, as in ``block_to_pool_major``. With ``train``,
    argmax[t, oc] (int32 (T*OC,)) = the winner's member a*2 + b (row a,
    column b of the window), or -1 where the ReLU passes no gradient (pooled
    output not > 0)."""
    step = U(Lp * OC)
    for t in range(T):
        src = U((row0 + t) * OC)
        dst = U(t * OC)
        for oc in range(U(OC)):
            s = src + oc
            y00, y01, y10, y11 = _tile_outputs(Mt, s, step)
            best = y00
            at = 0
            if not (y01 <= best):
                best = y01
                at = 1
            if not (y10 <= best):
                best = y10
                at = 2
            if not (y11 <= best):
                best = y11
                at = 3
            v = best + bias[oc]
            if relu and not (v > 0):
                at = -1
                if v < 0:
                    v = 0
            pooled[dst + oc] = v
            if train:
                argmax[dst + oc] = at


@helper
def unpooled_tiles(Mt, bias, OC, POW, t0, t1, row0, Lp, relu, stage):
    """The 2x2 conv outputs of tiles [t0, t1) of one image (tile t = i*POW + j:
    output rows 2i, 2i+1, columns 2j, 2j+1; A^T M A from row row0 + t - t0 of
    Mt), plus bias[oc], then max(0, .) with ``relu`` (a NaN stays), written
    channels-last: stage[((2i+a)*OW + 2j+b)*OC + oc] for output (a, b) of
    tile t, OW = 2*POW. stage: float (OH*OW*OC,)."""
    step = U(Lp * OC)
    row = U(2 * POW * OC)  # from output row 2i to 2i+1
    zero = np.float32(0)  # float32: a float64 literal would widen float32 code
    for t in range(t0, t1):
        src = U((row0 + t - t0) * OC)
        d = U((2 * (t // POW) * 2 * POW + 2 * (t % POW)) * OC)
        for oc in range(U(OC)):
            s = src + oc
            y00, y01, y10, y11 = _tile_outputs(Mt, s, step)
            b = bias[oc]
            y00, y01, y10, y11 = y00 + b, y01 + b, y10 + b, y11 + b
            if relu:
                y00 = zero if y00 < 0 else y00
                y01 = zero if y01 < 0 else y01
                y10 = zero if y10 < 0 else y10
                y11 = zero if y11 < 0 else y11
            stage[d + oc] = y00
            stage[d + U(OC) + oc] = y01
            stage[d + row + oc] = y10
            stage[d + row + U(OC) + oc] = y11


@helper
def unpooled_rows_out(stage, OC, POH, POW, t0, t1, out):
    """Copy the outputs of tiles [t0, t1) from ``stage`` (``unpooled_tiles``'s
    channels-last (OH*OW, OC)) into out (OC, OH*OW) of one image, the run of
    columns each tile row covers in its two output rows."""
    OW, P = 2 * POW, 4 * POH * POW
    for i in range(t0 // POW, (t1 - 1) // POW + 1):
        j0, j1 = max(t0 - i * POW, 0), min(t1 - i * POW, POW)
        for a in range(2):
            p0 = (2 * i + a) * OW + 2 * j0
            transpose_slice(stage, OC, 0, OC, p0, p0 + 2 * (j1 - j0), P, out)


@cached_njit(inline="always")
def _stage_gradient_row(stage, r, j, g, low_col, zero):
    """Row r of a window's dM = g_r A[:, b]^T, element q into stage[(4r+q)*STAGE_CHANNELS
    + j] (A's column b is (1, 1, 1, 0) with ``low_col``, otherwise (0, 1, -1, -1))."""
    d = U(4 * r * STAGE_CHANNELS) + j
    stage[d] = g if low_col else zero
    stage[d + U(STAGE_CHANNELS)] = g
    stage[d + U(2 * STAGE_CHANNELS)] = g if low_col else -g
    stage[d + U(3 * STAGE_CHANNELS)] = zero if low_col else -g


@helper
def window_gradients(dy, argmax, n, OC, T, row0, Lp, dyt, dMt, dbias, stage):
    """The adjoint of ``pool_windows`` for image n: dM = A dY A^T for each
    window, dY (2x2) zero but for the winner's gradient, into rows
    row0 + t of dMt (16, Lp, OC); adds the gradients passed to dbias (OC,).

    dy: float (N*OC*T,) at the pooled output, (N, OC, T); argmax: int32
    (N*T*OC,) from ``pool_windows``; dyt: workspace (T*OC,); stage: as
    ``transform_tiles``'s."""
    transpose_slice(dy[n * OC * T:], T, 0, T, 0, OC, OC, dyt)  # dy[n] (OC, T) -> (T, OC)
    zero = np.float32(0)  # float32: a float64 literal would widen float32 code
    step = U(Lp * OC)
    for t in range(T):
        for oc0 in range(0, OC, STAGE_CHANNELS):
            width = U(min(STAGE_CHANNELS, OC - oc0))
            src = U(t * OC + oc0)
            win = U((n * T + t) * OC + oc0)
            for j in range(width):
                m = argmax[win + j]
                g = dyt[src + j] if m >= 0 else zero
                dbias[U(oc0) + j] += g
                # The winner is in row a = m // 2, column b = m % 2: dM = g A[:, a] A[:, b]^T.
                low_row, low_col = m < 2, (m & 1) == 0
                _stage_gradient_row(stage, 0, j, g if low_row else zero, low_col, zero)
                _stage_gradient_row(stage, 1, j, g, low_col, zero)
                _stage_gradient_row(stage, 2, j, g if low_row else -g, low_col, zero)
                _stage_gradient_row(stage, 3, j, zero if low_row else -g, low_col, zero)
            dst = U((row0 + t) * OC + oc0)
            for xi in range(16):
                copy_run(dMt, U(xi) * step + dst, stage, U(xi * STAGE_CHANNELS), width)


@cached_njit(inline="always")
def _stage_tile_row(stage, r, j, u0, u1):
    """Row r of a tile's dM = A dY A^T from u = (A dY)[r] = (u0, u1): element q
    into stage[(4r+q)*STAGE_CHANNELS + j] (A's rows (1, 0), (1, 1), (1, -1), (0, -1))."""
    d = U(4 * r * STAGE_CHANNELS) + j
    stage[d] = u0
    stage[d + U(STAGE_CHANNELS)] = u0 + u1
    stage[d + U(2 * STAGE_CHANNELS)] = u0 - u1
    stage[d + U(3 * STAGE_CHANNELS)] = -u1


@helper
def tile_gradients(dy, n, OC, POH, POW, row0, Lp, dyt, dMt, dbias, stage):
    """The adjoint of ``unpooled_tiles`` for image n: dM = A dY A^T of each 2x2
    output tile t (dY: its four output gradients), into rows row0 + t of dMt
    (16, Lp, OC); adds every gradient to dbias (OC,).

    dy: float (N*OC*OH*OW,) at the conv's output, OH = 2*POH, OW = 2*POW;
    dyt: workspace (OH*OW*OC,); stage: as ``transform_tiles``'s."""
    OW, P = 2 * POW, 4 * POH * POW
    transpose_slice(dy[n * OC * P:], P, 0, P, 0, OC, OC, dyt)  # dy[n] (OC, P) -> (P, OC)
    step = U(Lp * OC)
    for t in range(POH * POW):
        top = U((2 * (t // POW) * OW + 2 * (t % POW)) * OC)
        below = top + U(OW * OC)
        for oc0 in range(0, OC, STAGE_CHANNELS):
            width = U(min(STAGE_CHANNELS, OC - oc0))
            for j in range(width):
                k = U(oc0) + j
                d00, d01 = dyt[top + k], dyt[top + U(OC) + k]
                d10, d11 = dyt[below + k], dyt[below + U(OC) + k]
                dbias[k] += (d00 + d01) + (d10 + d11)
                _stage_tile_row(stage, 0, j, d00, d01)
                _stage_tile_row(stage, 1, j, d00 + d10, d01 + d11)
                _stage_tile_row(stage, 2, j, d00 - d10, d01 - d11)
                _stage_tile_row(stage, 3, j, -d10, -d11)
            dst = U((row0 + t) * OC + oc0)
            for xi in range(16):
                copy_run(dMt, U(xi) * step + dst, stage, U(xi * STAGE_CHANNELS), width)


@helper
def scatter_tiles(dVt, C, Wp, POH, POW, row0, Lp, dimage, stage):
    """The adjoint of ``transform_tiles``: adds B dV B^T of each window t's
    tile gradient dV (rows row0 + t of dVt (16, Lp, C)) onto its 4x4 tile of
    dimage (channels-last, Wp columns; tiles overlap by 2 rows/columns).
    stage: workspace (>= 32*STAGE_CHANNELS,)."""
    step = U(Lp * C)
    row, col = U(Wp * C), U(C)
    S = U(STAGE_CHANNELS)
    for t in range(POH * POW):
        base = U(((2 * (t // POW)) * Wp + 2 * (t % POW)) * C)
        for c0 in range(0, C, STAGE_CHANNELS):
            width = U(min(STAGE_CHANNELS, C - c0))
            src = U((row0 + t) * C + c0)
            for xi in range(16):
                copy_run(stage, U(xi) * S, dVt, U(xi) * step + src, width)
            for c in range(width):
                h0 = _input_adjoint(stage[c], stage[S + c], stage[U(2) * S + c],
                                    stage[U(3) * S + c])
                h1 = _input_adjoint(stage[U(4) * S + c], stage[U(5) * S + c],
                                    stage[U(6) * S + c], stage[U(7) * S + c])
                h2 = _input_adjoint(stage[U(8) * S + c], stage[U(9) * S + c],
                                    stage[U(10) * S + c], stage[U(11) * S + c])
                h3 = _input_adjoint(stage[U(12) * S + c], stage[U(13) * S + c],
                                    stage[U(14) * S + c], stage[U(15) * S + c])
                for q in range(4):
                    e = _input_adjoint(h0[q], h1[q], h2[q], h3[q])
                    for r in range(4):
                        stage[U(16 + r * 4 + q) * S + c] = e[r]
            d = base + U(c0)
            for r in range(4):
                for q in range(4):
                    dst = d + U(r) * row + U(q) * col
                    src_stage = U(16 + r * 4 + q) * S
                    for c in range(width):
                        dimage[dst + c] += stage[src_stage + c]


@cached_njit()
def padded_rows(windows):
    """Rows of a chunk's Vt[xi] and Mt[xi] for ``windows`` pooling windows: a
    multiple of 4, and not of 16, so that the 16 matrices Vt[xi] do not start
    a power of two apart (they would share L1 sets: 128 rows ran at half the
    speed of 252). The products read and write only the windows' rows."""
    rows = -(-windows // 4) * 4
    return rows + 4 if rows % 16 == 0 else rows


@helper
def transform_windows(x, w0, w1, C, H, W, PH, PW, POH, POW, image, Vt, Lp, stage):
    """Vt (16, Lp, C) = the transformed input tiles of the pooling windows [w0, w1)
    of the batch (window w = n*POH*POW + t: window t of image n;
    ``transform_tiles``), rows past them untouched. image: workspace
    ((H+2PH)*(W+2PW)*C,), zero-bordered (``channels_last``); stage as
    ``transform_tiles``'s."""
    T = POH * POW
    for n in range(w0 // T, -(-w1 // T)):
        t0, t1 = max(w0 - n * T, 0), min(w1 - n * T, T)
        # the rows of the padded image under pooled rows t0 // POW .. (t1 - 1) // POW
        channels_last(x, n, C, H, W, PH, PW, 2 * (t0 // POW), 2 * ((t1 - 1) // POW) + 4, image)
        transform_tiles(image, C, W + 2 * PW, POW, t0, t1, n * T + t0 - w0, Vt, Lp, stage)


@cached_njit(inline="always")
def part_windows(part, N, T, parts, per, split):
    """(start, stop, step): the windows (or tiles) of a batch of N images of T
    each that part ``part`` of a Winograd forward takes, ``step`` at a time:
    images [part*N//parts, (part+1)*N//parts), ``per`` at a time, or with
    split > 1 thread ``part``'s share of the one chunk (``split_bound``)."""
    if split > 1:
        return split_bound(part, N * T, split), split_bound(part + 1, N * T, split), N * T
    return part * N // parts * T, (part + 1) * N // parts * T, per * T


@cached_njit(inline="always")
def split_bound(g, L, split):
    """Where thread g's windows start when ``split`` threads share L: near g*L/split,
    at a multiple of 8 (whole 8-row register tiles: of one image's 25, 16 and
    9 took 4.1 and 3.4 us of products, 12 and 13 3.4 and 4.5)."""
    return L if g >= split else min((g * L // split + 4) // 8 * 8, L)


@helper
def forward_filters_part(part, x, weight, scale, bias, C, H, W, PH, PW, POH, POW, relu, pool, N,
                         parts, per, kept, Ut, image, Vt, Mt, pooled, out, train, argmax, split,
                         tiles, blas, residual, add_relu):
    """Part ``part`` of ``winograd_conv_pool`` (same arguments) refreshing the
    transformed filters (``refresh_filters``) of its share of the output
    channels, all of them when the kernel splits one chunk."""
    OC = bias.size
    shares = 1 if split > 1 else parts
    refresh_filters(weight, scale, C, part * OC // shares, (part + 1) * OC // shares, OC, kept,
                    Ut)


@helper
def unpooled_rows_add(residual, OC, POH, POW, t0, t1, start, relu, out):
    """Add residual to the runs of out that ``unpooled_rows_out`` wrote for tiles
    [t0, t1) of the image whose output starts at out[start] (OC, OH*OW), then
    max(., 0) with ``relu`` (``add_run``): a residual sum fused into the conv."""
    OW, P = 2 * POW, 4 * POH * POW
    if t0 % POW == 0 and t1 % POW == 0:  # whole rows of tiles: one run a channel
        for oc in range(OC):
            add_run(out, start + oc * P + 4 * t0, residual, 4 * (t1 - t0), relu)
        return
    for i in range(t0 // POW, (t1 - 1) // POW + 1):
        j0, j1 = max(t0 - i * POW, 0), min(t1 - i * POW, POW)
        for a in range(2):
            p0 = (2 * i + a) * OW + 2 * j0
            for oc in range(OC):
                add_run(out, start + oc * P + p0, residual, 2 * (j1 - j0), relu)


@helper
def forward_images_part(part, x, weight, scale, bias, C, H, W, PH, PW, POH, POW, relu, pool, N,
                        parts, per, kept, Ut, image, Vt, Mt, pooled, out, train, argmax, split,
                        tiles, blas, residual, add_relu):
    """Part ``part`` of ``winograd_conv_pool`` (same arguments): the pooled
    outputs of images [part*N//parts, (part+1)*N//parts), ``per`` at a time,
    in the part's workspaces, or with split > 1 of thread ``part``'s share of
    the one chunk's pooling windows (``split_bound``).

    Per chunk of windows [w0, w1) (window w = n*POH*POW + t: window t of
    image n): their tiles transformed into Vt (16, Lp, C)
    (``transform_windows``), 16 GEMMs Mt[xi] (Lp, OC) = Vt[xi] @ Ut[xi]
    (C, OC) over their rows only (the rows Lp pads to are never read), then
    pooled (``pool_windows``) image by image through pooled (POH*POW*OC,)
    into out and, with ``train``, their winners into argmax; without ``pool``
    every 2x2 output of each tile written (``unpooled_tiles``) through pooled
    (4*POH*POW*OC,) into out (N, OC, 2*POH, 2*POW)."""
    OC = bias.size
    T = POH * POW
    Lp = padded_rows(per * T)
    start, stop, step = part_windows(part, N, T, parts, per, split)
    image, Vt, Mt, pooled = image[part], Vt[part], Mt[part], pooled[part]
    stage = np.empty(16 * STAGE_CHANNELS, x.dtype)
    for w0 in range(start, stop, step):
        w1 = min(w0 + step, stop)
        transform_windows(x, w0, w1, C, H, W, PH, PW, POH, POW, image, Vt, Lp, stage)
        batched_product(blas, tiles, 16, w1 - w0, C, Vt, Lp * C, Ut, C * OC, OC, Mt, Lp * OC)
        for n in range(w0 // T, -(-w1 // T)):
            t0, t1 = max(w0 - n * T, 0), min(w1 - n * T, T)
            if not pool:
                unpooled_tiles(Mt, bias, OC, POW, t0, t1, n * T + t0 - w0, Lp, relu, pooled)
                unpooled_rows_out(pooled, OC, POH, POW, t0, t1, out[n * OC * 4 * T:])
                if residual.size == out.size:  # a residual sum, while they are in cache
                    unpooled_rows_add(residual, OC, POH, POW, t0, t1, n * OC * 4 * T, add_relu,
                                      out)
                continue
            pool_windows(Mt, bias, OC, t1 - t0, n * T + t0 - w0, Lp, relu, pooled, train,
                         argmax[(n * T + t0) * OC:])
            # (windows, OC) -> out[n, :, t0:t1] (OC, T)
            transpose_slice(pooled, OC, 0, OC, 0, t1 - t0, T, out[n * OC * T + t0:])


@kernel(blas=True, parts=(forward_filters_part, forward_images_part))
def winograd_conv_pool(forward_filters_part, forward_images_part, x, weight, scale, bias, C, H, W,
                       PH, PW, POH, POW, relu, pool, N, parts, per, kept, Ut, image, Vt, Mt, pooled,
                       out, train, argmax, split, tiles, blas, residual, add_relu):
    """Conv2D(3x3, stride 1, padding PH, PW) + [ReLU] + MaxPool2D(2, 2) by
    F(2x2, 3x3) (module docstring); without ``pool`` the conv + [ReLU] alone,
    of an even output size 2*POH x 2*POW, its 2x2 tiles taking the pooling
    windows' place (in training too: ``train`` then keeps nothing).

    x: float (N*C*H*W,); weight (OC*C*9,); scale (OC,), each output channel's
    filters' factor, or size 0 (none); bias (OC,). kept (OC*C*9 + OC,) and Ut
    (16*C*OC,) persist between calls: the filters (and scale) as last
    transformed and their transform (``refresh_filters``; kept starts as
    NaN). Part p takes images [p*N//parts, (p+1)*N//parts), ``per`` at a time, in its
    workspaces image[p] ((H+2PH)*(W+2PW)*C,), Vt[p] (16*Lp*C,), Mt[p]
    (16*Lp*OC,), pooled[p] (POH*POW*OC,), Lp = padded_rows(per*POH*POW).
    Writes out: (N*OC*POH*POW,) (without ``pool``: (N*OC*4*POH*POW,), and
    pooled[p] is (4*POH*POW*OC,)) and, with ``train``, argmax: int32
    (N*POH*POW*OC,) for ``winograd_conv_pool_backward`` (``pool_windows``).
    The GEMMs run in register tiles with ``tiles`` (``nnjit.kernels.tiles``),
    otherwise on BLAS. With split > 1 (one part, one chunk of per = N images), that
    many threads share the chunk instead, thread g taking the pooling windows
    from split_bound(g) to split_bound(g + 1) of the L = N*POH*POW, in workspaces [g]:
    each transforms, multiplies and pools only its own windows (the filters
    refreshed first, on one thread). (Split by output channels instead, each
    thread transformed the whole input: one image, 11.2 us against 14.3 on
    one thread.) The parts (``forward_filters_part``, ``forward_images_part``)
    are taken by address (``nnjit.kernels._jit``). residual: of out's size
    (without ``pool``), or none (size 0): added to the outputs as each chunk
    writes them, then max(., 0) with ``add_relu`` (a residual sum fused into
    the conv, ``nnjit.fusion``).
    """
    if split > 1:  # the filters on one thread, then the windows shared
        call_part(forward_filters_part, np.int64(0), x, weight, scale, bias, C, H, W, PH, PW, POH,
                  POW, relu, pool, N, parts, per, kept, Ut, image, Vt, Mt, pooled, out, train,
                  argmax, split, tiles, blas, residual, add_relu)
    else:
        for p in prange(parts):
            call_part(forward_filters_part, np.int64(p), x, weight, scale, bias, C, H, W, PH, PW,
                      POH, POW, relu, pool, N, parts, per, kept, Ut, image, Vt, Mt, pooled, out,
                      train, argmax, split, tiles, blas, residual, add_relu)
    # The count in a variable: a conditional expression inside prange() leaves
    # the loop serial (Numba converts no parfor there).
    shares = split if split > 1 else parts
    for p in prange(shares):
        call_part(forward_images_part, np.int64(p), x, weight, scale, bias, C, H, W, PH, PW, POH,
                  POW, relu, pool, N, parts, per, kept, Ut, image, Vt, Mt, pooled, out, train,
                  argmax, split, tiles, blas, residual, add_relu)


@helper
def backward_filters_part(part, x, dy, argmax, weight, C, H, W, PH, PW, POH, POW, pool, N,
                          parts, per, UtT, image, Vt, dMt, dVt, dimage, dyt, dU_parts, db_parts,
                          need_dx, dx, dweight, dbias, tiles, blas):
    """Part ``part`` of ``winograd_conv_pool_backward`` (same arguments): the
    filters' transform as (16, OC, C) into UtT for its share of the output
    channels."""
    OC = dbias.size
    transform_filters(weight, C, part * OC // parts, (part + 1) * OC // parts, OC, 1, C, UtT)


@helper
def backward_images_part(part, x, dy, argmax, weight, C, H, W, PH, PW, POH, POW, pool, N,
                         parts, per, UtT, image, Vt, dMt, dVt, dimage, dyt, dU_parts, db_parts,
                         need_dx, dx, dweight, dbias, tiles, blas):
    """Part ``part`` of ``winograd_conv_pool_backward`` (same arguments): images
    [part*N//parts, (part+1)*N//parts), ``per`` at a time, in the part's
    workspaces; writes its partial sums dU_parts[part] and db_parts[part] and,
    with ``need_dx``, its images' dx."""
    OC = dbias.size
    T = POH * POW
    Lp = padded_rows(per * T)
    Wp = W + 2 * PW
    first, last = part * N // parts, (part + 1) * N // parts
    vt, dmt, dvt, dU, db = Vt[part], dMt[part], dVt[part], dU_parts[part], db_parts[part]
    stage = np.empty(32 * STAGE_CHANNELS, x.dtype)
    dU[:] = 0
    db[:] = 0
    for n0 in range(first, last, per):
        n1 = min(n0 + per, last)
        transform_windows(x, n0 * T, n1 * T, C, H, W, PH, PW, POH, POW, image[part], vt, Lp,
                          stage)
        for n in range(n0, n1):
            if pool:
                window_gradients(dy, argmax, n, OC, T, (n - n0) * T, Lp, dyt[part], dmt, db,
                                 stage)
            else:
                tile_gradients(dy, n, OC, POH, POW, (n - n0) * T, Lp, dyt[part], dmt, db, stage)
        rows = (n1 - n0) * T  # the chunk's windows: the rows past them are never read
        for xi in range(16):
            product(blas, tiles, TRANS, C, rows, vt[xi * Lp * C:], C, dmt[xi * Lp * OC:], OC,
                    dU[xi * C * OC:], True)
        if not need_dx:
            continue
        batched_product(blas, tiles, 16, rows, OC, dmt, Lp * OC, UtT, OC * C, C, dvt, Lp * C)
        for n in range(n0, n1):
            dimage[part][:] = 0
            scatter_tiles(dvt, C, Wp, POH, POW, (n - n0) * T, Lp, dimage[part], stage)
            for h in range(H):  # the interior's row h, (W, C), into dx[n, :, h] (C, W)
                transpose_slice(dimage[part][((h + PH) * Wp + PW) * C:], C, 0, C, 0, W, H * W,
                                dx[n * C * H * W + h * W:])


@helper
def weight_gradient_part(part, x, dy, argmax, weight, C, H, W, PH, PW, POH, POW, pool, N,
                         parts, per, UtT, image, Vt, dMt, dVt, dimage, dyt, dU_parts, db_parts,
                         need_dx, dx, dweight, dbias, tiles, blas):
    """Part ``part`` of ``winograd_conv_pool_backward`` (same arguments): for its
    share of the output channels, the parts' dU_parts summed into dU_parts[0]
    and dweight from it; part 0 also sums db_parts into dbias."""
    OC = dbias.size
    oc0, oc1 = part * OC // parts, (part + 1) * OC // parts
    total = dU_parts[0]
    for q in range(1, parts):
        for r in range(16 * C):  # dU as (16*C, OC): this share's columns of every row
            for oc in range(r * OC + oc0, r * OC + oc1):
                total[oc] += dU_parts[q, oc]
    if part == 0:
        for oc in range(OC):
            acc = db_parts[0, oc]
            for q in range(1, parts):
                acc += db_parts[q, oc]
            dbias[oc] = acc
    filter_gradients(total, C, oc0, oc1, OC, dweight)


@kernel(blas=True, parts=(backward_filters_part, backward_images_part, weight_gradient_part))
def winograd_conv_pool_backward(backward_filters_part, backward_images_part, weight_gradient_part,
                                x, dy, argmax, weight, C, H, W, PH, PW, POH, POW, pool, N,
                                parts, per, UtT, image, Vt, dMt, dVt, dimage, dyt, dU_parts,
                                db_parts, need_dx, dx, dweight, dbias, tiles, blas):
    """Backward of ``winograd_conv_pool`` (``train``), over the same parts and chunks.

    dy: float (N*OC*POH*POW,), the gradient at the pooled output; argmax from
    forward. Without ``pool``, dy: (N*OC*4*POH*POW,), the gradient at the
    conv's output (its ReLU, if any, already applied), argmax unread. Per
    chunk: Vt (16, Lp, C) of the input tiles again (``transform_windows``),
    dMt (16, Lp, OC) from dy (``window_gradients``, ``tile_gradients``),
    then 16 GEMMs dU[xi] (C, OC) += Vt[xi]^T dMt[xi] and, with ``need_dx``,
    16 dVt[xi] (Lp, C) = dMt[xi] UtT[xi] (UtT: (16*OC*C,), the filters'
    transform as (16, OC, C), made here) scattered back onto the image
    (``scatter_tiles``) and written to dx: (N*C*H*W,). Writes dweight
    (OC*C*9,) = G^T dU G summed over the parts' dU_parts (parts, 16*C*OC),
    and dbias (OC,) over db_parts (parts, OC). Workspaces per part as in
    forward, plus dimage[p] ((H+2PH)*(W+2PW)*C,) and dyt[p] (POH*POW*OC,; 4
    times that without ``pool``).
    The parts (``backward_filters_part``, ``backward_images_part``,
    ``weight_gradient_part``) are taken by address (``nnjit.kernels._jit``).
    """
    if need_dx:
        for p in prange(parts):
            call_part(backward_filters_part, np.int64(p), x, dy, argmax, weight, C, H, W, PH, PW,
                      POH, POW, pool, N, parts, per, UtT, image, Vt, dMt, dVt, dimage, dyt,
                      dU_parts, db_parts, need_dx, dx, dweight, dbias, tiles, blas)
    for p in prange(parts):
        call_part(backward_images_part, np.int64(p), x, dy, argmax, weight, C, H, W, PH, PW, POH,
                  POW, pool, N, parts, per, UtT, image, Vt, dMt, dVt, dimage, dyt, dU_parts,
                  db_parts, need_dx, dx, dweight, dbias, tiles, blas)
    for p in prange(parts):
        call_part(weight_gradient_part, np.int64(p), x, dy, argmax, weight, C, H, W, PH, PW, POH,
                  POW, pool, N, parts, per, UtT, image, Vt, dMt, dVt, dimage, dyt, dU_parts,
                  db_parts, need_dx, dx, dweight, dbias, tiles, blas)
