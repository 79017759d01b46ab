"""The one place that sets Numba's options for every nnjit kernel.

Every kernel is compiled lazily (on first call), cached on disk next to its
module (``cache=True``), and parallel over its outermost ``prange`` loop.
``fastmath`` stays off: softmax, log and max-pooling rely on IEEE inf/nan
semantics, and the kernels are memory-bound where fastmath would matter.
``error_model="numpy"`` drops Python's division-by-zero checks so loops
vectorise.
"""
from numba import njit, prange

kernel = njit(parallel=True, cache=True, nogil=True, error_model="numpy")

__all__ = ["kernel", "prange"]
