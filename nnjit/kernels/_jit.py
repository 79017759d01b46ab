"""The one place that sets Numba's options for every nnjit kernel.

Every kernel is compiled lazily (on first call), cached on disk next to its
module (``cache=True``), and parallel over its outermost ``prange`` loop.
``fastmath`` stays off: softmax, log and max-pooling rely on IEEE inf/nan
semantics, and the kernels are memory-bound where fastmath would matter.
``error_model="numpy"`` drops Python's division-by-zero checks so loops
vectorise.

Numba's disk cache is keyed by each kernel's own source file: a kernel that
inlines a helper from another module (``pool_plane``, ``row_max_expsum``)
is not recompiled when only the helper changes. After editing such a helper,
delete ``nnjit/kernels/__pycache__``.
"""
import functools

import numba
from numba import njit, prange

#: Below this many elements in its first array, a kernel runs on one thread:
#: waking the sleeping pool (~40 us) would cost more than the work it splits.
SERIAL_BELOW = 1 << 17

_compile = njit(parallel=True, cache=True, nogil=True, error_model="numpy")


class Kernel:
    """A parallel Numba kernel that runs serially on small inputs.

    Calling it calls the compiled dispatcher (``.dispatcher``), with Numba's
    thread count set to 1 for the call when the first argument (by
    convention the array that measures the work) is smaller than
    ``SERIAL_BELOW``.
    """

    def __init__(self, fn):
        self.dispatcher = _compile(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        if args[0].size >= SERIAL_BELOW:
            return self.dispatcher(*args)
        threads = numba.get_num_threads()
        if threads == 1:
            return self.dispatcher(*args)
        numba.set_num_threads(1)
        try:
            return self.dispatcher(*args)
        finally:
            numba.set_num_threads(threads)


def kernel(fn) -> Kernel:
    """Compile ``fn`` as an nnjit kernel (lazily, on first call; cached on disk)."""
    return Kernel(fn)


__all__ = ["kernel", "prange", "Kernel", "SERIAL_BELOW"]
