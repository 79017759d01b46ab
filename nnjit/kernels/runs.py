"""Short contiguous runs copied or zeroed with masked vector instructions.

The convolution's unfold (``nnjit.kernels.conv``) moves rows of a
few to a few dozen values (an output row of a small image). A loop over such
a run vectorises only in whole vectors and finishes element by element, so a
run of 14 float32 took 8 + 6 single moves. Here each step of a run is one
masked vector load and store (``llvm.masked.load/store``: AVX-512 mask
registers, AVX2 ``vmaskmov``, plain loops on other targets), 64 bytes at a
time, with the tail under a mask: a 14-value row is one load and one store.
Measured on the unfold of 32 channels of 16x16 (rows of 14): 14.7 -> 6.8 ms
per 1000 images. Masked-off lanes are never read or written, so a run may end
anywhere in its array. Only for runs that are written, not read back soon:
a masked load right after a masked store within the same 64 bytes waits for
the store (the fold's ``dx[run] += ...`` with masked adds ran 2.4x slower
than a plain loop). ``nine_tap_rows`` sums a 3x3 conv's nine shifted runs
into each output row the same way, a vector at a time.

Offsets and lengths are unsigned 64-bit element counts. The intrinsics are
named as LLVM 17+ names them (opaque pointers: ``llvm.masked.load.v16f32.p0``),
hence numba >= 0.62 (llvmlite 0.45, LLVM 20) in pyproject.toml.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .cache import cached_njit

U = np.uint64
_VECTOR_BYTES = 64

COPY, ZERO, RELU = range(3)


class _Vectors:
    """What a step's code generation needs for arrays of one float dtype: the
    vector type of 64 bytes of it, masks over its lanes, element addresses and
    LLVM's masked load and store of it."""

    def __init__(self, context, builder, dtype):
        self.context, self.builder = context, builder
        self.lanes = _VECTOR_BYTES // np.dtype(str(dtype)).itemsize
        self.vector = ir.VectorType(context.get_value_type(dtype), self.lanes)
        self.i32, self.i64 = ir.IntType(32), ir.IntType(64)
        self.align = ir.Constant(self.i32, np.dtype(str(dtype)).itemsize)
        self.zero = ir.Constant(self.vector, None)
        suffix = f"v{self.lanes}{'f32' if dtype == types.float32 else 'f64'}.p0"
        mask = ir.VectorType(ir.IntType(1), self.lanes)
        module = builder.module

        def declare(name, fnty):
            return module.globals.get(name) or ir.Function(module, fnty, name)

        address = ir.PointerType(self.vector.element)
        self._load = declare(f"llvm.masked.load.{suffix}",
                             ir.FunctionType(self.vector, [address, self.i32, mask, self.vector]))
        self._store = declare(f"llvm.masked.store.{suffix}",
                              ir.FunctionType(ir.VoidType(), [self.vector, address, self.i32,
                                                              mask]))
        self._fma = declare(f"llvm.fmuladd.{suffix[:-3]}",
                            ir.FunctionType(self.vector, [self.vector] * 3))

    def uint(self, value, numba_type):
        """An argument as an unsigned 64-bit LLVM integer."""
        return self.context.cast(self.builder, value, numba_type, types.uint64)

    def address(self, array_type, array, offset):
        """The address of array[offset]."""
        data = self.context.make_array(array_type)(self.context, self.builder, array).data
        return self.builder.gep(data, [offset])

    def mask(self, count, first=0):
        """Lanes i with first + i < count (count: uint64; first: a constant)."""
        b = self.builder
        index = ir.Constant(ir.VectorType(self.i64, self.lanes),
                            [first + i for i in range(self.lanes)])
        splat = b.insert_element(ir.VectorType(self.i64, self.lanes)(ir.Undefined), count,
                                 ir.Constant(self.i32, 0))
        splat = b.shuffle_vector(splat, ir.VectorType(self.i64, self.lanes)(ir.Undefined),
                                 ir.Constant(ir.VectorType(self.i32, self.lanes),
                                             [0] * self.lanes))
        return b.icmp_unsigned("<", index, splat)

    def pair_masks(self, count):
        """Masks of the two vectors that hold ``count`` values (up to two vectors'
        worth): lanes below count, and lanes below count - one vector."""
        return self.mask(count), self.mask(count, self.lanes)

    def half_masks(self, count):
        """Masks of the ceil(count / 2) even-placed and floor(count / 2)
        odd-placed values of ``count`` interleaved ones."""
        one = ir.Constant(self.i64, 1)
        b = self.builder
        return self.mask(b.lshr(b.add(count, one), one)), self.mask(b.lshr(count, one))

    def splat(self, value):
        """A vector with ``value`` (of the element type) in every lane."""
        b = self.builder
        lanes = b.insert_element(self.vector(ir.Undefined), value, ir.Constant(self.i32, 0))
        return b.shuffle_vector(lanes, self.vector(ir.Undefined),
                                ir.Constant(ir.VectorType(self.i32, self.lanes), [0] * self.lanes))

    def fma(self, a, b, c):
        """a * b + c, lane by lane, fused where the target can."""
        return self.builder.call(self._fma, [a, b, c])

    def next_vector(self, offset):
        """offset plus one vector's worth of elements."""
        return self.builder.add(offset, ir.Constant(self.i64, self.lanes))

    def load(self, address, mask):
        return self.builder.call(self._load, [address, self.align, mask, self.zero])

    def store(self, value, address, mask):
        self.builder.call(self._store, [value, address, self.align, mask])

    def shuffle(self, a, b, lanes):
        return self.builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(self.i32, len(lanes)),
                                                             lanes))


def _masked_run_step(mode):
    """An intrinsic doing ``mode`` on dst[d:d+n] (from src[s:s+n]) for n up to
    one vector (64 bytes) of dst's dtype, as one masked load/store: COPY, ZERO,
    or RELU (copy max(v, 0), with ``v < 0`` as the test: NaN and -0.0 pass
    unchanged, as in the kernels' scalar ReLU)."""

    @intrinsic
    def step(typingctx, dst, d, src, s, n):
        sig = types.void(dst, d, src, s, n)

        def codegen(context, builder, signature, args):
            v = _Vectors(context, builder, signature.args[0].dtype)
            d_value, s_value, n_value = (v.uint(args[i], signature.args[i]) for i in (1, 3, 4))
            mask = v.mask(n_value)
            target = v.address(signature.args[0], args[0], d_value)
            if mode == ZERO:
                value = v.zero
            else:
                value = v.load(v.address(signature.args[2], args[2], s_value), mask)
                if mode == RELU:
                    value = builder.select(builder.fcmp_ordered("<", value, v.zero), v.zero,
                                           value)
            v.store(value, target, mask)
            return context.get_dummy_value()

        return sig, codegen

    return step


@intrinsic
def _deinterleave_step(typingctx, dst, d_even, d_odd, src, s, n):
    """dst[d_even + i] = src[s + 2i], dst[d_odd + i] = src[s + 2i + 1] for the
    n (up to two vectors' worth) values src[s:s+n]: two masked loads, two
    shuffles, two masked stores."""
    sig = types.void(dst, d_even, d_odd, src, s, n)

    def codegen(context, builder, signature, args):
        v = _Vectors(context, builder, signature.args[0].dtype)
        d_even, d_odd, s_value, n_value = (v.uint(args[i], signature.args[i])
                                           for i in (1, 2, 4, 5))
        src, dst = (signature.args[3], args[3]), (signature.args[0], args[0])
        low_mask, high_mask = v.pair_masks(n_value)
        low = v.load(v.address(*src, s_value), low_mask)
        high = v.load(v.address(*src, v.next_vector(s_value)), high_mask)
        even_mask, odd_mask = v.half_masks(n_value)
        v.store(v.shuffle(low, high, list(range(0, 2 * v.lanes, 2))), v.address(*dst, d_even),
                even_mask)
        v.store(v.shuffle(low, high, list(range(1, 2 * v.lanes, 2))), v.address(*dst, d_odd),
                odd_mask)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _interleave_step(typingctx, dst, d, src, s_even, s_odd, n):
    """dst[d + 2i] = src[s_even + i], dst[d + 2i + 1] = src[s_odd + i] for the n
    (up to two vectors' worth) values dst[d:d+n]: the inverse of
    ``_deinterleave_step``."""
    sig = types.void(dst, d, src, s_even, s_odd, n)

    def codegen(context, builder, signature, args):
        v = _Vectors(context, builder, signature.args[0].dtype)
        d_value, s_even, s_odd, n_value = (v.uint(args[i], signature.args[i])
                                           for i in (1, 3, 4, 5))
        src, dst, lanes = (signature.args[2], args[2]), (signature.args[0], args[0]), v.lanes
        even_mask, odd_mask = v.half_masks(n_value)
        even = v.load(v.address(*src, s_even), even_mask)
        odd = v.load(v.address(*src, s_odd), odd_mask)
        low_mask, high_mask = v.pair_masks(n_value)
        v.store(v.shuffle(even, odd, [i // 2 + (i % 2) * lanes for i in range(lanes)]),
                v.address(*dst, d_value), low_mask)
        v.store(v.shuffle(even, odd, [lanes // 2 + i // 2 + (i % 2) * lanes
                                      for i in range(lanes)]),
                v.address(*dst, v.next_vector(d_value)), high_mask)
        return context.get_dummy_value()

    return sig, codegen


VECTOR, TAIL, ROW_PAIR = range(3)


def _nine_taps_step(kind):
    """An intrinsic step(out, o, src, s, lds, offsets, weights, n, b, relu): out[o + j]
    = b + the sum over taps t < 9 of weights[t] * src[s + offsets[t] + j] for the
    n values out[o:o+n], then max(., 0) with ``relu`` (NaN and -0.0 pass, as in
    ``_masked_run_step``). offsets: a 9-tuple of uint64; weights: a 9-tuple of
    out's dtype. Each tap is one vector load and a fused multiply-add.

    VECTOR: n is one whole vector, read and written by plain loads and stores
    (masked ones took 5.6 against 4.3 ns a vector of 16 float32: their masks
    compete with the multiply-adds for the vector ports). TAIL: n up to one
    vector, under a mask. ROW_PAIR: two rows of half a vector each, lds apart
    in src and next to each other in out (n is one vector): each tap is two
    half-vector loads joined, the second from s + lds (8-wide planes of
    float32: a whole vector's multiply-adds for 16 outputs instead of 8).
    lds is read only by ROW_PAIR, n only by TAIL."""

    @intrinsic
    def step(typingctx, out, o, src, s, lds, offsets, weights, n, b, relu):
        sig = types.void(out, o, src, s, lds, offsets, weights, n, b, relu)

        def codegen(context, builder, signature, args):
            dtype = signature.args[0].dtype
            v = _Vectors(context, builder, dtype)
            o_value, s_value, lds_value, n_value = (v.uint(args[i], signature.args[i])
                                                    for i in (1, 3, 4, 7))
            mask = v.mask(n_value) if kind == TAIL else None
            half = ir.VectorType(v.vector.element, v.lanes // 2)

            def plain(address, vector):
                return builder.bitcast(address, vector.as_pointer())

            def load(start):
                address = v.address(signature.args[2], args[2], start)
                if kind == TAIL:
                    return v.load(address, mask)
                if kind == VECTOR:
                    return builder.load(plain(address, v.vector), align=v.align.constant)
                second = v.address(signature.args[2], args[2], builder.add(start, lds_value))
                rows = [builder.load(plain(a, half), align=v.align.constant)
                        for a in (address, second)]
                return v.shuffle(rows[0], rows[1], list(range(v.lanes)))

            offset_type, weight_type = signature.args[5].dtype, signature.args[6].dtype
            total = v.splat(context.cast(builder, args[8], signature.args[8], dtype))
            for t in range(9):
                offset = v.uint(builder.extract_value(args[5], t), offset_type)
                weight = context.cast(builder, builder.extract_value(args[6], t), weight_type,
                                      dtype)
                total = v.fma(v.splat(weight), load(builder.add(s_value, offset)), total)
            clipped = builder.select(builder.fcmp_ordered("<", total, v.zero), v.zero, total)
            relu_value = context.cast(builder, args[9], signature.args[9], types.boolean)
            value = builder.select(relu_value, clipped, total)
            target = v.address(signature.args[0], args[0], o_value)
            if kind == TAIL:
                v.store(value, target, mask)
            else:
                builder.store(value, plain(target, v.vector), align=v.align.constant)
            return context.get_dummy_value()

        return sig, codegen

    return step


# Flags of a ``_plane_taps_step`` vector: its rows include the plane's first or
# last; it starts or ends a row (rows of whole vectors).
TOP, BOTTOM, FIRST, LAST = 1, 2, 4, 8


class _PlaneStep:
    """What the code generation of a plane step, step(out, o, src, s, W, edges,
    weights, b, relu), needs: its arguments as LLVM values (o, s, W, edges as
    uint64; ``weights``, the nine weights, and ``bias`` as vectors), loads from
    src, the edge flags, and the store of an output vector."""

    def __init__(self, context, builder, signature, args):
        self.context, self.builder, self.signature, self.args = context, builder, signature, args
        dtype = signature.args[0].dtype
        v = self.v = _Vectors(context, builder, dtype)
        self.o, self.s, self.W, self.edges = (v.uint(args[i], signature.args[i])
                                              for i in (1, 3, 4, 5))
        self.bits = ir.VectorType(ir.IntType(1), v.lanes)
        weight_type = signature.args[6].dtype
        self.weights = [v.splat(context.cast(builder, builder.extract_value(args[6], t),
                                             weight_type, dtype)) for t in range(9)]
        self.bias = v.splat(context.cast(builder, args[7], signature.args[7], dtype))

    def lanes_where(self, test):
        """The constant mask of the lanes i where test(i)."""
        return ir.Constant(self.bits, [int(bool(test(i))) for i in range(self.v.lanes)])

    def flagged(self, flag, mask):
        """``mask`` where ``edges`` has ``flag``, else every lane."""
        b = self.builder
        on = b.icmp_unsigned("!=", b.and_(self.edges, ir.Constant(self.v.i64, flag)),
                             ir.Constant(self.v.i64, 0))
        return b.select(on, mask, self.lanes_where(lambda i: True))

    def load(self, start, mask=None):
        """The vector at src[start]: under ``mask`` (lanes off read nothing), or plain."""
        v, b = self.v, self.builder
        address = v.address(self.signature.args[2], self.args[2], start)
        if mask is not None:
            return v.load(address, mask)
        return b.load(b.bitcast(address, v.vector.as_pointer()), align=v.align.constant)

    def store(self, at, total):
        """out[at:at+lanes] = total, then max(., 0) with ``relu`` (NaN stays)."""
        v, b = self.v, self.builder
        clipped = b.select(b.fcmp_ordered("<", total, v.zero), v.zero, total)
        relu = self.context.cast(b, self.args[8], self.signature.args[8], types.boolean)
        target = v.address(self.signature.args[0], self.args[0], at)
        b.store(b.select(relu, clipped, total), b.bitcast(target, v.vector.as_pointer()),
                align=v.align.constant)


def _plane_intrinsic(generate):
    """An intrinsic step(out, o, src, s, W, edges, weights, b, relu) whose code
    ``generate(_PlaneStep)`` emits."""

    @intrinsic
    def step(typingctx, out, o, src, s, W, edges, weights, b, relu):
        def codegen(context, builder, signature, args):
            generate(_PlaneStep(context, builder, signature, args))
            return context.get_dummy_value()

        return types.void(out, o, src, s, W, edges, weights, b, relu), codegen

    return step


def _plane_taps_step(rows, stack):
    """An intrinsic step(out, o, src, s, W, edges, weights, b, relu) computing
    ``stack`` output vectors of a 3x3, stride-1, padding-1 conv over a plane of
    rows of W = lanes // ``rows`` values (``rows`` of them to a vector; for
    ``rows`` 1, any multiple of lanes), each below the one before (R = max(W,
    lanes) values apart): out[o + m*R + i] = b + the sum over taps (kh, kw) of
    weights[3*kh + kw] * the plane's value at row + kh - 1, column + kw - 1 of
    output i of vector m (zero outside the plane), then max(., 0) with
    ``relu``. Output i of vector m is src[s + m*R + i] of the plane, so tap (kh,
    kw) is the vector at s + m*R + (kh - 1)*W + kw - 1 with the lanes that fall
    outside masked off: a row's first (kw = 0) or last (kw = 2) column (for
    ``rows`` 1, where ``edges`` has FIRST or LAST), the row above the plane
    where it has TOP, below it where it has BOTTOM. The stacked vectors share
    the loads of the rows between them, and their sums are independent
    chains: four of them ran a 16x16 plane 2.2x as fast as one at a time.
    Nothing is copied: a padded copy of an 8x8 plane cost a third of the conv.
    o, s, W, edges: uint64; weights: a 9-tuple of out's dtype; b: out's dtype."""

    def generate(p):
        b, v = p.builder, p.v
        lanes = v.lanes
        width = lanes // rows

        def rows_down(count):  # count * W values, count >= -1
            return b.mul(p.W, ir.Constant(v.i64, count)) if count >= 0 else \
                b.sub(ir.Constant(v.i64, 0), p.W)

        # Vector m's tap row kh starts (m*rows + kh - 1) rows of W below s.
        lowest = (stack - 1) * rows + 1
        row_masks = {-1: p.flagged(TOP, p.lanes_where(lambda i: i >= width)),
                     lowest: p.flagged(BOTTOM, p.lanes_where(lambda i: i < lanes - width))}
        if rows == 1:  # rows of one vector or more: only a row's first and last have edges
            column_masks = (p.flagged(FIRST, p.lanes_where(lambda i: i != 0)), None,
                            p.flagged(LAST, p.lanes_where(lambda i: i != lanes - 1)))
        else:
            column_masks = (p.lanes_where(lambda i: i % width != 0), None,
                            p.lanes_where(lambda i: i % width != width - 1))
        loaded = {}

        def tap(down, kw):
            if (down, kw) not in loaded:
                start = b.add(b.add(p.s, rows_down(down)), ir.Constant(v.i64, kw - 1))
                masks = [m for m in (row_masks.get(down), column_masks[kw]) if m is not None]
                loaded[down, kw] = p.load(start, None if not masks else masks[0]
                                          if len(masks) == 1 else b.and_(*masks))
            return loaded[down, kw]

        totals = [p.bias] * stack
        for down in range(-1, lowest + 1):  # row by row, each load used by all its taps
            for kw in range(3):
                for m in range(stack):
                    kh = down - m * rows + 1
                    if 0 <= kh <= 2:
                        totals[m] = v.fma(p.weights[3 * kh + kw], tap(down, kw), totals[m])
        apart = rows_down(1) if rows == 1 else ir.Constant(v.i64, lanes)
        for m, total in enumerate(totals):
            p.store(b.add(p.o, b.mul(apart, ir.Constant(v.i64, m))), total)

    return _plane_intrinsic(generate)


def _strided_plane_taps_step(rows):
    """An intrinsic step(out, o, src, s, W, edges, weights, b, relu) computing one
    output vector of a 3x3, stride-2, padding-1 conv over a plane of rows of W
    values, W = 2 * lanes // ``rows`` (an output row of W / 2 values, ``rows``
    of them to a vector): out[o + i] = b + the sum over taps (kh, kw) of
    weights[3*kh + kw] * the plane's value at row 2*oh + kh - 1, column
    2*ow + kw - 1 of output i, at (oh, ow) (zero outside the plane), then
    max(., 0) with ``relu``. src[s] starts input row 2*oh of the vector's first
    output row; ``edges`` has TOP where that is the plane's first. Each tap is
    one two-source shuffle of two input vectors (an input row's halves, or the
    rows of two outputs two apart), picking the even or odd columns: no copy
    of the plane into its phases. o, s, W, edges: uint64; weights: a 9-tuple of
    out's dtype; b: out's dtype."""

    def generate(p):
        b, v = p.builder, p.v
        lanes = v.lanes
        width = lanes // rows  # an output row
        above_plane = p.flagged(TOP, p.lanes_where(lambda i: False))
        # the second vector of a pair: the row's other half, or the row two below
        apart = ir.Constant(v.i64, lanes) if rows == 1 else b.add(p.W, p.W)
        pairs = []
        for kh in range(3):
            first = (b.sub(p.s, p.W), p.s, b.add(p.s, p.W))[kh]
            pairs.append([p.load(start, above_plane if kh == 0 and above else None)
                          for start, above in ((first, True), (b.add(first, apart), rows == 1))])

        # output lane i's column 2*ow + kw - 1 is lane 2*(i % width) + kw - 1
        # of its row in the pair: even lanes for kw = 1, odd ones for 2, odd
        # ones a column left for 0 (zero at a row's first output)
        def picks(kw):
            return [(i // width) * 2 * width + 2 * (i % width) + kw - 1 if
                    (kw or i % width) else 0 for i in range(lanes)]
        first_columns = p.lanes_where(lambda i: i % width != 0)
        total = p.bias
        for kh in range(3):
            for kw in range(3):
                value = v.shuffle(pairs[kh][0], pairs[kh][1], picks(kw))
                if kw == 0:
                    value = b.select(first_columns, value, v.zero)
                total = v.fma(p.weights[3 * kh + kw], value, total)
        p.store(p.o, total)

    return _plane_intrinsic(generate)


#: PLANE_STACK output vectors at a time, then single ones for the rest
PLANE_STACK = 4
_plane_taps = {(rows, stack): _plane_taps_step(rows, stack)
               for rows in (1, 2, 4) for stack in (1, PLANE_STACK)}
_plane_taps_one_row, _plane_taps_one_row_stacked = _plane_taps[1, 1], _plane_taps[1, PLANE_STACK]
_plane_taps_two_rows, _plane_taps_two_rows_stacked = _plane_taps[2, 1], _plane_taps[2, PLANE_STACK]
_plane_taps_four_rows, _plane_taps_four_rows_stacked = (_plane_taps[4, 1],
                                                        _plane_taps[4, PLANE_STACK])
_strided_taps_one_row = _strided_plane_taps_step(1)
_strided_taps_two_rows = _strided_plane_taps_step(2)


_nine_taps_vector = _nine_taps_step(VECTOR)
_nine_taps_tail = _nine_taps_step(TAIL)
_nine_taps_row_pair = _nine_taps_step(ROW_PAIR)


_copy_step = _masked_run_step(COPY)
_zero_step = _masked_run_step(ZERO)
_relu_step = _masked_run_step(RELU)


@cached_njit(inline="always")
def _lanes(a):
    return U(_VECTOR_BYTES // a.itemsize)


@cached_njit(inline="always")
def _run(dst, d, src, s, n, mode):
    """dst[d:d+n] = src[s:s+n] as ``mode`` says (``_masked_run_step``), one
    vector step at a time."""
    step = _lanes(dst)
    j = U(0)
    while j < n:
        width = min(step, n - j)
        if mode == ZERO:
            _zero_step(dst, d + j, dst, d + j, width)
        elif mode == RELU:
            _relu_step(dst, d + j, src, s + j, width)
        else:
            _copy_step(dst, d + j, src, s + j, width)
        j += width


@cached_njit(inline="always")
def copy_run(dst, d, src, s, n):
    """dst[d:d+n] = src[s:s+n]. dst, src: 1-D float arrays of one dtype; d, s, n: uint64."""
    _run(dst, d, src, s, n, COPY)


@cached_njit(inline="always")
def relu_copy_run(dst, d, src, s, n):
    """dst[d:d+n] = max(src[s:s+n], 0) (values below zero become 0; NaN stays).
    dst, src: 1-D float arrays of one dtype; d, s, n: uint64."""
    _run(dst, d, src, s, n, RELU)


@cached_njit(inline="always")
def zero_run(dst, d, n):
    """dst[d:d+n] = 0. dst: 1-D float array; d, n: uint64."""
    _run(dst, d, dst, d, n, ZERO)


@cached_njit(inline="always")
def deinterleave_run(dst, d_even, d_odd, src, s, n):
    """dst[d_even + i] = src[s + 2i] and dst[d_odd + i] = src[s + 2i + 1] for the
    n values src[s:s+n] (a row split into its even and odd columns, as a
    stride-2 conv's phases hold it). dst, src: 1-D float arrays of one dtype;
    d_even, d_odd, s, n: uint64."""
    step = U(2) * _lanes(dst)
    j = U(0)
    while j < n:
        width = min(step, n - j)
        _deinterleave_step(dst, d_even + j // U(2), d_odd + j // U(2), src, s + j, width)
        j += width


@cached_njit(inline="always")
def interleave_run(dst, d, src, s_even, s_odd, n):
    """dst[d + 2i] = src[s_even + i] and dst[d + 2i + 1] = src[s_odd + i] for the
    n values dst[d:d+n] (the inverse of ``deinterleave_run``). dst, src: 1-D
    float arrays of one dtype; d, s_even, s_odd, n: uint64."""
    step = U(2) * _lanes(dst)
    j = U(0)
    while j < n:
        width = min(step, n - j)
        _interleave_step(dst, d + j, src, s_even + j // U(2), s_odd + j // U(2), width)
        j += width


@cached_njit(inline="always")
def nine_tap_rows(out, o, ldo, src, s, lds, offsets, weights, rows, n, b, relu):
    """For r < rows: out[o + r*ldo + j] = b + the sum over taps t < 9 of
    weights[t] * src[s + r*lds + offsets[t] + j] for j < n, then max(., 0) with
    ``relu`` (``_nine_taps_step``: a vector of j at a time, the last under a
    mask): the rows of a 3x3 conv's output plane summed from a zero-bordered
    copy of its input, no other pass over them. out, src: 1-D float arrays of
    one dtype; o, ldo, s, lds, rows, n: uint64; offsets: a 9-tuple of uint64;
    weights: a 9-tuple of out's dtype; b: out's dtype."""
    step = _lanes(out)
    r = U(0)
    if U(2) * n == step and ldo == n:  # rows of half a vector, next to each other in out
        while r + U(2) <= rows:
            _nine_taps_row_pair(out, o + r * ldo, src, s + r * lds, lds, offsets, weights, step,
                                b, relu)
            r += U(2)
    for r in range(r, rows):
        d, e = o + r * ldo, s + r * lds
        j = U(0)
        while j < n:
            width = min(step, n - j)
            if width == step:
                _nine_taps_vector(out, d + j, src, e + j, lds, offsets, weights, width, b, relu)
            else:
                _nine_taps_tail(out, d + j, src, e + j, lds, offsets, weights, width, b, relu)
            j += width


@cached_njit(inline="always")
def nine_tap_plane_fits(H, W, itemsize):
    """True where ``nine_tap_plane`` takes a plane of H rows of W values of
    ``itemsize`` bytes: rows of whole vectors, or two or four rows to a vector
    and the plane whole vectors."""
    lanes = _VECTOR_BYTES // itemsize
    return W % lanes == 0 or ((W * 2 == lanes or W * 4 == lanes) and (H * W) % lanes == 0)


@cached_njit(inline="always")
def nine_tap_plane(out, o, src, s, H, W, weights, b, relu):
    """out[o + h*W + w] = b + the sum over taps (kh, kw) of weights[3*kh + kw] *
    src[s + (h + kh - 1)*W + w + kw - 1] (zero outside the H x W plane), then
    max(., 0) with ``relu``: a 3x3, stride-1, padding-1 conv of one plane
    (``nine_tap_plane_fits``), a vector of outputs at a time straight from src
    (``_plane_taps_step``). out, src: 1-D float arrays of one dtype; o, s, H, W:
    uint64; weights: a 9-tuple of out's dtype; b: out's dtype."""
    step = _lanes(out)
    size = H * W
    row = max(W, step)  # the values from one vector's first row to the next vector's below
    below = size // row  # vectors one below the other
    stacked = U(PLANE_STACK)
    for column in range(U(0), row, step):  # one column of vectors at a time
        edges = U(0)
        if W >= step:
            edges = (U(FIRST) if column == U(0) else U(0)) | (
                U(LAST) if column + step == W else U(0))
        d, e = o + column, s + column
        u = U(0)
        while u < below:
            take = stacked if u + stacked <= below else U(1)
            ends = (edges | (U(TOP) if u == U(0) else U(0))
                    | (U(BOTTOM) if u + take == below else U(0)))
            at = u * row
            if take == stacked:
                if W >= step:
                    _plane_taps_one_row_stacked(out, d + at, src, e + at, W, ends, weights, b,
                                                relu)
                elif W * U(2) == step:
                    _plane_taps_two_rows_stacked(out, d + at, src, e + at, W, ends, weights, b,
                                                 relu)
                else:
                    _plane_taps_four_rows_stacked(out, d + at, src, e + at, W, ends, weights, b,
                                                  relu)
            elif W >= step:
                _plane_taps_one_row(out, d + at, src, e + at, W, ends, weights, b, relu)
            elif W * U(2) == step:
                _plane_taps_two_rows(out, d + at, src, e + at, W, ends, weights, b, relu)
            else:
                _plane_taps_four_rows(out, d + at, src, e + at, W, ends, weights, b, relu)
            u += take


@cached_njit(inline="always")
def strided_nine_tap_plane_fits(H, W, itemsize):
    """True where ``strided_nine_tap_plane`` takes a plane of H rows of W values of
    ``itemsize`` bytes: rows of one or two vectors, H a multiple of 2 (of 4
    for rows of one vector, whose outputs go two rows to a vector)."""
    lanes = _VECTOR_BYTES // itemsize
    return (W == 2 * lanes and H % 2 == 0) or (W == lanes and H % 4 == 0)


@cached_njit(inline="always")
def strided_nine_tap_plane(out, o, src, s, H, W, weights, b, relu):
    """out[o + oh*W/2 + ow] = b + the sum over taps (kh, kw) of weights[3*kh + kw]
    * src[s + (2*oh + kh - 1)*W + 2*ow + kw - 1] (zero outside the H x W
    plane), then max(., 0) with ``relu``: a 3x3, stride-2, padding-1 conv of one
    plane (``strided_nine_tap_plane_fits``), a vector of outputs at a time
    (``_strided_plane_taps_step``). out, src: 1-D float arrays of one dtype;
    o, s, H, W: uint64; weights: a 9-tuple of out's dtype; b: out's dtype."""
    step = _lanes(out)
    rows = U(2) * step // W  # output rows to a vector
    for r in range(U(0), H // U(2), rows):
        edges = U(TOP) if r == U(0) else U(0)
        d, e = o + r * (W // U(2)), s + U(2) * r * W
        if rows == U(1):
            _strided_taps_one_row(out, d, src, e, W, edges, weights, b, relu)
        else:
            _strided_taps_two_rows(out, d, src, e, W, edges, weights, b, relu)
