"""GEMM called from inside Numba kernels, single-threaded, through numpy's own BLAS.

nnjit runs every matrix product inside its own parallel kernels: each
``prange`` iteration calls the BLAS ``gemm`` on its part of the work, with
BLAS set to one thread while the kernel runs (``single_threaded_blas``). So nnjit never wakes
the BLAS library's own thread pool, and its speed does not depend on how that
pool was configured when the user's first ``import numpy`` loaded it
(``OPENBLAS_NUM_THREADS``, ``OPENBLAS_THREAD_TIMEOUT``): an OpenBLAS pool left
spinning after each call stole a core from nnjit's threads and halved cnn
training speed when numpy was imported before nnjit.

The library is the one numpy uses, found through threadpoolctl (any loaded
BLAS with the CBLAS entry points would do: none of their pools is woken); its
``cblas_?gemm`` and thread-count functions are called through their addresses,
passed to the kernels in a small int64 array (:func:`blas_handle`), so the
compiled kernels hold no process-specific pointer and stay cacheable on disk.

Handle layout: ``[sgemm, dgemm, ilp64, set_num_threads, get_num_threads,
called]``; an address of 0 means "not available": without a usable ``gemm``
the kernels fall back to a plain loop (correct, slow), without the thread
functions BLAS runs as it is configured (MKL, for one, runs single-threaded
inside an OpenMP parallel region by itself). ``called`` is set to 1 by every
BLAS call (:func:`blas_called`): a replayed inference pass that makes none
needs no thread-count switch around it.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading
import warnings

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .cache import cached_njit

NO_TRANS, TRANS = 111, 112  # CBLAS_TRANSPOSE

#: OpenBLAS multiplies matrices of up to 10^6 multiply-adds (M*N*K) without
#: packing its operands first, on one core often much faster than its packed
#: path for the thin matrices of a network: Dense 1600->10 over 500 rows 80
#: vs 40 GFLOP/s in row chunks of <= 62 rows (64 rows, just over, 35). The
#: layers cut their GEMMs into pieces of at most this size where that pays.
SMALL_GEMM_MACS = 1_000_000
_ROW_MAJOR = 101

SGEMM, DGEMM, ILP64, SET_THREADS, GET_THREADS, CALLED = range(6)


def _symbols(lib):
    """(sgemm, dgemm, ilp64, set, get) addresses in ``lib``, trying the names
    numpy's OpenBLAS builds use (``scipy_`` prefix, ``64_`` ILP64 suffix) and
    the plain CBLAS ones."""
    def address(name):
        try:
            return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0
        except AttributeError:
            return 0

    for prefix in ("scipy_", ""):
        for suffix in ("64_", ""):
            sgemm = address(f"{prefix}cblas_sgemm{suffix}")
            dgemm = address(f"{prefix}cblas_dgemm{suffix}")
            if sgemm and dgemm:
                return (sgemm, dgemm, int(suffix == "64_"),
                        address(f"{prefix}openblas_set_num_threads{suffix}"),
                        address(f"{prefix}openblas_get_num_threads{suffix}"), 0)
    return 0, 0, 0, 0, 0, 0


@functools.lru_cache(maxsize=None)
def _numpy_blas() -> tuple[np.ndarray, str]:
    """(handle, architecture) of the BLAS the kernels call: see ``blas_handle``;
    architecture as the library reports its kernels (OpenBLAS's core name,
    e.g. "SkylakeX", "Haswell"; "" when unknown)."""
    from threadpoolctl import threadpool_info

    libraries = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    for info in sorted(libraries, key=lambda i: "numpy" not in i["filepath"]):
        try:
            found = _symbols(ctypes.CDLL(info["filepath"]))
        except OSError:
            continue
        if found[SGEMM]:
            return np.array(found, dtype=np.int64), str(info.get("architecture") or "")
    warnings.warn("nnjit found no CBLAS gemm in the BLAS libraries numpy loaded; its matrix "
                  "products fall back to a plain loop, which is much slower", RuntimeWarning,
                  stacklevel=3)
    return np.zeros(CALLED + 1, dtype=np.int64), ""


def blas_handle() -> np.ndarray:
    """int64 (6,): the BLAS entry points the kernels call (see the module docstring).

    Looked up once per process among the loaded BLAS libraries, numpy's own
    first (Numba also loads SciPy's, when SciPy is installed).
    """
    return _numpy_blas()[0]


def reset_blas_called() -> None:
    """Clear the mark every BLAS call leaves (see :func:`blas_called`)."""
    blas_handle()[CALLED] = 0


def blas_called() -> bool:
    """True when a kernel called BLAS (on any thread) since :func:`reset_blas_called`."""
    return bool(blas_handle()[CALLED])


#: OpenBLAS core names whose kernels use AVX-512.
_AVX512_KERNELS = ("skylakex", "cooperlake", "sapphirerapids")


def blas_has_avx512_kernels() -> bool:
    """True when numpy's BLAS runs AVX-512 kernels (OpenBLAS's SkylakeX family).

    The layers' choices between BLAS and nnjit's register tiles
    (``nnjit.kernels.tiles``) were measured against such kernels. Otherwise
    the tiles run everywhere: OpenBLAS 0.3.31 takes an AVX-512 Zen 5 for a
    Haswell (AVX2), where, one core, the tiles ran 2.1-2.4x its speed (32 rows
    over 9 or 250: 220 vs 93, 233 vs 104 GFLOP/s) and a product of 1 to 4 rows
    packed the whole weight at every call (1 x 784 by 784 x 128: 18.7 us,
    3.1 us as dot products, ``nnjit.kernels.tiles.dot_rows_nt``).
    """
    return _numpy_blas()[1].lower() in _AVX512_KERNELS


def blas_description() -> str:
    """Which GEMM the kernels use, for benchmark and diagnostic output."""
    handle = blas_handle()
    if not handle[SGEMM]:
        return "no BLAS found: plain-loop GEMM (slow)"
    threads = "single-threaded per call" if handle[SET_THREADS] else "thread count not controlled"
    kernels = _numpy_blas()[1] or "unknown"
    return (f"{'ILP64' if handle[ILP64] else 'LP64'} cblas_?gemm of numpy's BLAS ({kernels} "
            f"kernels), {threads}")


def _cblas_gemm_intrinsic(int_bits):
    """An intrinsic calling cblas_?gemm (row-major) at an address, with
    ``int_bits``-wide integer arguments; the float type follows ``a``'s dtype."""

    @intrinsic
    def cblas_gemm(typingctx, address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta,
                   c, ldc):
        sig = types.void(address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

        def codegen(context, builder, signature, args):
            address, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc = args
            arg_types = signature.args
            fty = ir.FloatType() if arg_types[7].dtype == types.float32 else ir.DoubleType()
            i32, iw = ir.IntType(32), ir.IntType(int_bits)
            ptr = fty.as_pointer()
            fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, iw, iw, iw, fty, ptr, iw, ptr,
                                                   iw, fty, ptr, iw])
            fn = builder.inttoptr(address, fnty.as_pointer())

            def integer(v, ty):
                if v.type.width > ty.width:
                    return builder.trunc(v, ty)
                return builder.sext(v, ty) if v.type.width < ty.width else v

            def real(v, ty):
                return context.cast(builder, v, ty, arg_types[7].dtype)

            def data(i, value):
                return context.make_array(arg_types[i])(context, builder, value).data

            builder.call(fn, [ir.Constant(i32, _ROW_MAJOR), integer(ta, i32), integer(tb, i32),
                              integer(m, iw), integer(n, iw), integer(k, iw),
                              real(alpha, arg_types[6]), data(7, a), integer(lda, iw),
                              data(9, b), integer(ldb, iw), real(beta, arg_types[11]),
                              data(12, c), integer(ldc, iw)])
            return context.get_dummy_value()

        return sig, codegen

    return cblas_gemm


_cblas_gemm64 = _cblas_gemm_intrinsic(64)
_cblas_gemm32 = _cblas_gemm_intrinsic(32)


class SingleThreadedBlas:
    """Context manager: BLAS at one thread while nnjit computes.

    Entered around every kernel that calls BLAS and around each model pass.
    The outermost entry saves BLAS's thread count and sets it to 1, and its
    exit restores it. A re-entrant lock (``lock``) is held meanwhile, so model
    passes from several Python threads take turns (each already uses every
    core) and never restore a count another one set; numpy calls made
    meanwhile from other threads run single-threaded. Costs ~0.8 us
    outermost, ~0.2 us nested; the lock alone ~0.1 us.
    """

    def __init__(self):
        self._lock = threading.RLock()
        self._depth = 0  # entries by the thread holding the lock
        self._saved = 0
        self._functions = None
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self):
        # A fork from another thread mid-pass would leave the child's copy locked.
        self._lock = threading.RLock()
        self._depth = 0

    def _get_set(self):
        if self._functions is None:
            handle = blas_handle()
            self._functions = (
                ctypes.CFUNCTYPE(ctypes.c_int)(int(handle[GET_THREADS])),
                ctypes.CFUNCTYPE(None, ctypes.c_int)(int(handle[SET_THREADS]))
            ) if handle[GET_THREADS] and handle[SET_THREADS] else ()
        return self._functions

    @property
    def lock(self) -> threading.RLock:
        """The lock model passes take turns by, held by every entry: a pass that
        calls no BLAS holds only this."""
        return self._lock

    def __enter__(self):
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1 and self._get_set():
            self._saved = self._functions[0]()
            if self._saved != 1:
                self._functions[1](1)

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0 and self._functions and self._saved != 1:
            self._functions[1](self._saved)
        self._lock.release()


#: The one instance every kernel call and model pass goes through.
single_threaded_blas = SingleThreadedBlas()


@cached_njit()
def gemm(blas, trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc):
    """c = alpha * op(a) @ op(b) + beta * c, row-major, on the calling thread.

    a, b, c: 1-D float views whose first element is the matrix's first
    (slices select sub-matrices); op(a) is (M, K), op(b) (K, N), c (M, N);
    lda/ldb/ldc are row strides in elements; trans_* are NO_TRANS or TRANS.
    With a BLAS from :func:`blas_handle`, calls its gemm; otherwise a plain loop.
    """
    address = blas[SGEMM] if a.itemsize == 4 else blas[DGEMM]
    if address != 0:
        if blas[CALLED] == 0:  # written once: every thread reads this line
            blas[CALLED] = 1
        if blas[ILP64] != 0:
            _cblas_gemm64(address, trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc)
        else:
            _cblas_gemm32(address, trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc)
        return
    for i in range(M):
        for j in range(N):
            acc = 0.0
            for p in range(K):
                av = a[p * lda + i] if trans_a == TRANS else a[i * lda + p]
                bv = b[j * ldb + p] if trans_b == TRANS else b[p * ldb + j]
                acc += av * bv
            c[i * ldc + j] = alpha * acc + (beta * c[i * ldc + j] if beta != 0 else 0.0)
