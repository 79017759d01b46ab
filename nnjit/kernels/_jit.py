"""The one place that sets Numba's options for every nnjit kernel.

Every kernel is compiled lazily (on first call) and cached on disk next to
its module (``cache=True``). ``@kernel`` is parallel over its outermost
``prange`` loop, with a serial twin for small inputs; ``@kernel(serial=True)``
is serial only. All release the GIL (``nogil``), so that several Python
threads can run them at once (the convolution's workers, which interleave
them with BLAS calls; see ``nnjit.threads.run_workers``).
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
import types

from numba import njit, prange

#: Below this many elements in its first array, a parallel kernel runs its
#: serial compilation instead: waking the sleeping pool (~40 us) would cost
#: more than the work it splits.
SERIAL_BELOW = 1 << 17

_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}


class Kernel:
    """A Numba kernel; a parallel one has a serial twin for small inputs.

    ``.dispatchers`` holds the compiled dispatchers: (parallel, serial) for a
    parallel kernel, (serial,) for a serial one. Calling the kernel calls the
    serial one when the first argument (by convention the array that
    measures the work) is smaller than ``SERIAL_BELOW``. A second
    compilation, not a thread-count switch around the call: switching cost
    ~3 us per call, as much as a small kernel's work.
    """

    def __init__(self, fn, serial=False):
        if serial:
            self.dispatchers = (njit(**_OPTIONS)(fn),)
        else:
            self.dispatchers = (njit(parallel=True, **_OPTIONS)(fn),
                                njit(**_OPTIONS)(_renamed(fn, "_serial")))
        # For a serial kernel both are its one dispatcher.
        self._parallel, self._serial = self.dispatchers[0], self.dispatchers[-1]
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        if args[0].size < SERIAL_BELOW:
            return self._serial(*args)
        return self._parallel(*args)

    def run(self, parallel: bool, *args):
        """Call the parallel compilation or the serial twin, as the caller decided."""
        return (self._parallel if parallel else self._serial)(*args)


def _renamed(fn, suffix):
    """A copy of ``fn`` under another name: Numba's disk cache is keyed by the
    function's name and code, not by ``parallel``, so the twins need two names."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix,
                              fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + suffix
    twin.__module__ = fn.__module__
    return twin


def helper(fn):
    """Compile ``fn`` as a serial helper that kernels call (lazily; cached on disk)."""
    return njit(**_OPTIONS)(fn)


def kernel(fn=None, *, serial=False):
    """Compile ``fn`` as an nnjit kernel (lazily, on first call; cached on disk).

    ``@kernel`` makes a parallel kernel; ``@kernel(serial=True)`` one that runs
    on the calling thread without holding the GIL.
    """
    if fn is None:
        return lambda f: Kernel(f, serial)
    return Kernel(fn, serial)


__all__ = ["kernel", "helper", "prange", "Kernel", "SERIAL_BELOW"]
