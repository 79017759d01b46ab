"""Inference of a 3x3 convolution followed by a 2x2 max-pool, by Winograd's
minimal filtering F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016).

The 2x2 conv outputs under one pooling window come from a 4x4 input tile d:
Y = A^T [(G g G^T) . (B^T d B)] A for a 3x3 filter g, with . the element-wise
product. Over all channels that is 16 independent GEMMs, one per element xi
of the transformed 4x4 tile, here in transposed form:
Mt[xi] (L, OC) = Vt[xi] (L, C) @ Ut[xi] (C, OC), Vt the transformed tiles of
L pooling windows and Ut the transformed filters: 16*C*OC multiply-adds per
window instead of 36*C*OC (2.25x fewer). Each window's 2x2 outputs are
pooled at once (max, then bias, then the optional ReLU, as
``block_to_pool_major`` does): the conv output is never stored.

Channels are the contiguous axis of every transform (the image is first
copied channels-last), so the transforms run as vector loops over channels:
a tile's 16 inputs are 16 channel vectors. (Transforming one tile of one
channel at a time, the image left channels-first, cost twice the GEMMs.)

Layouts (flat, C-contiguous): x (N, C, H, W); weight (OC, C, 3, 3); Ut (16,
C, OC); per part: image (H+2PH, W+2PW, C) zero-bordered, Vt (16, Lp, C),
Mt (16, Lp, OC), pooled (T, OC), with T = POH*POW windows per image and Lp
a chunk's windows rounded up to a multiple of 4 (the register tiles' rows);
out (N, OC, POH, POW).
"""
import numpy as np
from numba import njit

from ._jit import helper, kernel, prange
from .blas import NO_TRANS, gemm
from .tiles import refresh_kept, tiled_gemm, transpose_slice

U = np.uint64
_HALF = np.float32(0.5)  # float32: a float64 literal would widen float32 code


@njit(cache=True, inline="always")
def _input_rows(a0, a1, a2, a3):
    """B^T times a column of 4 values (B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]])."""
    return a0 - a2, a1 + a2, a2 - a1, a1 - a3


@njit(cache=True, inline="always")
def _filter_rows(g0, g1, g2):
    """G times a column of 3 filter taps (G = [[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]])."""
    return g0, (g0 + g1 + g2) * _HALF, (g0 - g1 + g2) * _HALF, g2


@njit(cache=True, inline="always")
def _output_rows(m0, m1, m2, m3):
    """A^T times a column of 4 values (A^T = [[1,1,1,0],[0,1,-1,-1]])."""
    return m0 + m1 + m2, m1 - m2 - m3


@helper
def transform_filters(weight, C, oc0, oc1, OC, Ut):
    """Ut[xi, c, oc] = (G g G^T)[xi] for the filters g = weight[oc, c] (3x3) of
    output channels [oc0, oc1). weight: float (OC*C*9,); Ut: (16*C*OC,)."""
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
                    Ut[((r * 4 + q) * C + c) * OC + oc] = u[q]


@helper
def refresh_filters(weight, C, oc0, oc1, OC, kept, Ut):
    """Keep Ut the transform of the filters of output channels [oc0, oc1), redone
    only when they changed (``refresh_kept``: kept (OC*C*9,) holds them as
    last transformed)."""
    if refresh_kept(weight, kept, oc0 * C * 9, oc1 * C * 9):
        transform_filters(weight, C, oc0, oc1, OC, Ut)


@helper
def channels_last(x, n, C, H, W, PH, PW, image):
    """The interior of image (H+2PH, W+2PW, C) = image n of x (N*C*H*W,)
    channels-last. The border, PH rows and PW columns wide, is never written:
    the caller allocates image zeroed and it stays zero."""
    Wp = W + 2 * PW
    plane = x[n * C * H * W:]
    for h in range(H):  # row h of every channel, (C, W), into (W, C)
        transpose_slice(plane, H * W, h * W, W, 0, C, C, image[((h + PH) * Wp + PW) * C:])


@njit(cache=True, inline="always")
def _input_column(image, s, row):
    """B^T times the 4 values image[s + a*row], a < 4 (a tile's column, one channel)."""
    return _input_rows(image[s], image[s + row], image[s + U(2) * row], image[s + U(3) * row])


@njit(cache=True, inline="always")
def _output_column(Mt, s, q, step):
    """A^T times column q of a window's 4x4 M, element xi at Mt[s + xi*step]."""
    return _output_rows(Mt[s + U(q) * step], Mt[s + U(4 + q) * step],
                        Mt[s + U(8 + q) * step], Mt[s + U(12 + q) * step])


@helper
def transform_tiles(image, C, Wp, POH, POW, row0, Vt, Lp):
    """Vt[xi, row0 + t, :] = (B^T d B)[xi] over the C channels, for the 4x4 tile d
    of image (channels-last, zero-bordered, Wp columns) under each pooling
    window t = i*POW + j: input rows 2i .. 2i+3, columns 2j .. 2j+3."""
    for t in range(POH * POW):
        base = U(((2 * (t // POW)) * Wp + 2 * (t % POW)) * C)
        dst = U((row0 + t) * C)
        step = U(Lp * C)  # from Vt[xi] to Vt[xi+1]
        row, col = U(Wp * C), U(C)
        for c in range(U(C)):
            s = base + c
            e0 = _input_column(image, s, row)
            e1 = _input_column(image, s + col, row)
            e2 = _input_column(image, s + U(2) * col, row)
            e3 = _input_column(image, s + U(3) * col, row)
            for r in range(4):
                v = _input_rows(e0[r], e1[r], e2[r], e3[r])
                for q in range(4):
                    Vt[U(r * 4 + q) * step + dst + c] = v[q]


@helper
def pool_windows(Mt, bias, OC, T, row0, Lp, relu, pooled):
    """pooled[t, oc] = max of window t's 2x2 conv outputs (A^T M A, from rows
    row0 + t of Mt), plus bias[oc], then max(0, .) with ``relu``: the first
    maximum in row-major order wins and a NaN propagates, as in
    ``block_to_pool_major``."""
    step = U(Lp * OC)
    for t in range(T):
        src = U((row0 + t) * OC)
        dst = U(t * OC)
        for oc in range(U(OC)):
            s = src + oc
            f0 = _output_column(Mt, s, 0, step)
            f1 = _output_column(Mt, s, 1, step)
            f2 = _output_column(Mt, s, 2, step)
            f3 = _output_column(Mt, s, 3, step)
            y00, y01 = _output_rows(f0[0], f1[0], f2[0], f3[0])
            y10, y11 = _output_rows(f0[1], f1[1], f2[1], f3[1])
            best = y00
            if not (y01 <= best):
                best = y01
            if not (y10 <= best):
                best = y10
            if not (y11 <= best):
                best = y11
            v = best + bias[oc]
            if relu and v < 0:
                pooled[dst + oc] = 0
            else:
                pooled[dst + oc] = v


@njit(cache=True)
def padded_rows(windows):
    """Rows of a chunk's Vt[xi] and Mt[xi] for ``windows`` pooling windows: a
    multiple of 4 (the register tiles' rows), and not of 16, so that the 16
    matrices Vt[xi] do not start a power of two apart (they would share L1
    sets: 128 rows ran at half the speed of 252)."""
    rows = -(-windows // 4) * 4
    return rows + 4 if rows % 16 == 0 else rows


@kernel(blas=True)
def winograd_conv_pool(x, weight, bias, C, H, W, PH, PW, POH, POW, relu, N, parts, per, kept, Ut,
                       image, Vt, Mt, pooled, out, tiles, blas):
    """Inference of Conv2D(3x3, stride 1, padding PH, PW) + [ReLU] + MaxPool2D(2, 2)
    by F(2x2, 3x3) (module docstring).

    x: float (N*C*H*W,); weight (OC*C*9,); bias (OC,). kept (OC*C*9,) and
    Ut (16*C*OC,) persist between calls: the filters as last transformed and
    their transform (``refresh_filters``; kept starts as NaN). Part p takes
    images [p*N//parts, (p+1)*N//parts), ``per`` at a time, in its
    workspaces image[p] ((H+2PH)*(W+2PW)*C,; zeroed when allocated), Vt[p] (16*Lp*C,), Mt[p]
    (16*Lp*OC,), pooled[p] (POH*POW*OC,), Lp = padded_rows(per*POH*POW).
    Writes out: (N*OC*POH*POW,). The GEMMs run in register tiles with
    ``tiles`` (``nnjit.kernels.tiles``), otherwise on BLAS.
    """
    OC = bias.size
    for p in prange(parts):
        refresh_filters(weight, C, p * OC // parts, (p + 1) * OC // parts, OC, kept, Ut)
    T = POH * POW
    Lp = padded_rows(per * T)
    Wp = W + 2 * PW
    for p in prange(parts):
        first, last = p * N // parts, (p + 1) * N // parts
        vt, mt = Vt[p], Mt[p]
        for n0 in range(first, last, per):
            n1 = min(n0 + per, last)
            for n in range(n0, n1):
                channels_last(x, n, C, H, W, PH, PW, image[p])
                transform_tiles(image[p], C, Wp, POH, POW, (n - n0) * T, vt, Lp)
            for xi in range(16):  # rows past the chunk's windows: zero
                vt[(xi * Lp + (n1 - n0) * T) * C:(xi + 1) * Lp * C] = 0
            for xi in range(16):
                if tiles:
                    tiled_gemm(blas, NO_TRANS, Lp, C, vt[xi * Lp * C:], Ut[xi * C * OC:], OC,
                               mt[xi * Lp * OC:])
                else:
                    gemm(blas, NO_TRANS, NO_TRANS, Lp, OC, C, 1.0, vt[xi * Lp * C:], C,
                         Ut[xi * C * OC:], OC, 0.0, mt[xi * Lp * OC:], OC)
            for n in range(n0, n1):
                pool_windows(mt, bias, OC, T, (n - n0) * T, Lp, relu, pooled[p])
                # pooled (T, OC) -> out[n] (OC, T)
                transpose_slice(pooled[p], OC, 0, OC, 0, T, T, out[n * OC * T:])
