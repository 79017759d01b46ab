"""The moves around the convolution GEMM, one block of output positions at a time.

Conv2D runs as blocks of a few MB (see ``nnjit.layers.conv``): each block is
either a group of whole images [n0, n1), or output rows [r0, r1) of one
image. ``conv_forward`` and ``conv_backward`` are the whole layer in one
compiled call: each ``prange`` iteration (a part: a run of blocks covering
whole images) walks its blocks; per block ``unfold_block`` unfolds the patches, a
single-threaded BLAS GEMM multiplies (``nnjit.kernels.blas``) and one helper
moves the product to the output. Part p uses row p of every workspace.

Layout conventions (buffers flat, C-contiguous; L = (n1-n0) * (r1-r0) * OW):

- ``x``: (N, C, H, W) images, the whole batch.
- ``cols``: (C*KH*KW, L) patches of the block; row ``(c, kh, kw)``, column
  ``(n, oh, ow)``. A row is runs of OW inputs from one image row, so
  unfolding and folding both walk memory contiguously along ``ow``. Under a
  fused max-pool with non-overlapping windows the columns are in pool-major
  order instead (the conv rows grouped by their row within a window, see
  ``im2col`` and ``block_to_pool_major``).
- ``yblock``: (OC, L) = ``weight.reshape(OC, C*KH*KW) @ cols``.

Inner loops index with unsigned ints: Numba keeps a negative-index check per
element on signed indices, which stops vectorisation (measured 5x slower).
"""
from typing import NamedTuple

import numpy as np

from ._jit import call_part, helper, kernel, prange
from .batchnorm import routed_affine_segment
from .blas import NO_TRANS, TRANS, gemm
from .cache import cached_njit
from .grouped_conv import _tap_offset, phase_geometry, phase_planes
from .merge import add_run
from .pool import pool_plane
from .runs import copy_run, zero_run
from .tiles import shifted_rows_gemm, skipping_rows_gemm, tiled_gemm, tiled_gemm_nt

U = np.uint64


@cached_njit(inline="always")
def valid_range(k, S, P, W, OW):
    """Output columns [lo, hi) whose input column ow*S + k - P lies inside [0, W).

    Splitting loops at these bounds keeps the bounds test out of the inner
    loop, so it vectorises."""
    lo = max(0, (P - k + S - 1) // S)
    hi = min(OW, (W - 1 + P - k) // S + 1)
    return lo, max(lo, hi)


@helper
def im2col(x, C, H, W, KH, KW, SH, SW, skip, OW, n0, n1, r0, R, G, cols):
    """Unfold the patches of one block of unpadded images (``unfold_block`` pads
    them first, into a copy).

    The block's conv output rows are oh = r0 + g + i*G for g in [0, G),
    i in [0, R), in that order, each OW columns wide: G = 1 is the plain run
    of rows [r0, r0+R); G = PKH with r0 = pr0*PKH and R = pr1-pr0 the
    pool-major order (see ``block_to_pool_major``). OW may be less than the
    conv's output width: columns past it are not unfolded. Output row oh
    reads input rows oh*SH + kh - skip (x may hold only the rows from skip on).
    x: float (N*C*H*W,), every row read in [0, H). Writes cols: float
    (C*KH*KW * L,), L = (n1-n0) * G*R*OW, columns ordered (n, g, i, ow).
    """
    d = U(0)
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                for n in range(n0, n1):
                    for g in range(G):
                        s = U(((n * C + c) * H + (r0 + g) * SH + kh - skip) * W + kw)
                        for _ in range(R):
                            if SW == 1:
                                copy_run(cols, d, x, s, U(OW))
                            else:
                                for j in range(U(OW)):
                                    cols[d + j] = x[s + j * U(SW)]
                            s += U(G * SH * W)
                            d += U(OW)


@helper
def col2im(dcols, C, H, W, KH, KW, SH, SW, PH, PW, OW, n0, n1, r0, R, G, dx):
    """Fold one block's patch gradients back onto the images: the adjoint of ``im2col``
    (same block arguments).

    dcols: float (C*KH*KW * L,). Adds into dx: float (N*C*H*W,) (overlapping
    patches summed; the caller zeroes dx first). Two blocks that touch the
    same image must not run at once.
    """
    s = U(0)
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                lo, hi = valid_range(kw, SW, PW, W, OW)
                for n in range(n0, n1):
                    plane = (n * C + c) * H
                    for g in range(G):
                        for i in range(R):
                            ih = (r0 + g + i * G) * SH + kh - PH
                            if 0 <= ih < H and lo < hi:
                                d = U((plane + ih) * W + lo * SW + kw - PW)
                                ss = s + U(lo)
                                if SW == 1:  # contiguous: vectorises (a runtime stride does not)
                                    # (not masked vector adds: a masked load right after
                                    # a masked store nearby waits for it, 2.4x slower)
                                    for j in range(U(hi - lo)):
                                        dx[d + j] += dcols[ss + j]
                                else:
                                    for j in range(U(hi - lo)):
                                        dx[d + j * U(SW)] += dcols[ss + j]
                            s += U(OW)


@helper
def block_to_nchw(yblock, bias, OC, P, OW, n0, n1, r0, r1, relu, out):
    """Move one block's GEMM output to NCHW, adding the bias and optionally ReLU.

    yblock: float (OC*L,) as (OC, n1-n0, (r1-r0)*OW); bias: float (OC,);
    P = OH*OW. Writes rows [r0, r1) of images [n0, n1) of out: float
    (N*OC*P,) as (N, OC, P). ``relu`` (bool) fuses max(0, .).
    """
    run = U((r1 - r0) * OW)
    s = U(0)
    for oc in range(OC):
        b = bias[oc]
        for n in range(n0, n1):
            d = U((n * OC + oc) * P + r0 * OW)
            if relu:
                for j in range(run):
                    out[d + j] = max(yblock[s + j] + b, 0)
            else:
                for j in range(run):
                    out[d + j] = yblock[s + j] + b
            s += run


@helper(reassociate=True)
def nchw_to_block(dy, y, OC, P, OW, n0, n1, r0, r1, relu, dyblock, dbias):
    """Gather one block's output gradient into the GEMM layout; add its bias gradient.

    dy: float (N*OC*P,) as (N, OC, P). With ``relu``, dy is the gradient at
    the output of a fused ReLU whose output is y (same layout), and is passed
    through only where y > 0; without, y is not read. Writes dyblock: float
    (OC*L,) as (OC, n1-n0, (r1-r0)*OW); adds the block's sums to dbias: float (OC,).
    """
    run = U((r1 - r0) * OW)
    d = U(0)
    for oc in range(OC):
        acc = 0.0
        for n in range(n0, n1):
            s = U((n * OC + oc) * P + r0 * OW)
            if relu:
                for j in range(run):
                    v = dy[s + j] if y[s + j] > 0 else 0
                    dyblock[d + j] = v
                    acc += v
            else:
                for j in range(run):
                    v = dy[s + j]
                    dyblock[d + j] = v
                    acc += v
            d += run
        dbias[oc] += acc


@helper
def norm_grad_to_block(dy, y, argmax, norm_out, coef, OC, P, OW, n0, n1, r0, r1, PKH, PSH, POW,
                       PP, relu, dyblock, dbias):
    """``nchw_to_block`` for the gradient of a following batch norm + max-pool
    (``PooledNormGrad``), evaluated as it is gathered: each plane's rows
    [r0, r1) through ``routed_affine_segment``.

    y: float (N*OC*P,) this conv's output (the norm's input); dy, norm_out,
    argmax: (N*OC*PP,) at the pooled output, pooling windows PKH rows high,
    PSH apart, rows of POW; coef: (4*OC,). Writes dyblock (OC*L,) as
    ``nchw_to_block`` does and adds the block's sums to dbias (OC,).
    """
    run = (r1 - r0) * OW
    # The pooled rows whose windows reach into conv rows [r0, r1).
    q0 = max(0, -((PKH - 1 - r0) // PSH)) * POW
    q1 = min(PP, -(-r1 // PSH) * POW)
    d = 0
    for oc in range(OC):
        acc = 0.0
        for n in range(n0, n1):
            plane = n * OC + oc
            acc += routed_affine_segment(y, plane * P, r0 * OW, r1 * OW, coef, oc, OC, dy,
                                         norm_out, argmax, plane * PP, q0, q1, relu, dyblock, d)
            d += run
        dbias[oc] += acc


@helper
def block_to_pooled(yblock, bias, OC, R, OW, n0, n1, r0, pr0, pr1, relu, KH, KW, SH, SW, PH, PW,
                    out, argmax):
    """Bias, optional ReLU and max pooling straight from one block's GEMM output.

    yblock: float (OC*(n1-n0)*R*OW,), conv rows [r0, r0+R) of images
    [n0, n1), with r0 = pr0*SH: exactly the rows that pooled rows
    [pr0, pr1) read. The conv output is never written out: each pooled value
    is max(window) + bias (then max(0, .) with ``relu``; ReLU commutes with
    max). bias: float (OC,). Writes pooled rows [pr0, pr1) of images
    [n0, n1) of out: float (N*OC*PH*PW,) and argmax: int32 (same), the
    position oh*OW + ow of each window's first maximum in its whole conv plane.
    """
    y4 = yblock.reshape((OC, n1 - n0, R, OW))
    o3 = out.reshape((-1, OC, PH * PW))
    a3 = argmax.reshape((-1, OC, PH * PW))
    lo, hi = pr0 * PW, pr1 * PW
    shift = r0 * OW
    for oc in range(OC):
        b = bias[oc]
        for n in range(n0, n1):
            dst = o3[n, oc, lo:hi]
            pos = a3[n, oc, lo:hi]
            pool_plane(y4[oc, n - n0], KH, KW, SH, SW, pr1 - pr0, PW, dst, pos)
            for j in range(hi - lo):
                pos[j] += shift
                v = dst[j] + b
                if relu and v < 0:
                    dst[j] = 0
                else:
                    dst[j] = v


@helper
def pooled_to_block(dy, out, argmax, OC, BP, PP, n0, n1, shift, lo, hi, relu, dyblock, dbias):
    """Backward of ``block_to_pooled``: route pooled gradients to the GEMM layout.

    dy, out: float (N*OC*PP,) (gradient at, and value of, the pooled output);
    argmax: int32 from forward. The block holds BP conv outputs per image
    plane, starting at plane position ``shift`` (r0*OW), and pooled outputs
    [lo, hi) of each plane route into it. Each gradient goes to its window's
    maximum, and with ``relu`` only where the output is > 0. Writes dyblock:
    float (OC*(n1-n0)*BP,) as (OC, n1-n0, BP); adds the block's sums to
    dbias: float (OC,).
    """
    d3 = dy.reshape((-1, OC, PP))
    o3 = out.reshape((-1, OC, PP))
    a3 = argmax.reshape((-1, OC, PP))
    m3 = dyblock.reshape((OC, n1 - n0, BP))
    for oc in range(OC):
        acc = 0.0
        for n in range(n0, n1):
            dst = m3[oc, n - n0]
            dst[:] = 0
            g = d3[n, oc]
            o = o3[n, oc]
            pos = a3[n, oc]
            for j in range(lo, hi):
                if not relu or o[j] > 0:
                    dst[pos[j] - shift] += g[j]
                    acc += g[j]
        dbias[oc] += acc


@helper
def block_to_pool_major(yblock, bias, OC, PKH, PKW, Q, PP, n0, n1, lo, relu, out, argmax):
    """Bias, optional ReLU and non-overlapping max pooling of one pool-major block.

    yblock: float (OC*(n1-n0)*PKH*Q*PKW,) as (OC, n1-n0, PKH, Q, PKW): the
    GEMM output of a block unfolded with G = PKH (see ``im2col``), so member
    (dy, dx) of pooled output q of an image is at [dy, q, dx]: every loop
    below runs over all Q pooled outputs of the block's rows at a fixed
    stride, and vectorises. Each pooled value is the
    first maximum in the window's row-major order (as ``pool_plane`` scans)
    + bias, then max(0, .) with ``relu``. Writes pooled outputs [lo, lo+Q) of
    each (image, channel) plane of out: float (N*OC*PP,) and, in argmax:
    int32 (same), the winning member dy*PKW + dx.
    """
    S = PKH * PKW
    run = U(Q * PKW)
    src = U(0)
    for oc in range(OC):
        b = bias[oc]
        for n in range(n0, n1):
            d = U((n * OC + oc) * PP + lo)
            if S == 4 and PKW == 2:  # 2x2 windows: one pass
                for j in range(U(Q)):
                    t = src + U(2) * j
                    best = yblock[t]
                    at = 0
                    v = yblock[t + U(1)]
                    if not (v <= best):
                        best = v
                        at = 1
                    v = yblock[t + run]
                    if not (v <= best):
                        best = v
                        at = 2
                    v = yblock[t + run + U(1)]
                    if not (v <= best):
                        best = v
                        at = 3
                    v = best + b
                    if relu and v < 0:  # as block_to_pooled does
                        out[d + j] = 0
                    else:
                        out[d + j] = v
                    argmax[d + j] = at
            else:
                for j in range(U(Q)):
                    out[d + j] = yblock[src + U(PKW) * j]
                    argmax[d + j] = 0
                for m in range(1, S):
                    t = src + U(m // PKW) * run + U(m % PKW)
                    for j in range(U(Q)):
                        v = yblock[t + U(PKW) * j]
                        if not (v <= out[d + j]):
                            out[d + j] = v
                            argmax[d + j] = m
                for j in range(U(Q)):
                    v = out[d + j] + b
                    if relu and v < 0:
                        out[d + j] = 0
                    else:
                        out[d + j] = v
            src += U(S) * U(Q)


@helper
def pool_major_to_block(dy, out, argmax, OC, PKH, PKW, Q, PP, n0, n1, lo, relu, dyblock, dbias):
    """Backward of ``block_to_pool_major``: each pooled gradient goes to its
    window's winning member (with ``relu``, only where the output is > 0).

    dy, out: float (N*OC*PP,) (gradient at, and value of, the pooled output);
    argmax: int32 from forward. Writes dyblock: float as yblock there, every
    element once (the winner's gradient or 0), in passes that vectorise;
    adds the block's sums to dbias: float (OC,).
    """
    S = PKH * PKW
    run = U(Q * PKW)
    zero = np.float32(0)  # not 0.0: a float64 literal would make float32 code convert
    t = U(0)
    for oc in range(OC):
        acc = 0.0
        for n in range(n0, n1):
            s = U((n * OC + oc) * PP + lo)
            for j in range(U(Q)):
                if not relu or out[s + j] > 0:
                    acc += dy[s + j]
            for row in range(PKH):
                first = row * PKW  # member (row, 0)
                d = t + U(row) * run
                if PKW == 2:
                    for j in range(U(Q)):
                        m = argmax[s + j]
                        g = dy[s + j] if not relu or out[s + j] > 0 else zero
                        dyblock[d + U(2) * j] = g if m == first else zero
                        dyblock[d + U(2) * j + U(1)] = g if m == first + 1 else zero
                else:
                    for col in range(PKW):
                        for j in range(U(Q)):
                            m = argmax[s + j]
                            g = dy[s + j] if not relu or out[s + j] > 0 else zero
                            dyblock[d + U(PKW) * j + U(col)] = g if m == first + col else zero
            t += U(S) * U(Q)
        dbias[oc] += acc


@helper
def gemm_in_slices(blas, trans_a, M, K, a, b, L, c, slice_cols, tiles):
    """c (M, L) = op(a) (M, K) @ b (K, L): with ``tiles`` in register tiles
    (``nnjit.kernels.tiles``), otherwise as BLAS GEMMs over column slices of
    about ``slice_cols`` columns, of near-equal width (no narrow, slow last one).

    a: float (M*K,) as (M, K), or as (K, M) with trans_a == TRANS; b: (K*L,);
    writes c: (M*L,).
    """
    if tiles:
        tiled_gemm(blas, trans_a, M, K, a, M if trans_a == TRANS else K, b, L, c, False)
        return
    slices = -(-L // slice_cols)
    step = -(-L // slices)
    lda = M if trans_a == TRANS else K
    for start in range(0, L, step):
        width = min(step, L - start)
        gemm(blas, trans_a, NO_TRANS, M, width, K, 1.0, a, lda, b[start:], L, 0.0, c[start:], L)


class ConvGeometry(NamedTuple):
    """A convolution's shape: input (C, H, W), kernel (KH, KW), stride (SH, SW),
    zero padding (PH, PW) and output (OH, OW). Kernels take it whole (Numba
    passes it as a tuple of int64) and unpack what they use."""

    C: int
    H: int
    W: int
    KH: int
    KW: int
    SH: int
    SW: int
    PH: int
    PW: int
    OH: int
    OW: int


class PoolGeometry(NamedTuple):
    """The max-pool applied in a convolution's output pass: ``on`` (0 or 1),
    ``major`` (1: blocks unfolded in pool-major order, non-overlapping windows
    only), window (KH, KW), strides (SH, SW) and pooled output (OH, OW). In
    backward it describes the gradient at the layer's output: the pooled one,
    or the conv's own (OH, OW) when ``on`` is 0."""

    on: int
    major: int
    KH: int
    KW: int
    SH: int
    SW: int
    OH: int
    OW: int


#: No pool fused.
NO_POOL = PoolGeometry(0, 0, 1, 1, 1, 1, 1, 1)


@cached_njit(inline="always")
def block_rows(pool_major, OW, r0, r1, pr0, pr1, PKH, PKW, POW):
    """(width, r0, R, G) of a block's conv rows as ``im2col`` takes them: in
    pool-major order, the PKH rows of each of the pooled rows [pr0, pr1),
    PKW*POW columns wide (the conv outputs the windows read); otherwise rows
    [r0, r1), OW wide."""
    if pool_major:
        return PKW * POW, pr0 * PKH, pr1 - pr0, PKH
    return OW, r0, r1 - r0, 1


@helper
def conv_forward_part(part, bounds, blocks, x, weight, bias, g, relu, pool, image, cols, yblock,
                      out, argmax, slice_cols, tiles, blas):
    """Part ``part`` of ``conv_forward`` (same arguments): blocks[bounds[part]:
    bounds[part+1]], in the part's rows of the workspaces."""
    first, last = bounds[part], bounds[part + 1]
    image, cbuf, ybuf = image[part], cols[part], yblock[part]
    C, H, W, KH, KW, SH, SW, PH, PW, OH, OW = g
    _, _, PKH, PKW, PSH, PSW, POH, POW = pool
    pooled, pool_major = pool.on != 0, pool.major != 0
    OC = bias.size
    K = C * KH * KW
    for b in range(first, last):
        n0, n1, r0, r1, pr0, pr1 = (blocks[b, 0], blocks[b, 1], blocks[b, 2], blocks[b, 3],
                                    blocks[b, 4], blocks[b, 5])
        width, start, R, G = block_rows(pooled and pool_major, OW, r0, r1, pr0, pr1, PKH, PKW,
                                        POW)
        L = (n1 - n0) * G * R * width
        unfold_block(x, C, H, W, KH, KW, SH, SW, PH, PW, width, n0, n1, start, R, G, image, cbuf)
        gemm_in_slices(blas, NO_TRANS, OC, K, weight, cbuf, L, ybuf, slice_cols, tiles)
        if pooled and pool_major:
            block_to_pool_major(ybuf, bias, OC, PKH, PKW, R * POW, POH * POW, n0, n1, pr0 * POW,
                                relu, out, argmax)
        elif pooled:
            block_to_pooled(ybuf[:OC * L], bias, OC, r1 - r0, OW, n0, n1, r0, pr0, pr1, relu,
                            PKH, PKW, PSH, PSW, POH, POW, out, argmax)
        else:
            block_to_nchw(ybuf, bias, OC, OH * OW, OW, n0, n1, r0, r1, relu, out)


@kernel(blas=True, parts=(conv_forward_part,))
def conv_forward(conv_forward_part, bounds, blocks, x, weight, bias, g, relu, pool, image, cols,
                 yblock, out, argmax, slice_cols, tiles, blas):
    """Conv2D forward: out = conv(x, weight) + bias, then ReLU and max-pool if fused.

    bounds: int64 (parts+1,), part p walks blocks[bounds[p]:bounds[p+1]];
    blocks: int64 (B, 6) rows (n0, n1, r0, r1, pr0, pr1): conv rows
    [r0, r1) of images [n0, n1) and, under a fused pool, the pooled rows
    [pr0, pr1) they feed. g: the ``ConvGeometry``; pool: the fused max-pool's
    ``PoolGeometry`` (PKH, PKW, PSH, PSW, POH, POW below). x: float (N*C*H*W,);
    weight (OC*C*KH*KW,); bias (OC,). image, cols, yblock: float workspaces
    (parts, >= the most images in a block * C*(H+2PH)*(W+2PW)) (``unfold_block``;
    unused without padding), (parts, >= K*L) and (parts, >= OC*L) for the
    largest block. Without a pool (``pool.on`` 0) writes
    out: (N*OC*OH*OW,) (argmax unused); with it, out and argmax: int32, both
    (N*OC*POH*POW,), pooling windows PKH x PKW with strides PSH, PSW; with
    ``pool.major`` (non-overlapping windows only) the blocks are unfolded in
    pool-major order (``block_rows``, ``block_to_pool_major``) and argmax
    holds each window's winning member. GEMMs run in register tiles with
    ``tiles``, otherwise in column slices of about ``slice_cols`` (see
    ``gemm_in_slices``).
    """
    for part in prange(bounds.size - 1):
        call_part(conv_forward_part, np.int64(part), bounds, blocks, x, weight, bias, g, relu,
                  pool, image, cols, yblock, out, argmax, slice_cols, tiles, blas)


@helper
def padded_image(x, n, C, H, W, PH, PW, hp0, hp1, image):
    """image[:C*(hp1-hp0)*Wp] = rows [hp0, hp1) of image n of x (N*C*H*W,) with PH
    rows and PW columns of zeros around each channel, as (C, hp1-hp0, Wp):
    rows hp of (C, H+2PH, W+2PW) = (C, Hp, Wp). Every value is written, so a
    buffer of the same size from another geometry is safe."""
    Wp = W + 2 * PW
    for c in range(C):
        for hp in range(hp0, hp1):
            d = U((c * (hp1 - hp0) + hp - hp0) * Wp)
            h = hp - PH
            if h < 0 or h >= H:
                zero_run(image, d, U(Wp))
                continue
            zero_run(image, d, U(PW))
            copy_run(image, d + U(PW), x, U(((n * C + c) * H + h) * W), U(W))
            zero_run(image, d + U(PW + W), U(PW))


@helper
def unfold_block(x, C, H, W, KH, KW, SH, SW, PH, PW, OW, n0, n1, r0, R, G, image, cols):
    """``im2col`` of one block (its arguments, with the padding PH, PW); with
    padding, from a zero-padded copy of the input rows the block reads, in
    image (>= (n1-n0)*C*Hp*Wp): every row of cols is then one plain copy per
    run, without padding checks and zeroed ends (one core, one image, 32->64
    5x5 padding 1 on 13x13: 24.2 -> 7.7 us plus ~1 us of copy; 32x32 padding
    1: 38.9 -> 15.9, against the unfold that handled the padding per run)."""
    if PH == 0 and PW == 0:
        src, rows, Wp, skip, first, last = x, H, W, 0, n0, n1
    else:
        Hp, Wp = H + 2 * PH, W + 2 * PW
        skip = r0 * SH  # padded input rows [skip, end) under conv rows r0 .. r0 + G*R - 1
        rows = min(Hp, (r0 + G * R - 1) * SH + KH) - skip
        for n in range(n0, n1):
            padded_image(x, n, C, H, W, PH, PW, skip, skip + rows,
                         image[(n - n0) * C * rows * Wp:])
        src, first, last = image, 0, n1 - n0
    # One call either way (each inlined copy costs compile time). In the padded
    # copy, row hp is row hp - skip.
    im2col(src, C, rows, Wp, KH, KW, SH, SW, skip, OW, first, last, r0, R, G, cols)


@helper
def tap_offsets(C, KH, KW, Hp, Wp, offsets):
    """offsets[k] = (c*Hp + kh)*Wp + kw for each tap k = (c, kh, kw) of a
    (C, KH, KW) kernel: where in an image (C, Hp, Wp) the tap's input lies,
    from the input under the output's first position. offsets: int64 (C*KH*KW,)."""
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                offsets[(c * KH + kh) * KW + kw] = (c * Hp + kh) * Wp + kw


@helper
def phased_tap_offsets(g, offsets):
    """offsets[k] = where tap k = (c, kh, kw) of a (C, KH, KW) kernel at stride (SH,
    SW) starts in ``phased_image``'s layout, from the input under the output's
    first position: channel c's SH*SW phases of F values each (``phase_geometry``),
    tap (kh, kw) in phase (kh % SH, kw % SW) at row kh // SH, column kw // SW.
    g: the ``ConvGeometry``; offsets: int64 (C*KH*KW,)."""
    C, H, W, KH, KW, SH, SW, PH, PW, _, _ = g
    _, Wq, F = phase_geometry(H, W, PH, PW, KW, 1, SH, SW)
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                offsets[(c * KH + kh) * KW + kw] = c * SH * SW * F + _tap_offset(kh, kw, SH, SW,
                                                                                 Wq, F)


@helper
def phased_image(x, n, g, image):
    """image[:C*SH*SW*F] = image n of x (N*C*H*W,), each channel zero-padded and
    split into its SH*SW phases (``phase_planes``: phase (a, b) holds the padded
    rows a, a+SH, ... and columns b, b+SW, ..., (Hq, Wq) values and F in all,
    ``phase_geometry``). On it a conv at stride (SH, SW) is a stride-1 product
    of shifted rows of Wq values (``phased_tap_offsets``). Every value is
    written, as in ``padded_image``."""
    C, H, W, KH, KW, SH, SW, PH, PW, _, _ = g
    Hq, Wq, F = phase_geometry(H, W, PH, PW, KW, 1, SH, SW)
    size = SH * SW * F
    for c in range(C):
        zero_run(image, U(c * size), U(size))
        phase_planes(x, n * C + c, H, W, PH, PW, SH, SW, Hq, Wq, F, image[c * size:])


@helper
def conv_forward_direct_part(part, bounds, blocks, x, weight, bias, g, relu, skipping, offsets,
                             image, ybuf, out, residual, add_relu):
    """Part ``part`` of ``conv_forward_direct`` (same arguments): blocks[bounds[part]:
    bounds[part+1]], in the part's rows of image and ybuf."""
    first, last = bounds[part], bounds[part + 1]
    image, ybuf = image[part], ybuf[part]
    C, H, W, _, _, SH, SW, PH, PW, OH, OW = g
    OC = bias.size
    # Rows of Wq values: the padded width, or at a stride a phase's width
    # (``phased_image``).
    strided = SH != 1 or SW != 1
    _, Wq, _ = phase_geometry(H, W, PH, PW, 1, 1, SH, SW)
    # With skipping, the product covers only the kept columns (skipping
    # tiles: no dropped column computed or read); otherwise whole padded rows.
    # Unpadded, image n is read where it lies in x (what a product reads past
    # it is the next image's first values); only the last image has no next
    # one to run into, unless nothing past it is read (skipping).
    in_place = PH == 0 and PW == 0 and not strided
    last_image = x.size // (C * H * W) - 1
    copied = -1  # the image in image: a large one comes in several blocks of rows
    for b in range(first, last):
        n0, n1, r0, r1 = blocks[b, 0], blocks[b, 1], blocks[b, 2], blocks[b, 3]
        L = (r1 - r0) * (OW if skipping else Wq)
        for n in range(n0, n1):
            if in_place and (n < last_image or skipping):
                src, src_off = x, n * C * H * W + r0 * Wq
            else:
                if n != copied:
                    if strided:
                        phased_image(x, n, g, image)
                    else:
                        padded_image(x, n, C, H, W, PH, PW, 0, H + 2 * PH, image)
                    copied = n
                src, src_off = image, r0 * Wq
            if skipping:  # the product, bias and ReLU written in the output planes
                skipping_rows_gemm(OC, offsets.size, weight, src, src_off, offsets, OW, Wq, L,
                                   out, (n * OC * OH + r0) * OW, OH * OW, bias, relu)
            else:
                shifted_rows_gemm(OC, offsets.size, weight, src, src_off, offsets, L, ybuf)
                for oc in range(OC):
                    bo = bias[oc]
                    for r in range(r1 - r0):
                        s = U(oc * L + r * Wq)
                        d = U(((n * OC + oc) * OH + r0 + r) * OW)
                        if relu:
                            for j in range(U(OW)):
                                out[d + j] = max(ybuf[s + j] + bo, 0)
                        else:
                            for j in range(U(OW)):
                                out[d + j] = ybuf[s + j] + bo
            if residual.size == out.size:  # a residual sum, while the block is in cache
                for oc in range(OC):
                    add_run(out, ((n * OC + oc) * OH + r0) * OW, residual, (r1 - r0) * OW,
                            add_relu)


@kernel(parts=(conv_forward_direct_part,))
def conv_forward_direct(conv_forward_direct_part, bounds, blocks, x, weight, bias, g, relu,
                        skipping, offsets, image, ybuf, out, residual, add_relu):
    """Conv2D forward without unfolding: out = conv(x, weight) + bias, then ReLU
    with ``relu`` (no fused pool).

    Each image is copied into image[part] (C, Hp, Wp) = (C, H+2PH, W+2PW),
    zero-bordered (``padded_image``; KW-1 or more values of slack after it,
    read only for dropped columns); unpadded, all but the batch's last are
    read in place (10->20 5x5 on 28x28, 16 or 64 images: 3-5% faster). On
    rows of Wp values, the conv output at (oh, ow) is sum_k weight[oc, k] *
    image[oh*Wp + ow + offsets[k]], offsets[k] = (c*Hp + kh)*Wp + kw for
    k = (c, kh, kw): row k of the GEMM's right-hand
    side is the image itself, shifted (``shifted_rows_gemm``). That product
    covers Wp columns per output row, of which the last Wp - OW = KW - 1 are
    dropped: (KW-1)/Wp more multiply-adds than the unfolded GEMM, and no
    unfolding (10->20 5x5 on 28x28, one core: 25 vs 31 us per image,
    unfolding included; 16 128x128 images on two threads 18.6 vs 25.7 ms per
    block, each image copied once for all its blocks of rows). With
    ``skipping`` (the planner's choice: enough is dropped to pay for a
    vector's row-end crossing, at most one per vector since OW >= 16), the
    product skips them (``skipping_rows_gemm``) and its tiles are stored in
    the output planes with the bias and ReLU: no pass moves it out of ybuf.

    At a stride (SH, SW) each image is copied split into its phases instead
    (``phased_image``): there too each tap reads one run of the copy, rows of
    Wq = ceil(Wp / SW) values (``phased_tap_offsets``), so the same product
    runs it (ResNet-20's 16->32 3x3 at stride 2, the layer's forward on two
    threads against unfolding: one image 53 -> 39 us, 128 images 2.5-3.0 ->
    1.7-1.8 ms).

    bounds, blocks: as ``conv_forward`` (rows [r0, r1) of images [n0, n1));
    x: float32 (N*C*H*W,); weight (OC*K,), K = C*KH*KW; bias (OC,); image:
    (parts, >= C*Hp*Wp + KW - 1) as above (strided: >= C*SH*SW*F,
    ``phase_geometry``); ybuf: (parts, >= OC*OH*Wq), unread with ``skipping``.
    residual: of out's size, or none (size 0): added to each block's output
    while it is in cache, then max(., 0) with ``add_relu`` (a residual sum
    fused into the conv, ``nnjit.fusion``). Writes
    offsets: int64 (K,) (here, not by the caller: a replayed call of another
    input shape finds them right) and out: (N*OC*OH*OW,).
    """
    if g.SH == 1 and g.SW == 1:
        tap_offsets(g.C, g.KH, g.KW, g.H + 2 * g.PH, g.W + 2 * g.PW, offsets)
    else:
        phased_tap_offsets(g, offsets)
    for part in prange(bounds.size - 1):
        call_part(conv_forward_direct_part, np.int64(part), bounds, blocks, x, weight, bias, g,
                  relu, skipping, offsets, image, ybuf, out, residual, add_relu)


@helper
def conv_backward_part(part, bounds, blocks, x, dy, out, argmax, weight, g, relu, pool, norm,
                       norm_out, coef, image, cols, dyblock, dyblock_t, dw_parts, db_parts,
                       need_dx, dx, dweight, dbias, slice_cols, tiles, nt_tiles, blas):
    """Part ``part`` of ``conv_backward`` (same arguments): blocks[bounds[part]:
    bounds[part+1]] (whole images), in the part's rows of the workspaces;
    writes its partial sums dw_parts[part] (K*OC,: dW transposed) and
    db_parts[part] (OC,)."""
    first, last = bounds[part], bounds[part + 1]
    image, cbuf, dyb, dyt = image[part], cols[part], dyblock[part], dyblock_t[part]
    dwp, dbp = dw_parts[part], db_parts[part]
    C, H, W, KH, KW, SH, SW, PH, PW, OH, OW = g
    _, _, PKH, PKW, PSH, _, POH, POW = pool
    pooled, pool_major = pool.on != 0, pool.major != 0
    PP = POH * POW
    OC = dbp.size
    K = C * KH * KW
    dwp[:] = 0
    dbp[:] = 0
    if need_dx:
        dx[blocks[first, 0] * C * H * W:blocks[last - 1, 1] * C * H * W] = 0
    for b in range(first, last):
        n0, n1, r0, r1, pr0, pr1 = (blocks[b, 0], blocks[b, 1], blocks[b, 2], blocks[b, 3],
                                    blocks[b, 4], blocks[b, 5])
        width, start, R, G = block_rows(pooled and pool_major, OW, r0, r1, pr0, pr1, PKH, PKW,
                                        POW)
        L = (n1 - n0) * G * R * width
        unfold_block(x, C, H, W, KH, KW, SH, SW, PH, PW, width, n0, n1, start, R, G, image, cbuf)
        if norm:
            norm_grad_to_block(dy, out, argmax, norm_out, coef, OC, OH * OW, OW, n0, n1, r0, r1,
                               PKH, PSH, POW, PP, relu, dyb, dbp)
        elif pooled and pool_major:
            pool_major_to_block(dy, out, argmax, OC, PKH, PKW, R * POW, PP, n0, n1, pr0 * POW,
                                relu, dyb, dbp)
        elif pooled:
            pooled_to_block(dy, out, argmax, OC, (r1 - r0) * OW, PP, n0, n1, r0 * OW, pr0 * POW,
                            pr1 * POW, relu, dyb[:OC * L], dbp)
        else:
            nchw_to_block(dy, out, OC, OH * OW, OW, n0, n1, r0, r1, relu, dyb, dbp)
        # dW^T (K, OC) += cols (K, L) @ dyblock^T (L, OC): OpenBLAS runs this
        # orientation 1.0-1.6x faster than dW = dyblock @ cols^T (OC 64, K 288:
        # 87 vs 67 GFLOP/s; OC 20, K 250: 66 vs 40).
        if nt_tiles:
            tiled_gemm_nt(blas, K, L, cbuf, dyb, OC, dyt, dwp)
        else:
            gemm(blas, NO_TRANS, TRANS, K, OC, L, 1.0, cbuf, L, dyb, L, 1.0, dwp, OC)
        if need_dx:
            # cols is spent once this block's dW is known: reuse it for dcols (K, L).
            gemm_in_slices(blas, TRANS, K, OC, weight, dyb, L, cbuf, slice_cols, tiles)
            col2im(cbuf, C, H, W, KH, KW, SH, SW, PH, PW, width, n0, n1, start, R, G, dx)


@kernel(blas=True, parts=(conv_backward_part,))
def conv_backward(conv_backward_part, bounds, blocks, x, dy, out, argmax, weight, g, relu,
                  pool, norm, norm_out, coef, image, cols, dyblock, dyblock_t, dw_parts, db_parts,
                  need_dx, dx, dweight, dbias, slice_cols, tiles, nt_tiles, blas):
    """Conv2D backward over the same parts and blocks as ``conv_forward``: part
    p runs ``conv_backward_part`` (taken by address, ``nnjit.kernels._jit``).

    g: the ``ConvGeometry``; pool: the ``PoolGeometry`` of dy (PKH, PKW, PSH,
    POH, POW; PP = POH*POW). dy: float, the gradient at ``out`` (the layer's
    output: pooled when ``pool.on``, planes of PP values in rows of POW, with
    argmax from forward); with ``relu``, passed only where out > 0;
    ``pool.major`` and the window PKH x PKW as in forward. With ``norm`` (no
    fused ReLU or pool), the
    gradient at ``out`` is that of a following batch norm + max-pool, given
    by its parts (``PooledNormGrad``): dy, norm_out, argmax at the pooled
    output (PP values per plane in rows of POW; windows PKH high, PSH apart)
    and coef; the norm's ReLU, if any, is ``relu``. Writes dweight (OC*K,)
    and dbias (OC,), summed from per-part partials dw_parts (parts, K*OC: dW
    transposed) and db_parts (parts, OC); with ``need_dx``, dx: (N*C*H*W,).
    Parts own whole images, so col2im's overlapping adds never race. With
    ``tiles`` the input gradient's GEMM runs in register tiles (as forward's),
    and with ``nt_tiles`` the weight gradient's, over dyblock transposed a slice
    at a time into dyblock_t: float (parts, >= NT_REDUCTION_STEP*OC) (``tiled_gemm_nt``).
    """
    for part in prange(bounds.size - 1):
        call_part(conv_backward_part, np.int64(part), bounds, blocks, x, dy, out, argmax, weight,
                  g, relu, pool, norm, norm_out, coef, image, cols, dyblock, dyblock_t, dw_parts,
                  db_parts, need_dx, dx, dweight, dbias, slice_cols, tiles, nt_tiles, blas)
    sum_parts(dw_parts, db_parts, bounds.size - 1, dweight, dbias)


@helper
def sum_parts(dw_parts, db_parts, parts, dweight, dbias):
    """dweight (OC*K,) = the sum of dw_parts[:parts] (each K*OC: dW transposed)
    back in (OC, K) order, and dbias (OC,) = the sum of db_parts[:parts]."""
    OC = dbias.size
    K = dweight.size // OC
    for k in range(K):
        for oc in range(OC):
            acc = dw_parts[0, k * OC + oc]
            for part in range(1, parts):
                acc += dw_parts[part, k * OC + oc]
            dweight[oc * K + k] = acc
    for oc in range(OC):
        acc = db_parts[0, oc]
        for part in range(1, parts):
            acc += db_parts[part, oc]
        dbias[oc] = acc
