"""Thread count for Numba kernels and BLAS together, and the worker threads
that run the convolution's per-block GEMMs side by side."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba
from threadpoolctl import ThreadpoolController, threadpool_limits

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = None  # a forked child inherits the pool object but not its threads
_blas_libraries = None


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in Numba's parallel kernels, in BLAS and in ``run_workers``.

    Numba kernels and multi-threaded BLAS calls run one after the other,
    never nested (no BLAS call inside a prange), so the same count for both
    does not oversubscribe the cores.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"thread count must be a positive int, got {n!r}")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(n, user_api="blas")


def get_num_threads() -> int:
    """Threads Numba's parallel kernels (and ``run_workers``) use now."""
    return numba.get_num_threads()


#: Work (multiply-adds, roughly) that pays for one more thread in a layer's
#: kernel: waking a sleeping thread costs ~40 us on these VMs. Measured
#: crossovers at 2 threads: the cnn's first conv (1->32 3x3 on 28x28) at ~20
#: images, its second (32->64 3x3 on 13x13) at ~4.
WORK_PER_PART = 4_000_000


def parts_for(work: int, most: int) -> int:
    """How many threads a kernel of ``work`` multiply-adds should split into
    (at most ``most``, the count of independent pieces it has)."""
    return max(1, min(get_num_threads(), work // WORK_PER_PART, most))


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) cut into at most ``parts`` contiguous non-empty ranges of near-equal length."""
    parts = max(1, min(parts, n))
    return [(i * n // parts, (i + 1) * n // parts) for i in range(parts)]


def run_workers(work, ranges: list[tuple[int, int]]) -> None:
    """Call ``work(worker, start, stop)`` for every range, each on its own thread.

    Range 0 runs on the calling thread, the others on a pool of threads. With
    more than one range, BLAS is single-threaded for the duration, so each
    worker's GEMMs keep to its own core, interleaved with
    ``kernel(serial=True)`` kernels (which, like BLAS, release the GIL).
    Numba cannot call BLAS inside a ``prange`` without SciPy; this is the
    same "one GEMM per block per core" from Python threads. Each call costs
    ~50 us of thread hand-over on these VMs, so it pays for work of a
    millisecond or more. Exceptions propagate after every worker has stopped.
    """
    if len(ranges) == 1:
        work(0, *ranges[0])
        return
    global _pool, _pool_size, _pool_pid, _blas_libraries
    if _pool is None or _pool_size < len(ranges) - 1 or _pool_pid != os.getpid():
        _pool_size, _pool_pid = len(ranges) - 1, os.getpid()
        _pool = ThreadPoolExecutor(_pool_size, thread_name_prefix="nnjit")
    if _blas_libraries is None:
        _blas_libraries = ThreadpoolController().select(user_api="blas").lib_controllers
    blas_threads = [lib.get_num_threads() for lib in _blas_libraries]
    for lib in _blas_libraries:
        lib.set_num_threads(1)
    try:
        futures = [_pool.submit(work, i, *r) for i, r in enumerate(ranges[1:], 1)]
        try:
            work(0, *ranges[0])
        finally:
            for f in futures:
                f.exception()  # wait for every worker, even when this one failed
        for f in futures:
            f.result()
    finally:
        for lib, n in zip(_blas_libraries, blas_threads):
            lib.set_num_threads(n)
