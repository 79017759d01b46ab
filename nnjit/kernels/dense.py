"""Dense layer forward and backward, each one compiled call with its GEMMs inside.

Parallel over ``parts`` (the layer picks how many, from the work): each
``prange`` iteration runs a single-threaded BLAS GEMM on its rows (see
``nnjit.kernels.blas``).
"""
from ._jit import kernel, prange
from .blas import NO_TRANS, TRANS, gemm


@kernel(blas=True)
def dense_forward(x, weight, bias, N, IN, F, relu, parts, chunk, out, blas):
    """out = x @ weight^T + bias, then max(0, .) when ``relu`` (a fused ReLU).

    x: float (N*IN,) as (N, IN); weight: (F*IN,) as (F, IN); bias: (F,). Writes
    out: (N*F,) as (N, F). Part p computes rows [p*N//parts, (p+1)*N//parts),
    in GEMMs of at most ``chunk`` rows.
    """
    for p in prange(parts):
        n0, n1 = p * N // parts, (p + 1) * N // parts
        for r in range(n0, n1, chunk):
            rows = min(chunk, n1 - r)
            gemm(blas, NO_TRANS, TRANS, rows, F, IN, 1.0, x[r * IN:], IN, weight, IN, 0.0,
                 out[r * F:], F)
        for n in range(n0, n1):
            row = out[n * F:(n + 1) * F]
            for f in range(F):
                v = row[f] + bias[f]
                if relu and v < 0:
                    row[f] = 0
                else:
                    row[f] = v


@kernel(blas=True)
def dense_backward(x, out, dy, weight, N, IN, F, relu, parts, chunk, need_dx, masked, dweight,
                   dbias, dx, blas):
    """Gradients of ``dense_forward``.

    x: float (N*IN,) the forward input; out: (N*F,) its output; dy: (N*F,)
    the gradient at out. With ``relu``, dy counts only where out > 0 (masked
    into masked: (N*F,), a workspace). Writes dweight: (F*IN,) = dy^T x,
    dbias: (F,) = column sums of dy and, with ``need_dx``, dx: (N*IN,) = dy W,
    in GEMMs of at most ``chunk`` rows. Parts own features (for dweight,
    dbias) and rows (for dx).
    """
    g = dy
    if relu:
        for p in prange(parts):
            for i in range(p * N // parts * F, (p + 1) * N // parts * F):
                if out[i] > 0:
                    masked[i] = dy[i]
                else:
                    masked[i] = 0
        g = masked
    for p in prange(parts):
        f0, f1 = p * F // parts, (p + 1) * F // parts
        if f1 > f0:
            # dweight rows [f0, f1): (f1-f0, IN) = g[:, f0:f1]^T @ x
            gemm(blas, TRANS, NO_TRANS, f1 - f0, IN, N, 1.0, g[f0:], F, x, IN, 0.0,
                 dweight[f0 * IN:], IN)
            for f in range(f0, f1):
                acc = 0.0
                for n in range(N):
                    acc += g[n * F + f]
                dbias[f] = acc
        n0, n1 = p * N // parts, (p + 1) * N // parts
        if need_dx:
            for r in range(n0, n1, chunk):
                rows = min(chunk, n1 - r)
                gemm(blas, NO_TRANS, NO_TRANS, rows, IN, F, 1.0, g[r * F:], F, weight, IN, 0.0,
                     dx[r * IN:], IN)
