"""How many threads nnjit's kernels use, and how a layer splits its work among them.

Every parallel kernel runs on Numba's thread pool; matrix products run inside
those kernels with BLAS single-threaded (``nnjit.kernels.blas``), so Numba's
pool is the only one nnjit uses and its size is the one setting.
"""
from __future__ import annotations

import contextlib

import numba
import numpy as np
from numba.np.ufunc import parallel as _numba_parallel

#: Work (multiply-adds, roughly) that pays for one more thread in a layer's
#: kernel: handing work to a thread that has gone to sleep costs ~40 us on
#: these VMs. Measured crossovers at 2 threads: the cnn's first conv (1->32
#: 3x3 on 28x28) at ~20 images, its second (32->64 3x3 on 13x13) at ~4.
WORK_PER_PART = 4_000_000


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (at most Numba's pool size, ``NUMBA_NUM_THREADS``) in nnjit's kernels.

    Leaves the BLAS library's own thread count alone: nnjit's GEMMs run
    single-threaded inside its kernels whatever that count is.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"thread count must be a positive int, got {n!r}")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


@contextlib.contextmanager
def threads_set_to(n: int):
    """``set_num_threads(n)`` for the calling thread while the block runs, then the
    count it had."""
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


def get_num_threads() -> int:
    """Threads nnjit's parallel kernels use now (Numba's count for the calling thread)."""
    # Once Numba's pool has started, its C getter answers directly: 0.09 us
    # against 0.68 us for numba.get_num_threads(), which checks the pool first
    # (a small predict asks once per call).
    count = getattr(_numba_parallel, "_get_num_threads", None)
    return count() if count is not None else numba.get_num_threads()


def parts_for(work: int, most: int, finer: int = 1) -> int:
    """How many threads a kernel of ``work`` multiply-adds should split into
    (at most ``most``, the count of independent pieces it has): one per
    WORK_PER_PART / ``finer``."""
    per = max(1, WORK_PER_PART // finer)
    if work < 2 * per or most < 2:  # one part: skip asking Numba (~1 us)
        return 1
    return max(1, min(get_num_threads(), work // per, most))


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) cut into at most ``parts`` contiguous non-empty ranges of near-equal length."""
    parts = max(1, min(parts, n))
    return [(i * n // parts, (i + 1) * n // parts) for i in range(parts)]


def split_bounds(n: int, parts: int):
    """``split(n, parts)`` as a kernel takes it: int64 (k + 1,) bounds, range p being
    [bounds[p], bounds[p+1])."""
    return np.array([0] + [stop for _, stop in split(n, parts)], np.int64)
