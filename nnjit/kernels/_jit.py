"""The one place that sets Numba's options for every nnjit kernel.

Every kernel is compiled lazily (on first call), cached on disk next to its
module (``cache=True``), and parallel over its outermost ``prange`` loop.
``fastmath`` stays off: softmax, log and max-pooling rely on IEEE inf/nan
semantics, and the kernels are memory-bound where fastmath would matter.
``error_model="numpy"`` drops Python's division-by-zero checks so loops
vectorise.
"""
import os

# Numba's OpenMP threads busy-wait between kernels by default, and so do
# OpenBLAS's between GEMMs: on 2 cores the two pools then fight, and a kernel
# right after a GEMM waited milliseconds (measured: 8 ms for a 10 us update).
# Sleeping waits cost ~40 us per parallel launch instead. Must be set before
# the OpenMP runtime loads (Numba loads it at the first parallel launch); a
# user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from numba import njit, prange  # noqa: E402

kernel = njit(parallel=True, cache=True, nogil=True, error_model="numpy")

__all__ = ["kernel", "prange"]
