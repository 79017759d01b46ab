"""A float32 GEMM of our own for the convolutions: 8x32 output tiles kept in registers.

OpenBLAS multiplies the convolution's (OC, K) weight by its (K, L) unfolded
columns at 97-108 GFLOP/s on one core of the AVX-512 machine here (OC 64,
K 288-800; its small-matrix kernel or its packed one). ``tile_8x32`` holds an
8 x 32 block of the product in sixteen 16-float vector registers while it
walks K, reading the columns in place (32 floats of each of K rows, no
packing) and broadcasting 8 weights per step: 115-117 GFLOP/s on the same
shapes (+13-21%), equal to OpenBLAS for K <= 27 or 20 output channels.
Numba's loops do not get there (a loop-written tile ran at 7 GFLOP/s: its
accumulators stayed in memory), so the tile is emitted as LLVM IR through
llvmlite, like ``nnjit.kernels.blas``'s BLAS call. ``tiled_gemm`` covers a
product with tiles and leaves the ragged edges (rows past a multiple of 8,
columns past a multiple of 32) to BLAS.

Used only where the host has AVX-512 (``TILES_AVAILABLE``): with narrower
vectors the 16 accumulators would not fit in registers.
"""
import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .blas import NO_TRANS, TRANS, gemm
from .cache import cached_njit

TILE_ROWS, TILE_COLS = 8, 32
U = np.uint64


def _host_has_avx512() -> bool:
    """True when the kernels are compiled for this CPU (Numba's default; not
    when NUMBA_CPU_NAME names another target) and it has AVX-512F."""
    if numba.config.CPU_NAME not in (None, "host"):
        return False
    try:
        return bool(llvm.get_host_cpu_features().get("avx512f", False))
    except Exception:  # noqa: BLE001  (no feature list: stay with BLAS)
        return False


#: True when the tiles run at full speed here (AVX-512); the layers use them only then.
TILES_AVAILABLE = _host_has_avx512()


def _loop_not_unrolled(module):
    """A new loop id (distinct, self-referencing) telling LLVM not to unroll the loop."""
    unroll = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop = module.add_metadata([ir.MetaDataString(module, f"nnjit.loop.{len(module.metadata)}")])
    loop.operands = (loop, unroll)
    return loop


def _row_tile(rows, vectors=2, masked=False, skipping=False):
    """An intrinsic computing one output tile of ``rows`` rows x 16*``vectors`` columns:

    tile(a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate):
    c[c_off + i*ldc + j] (+)= sum_k a[a_off + i*a_row + k*a_col] * b[b_off + k*ldb + j]
    for i < rows, j < 16*vectors, accumulated in registers (rows * vectors
    vectors of 16 floats) over k < K, added to c's tile when ``accumulate``
    (bool), otherwise written over it. a, b, c: 1-D float32 arrays; offsets
    and strides in elements (int64). For any other dtype the call does
    nothing (callers branch on the dtype, and Numba compiles both branches).

    ``masked`` adds a last argument ``cols`` (int64, at most 16*vectors): only
    columns j < cols of b are read and of c read and written (masked vector
    loads and stores), for the last columns of a product.

    ``ldb`` may be an int64 array of K row offsets instead of a stride: row k
    of b then starts at b[b_off + ldb[k]] (rows of any spacing, overlapping
    too: see ``shifted_rows_gemm``).

    ``skipping`` (masked, 2 vectors, offsets) adds ``second, split0, split1,
    gap`` (int64): the tile's columns are not contiguous in b's rows but
    skip ``gap`` values once per vector: lane j of vector h comes from
    b[row + o_h + j] for j < split_h, else from b[row + o_h + gap + j], with
    o_0 = 0, o_1 = ``second`` (a conv's output positions, whose rows in the
    image are ``gap`` values longer than the kept ones; see
    ``skipping_rows_gemm``), then a conv's epilogue: ``bias, bias_off, relu``
    (a float32 array, int64, bool): row i of the tile is stored as its sum +
    bias[bias_off + i], then max(., 0) with ``relu`` (``v < 0`` as the test:
    NaN and -0.0 pass, as in ``runs``), so that a conv's product is its output."""

    def codegen(context, builder, signature, args):
        if signature.args[0].dtype != types.float32:
            return context.get_dummy_value()
        a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate = args[:12]
        f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
        v16 = ir.VectorType(f32, 16)
        module = builder.module

        def data(i, value):
            return context.make_array(signature.args[i])(context, builder, value).data

        def const(v):
            return ir.Constant(i64, v)

        def declared(name, result, operands):
            return module.globals.get(name) or ir.Function(
                module, ir.FunctionType(result, operands), name)

        A = builder.gep(data(0, a), [a_off])
        B = builder.gep(data(4, b), [b_off])
        C = builder.gep(data(8, c), [c_off])
        a_rows = [builder.gep(A, [builder.mul(const(i), a_row)]) for i in range(rows)]
        fmuladd = declared("llvm.fmuladd.v16f32", v16, [v16, v16, v16])
        zero = ir.Constant(v16, [0.0] * 16)
        splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
        if masked or skipping:  # lane j of vector h is column 16*h + j: kept while < cols
            ptr = B.type
            mask_type = ir.VectorType(ir.IntType(1), 16)
            masked_load = declared("llvm.masked.load.v16f32.p0", v16,
                                   [ptr, i32, mask_type, v16])
            masked_store = declared("llvm.masked.store.v16f32.p0", ir.VoidType(),
                                    [v16, ptr, i32, mask_type])
            i32x16 = ir.VectorType(i32, 16)  # 32-bit lanes: one mask register per compare

            def splat32(value):
                return builder.shuffle_vector(
                    builder.insert_element(ir.Constant(i32x16, ir.Undefined),
                                           builder.trunc(value, i32), ir.Constant(i32, 0)),
                    ir.Constant(i32x16, ir.Undefined), splat)
            width = splat32(args[12])
            masks = [builder.icmp_signed("<", ir.Constant(i32x16, list(range(16 * h, 16 * h + 16))),
                                         width) for h in range(vectors)]
        if skipping:  # per vector: its offset, and which lanes come before the skip
            second, gap = args[13], args[16]
            iota = ir.Constant(i32x16, list(range(16)))
            before = [builder.icmp_signed("<", iota, splat32(args[14 + h])) for h in range(2)]
            low_masks = [builder.and_(before[h], masks[h]) for h in range(2)]
            high_masks = [builder.and_(builder.not_(before[h]), masks[h]) for h in range(2)]
            starts = [const(0), second]

        def load16(pointer, h):
            if masked:
                return builder.call(masked_load, [pointer, ir.Constant(i32, 4), masks[h], zero])
            return builder.load(builder.bitcast(pointer, v16.as_pointer()), align=4)

        def store16(value, pointer, h):
            if masked:
                builder.call(masked_store, [value, pointer, ir.Constant(i32, 4), masks[h]])
            else:
                builder.store(value, builder.bitcast(pointer, v16.as_pointer()), align=4)

        def c_vector(i, h):  # pointer to the 16 floats of vector h of tile row i in c
            row = builder.gep(C, [builder.mul(const(i), ldc)])
            return builder.gep(row, [const(16 * h)])

        if skipping:  # the epilogue's per-row bias, loaded before the loop
            bias_row = builder.gep(data(17, args[17]), [args[18]])
            biases = []
            for i in range(rows):
                value = builder.load(builder.gep(bias_row, [const(i)]))
                biases.append(builder.shuffle_vector(
                    builder.insert_element(ir.Constant(v16, ir.Undefined), value,
                                           ir.Constant(i32, 0)),
                    ir.Constant(v16, ir.Undefined), splat))
            relu = context.cast(builder, args[19], signature.args[19], types.boolean)

        def finished(value, i):
            """The value a tile row's vector is stored as (skipping: the epilogue)."""
            if not skipping:
                return value
            value = builder.fadd(value, biases[i])
            clipped = builder.select(builder.fcmp_ordered("<", value, zero), zero, value)
            return builder.select(relu, clipped, value)

        entry = builder.block
        load = builder.append_basic_block("tile.load")
        pick = builder.append_basic_block("tile.pick")
        done = builder.append_basic_block("tile.done")
        flag = context.cast(builder, accumulate, signature.args[11], types.boolean)
        builder.cbranch(flag, load, pick)

        builder.position_at_end(load)
        loaded = [load16(c_vector(i, h), h) for i in range(rows) for h in range(vectors)]
        builder.branch(pick)

        builder.position_at_end(pick)
        starts_acc = []
        for start in loaded:
            acc = builder.phi(v16)
            acc.add_incoming(zero, entry)
            acc.add_incoming(start, load)
            starts_acc.append(acc)
        # Skipping tiles: one loop per combination of the vectors that step over
        # the gap (two loads and a select) and those that do not (one load).
        variants = [(a0, a1) for a0 in (False, True) for a1 in (False, True)] if skipping \
            else [None]
        heads = [builder.append_basic_block("tile.head") for _ in variants]
        if skipping:
            crossing = [builder.zext(builder.icmp_signed("<", args[14 + h], const(16)), i64)
                        for h in range(2)]
            which = builder.add(builder.mul(crossing[0], const(2)), crossing[1])
            switch = builder.switch(which, heads[0])  # 0: neither crosses
            for index, head in enumerate(heads[1:], 1):
                switch.add_case(const(index), head)
        else:
            builder.branch(heads[0])

        for variant, head in zip(variants, heads):
            body = builder.append_basic_block("tile.body")
            store = builder.append_basic_block("tile.store")
            builder.position_at_end(head)
            k = builder.phi(i64)
            k.add_incoming(const(0), pick)
            accs = []
            for start in starts_acc:
                acc = builder.phi(v16)
                acc.add_incoming(start, pick)
                accs.append(acc)
            builder.cbranch(builder.icmp_signed("<", k, K), body, store)

            builder.position_at_end(body)
            if isinstance(signature.args[6], types.Array):  # row offsets, one per k
                brow = builder.gep(B, [builder.load(builder.gep(data(6, ldb), [k]))])
            else:
                brow = builder.gep(B, [builder.mul(k, ldb)])
            if skipping:
                halves = []
                for h in range(vectors):
                    at = builder.gep(brow, [starts[h]])
                    if not variant[h]:
                        halves.append(load16(at, h))
                        continue
                    low = builder.call(masked_load, [at, ir.Constant(i32, 4), low_masks[h], zero])
                    high = builder.call(masked_load, [builder.gep(at, [gap]), ir.Constant(i32, 4),
                                                      high_masks[h], zero])
                    halves.append(builder.select(before[h], low, high))
            else:
                halves = [load16(builder.gep(brow, [const(16 * h)]), h) for h in range(vectors)]
            step = builder.mul(k, a_col)
            updated = []
            for i in range(rows):
                value = builder.load(builder.gep(a_rows[i], [step]))
                undefined = ir.Constant(v16, ir.Undefined)
                lanes = builder.shuffle_vector(
                    builder.insert_element(undefined, value, ir.Constant(i32, 0)), undefined,
                    splat)
                for h in range(vectors):
                    updated.append(builder.call(fmuladd, [lanes, halves[h],
                                                          accs[vectors * i + h]]))
            k.add_incoming(builder.add(k, const(1)), builder.block)
            for acc, new_acc in zip(accs, updated):
                acc.add_incoming(new_acc, builder.block)
            back = builder.branch(head)
            if skipping:  # unrolled twice, the loop spilled its accumulators
                back.set_metadata("llvm.loop", _loop_not_unrolled(module))

            builder.position_at_end(store)  # each loop stores its own accumulators
            for i in range(rows):
                for h in range(vectors):
                    store16(finished(accs[vectors * i + h], i), c_vector(i, h), h)
            builder.branch(done)

        builder.position_at_end(done)
        return context.get_dummy_value()

    if skipping:
        @intrinsic
        def tile(typingctx, a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate,
                 cols, second, split0, split1, gap, bias, bias_off, relu):
            return types.void(a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate,
                              cols, second, split0, split1, gap, bias, bias_off, relu), codegen
    elif masked:
        @intrinsic
        def tile(typingctx, a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate,
                 cols):
            return types.void(a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate,
                              cols), codegen
    else:
        @intrinsic
        def tile(typingctx, a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate):
            return types.void(a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc,
                              accumulate), codegen
    return tile


#: The 8 x 32 tile (16 accumulators: all the vector registers the loop can spare).
tile_8x32 = _row_tile(TILE_ROWS)
#: A 4 x 32 tile, for the last rows of a product whose row count is not a multiple of 8
#: (20 rows over 250: 81 GFLOP/s with those 4 rows on BLAS, see ``tiled_gemm``).
tile_4x32 = _row_tile(4)
#: Masked tiles for a product's last L % 32 columns, 16 wide where 16 cover them.
masked_8x32, masked_8x16 = _row_tile(TILE_ROWS, 2, True), _row_tile(TILE_ROWS, 1, True)
masked_4x32, masked_4x16 = _row_tile(4, 2, True), _row_tile(4, 1, True)
#: Tiles whose columns skip a gap once per vector (``skipping_rows_gemm``).
skipping_8x32, skipping_4x32 = _row_tile(TILE_ROWS, 2, True, True), _row_tile(4, 2, True, True)


@cached_njit(inline="always")
def row_tile(rows, a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate, cols):
    """One tile of ``rows`` (8 or 4) rows over ``cols`` <= 32 columns (``_row_tile``'s
    arguments): a whole tile, or a masked one for fewer columns (16 wide when
    16 cover them: half the FMAs)."""
    if cols == TILE_COLS and rows == TILE_ROWS:
        tile_8x32(a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate)
    elif cols == TILE_COLS:
        tile_4x32(a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate)
    elif rows == TILE_ROWS and cols <= 16:
        masked_8x16(a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate, cols)
    elif rows == TILE_ROWS:
        masked_8x32(a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate, cols)
    elif cols <= 16:
        masked_4x16(a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate, cols)
    else:
        masked_4x32(a, a_off, a_row, a_col, b, b_off, ldb, K, c, c_off, ldc, accumulate, cols)


@cached_njit(inline="always")
def panel_tiles(M, overlap_last, a, a_off, a_row, a_col, b, b_off, ldb, K, c, ldc, l0, cols,
                accumulate):
    """Columns [l0, l0 + cols) (cols <= 32) of c = a @ b over rows [0, M4) in
    tiles (``tiled_rows``: 8-row tiles, a 4-row one for 4 of the last M % 8
    rows) and, with ``overlap_last``, rows M-4 .. M-1 again as one 4-row tile
    (rewriting some with the same values; never when accumulating). Row i of
    a from a_off + i*a_row (steps a_col), b's columns from b_off + l0 (rows by
    ``ldb``, a stride or offsets), c's rows ``ldc`` apart. The panel of b
    stays in L1 across its row tiles."""
    M8, M4 = tiled_rows(M)
    for m0 in range(0, M8, TILE_ROWS):
        row_tile(TILE_ROWS, a, a_off + m0 * a_row, a_row, a_col, b, b_off + l0, ldb, K, c,
                 m0 * ldc + l0, ldc, accumulate, cols)
    if M4 > M8:
        row_tile(4, a, a_off + M8 * a_row, a_row, a_col, b, b_off + l0, ldb, K, c,
                 M8 * ldc + l0, ldc, accumulate, cols)
    if overlap_last:
        row_tile(4, a, a_off + (M - 4) * a_row, a_row, a_col, b, b_off + l0, ldb, K, c,
                 (M - 4) * ldc + l0, ldc, accumulate, cols)


@cached_njit()
def tiled_gemm(blas, trans_a, M, K, a, lda, b, L, c, accumulate):
    """c (M, L) = op(a) (M, K) @ b (K, L), added to c with ``accumulate`` (bool),
    in register tiles (``panel_tiles``: 8x32, 4x32 for 4 of the last M % 8
    rows, the last columns in masked tiles), the last M % 4 rows by an
    overlapping 4-row tile (not accumulating, M >= 4) or BLAS; float64 all
    by BLAS.

    a: float, (M, K), or (K, M) with trans_a == TRANS, rows ``lda`` apart (K or
    M when contiguous); b: (K*L,); c: (M*L,), rows L apart.
    """
    beta = 1.0 if accumulate else 0.0
    if a.itemsize != 4:  # the tiles are float32 only
        gemm(blas, trans_a, NO_TRANS, M, L, K, 1.0, a, lda, b, L, beta, c, L)
        return
    a_row, a_col = (lda, 1) if trans_a == NO_TRANS else (1, lda)
    _, M4 = tiled_rows(M)
    # The last rows as a 4-row tile over rows M-4 .. M-1 where it may rewrite:
    # BLAS without small-matrix kernels packs all of b for them.
    overlap = M4 < M and M >= 4 and not accumulate
    for panel in range(0, L, TILE_COLS):
        panel_tiles(M, overlap, a, 0, a_row, a_col, b, 0, L, K, c, L, panel,
                    min(TILE_COLS, L - panel), accumulate)
    if M4 < M and not overlap:
        a_rest = a[M4 * lda:] if trans_a == NO_TRANS else a[M4:]
        gemm(blas, trans_a, NO_TRANS, M - M4, L, K, 1.0, a_rest, lda, b, L, beta, c[M4 * L:], L)


@cached_njit()
def shifted_rows_gemm(M, K, a, b, b_off, offsets, L, c):
    """c (M, L) = a (M, K) @ B (K, L) in register tiles, where row k of B is the L
    values from b[b_off + offsets[k]]: rows read in place wherever they lie,
    overlapping too (a convolution's rows of input at each kernel offset, so
    that nothing is unfolded). float32, M >= 4: the last M % 4 rows by an
    overlapping 4-row tile, the last L % 32 columns by masked tiles
    (``panel_tiles``).

    a: float32 (M*K,); b: float32, every b[b_off + offsets[k] + j] (j < L) in
    bounds; offsets: int64 (K,); writes c: (M*L,), rows L apart.
    """
    _, M4 = tiled_rows(M)
    for l0 in range(0, L, TILE_COLS):
        panel_tiles(M, M4 < M, a, 0, K, 1, b, b_off, offsets, K, c, L, l0,
                    min(TILE_COLS, L - l0), False)


@cached_njit()
def skipping_rows_gemm(M, K, a, b, b_off, offsets, OW, Wp, L, c, c_off, ldc, bias, relu):
    """A conv's output rows straight from the image: c[c_off + i*ldc + p] = the sum
    over k of a[i*K + k] * B[k, p], + bias[i], then max(., 0) with ``relu``, for
    i < M, p < L (L a multiple of OW), where column p of B is position
    (p // OW, p % OW) of output rows Wp apart in b: row k of B holds
    b[b_off + offsets[k] + (p // OW)*Wp + p % OW]. So the Wp - OW columns a row
    of the image has past the output's are neither computed nor read
    (skipping tiles: each 16-lane vector steps over the gap at most once,
    hence OW >= 16), and no pass moves the product to the output: c may be
    the output planes themselves (ldc = OH*OW). float32, M >= 4; the last M % 4
    rows by an overlapping 4-row tile (the same values written twice)."""
    M8, M4 = tiled_rows(M)
    gap = Wp - OW
    for p0 in range(0, L, TILE_COLS):
        cols = min(TILE_COLS, L - p0)
        q0, q1 = p0 % OW, (p0 + 16) % OW
        m0 = p0 // OW * Wp + q0
        second = (p0 + 16) // OW * Wp + q1 - m0
        s0, s1 = min(OW - q0, 16), min(OW - q1, 16)
        for r0 in range(0, M8, TILE_ROWS):
            skipping_8x32(a, r0 * K, K, 1, b, b_off + m0, offsets, K, c, c_off + r0 * ldc + p0,
                          ldc, False, cols, second, s0, s1, gap, bias, r0, relu)
        if M4 > M8:
            skipping_4x32(a, M8 * K, K, 1, b, b_off + m0, offsets, K, c, c_off + M8 * ldc + p0,
                          ldc, False, cols, second, s0, s1, gap, bias, M8, relu)
        if M4 < M:  # the last rows by an overlapping 4-row tile
            skipping_4x32(a, (M - 4) * K, K, 1, b, b_off + m0, offsets, K, c,
                          c_off + (M - 4) * ldc + p0, ldc, False, cols, second, s0, s1, gap,
                          bias, M - 4, relu)


@cached_njit()
def product(blas, tiles, trans_a, M, K, a, lda, b, L, c, accumulate):
    """``tiled_gemm``'s product (same arguments) in register tiles with ``tiles``,
    otherwise all by BLAS: for callers that pick the tiles per layer."""
    if tiles:
        tiled_gemm(blas, trans_a, M, K, a, lda, b, L, c, accumulate)
    else:
        gemm(blas, trans_a, NO_TRANS, M, L, K, 1.0, a, lda, b, L, 1.0 if accumulate else 0.0, c,
             L)


@cached_njit()
def batched_product(blas, tiles, count, M, K, a, a_step, b, b_step, L, c, c_step):
    """c[i] (M, L) = a[i] (M, K) @ b[i] (K, L) for i < count, matrix i of each
    at i*step (a_step, b_step, c_step) of its flat buffer, rows contiguous;
    in register tiles (as ``tiled_gemm``) with ``tiles``, float32 and M >= 4,
    otherwise one ``product`` each. Winograd's 16 small products per chunk:
    through ``product`` each paid ~0.1 us of calls (16 of 25 x 32 x 64: 8.9
    against 7.1 us)."""
    if not (tiles and a.itemsize == 4 and M >= 4):
        for i in range(count):
            product(blas, tiles, NO_TRANS, M, K, a[i * a_step:], K, b[i * b_step:], L,
                    c[i * c_step:], False)
        return
    _, M4 = tiled_rows(M)
    for i in range(count):
        ci = c[i * c_step:]
        for l0 in range(0, L, TILE_COLS):
            panel_tiles(M, M4 < M, a, i * a_step, K, 1, b, i * b_step, L, K, ci, L, l0,
                        min(TILE_COLS, L - l0), False)


@cached_njit(fastmath={"reassoc", "contract"})
def dot_rows_nt(r0, r1, K, a, b, N, c, accumulate):
    """c[i, n] = a[i] . b[n] (added to c with ``accumulate``) for rows i in [r0, r1)
    of a (M, K), every row n of b (N, K); c (M, N): dot products along K,
    vectorised. For a few rows, where BLAS without small-matrix kernels
    packs all of b at every call."""
    for i in range(r0, r1):
        s = U(i * K)
        for n in range(N):
            t = U(n * K)
            acc = np.float32(0)  # float32: a float64 zero would widen float32 code
            for k in range(U(K)):
                acc += a[s + k] * b[t + k]
            if accumulate:
                c[i * N + n] += acc
            else:
                c[i * N + n] = acc


@cached_njit(inline="always")
def tiled_rows(M):
    """(M8, M4): rows [0, M8) of a product run in 8-row tiles, [M8, M4) in one
    4-row tile (when 4 or more rows are left), the rest on BLAS."""
    M8 = M // TILE_ROWS * TILE_ROWS
    return M8, M8 + 4 if M - M8 >= 4 else M8


#: Reduction steps per pass of ``tiled_gemm_nt``: the pass's slice of the
#: transposed operand (256 x 32 floats per column tile, 32 KB) stays in L1
#: across the pass's row tiles.
NT_REDUCTION_STEP = 256


@cached_njit()
def tiled_gemm_nt(blas, M, K, a, b, N, bt, c):
    """c (M, N) += a (M, K) @ b (N, K)^T in register tiles (as ``tiled_gemm``'s,
    the columns from N//32*32 in masked tiles), the last M % 4 rows as dot
    products (``dot_rows_nt``); float64 by BLAS. The planner decides where it runs.

    a: float (M*K,); b: (N*K,); c: (M*N,), added to. Row strides K, K, N.
    bt: workspace (>= NT_REDUCTION_STEP * N,): each pass over NT_REDUCTION_STEP reduction
    steps first transposes b's slice into it (the tiles read their right-hand
    operand by rows of 32).
    """
    if a.itemsize != 4:
        gemm(blas, NO_TRANS, TRANS, M, N, K, 1.0, a, K, b, K, 1.0, c, N)
        return
    _, M4 = tiled_rows(M)
    if M4 > 0:
        for k0 in range(0, K, NT_REDUCTION_STEP):
            steps = min(NT_REDUCTION_STEP, K - k0)
            transpose_slice(b, K, k0, steps, 0, N, N, bt)
            for n0 in range(0, N, TILE_COLS):
                panel_tiles(M, False, a, k0, K, 1, bt, 0, N, steps, c, N, n0,
                            min(TILE_COLS, N - n0), True)
    dot_rows_nt(M4, M, K, a, b, N, c, True)  # the last 0-3 rows


@cached_njit(inline="always")
def transpose_slice(b, K, k0, steps, n0, n1, N, bt):
    """bt[j*N + n] = b[n*K + k0 + j] for j < steps, n in [n0, n1): rows [n0, n1)
    of b: float (>= n1*K,) as (N, K), columns [k0, k0+steps), transposed into
    bt (steps, N). In blocks of 8 rows by 8 columns, whose constant trip counts
    LLVM turns into vector shuffles (1.2-2x faster than 8 columns by all rows,
    itself 2-3x faster than a plain loop: (32, 169) 1.21 -> 0.75 us); the rows
    and columns past the last full block one by one."""
    rows_end = n0 + (n1 - n0) // 8 * 8
    cols_end = steps // 8 * 8
    for r in range(n0, rows_end, 8):
        for j0 in range(0, cols_end, 8):
            s = U(r * K + k0 + j0)
            d = U(j0 * N + r)
            for j in range(8):
                for n in range(8):
                    bt[d + U(j * N + n)] = b[s + U(n * K + j)]
        for j in range(cols_end, steps):
            for n in range(r, r + 8):
                bt[U(j * N + n)] = b[U(n * K + k0 + j)]
    for n in range(rows_end, n1):
        for j in range(steps):
            bt[U(j * N + n)] = b[U(n * K + k0 + j)]


@cached_njit()
def refresh_kept(values, kept, lo, hi):
    """True when values[lo:hi] differ from kept[lo:hi] (in value or sign bit; a
    NaN always differs), which then takes them; False when they are the same.

    How an inference layer keeps something derived from its weight (a
    transpose, a transform) between calls without trusting anyone to say when
    the weight changes: in place, by an optimizer step or by the user."""
    changed = False
    for i in range(U(lo), U(hi)):
        changed |= not (values[i] == kept[i]) or np.signbit(values[i]) != np.signbit(kept[i])
    if changed:
        # An element loop: a slice assignment compiles Numba's shape-mismatch
        # error path (1.7 s on a cold cache, in every kernel that links this).
        for i in range(U(lo), U(hi)):
            kept[i] = values[i]
    return changed


@cached_njit()
def refresh_transpose(b, K, n0, n1, N, packed):
    """Keep packed[:K*N] = b^T for rows [n0, n1) of b: float (N*K,) as (N, K),
    transposing them again only when they changed (``refresh_kept``, against
    packed[K*N:2*K*N], b as it was transposed)."""
    if refresh_kept(b, packed[K * N:], n0 * K, n1 * K):
        transpose_slice(b, K, 0, K, n0, n1, N, packed)
