"""The one place that sets Numba's options for every nnjit kernel.

Every kernel is compiled lazily (on first call), cached on disk next to its
module (``cache=True``), and parallel over its outermost ``prange`` loop, or,
for ``kernel(serial=True)``, serial and free of the GIL (``nogil``) so that
several Python threads can run it at once (the convolution's workers, which
interleave it with BLAS calls; see ``nnjit.threads.run_workers``).
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

_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}


class Kernel:
    """A Numba kernel; a parallel one runs serially on small inputs.

    Calling it calls the compiled dispatcher (``.dispatcher``). For a
    parallel kernel, Numba's thread count is set to 1 for the call when the
    first argument (by convention the array that measures the work) is
    smaller than ``SERIAL_BELOW``.
    """

    def __init__(self, fn, serial=False):
        self.serial = serial
        self.dispatcher = njit(parallel=not serial, **_OPTIONS)(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        if self.serial or args[0].size >= SERIAL_BELOW:
            return self.dispatcher(*args)
        threads = numba.get_num_threads()
        if threads == 1:
            return self.dispatcher(*args)
        numba.set_num_threads(1)
        try:
            return self.dispatcher(*args)
        finally:
            numba.set_num_threads(threads)


def kernel(fn=None, *, serial=False):
    """Compile ``fn`` as an nnjit kernel (lazily, on first call; cached on disk).

    ``@kernel`` makes a parallel kernel; ``@kernel(serial=True)`` one that runs
    on the calling thread without holding the GIL.
    """
    if fn is None:
        return lambda f: Kernel(f, serial)
    return Kernel(fn, serial)


__all__ = ["kernel", "prange", "Kernel", "SERIAL_BELOW"]
