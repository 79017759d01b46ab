"""Dense layer forward (of one layer, or of a stack of them at inference) and
backward, each one compiled call with its GEMMs inside.

Parallel over ``parts`` (the layer picks how many, from the work): each
``prange`` iteration runs a single-threaded BLAS GEMM on its rows (see
``nnjit.kernels.blas``).
"""
import numpy as np

from ._jit import call_part, helper, kernel, prange
from .blas import NO_TRANS, TRANS, gemm
from .tiles import (TILE_COLS, dot_rows_nt, product, refresh_transpose, tiled_gemm,
                    transpose_slice)


@helper
def forward_transposes_part(part, x, weights, biases, packed, dims, relus, N, parts, chunk,
                            dot_below, scratch, out, blas):
    """Part ``part`` of ``dense_forward`` (same arguments): its slice of each
    transposed weight refreshed (``refresh_transpose``)."""
    for l in range(len(weights)):
        if packed[l].size > 0:
            IN, F = dims[l], dims[l + 1]
            refresh_transpose(weights[l], IN, part * F // parts, (part + 1) * F // parts, F,
                              packed[l])


@helper
def forward_rows_part(part, x, weights, biases, packed, dims, relus, N, parts, chunk, dot_below,
                      scratch, out, blas):
    """Part ``part`` of ``dense_forward`` (same arguments): rows
    [part*N//parts, (part+1)*N//parts) through every layer."""
    L = len(weights)
    width = scratch.size // (2 * parts)  # parts >= 1: the layers never pass 0
    n0, n1 = part * N // parts, (part + 1) * N // parts
    for r in range(n0, n1, chunk):
        rows = min(chunk, n1 - r)
        src = x[r * dims[0]:]
        for l in range(L):
            IN, F = dims[l], dims[l + 1]
            if l == L - 1:
                dst = out[r * F:]
            else:
                dst = scratch[(2 * part + l % 2) * width:]
            if packed[l].size > 0:
                tiled_gemm(blas, NO_TRANS, rows, IN, src, IN, packed[l], F, dst, False)
            elif rows < dot_below or dot_below > 0 and F < TILE_COLS:
                dot_rows_nt(0, rows, IN, src, weights[l], F, dst, False)
            else:
                gemm(blas, NO_TRANS, TRANS, rows, F, IN, 1.0, src, IN, weights[l], IN, 0.0,
                     dst, F)
            bias = biases[l]
            relu = (relus >> l) & 1
            for i in range(rows):
                row = dst[i * F:(i + 1) * F]
                for f in range(F):
                    v = row[f] + bias[f]
                    if relu and v < 0:
                        row[f] = 0
                    else:
                        row[f] = v
            src = dst


@kernel(blas=True, parts=(forward_transposes_part, forward_rows_part))
def dense_forward(forward_transposes_part, forward_rows_part, x, weights, biases, packed, dims,
                  relus, N, parts, chunk, dot_below, scratch, out, blas):
    """out = a stack of L dense layers applied to x, each y = h @ weight^T + bias,
    then max(0, .) where bit l of ``relus`` is set (a fused ReLU).

    x: float (N*dims[0],) as (N, dims[0]); weights, biases: tuples of L float
    arrays, (dims[l+1]*dims[l],) as (dims[l+1], dims[l]) and (dims[l+1],);
    dims: tuple of L+1 ints. Writes out: (N*dims[L],) as (N, dims[L]). Part p
    computes rows [p*N//parts, (p+1)*N//parts), ``chunk`` rows at a time
    through every layer, so with L > 1 the intermediate rows stay in cache:
    scratch: float (parts*2*R*max(dims[1:L]),), two buffers per part, R the
    most rows a chunk holds (min(chunk, rows of the largest part); unused
    when L == 1). packed: tuple of L float arrays; where packed[l] is not
    empty (it then holds 2*dims[l]*dims[l+1] values, kept between calls),
    layer l runs in register tiles (``tiled_gemm``) over its weight held
    transposed there (``refresh_transpose``: transposed again where it changed);
    otherwise chunks of fewer than ``dot_below`` rows run as dot products
    (``dot_rows_nt``), and so does a layer of fewer than TILE_COLS outputs
    (no column tile) when dot_below > 0; the rest on BLAS. The parts
    (``forward_transposes_part``, ``forward_rows_part``) are taken by address
    (``nnjit.kernels._jit``).
    """
    for p in prange(parts):
        call_part(forward_transposes_part, np.int64(p), x, weights, biases, packed, dims, relus, N,
                  parts, chunk, dot_below, scratch, out, blas)
    for p in prange(parts):
        call_part(forward_rows_part, np.int64(p), x, weights, biases, packed, dims, relus, N,
                  parts, chunk, dot_below, scratch, out, blas)


@helper
def transposed_features_part(part, x, weight, bias, N, IN, F, relu, parts, xt, yt, out, blas):
    """Part ``part`` of ``dense_forward_transposed`` (same arguments): output
    features [part*F//parts, (part+1)*F//parts) from the transposed input xt."""
    f0, f1 = part * F // parts, (part + 1) * F // parts
    tiled_gemm(blas, NO_TRANS, f1 - f0, IN, weight[f0 * IN:], IN, xt, N, yt[f0 * N:], False)
    for f in range(f0, f1):
        b = bias[f]
        for n in range(N):
            v = yt[f * N + n] + b
            if relu and v < 0:
                out[n * F + f] = 0
            else:
                out[n * F + f] = v


@kernel(blas=True, parts=(transposed_features_part,))
def dense_forward_transposed(transposed_features_part, x, weight, bias, N, IN, F, relu, parts, xt,
                             yt, out, blas):
    """out = x @ weight^T + bias, then max(0, .) with ``relu``, computed as
    out^T = weight @ x^T in register tiles: the input transposed (N*IN values
    moved) instead of the weight (``dense_forward``'s kept transpose, redone
    after every optimizer step: 2*F*IN values compared and moved).

    x: float (N*IN,) as (N, IN); weight (F*IN,) as (F, IN); bias (F,).
    Workspaces xt (IN*N,) and yt (F*N,). Writes out: (N*F,) as (N, F). Part
    p transposes x's columns [p*IN//parts, (p+1)*IN//parts), then (after all
    parts) computes the output features [p*F//parts, (p+1)*F//parts)
    (``transposed_features_part``, taken by address: ``nnjit.kernels._jit``).
    """
    for p in prange(parts):
        k0, k1 = p * IN // parts, (p + 1) * IN // parts
        transpose_slice(x, IN, k0, k1 - k0, 0, N, N, xt[k0 * N:])
    for p in prange(parts):
        call_part(transposed_features_part, np.int64(p), x, weight, bias, N, IN, F, relu, parts,
                  xt, yt, out, blas)


@helper
def backward_part(part, x, out, dy, weight, N, IN, F, relu, parts, chunk, need_dx, masked, dweight,
                  dbias, dx, tiles, blas):
    """Part ``part`` of ``dense_backward`` (same arguments): features
    [part*F//parts, (part+1)*F//parts) of dweight and dbias, and rows
    [part*N//parts, (part+1)*N//parts) of dx."""
    g = masked if relu else dy
    f0, f1 = part * F // parts, (part + 1) * F // parts
    if f1 > f0:
        # dweight rows [f0, f1): (f1-f0, IN) = g[:, f0:f1]^T @ x
        product(blas, tiles, TRANS, f1 - f0, N, g[f0:], F, x, IN, dweight[f0 * IN:], False)
        for f in range(f0, f1):
            acc = 0.0
            for n in range(N):
                acc += g[n * F + f]
            dbias[f] = acc
    n0, n1 = part * N // parts, (part + 1) * N // parts
    if need_dx and tiles:
        tiled_gemm(blas, NO_TRANS, n1 - n0, F, g[n0 * F:], F, weight, IN, dx[n0 * IN:], False)
    elif need_dx:
        for r in range(n0, n1, chunk):
            rows = min(chunk, n1 - r)
            gemm(blas, NO_TRANS, NO_TRANS, rows, IN, F, 1.0, g[r * F:], F, weight, IN, 0.0,
                 dx[r * IN:], IN)


@kernel(blas=True, parts=(backward_part,))
def dense_backward(backward_part, x, out, dy, weight, N, IN, F, relu, parts, chunk, need_dx,
                   masked, dweight, dbias, dx, tiles, blas):
    """Gradients of ``dense_forward``.

    x: float (N*IN,) the forward input; out: (N*F,) its output; dy: (N*F,)
    the gradient at out. With ``relu``, dy counts only where out > 0 (masked
    into masked: (N*F,), a workspace). Writes dweight: (F*IN,) = dy^T x,
    dbias: (F,) = column sums of dy and, with ``need_dx``, dx: (N*IN,) = dy W,
    in GEMMs of at most ``chunk`` rows. Parts own features (for dweight,
    dbias) and rows (for dx). With ``tiles`` both products run in register
    tiles (``tiled_gemm``), dx unchunked. Part p (``backward_part``, taken by
    address: ``nnjit.kernels._jit``) runs after every part's masking.
    """
    if relu:
        for p in prange(parts):
            lo, hi = p * N // parts * F, (p + 1) * N // parts * F
            o, g, m = out[lo:hi], dy[lo:hi], masked[lo:hi]  # views: a plain index vectorises
            for i in range(hi - lo):
                if o[i] > 0:
                    m[i] = g[i]
                else:
                    m[i] = 0
    for p in prange(parts):
        call_part(backward_part, np.int64(p), x, out, dy, weight, N, IN, F, relu, parts, chunk,
                  need_dx, masked, dweight, dbias, dx, tiles, blas)
