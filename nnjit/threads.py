"""Thread count for Numba kernels and BLAS together."""
from __future__ import annotations

import numba
from threadpoolctl import threadpool_limits


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in Numba's parallel kernels and in BLAS.

    Both run one after the other, never nested (no BLAS call inside a prange),
    so the same count for both does not oversubscribe the cores.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"thread count must be a positive int, got {n!r}")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(n, user_api="blas")


def get_num_threads() -> int:
    """Threads Numba's parallel kernels use now."""
    return numba.get_num_threads()
