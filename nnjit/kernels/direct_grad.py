"""A stride-1 convolution's weight gradient without unfolding.

The direct forward (``conv_forward_direct``) reads row k = (c, kh, kw) of its
GEMM's right-hand side straight from a zero-bordered image (C, Hp, Wp), at
offset (c*Hp + kh)*Wp + kw from each output position, on output rows Wp
values apart. The weight gradient is the same product turned round:

    dW^T[(c, kh, kw), oc] = sum_n sum_l image_n[(c*Hp + kh)*Wp + kw + l] * dy_n[oc, l]

over output positions l = oh*Wp + ow, with dy zero in the Wp - OW columns a
row drops. Its left-hand side is the padded image read in place (eight
channels at one tap are eight rows Hp*Wp apart: one register tile's rows),
its right-hand side dy transposed a slice of rows at a time, so nothing is
unfolded (the unfolding path writes and reads C*KH*KW values per output
position). The input gradient of the same convs is a direct forward itself:
dy convolved with the weight flipped and transposed (``flipped_transposed``).
"""
import numpy as np

from ._jit import call_part, helper, kernel, prange
from .conv import padded_image, sum_parts
from .runs import zero_run
from .tiles import TILE_COLS, TILE_ROWS, row_tile, tiled_rows, transpose_slice

U = np.uint64


@helper
def conv_weight_grad_direct_part(part, bounds, x, dy, g, with_bias, image, dyt, dw_parts,
                                 db_parts, dweight, dbias):
    """Part ``part`` of ``conv_weight_grad_direct`` (same arguments): images
    [bounds[part], bounds[part+1]), summed into dw_parts[part] and db_parts[part]."""
    image, dyt, dwp, dbp = image[part], dyt[part], dw_parts[part], db_parts[part]
    C, H, W, KH, KW, _, _, PH, PW, OH, OW = g
    OC = dbp.size
    Hp, Wp = H + 2 * PH, W + 2 * PW
    ldc = KH * KW * OC  # dW^T's rows (c, kh, kw) of one tap are this far apart per channel
    M8, M4 = tiled_rows(C)
    slice_rows = max(1, dyt.size // (OC * Wp))
    dwp[:] = 0
    dbp[:] = 0
    for n in range(bounds[part], bounds[part + 1]):
        padded_image(x, n, C, H, W, PH, PW, 0, Hp, image)
        dyn = dy[n * OC * OH * OW:]
        if with_bias:
            for oc in range(OC):
                s = U(oc * OH * OW)
                acc = dbp[oc]
                for j in range(U(OH * OW)):
                    acc += dyn[s + j]
                dbp[oc] = acc
        for r0 in range(0, OH, slice_rows):
            rows = min(slice_rows, OH - r0)
            # dy's rows [r0, r0 + rows) as (rows * Wp, OC), each row's last
            # Wp - OW positions zero: they stand for the columns a row drops.
            for r in range(rows):
                transpose_slice(dyn, OH * OW, (r0 + r) * OW, OW, 0, OC, OC, dyt[r * Wp * OC:])
                zero_run(dyt, U((r * Wp + OW) * OC), U((Wp - OW) * OC))
            for tap in range(KH * KW):
                kh, kw = tap // KW, tap % KW
                for c0 in range(0, M4, TILE_ROWS):
                    a_off = (c0 * Hp + kh + r0) * Wp + kw
                    for n0 in range(0, OC, TILE_COLS):
                        row_tile(TILE_ROWS if c0 < M8 else 4, image, a_off, Hp * Wp, 1, dyt,
                                 n0, OC, rows * Wp, dwp, (c0 * KH * KW + tap) * OC + n0, ldc,
                                 True, min(TILE_COLS, OC - n0))


@kernel(parts=(conv_weight_grad_direct_part,))
def conv_weight_grad_direct(conv_weight_grad_direct_part, bounds, x, dy, g, with_bias, image,
                            dyt, dw_parts, db_parts, dweight, dbias):
    """A stride-1 Conv2D's weight (and bias) gradient, as the module docstring
    says, in register tiles: float32 only, C a multiple of 4 (tile rows).

    bounds: int64 (parts + 1,), part p sums images [bounds[p], bounds[p+1]);
    x: float32 (N*C*H*W,); dy: (N*OC*OH*OW,), the gradient at the conv's output
    (ReLU already applied); g: the ``ConvGeometry`` (stride 1); with_bias: sum
    dbias too. Workspaces per part: image (parts, >= C*Hp*Wp + KW) with its
    values past C*Hp*Wp zero (read against dy's zeros only), dyt (parts,
    >= Wp*OC) (a slice of dy transposed, whole rows of Wp), dw_parts (parts,
    C*KH*KW*OC), db_parts (parts, OC). Writes dweight (OC*C*KH*KW,) and dbias
    (OC,): the bias gradient with ``with_bias``, zeros otherwise.
    """
    for part in prange(bounds.size - 1):
        call_part(conv_weight_grad_direct_part, np.int64(part), bounds, x, dy, g, with_bias,
                  image, dyt, dw_parts, db_parts, dweight, dbias)
    sum_parts(dw_parts, db_parts, bounds.size - 1, dweight, dbias)


@kernel
def flipped_transposed(weight, OC, C, KH, KW, out):
    """out (C, OC, KH, KW) = weight (OC, C, KH, KW) flipped in both spatial axes
    and its channel axes swapped: the weight of the convolution that takes a
    stride-1 conv's output gradient to its input gradient. Flat float arrays."""
    for c in range(C):
        for oc in range(OC):
            for kh in range(KH):
                for kw in range(KW):
                    out[((c * OC + oc) * KH + kh) * KW + kw] = \
                        weight[((oc * C + c) * KH + KH - 1 - kh) * KW + KW - 1 - kw]
