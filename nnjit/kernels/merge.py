"""Elementwise sums and channel-wise copies: the merge layers (Add, Concatenate)
and gradients that add up where a tensor is read by several layers."""
from ._jit import kernel, prange
from .cache import cached_njit


@kernel
def add_forward(a, b, out, relu):
    """a, b: float (n,). Writes out: float (n,) = a + b, then max(., 0) with ``relu``.
    out may be b itself (an add in place: each element is read before it is written)."""
    for i in prange(a.size):
        v = a[i] + b[i]
        if relu and v < 0:
            out[i] = 0
        else:
            out[i] = v


@kernel
def copy_columns(src, rows, src_width, src_start, dst_width, dst_start, width, dst):
    """Copy columns [src_start, src_start+width) of src: float (rows*src_width,)
    as (rows, src_width) into columns [dst_start, dst_start+width) of dst:
    (rows*dst_width,) as (rows, dst_width); other columns of dst untouched.
    Concatenating along channels is this with one row per sample."""
    for r in prange(rows):
        s, d = r * src_width + src_start, r * dst_width + dst_start
        for j in range(width):
            dst[d + j] = src[s + j]


@cached_njit(inline="always")
def add_run(out, start, residual, count, relu):
    """out[start:start+count] += residual[start:start+count], then max(., 0) with
    ``relu`` (``v < 0`` as the test: NaN stays): a residual sum over a run of
    output a conv has just written (``nnjit.fusion``). out, residual: 1-D float
    arrays of one dtype and size; start, count: int."""
    o = out[start:start + count]  # views: a loop over them vectorises
    r = residual[start:start + count]
    zero = o.dtype.type(0)
    for j in range(count):
        v = o[j] + r[j]
        o[j] = zero if relu and v < 0 else v
