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
than a plain loop).

Offsets and lengths are unsigned 64-bit element counts. The intrinsics are
named as LLVM 17+ names them (opaque pointers: ``llvm.masked.load.v16f32.p0``),
hence numba >= 0.62 (llvmlite 0.45, LLVM 20) in pyproject.toml.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

U = np.uint64
_VECTOR_BYTES = 64

COPY, ZERO, RELU = range(3)


def _masked_run_step(mode):
    """An intrinsic doing ``mode`` on dst[d:d+n] (from src[s:s+n]) for n up to
    one vector (64 bytes) of dst's dtype, as one masked load/store: COPY, ZERO,
    or RELU (copy max(v, 0), with ``v < 0`` as the test: NaN and -0.0 pass
    unchanged, as in the kernels' scalar ReLU)."""

    @intrinsic
    def step(typingctx, dst, d, src, s, n):
        sig = types.void(dst, d, src, s, n)

        def codegen(context, builder, signature, args):
            dst_value, src_value = args[0], args[2]
            d_value, s_value, n_value = (context.cast(builder, args[i], signature.args[i],
                                                      types.uint64) for i in (1, 3, 4))
            dtype = signature.args[0].dtype
            element = context.get_value_type(dtype)
            lanes = _VECTOR_BYTES // np.dtype(str(dtype)).itemsize
            vector, i32, i64 = ir.VectorType(element, lanes), ir.IntType(32), ir.IntType(64)
            align = ir.Constant(i32, np.dtype(str(dtype)).itemsize)

            def address(array_type, array, offset):
                data = context.make_array(array_type)(context, builder, array).data
                return builder.gep(data, [offset])

            index = ir.Constant(ir.VectorType(i64, lanes), list(range(lanes)))
            count = builder.insert_element(ir.VectorType(i64, lanes)(ir.Undefined), n_value,
                                           ir.Constant(i32, 0))
            count = builder.shuffle_vector(count, ir.VectorType(i64, lanes)(ir.Undefined),
                                           ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))
            mask = builder.icmp_unsigned("<", index, count)
            target = address(signature.args[0], dst_value, d_value)
            suffix = f"v{lanes}{'f32' if dtype == types.float32 else 'f64'}.p0"
            module = builder.module

            def declare(name, fnty):
                return module.globals.get(name) or ir.Function(module, fnty, name)

            load = declare(f"llvm.masked.load.{suffix}",
                           ir.FunctionType(vector, [target.type, i32, mask.type, vector]))
            store = declare(f"llvm.masked.store.{suffix}",
                            ir.FunctionType(ir.VoidType(), [vector, target.type, i32, mask.type]))
            if mode == ZERO:
                value = ir.Constant(vector, None)
            else:
                source = address(signature.args[2], src_value, s_value)
                value = builder.call(load, [source, align, mask, ir.Constant(vector, None)])
                if mode == RELU:
                    zero = ir.Constant(vector, None)
                    value = builder.select(builder.fcmp_ordered("<", value, zero), zero, value)
            builder.call(store, [value, target, align, mask])
            return context.get_dummy_value()

        return sig, codegen

    return step


_copy_step = _masked_run_step(COPY)
_zero_step = _masked_run_step(ZERO)
_relu_step = _masked_run_step(RELU)


@njit(cache=True, inline="always")
def _lanes(a):
    return U(_VECTOR_BYTES // a.itemsize)


@njit(cache=True, inline="always")
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


@njit(cache=True, inline="always")
def copy_run(dst, d, src, s, n):
    """dst[d:d+n] = src[s:s+n]. dst, src: 1-D float arrays of one dtype; d, s, n: uint64."""
    _run(dst, d, src, s, n, COPY)


@njit(cache=True, inline="always")
def relu_copy_run(dst, d, src, s, n):
    """dst[d:d+n] = max(src[s:s+n], 0) (values below zero become 0; NaN stays).
    dst, src: 1-D float arrays of one dtype; d, s, n: uint64."""
    _run(dst, d, src, s, n, RELU)


@njit(cache=True, inline="always")
def zero_run(dst, d, n):
    """dst[d:d+n] = 0. dst: 1-D float array; d, n: uint64."""
    _run(dst, d, dst, d, n, ZERO)
