"""A 3x3 stride-1 convolution's forward pass by Winograd's minimal filtering
F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016).

Each 4x4 block of outputs comes from a 6x6 input tile d:
Y = A^T [(G g G^T) . (B^T d B)] A for a 3x3 filter g, with . the element-wise
product. Over all channels that is 36 independent GEMMs, one per element xi
of the transformed 6x6 tile, in transposed form:
Mt[xi] (L, OC) = Vt[xi] (L, C) @ Ut[xi] (C, OC), for L tiles: 36*C*OC
multiply-adds per 16 outputs instead of 144*C*OC (4x fewer; F(2x2, 3x3),
``nnjit.kernels.winograd``, saves 2.25x).

The transforms interpolate at 0, +-3/2, +-2/3 and infinity, not at the usual
0, +-1, +-2: the constants of B^T and A^T are then of similar size, and the
float32 error of a whole layer is 4x smaller (32->32 on 16x16 and 64->64 on
8x8, largest error over largest output against a float64 conv: 9.2e-7
against 3.4-4.4e-6; unfolding onto a GEMM gives 0.6-1.3e-6):

    B^T = [[1,    0,  -97/36,    0,  1, 0],      A^T = [[1,    1,     1,    1,     1, 0],
           [0, -2/3,    -4/9,  3/2,  1, 0],             [0,  3/2,  -3/2,  2/3,  -2/3, 0],
           [0,  2/3,    -4/9, -3/2,  1, 0],             [0,  9/4,   9/4,  4/9,   4/9, 0],
           [0, -3/2,    -9/4,  2/3,  1, 0],             [0, 27/8, -27/8, 8/27, -8/27, 1]]
           [0,  3/2,    -9/4, -2/3,  1, 0],
           [0,    1,       0, -97/36, 0, 1]]
    G = [[1, 0, 0], [8, 12, 18]/65, [8, -12, 18]/65, [-81/130, -27/65, -18/65],
         [-81/130, 27/65, -18/65], [0, 0, 1]]

Forward only: in training, backward is F(2x2, 3x3)'s (``nnjit.kernels.winograd``,
the gradients of the same conv).

Channels are the contiguous axis of every transform, as in F(2x2, 3x3): the
image is copied channels-last first (``channels_last``), a tile's 36 inputs
are 36 channel vectors, and the outputs are staged channels-last one row of
tiles at a time before going out as rows of (OC, OH, OW).

Layouts (flat, C-contiguous): x (N, C, H, W); weight (OC, C, 3, 3); Ut (36,
C, OC); per part: image (H+2PH, W+2PW, C) zero-bordered, Vt (36, Lp, C), Mt
(36, Lp, OC), stage (4*OW*OC + 36*STAGE_CHANNELS,), with T = TH*TW tiles per
image (OH = 4*TH, OW = 4*TW) and Lp (``padded_rows``) at least a chunk's
tiles; out (N, OC, OH, OW).
"""
import numpy as np

from ._jit import call_part, helper, kernel, prange
from .cache import cached_njit
from .merge import add_run
from .runs import copy_run
from .tiles import batched_product, transpose_slice
from .winograd import STAGE_CHANNELS, channels_last, filters_changed, padded_rows, part_windows

U = np.uint64
F = np.float32
# float32 constants: a float64 literal would widen float32 code
_THIRD2, _HALF3, _NINTH4, _QUARTER9, _B0 = F(2 / 3), F(3 / 2), F(4 / 9), F(9 / 4), F(97 / 36)
_A3, _A3I = F(27 / 8), F(8 / 27)


@cached_njit(inline="always")
def _input_rows(a0, a1, a2, a3, a4, a5):
    """B^T times a column of 6 values (module docstring)."""
    p = a4 - _NINTH4 * a2  # rows 1 and 2: p +- q
    q = _HALF3 * a3 - _THIRD2 * a1
    r = a4 - _QUARTER9 * a2  # rows 3 and 4: r +- s
    s = _THIRD2 * a3 - _HALF3 * a1
    return a0 - _B0 * a2 + a4, p + q, p - q, r + s, r - s, a1 - _B0 * a3 + a5


@cached_njit(inline="always")
def _output_rows(m0, m1, m2, m3, m4, m5):
    """A^T times a column of 6 values (module docstring)."""
    e1, o1 = m1 + m2, m1 - m2
    e2, o2 = m3 + m4, m3 - m4
    return (m0 + e1 + e2, _HALF3 * o1 + _THIRD2 * o2, _QUARTER9 * e1 + _NINTH4 * e2,
            _A3 * o1 + _A3I * o2 + m5)


@cached_njit(inline="always")
def _filter_rows(g0, g1, g2):
    """G times a column of 3 filter taps, in float64 (module docstring)."""
    return (g0, (8 * g0 + 12 * g1 + 18 * g2) / 65, (8 * g0 - 12 * g1 + 18 * g2) / 65,
            (-81 * g0 - 54 * g1 - 36 * g2) / 130, (-81 * g0 + 54 * g1 - 36 * g2) / 130, g2)


@helper
def transform_filters(weight, scale, C, oc0, oc1, OC, Ut):
    """Ut[xi, c, oc] = (G g G^T)[xi] * scale[oc] (scale (OC,), or size 0: none)
    for the filters g = weight[oc, c] (3x3) of output channels [oc0, oc1),
    computed in float64 and rounded once. weight: float (OC*C*9,); Ut:
    (36*C*OC,) as (36, C, OC)."""
    for oc in range(oc0, oc1):
        factor = np.float64(scale[oc]) if scale.size else 1.0
        for c in range(C):
            g = (oc * C + c) * 9
            # G g column by column (each a tuple of its 6 rows), then G along the rows.
            h0 = _filter_rows(np.float64(weight[g]), np.float64(weight[g + 3]),
                              np.float64(weight[g + 6]))
            h1 = _filter_rows(np.float64(weight[g + 1]), np.float64(weight[g + 4]),
                              np.float64(weight[g + 7]))
            h2 = _filter_rows(np.float64(weight[g + 2]), np.float64(weight[g + 5]),
                              np.float64(weight[g + 8]))
            for r in range(6):
                u = _filter_rows(h0[r], h1[r], h2[r])
                for q in range(6):
                    Ut[((r * 6 + q) * C + c) * OC + oc] = u[q] * factor


@helper
def refresh_filters(weight, scale, C, oc0, oc1, OC, kept, Ut):
    """Keep Ut the transform of the filters of output channels [oc0, oc1) times
    their scale, redone only when filters or scale changed (``refresh_kept``;
    kept (OC*C*9 + OC,), the scale after the filters: ``filters_changed``)."""
    if filters_changed(weight, scale, C, oc0, oc1, OC, kept):
        transform_filters(weight, scale, C, oc0, oc1, OC, Ut)


@cached_njit(inline="always")
def _input_column(image, s, row):
    """B^T times the 6 values image[s + a*row], a < 6 (a tile's column, one channel)."""
    return _input_rows(image[s], image[s + row], image[s + U(2) * row], image[s + U(3) * row],
                       image[s + U(4) * row], image[s + U(5) * row])


@helper
def transform_tiles(image, C, Wp, TW, t0, t1, row0, Vt, Lp, stage):
    """Vt[xi, row0 + t - t0, :] = (B^T d B)[xi] over the C channels, for the 6x6
    tile d of image (channels-last, zero-bordered, Wp columns) of each tile
    t = i*TW + j in [t0, t1): input rows 4i .. 4i+5, columns 4j .. 4j+5.
    stage: workspace (>= 36*STAGE_CHANNELS,): each block of channels is
    transformed into it at constant offsets, then copied out as 36 runs
    (written straight to Vt, the loops do not vectorise)."""
    step = U(Lp * C)  # from Vt[xi] to Vt[xi+1]
    row, col = U(Wp * C), U(C)
    for t in range(t0, t1):
        base = U(((4 * (t // TW)) * Wp + 4 * (t % TW)) * C)
        dst = U((row0 + t - t0) * C)
        for c0 in range(0, C, STAGE_CHANNELS):
            width = U(min(STAGE_CHANNELS, C - c0))
            for c in range(width):
                s = base + U(c0) + c
                e0 = _input_column(image, s, row)
                e1 = _input_column(image, s + col, row)
                e2 = _input_column(image, s + U(2) * col, row)
                e3 = _input_column(image, s + U(3) * col, row)
                e4 = _input_column(image, s + U(4) * col, row)
                e5 = _input_column(image, s + U(5) * col, row)
                for r in range(6):
                    v = _input_rows(e0[r], e1[r], e2[r], e3[r], e4[r], e5[r])
                    for q in range(6):
                        stage[U((r * 6 + q) * STAGE_CHANNELS) + c] = v[q]
            for xi in range(36):
                copy_run(Vt, U(xi) * step + dst + U(c0), stage, U(xi * STAGE_CHANNELS), width)


@cached_njit(inline="always")
def _output_column(Mt, s, q, step):
    """A^T times column q of a tile's 6x6 M, element xi at Mt[s + xi*step]."""
    return _output_rows(Mt[s + U(q) * step], Mt[s + U(6 + q) * step],
                        Mt[s + U(12 + q) * step], Mt[s + U(18 + q) * step],
                        Mt[s + U(24 + q) * step], Mt[s + U(30 + q) * step])


@helper
def output_tiles(Mt, bias, OC, OW, j0, j1, row0, Lp, relu, stage, tile):
    """The 4x4 conv outputs of tiles j0 .. j1-1 of one row of tiles (A^T M A,
    tile j from row row0 + j - j0 of Mt), plus bias[oc], then max(0, .) with
    ``relu`` (a NaN stays), written channels-last: stage[(a*OW + 4j+b)*OC + oc]
    for output (a, b) of tile j. stage: float (4*OW*OC,); tile: workspace
    (>= 16*STAGE_CHANNELS,): each block of channels goes there at constant
    offsets first, then out as 16 runs (written straight to stage, the loop
    over channels does not vectorise)."""
    step = U(Lp * OC)
    row = U(OW * OC)  # from output row a to a+1
    zero = F(0)
    for j in range(j0, j1):
        src = U((row0 + j - j0) * OC)
        d = U(4 * j * OC)
        for o0 in range(0, OC, STAGE_CHANNELS):
            width = U(min(STAGE_CHANNELS, OC - o0))
            for o in range(width):
                s = src + U(o0) + o
                f0 = _output_column(Mt, s, 0, step)
                f1 = _output_column(Mt, s, 1, step)
                f2 = _output_column(Mt, s, 2, step)
                f3 = _output_column(Mt, s, 3, step)
                f4 = _output_column(Mt, s, 4, step)
                f5 = _output_column(Mt, s, 5, step)
                b = bias[U(o0) + o]
                for a in range(4):
                    y = _output_rows(f0[a], f1[a], f2[a], f3[a], f4[a], f5[a])
                    for q in range(4):
                        v = y[q] + b
                        if relu and v < 0:
                            v = zero
                        tile[U((a * 4 + q) * STAGE_CHANNELS) + o] = v
            for a in range(4):
                for q in range(4):
                    copy_run(stage, d + U(a) * row + U(q * OC + o0), tile,
                             U((a * 4 + q) * STAGE_CHANNELS), width)


@helper
def tile_rows_out(Mt, bias, OC, TH, TW, t0, t1, row0, Lp, relu, stage, tile, out, residual,
                  add_relu):
    """The outputs of tiles [t0, t1) of one image (``output_tiles``, from rows
    row0 .. of Mt) into out (OC, OH, OW) of that image, a row of tiles at a
    time through stage (channels-last; tile: ``output_tiles``'s workspace),
    then, when ``residual`` (of out's size, same offsets) is given, residual
    added and max(., 0) with ``add_relu`` while the rows are in cache (a
    residual sum fused into the conv, ``nnjit.fusion``)."""
    OW = 4 * TW
    P = 16 * TH * TW  # OH*OW
    for i in range(t0 // TW, (t1 - 1) // TW + 1):
        j0, j1 = max(t0 - i * TW, 0), min(t1 - i * TW, TW)
        output_tiles(Mt, bias, OC, OW, j0, j1, row0 + i * TW + j0 - t0, Lp, relu, stage, tile)
        for a in range(4):
            transpose_slice(stage[a * OW * OC:], OC, 0, OC, 4 * j0, 4 * j1, P,
                            out[(4 * i + a) * OW:])
        if not residual.size:
            continue
        for oc in range(OC):  # the row of tiles' 4 output rows: one run when they are whole
            p0 = oc * P + 4 * i * OW
            if j1 - j0 == TW:
                add_run(out, p0, residual, 4 * OW, add_relu)
                continue
            for a in range(4):
                add_run(out, p0 + a * OW + 4 * j0, residual, 4 * (j1 - j0), add_relu)


@helper
def filters_part(part, x, weight, scale, bias, C, H, W, PH, PW, TH, TW, relu, N, parts, per,
                 kept, Ut, image, Vt, Mt, stage, out, split, tiles, blas, residual, add_relu):
    """Part ``part`` of ``winograd4_conv`` (same arguments): ``refresh_filters`` of
    its share of the output channels, all of them when the kernel splits one chunk."""
    OC = bias.size
    shares = 1 if split > 1 else parts
    refresh_filters(weight, scale, C, part * OC // shares, (part + 1) * OC // shares, OC, kept,
                    Ut)


@helper
def images_part(part, x, weight, scale, bias, C, H, W, PH, PW, TH, TW, relu, N, parts, per,
                kept, Ut, image, Vt, Mt, stage, out, split, tiles, blas, residual, add_relu):
    """Part ``part`` of ``winograd4_conv`` (same arguments): the outputs of images
    [part*N//parts, (part+1)*N//parts), ``per`` at a time, in the part's
    workspaces, or with split > 1 of thread ``part``'s share of the one
    chunk's tiles (``split_bound``).

    Per chunk of tiles [w0, w1) (tile w = n*T + t: tile t of image n): their
    transforms into Vt (36, Lp, C) (``transform_tiles``, image by image after
    ``channels_last`` of the rows they read), 36 GEMMs Mt[xi] (Lp, OC) =
    Vt[xi] @ Ut[xi] (C, OC) over their rows only, then their outputs into out
    (``tile_rows_out``)."""
    OC = bias.size
    T = TH * TW
    Lp = padded_rows(per * T)
    start, stop, step = part_windows(part, N, T, parts, per, split)
    image, Vt, Mt, stage = image[part], Vt[part], Mt[part], stage[part]
    staged = stage[4 * TW * 4 * OC:]  # the transforms' tiles; the output rows' before it
    size = OC * 16 * T  # one image's output
    for w0 in range(start, stop, step):
        w1 = min(w0 + step, stop)
        for n in range(w0 // T, -(-w1 // T)):
            t0, t1 = max(w0 - n * T, 0), min(w1 - n * T, T)
            # the padded image's rows under tile rows t0 // TW .. (t1 - 1) // TW
            channels_last(x, n, C, H, W, PH, PW, 4 * (t0 // TW), 4 * ((t1 - 1) // TW) + 6, image)
            transform_tiles(image, C, W + 2 * PW, TW, t0, t1, n * T + t0 - w0, Vt, Lp, staged)
        batched_product(blas, tiles, 36, w1 - w0, C, Vt, Lp * C, Ut, C * OC, OC, Mt, Lp * OC)
        for n in range(w0 // T, -(-w1 // T)):
            t0, t1 = max(w0 - n * T, 0), min(w1 - n * T, T)
            tile_rows_out(Mt, bias, OC, TH, TW, t0, t1, n * T + t0 - w0, Lp, relu, stage, staged,
                          out[n * size:], residual[n * size:] if residual.size else residual,
                          add_relu)


@kernel(blas=True, parts=(filters_part, images_part))
def winograd4_conv(filters_part, images_part, x, weight, scale, bias, C, H, W, PH, PW, TH, TW,
                   relu, N, parts, per, kept, Ut, image, Vt, Mt, stage, out, split, tiles, blas,
                   residual, add_relu):
    """Conv2D(3x3, stride 1, padding PH, PW) + [ReLU] by F(4x4, 3x3) (module
    docstring), for an output of 4*TH x 4*TW.

    x: float32 (N*C*H*W,); weight (OC*C*9,); scale (OC,), each output channel's
    filters' factor (a batch norm folded into the conv), or size 0 (none);
    bias (OC,). kept (OC*C*9 + OC,) and Ut (36*C*OC,) persist between calls:
    the filters (and scale) as last transformed and their transform
    (``refresh_filters``; kept starts as NaN). Part p takes images
    [p*N//parts, (p+1)*N//parts), ``per`` at a time, in its workspaces
    image[p] ((H+2PH)*(W+2PW)*C,), Vt[p] (36*Lp*C,), Mt[p] (36*Lp*OC,),
    stage[p] (16*TW*OC + 36*STAGE_CHANNELS,), Lp = padded_rows(per*TH*TW).
    With split > 1 (one part, one chunk of per = N images) that many threads
    share the chunk instead, thread g taking tiles split_bound(g) ..
    split_bound(g + 1) of the N*TH*TW, in workspaces [g] (the filters
    refreshed first, on one thread). Writes out (N*OC*16*TH*TW,). The GEMMs
    run in register tiles with ``tiles`` (``nnjit.kernels.tiles``), otherwise
    on BLAS. residual: of out's size, or none (size 0): added to the outputs as
    each row of tiles is written, then max(., 0) with ``add_relu``.
    The parts (``filters_part``, ``images_part``) are taken by address
    (``nnjit.kernels._jit``).
    """
    if split > 1:  # the filters on one thread, then the tiles shared
        call_part(filters_part, np.int64(0), x, weight, scale, bias, C, H, W, PH, PW, TH, TW,
                  relu, N, parts, per, kept, Ut, image, Vt, Mt, stage, out, split, tiles, blas,
                  residual, add_relu)
    else:
        for p in prange(parts):
            call_part(filters_part, np.int64(p), x, weight, scale, bias, C, H, W, PH, PW, TH,
                      TW, relu, N, parts, per, kept, Ut, image, Vt, Mt, stage, out, split, tiles,
                      blas, residual, add_relu)
    # The count in a variable: a conditional expression inside prange() leaves
    # the loop serial (Numba converts no parfor there).
    shares = split if split > 1 else parts
    for p in prange(shares):
        call_part(images_part, np.int64(p), x, weight, scale, bias, C, H, W, PH, PW, TH, TW,
                  relu, N, parts, per, kept, Ut, image, Vt, Mt, stage, out, split, tiles, blas,
                  residual, add_relu)
