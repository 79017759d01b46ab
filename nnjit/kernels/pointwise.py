"""1x1 convolutions at stride 1 without padding, read in place.

Such a conv is a product per image: out[n] (OC, P) = weight (OC, C) @ x[n]
(C, P), P = H*W, whose right-hand side is the image itself, as NCHW lays it
out, and whose result is out[n] as NCHW lays it out. So nothing is unfolded
or moved: each GEMM reads its image where it lies and writes its output where
it belongs, and the bias and ReLU follow in place while those rows are in
cache. MobileNet's 1x1 convs at batch 1000, two threads, unfolded (16 and 32
input channels: a copy of the input, then BLAS) or direct (64 and 128: tiles
over the image in place, the output moved out row by row) against in place:
16->32 on 32x32 18.5 -> 9.3 ms, 32->64 on 16x16 10.5 -> 7.1, 64->64 16.4 ->
12.9, 64->128 on 8x8 6.8 -> 4.8, 128->128 10.6 -> 8.3.
"""
from ._jit import kernel, prange
from .blas import NO_TRANS, TRANS, gemm
from .tiles import tiled_gemm


@kernel(blas=True)
def pointwise_conv_forward(x, weight, bias, P, parts, chunks, relu, tiles, blas, out):
    """out = weight @ x per image, + bias, then max(., 0) with ``relu``.

    x: float (N*C*P,) as (N, C, P), P = H*W; weight (OC*C,) as (OC, C); bias (OC,).
    Writes out: (N*OC*P,) as (N, OC, P). The work is N*chunks units, unit u
    being rows (output channels) of chunk u % chunks of image u // chunks, in
    multiples of 8 rows (a register tile's); part p of ``parts`` runs a
    contiguous share of the units. Products run in register tiles with
    ``tiles``, otherwise on BLAS (``blas``: ``blas_handle()``).
    """
    OC = bias.size
    C = weight.size // OC
    N = x.size // (C * P)
    units = N * chunks
    per = -(-OC // chunks)  # output channels per chunk, rounded up to whole tiles of 8
    step = -(-per // 8) * 8
    for part in prange(parts):
        for u in range(units * part // parts, units * (part + 1) // parts):
            n, m0 = u // chunks, (u % chunks) * step
            m1 = min(OC, m0 + step)
            if m0 >= m1:
                continue
            a, b, c = weight[m0 * C:], x[n * C * P:], out[(n * OC + m0) * P:]
            if tiles:
                tiled_gemm(blas, NO_TRANS, m1 - m0, C, a, C, b, P, c, False)
            else:
                gemm(blas, NO_TRANS, NO_TRANS, m1 - m0, P, C, 1.0, a, C, b, P, 0.0, c, P)
            for oc in range(m0, m1):
                bo = bias[oc]
                row = c[(oc - m0) * P:(oc - m0 + 1) * P]
                if relu:
                    for j in range(P):
                        row[j] = max(row[j] + bo, 0)
                else:
                    for j in range(P):
                        row[j] += bo


@kernel(blas=True, reassociate=True)
def pointwise_conv_backward(x, dy, out, weight, P, bounds, relu, need_dx, masked, dw_parts,
                            db_parts, dx, dweight, dbias, blas):
    """The gradients of ``pointwise_conv_forward`` for the gradient dy at its
    output, each a product per image read in place:
    dweight (OC, C) = sum_n g[n] (OC, P) @ x[n]^T, dbias = sum_n,p g[n],
    dx[n] (C, P) = weight^T @ g[n], where g = dy, or dy where out > 0 with
    ``relu`` (written to masked[part] first).

    x: float (N*C*P,); dy, out: (N*OC*P,); weight (OC*C,). bounds: int64
    (parts+1,), part p takes images [bounds[p], bounds[p+1]). masked:
    (parts, OC*P) (unused without relu); dw_parts (parts, OC*C), db_parts
    (parts, OC): the parts' sums, added up into dweight (OC*C,) and dbias
    (OC,) at the end. Writes dx (N*C*P,) with ``need_dx``.
    """
    OC = dbias.size
    C = weight.size // OC
    parts = bounds.size - 1
    for part in prange(parts):
        dwp, dbp = dw_parts[part], db_parts[part]
        dwp[:] = 0
        dbp[:] = 0
        for n in range(bounds[part], bounds[part + 1]):
            g = dy[n * OC * P:(n + 1) * OC * P]
            if relu:
                o, m = out[n * OC * P:(n + 1) * OC * P], masked[part]
                for j in range(OC * P):
                    if o[j] > 0:  # separate stores: a ternary would widen to float64
                        m[j] = g[j]
                    else:
                        m[j] = 0
                g = m
            gemm(blas, NO_TRANS, TRANS, OC, C, P, 1.0, g, P, x[n * C * P:], P, 1.0, dwp, C)
            for oc in range(OC):
                acc = 0.0
                row = g[oc * P:(oc + 1) * P]  # a view: a plain index vectorises
                for j in range(P):
                    acc += row[j]
                dbp[oc] += acc
            if need_dx:
                gemm(blas, TRANS, NO_TRANS, C, P, OC, 1.0, weight, C, g, P, 0.0,
                     dx[n * C * P:], P)
    for i in range(OC * C):
        acc = 0.0
        for part in range(parts):
            acc += dw_parts[part, i]
        dweight[i] = acc
    for oc in range(OC):
        acc = 0.0
        for part in range(parts):
            acc += db_parts[part, oc]
        dbias[oc] = acc
