"""The one place that sets Numba's options for every nnjit kernel.

Every kernel is compiled lazily (on first call) and cached on disk next to
its module (``cache=True``). ``@kernel`` is parallel over its ``prange``
loops, with a serial twin for small inputs; ``@helper`` compiles a serial
function that kernels call. All release the GIL (``nogil``).
``fastmath`` stays off: softmax, log and max-pooling rely on IEEE inf/nan
semantics. A kernel whose loops sum many values may allow reordering the sums
(``@kernel(reassociate=True)``: LLVM's ``reassoc``/``contract`` flags only,
inf/nan semantics kept): a float64 sum then runs on SIMD lanes instead of
one add after another (batch norm's statistics: 1.34 ms -> 0.18 ms).
``error_model="numpy"`` drops Python's division-by-zero checks so loops
vectorise.

GNU OpenMP (Numba's ``omp`` threading layer here) cannot run a parallel
region in a process forked from one that already ran one: it aborts. So in a
forked child every kernel runs its serial twin (correct, on one thread).

A kernel whose ``prange`` loops each call one large helper (a part: the work
of one iteration) names those helpers in ``@kernel(parts=...)`` and receives
their addresses as its first arguments: ``call_part(address, ...)`` calls one
there, so its twins compile only the loops (~0.3 s) and the parts compile
once, on their own, for both twins. Called directly, Numba links a helper's
code into each caller and optimises it again there: conv_backward took 14 s
to compile, 7 of them its part a second time, and the serial twin as long
again. Every part takes the part's index (int64: a ``prange`` index is
unsigned in the parallel twin, so pass ``np.int64(part)``) followed by all of
the kernel's own arguments, passed on unchanged: the part is compiled for
exactly those types. (An address is a plain int: Numba's first-class
functions cost ~2 us per call to unbox, 17 us on the cnn's single-image
predict.)

Every cached function saves to the disk cache under a lock (``cache.py``:
Numba's own save can mix up two signatures compiled by two processes at once).
Numba's disk cache is keyed by each kernel's own source file: a kernel that
calls a helper from another module (``pool_plane``, ``shifted_exp_rows``,
``gemm``, ``tiled_gemm``) is not recompiled when only the helper changes. After editing such
a helper, delete ``nnjit/kernels/__pycache__``.
"""
import contextlib
import functools
import os
import threading
import types

from numba import njit, prange, typeof
from numba._dispatcher import compute_fingerprint
from numba.core import cgutils
from numba.core import types as nbtypes
from numba.core.cpu import ParallelOptions
from numba.extending import intrinsic

from .blas import single_threaded_blas
from .cache import with_locked_cache

#: Below this many elements in its first array, a parallel kernel runs its
#: serial compilation instead: handing work to the pool (~2 us while its
#: threads still spin after a kernel, ~140 us once they sleep, after ~10 ms
#: idle) would cost more than the work it splits.
SERIAL_BELOW = 1 << 17

_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}
_REASSOCIATE = {"reassoc", "contract"}

#: False in a forked child (see the module docstring).
parallel_allowed = True


def _after_fork_in_child():
    global parallel_allowed
    parallel_allowed = False


os.register_at_fork(after_in_child=_after_fork_in_child)


class Kernel:
    """A parallel Numba kernel and its serial twin, for small inputs.

    ``.dispatchers`` holds the compiled dispatchers (parallel, serial).
    Calling the kernel calls the serial one when the first argument (by
    convention the array that measures the work) is smaller than
    ``SERIAL_BELOW`` / ``cost``; ``run`` lets the caller choose. A second compilation,
    not a thread-count switch around the call: switching cost ~3 us per
    call, as much as a small kernel's work.
    """

    def __init__(self, fn, blas=False, reassociate=False, cost=1, parts=()):
        options = dict(_OPTIONS, fastmath=_REASSOCIATE if reassociate else False)
        # Numba fuses consecutive prange loops of one range when it sees no
        # dependence between them, and it sees nothing inside a call_part: fused,
        # part p of the second loop would run before the first loop's other parts.
        # As ParallelOptions, not a dict: Numba pops the keys of a dict on the first
        # compilation, so a second signature (float64 after float32) compiled fused.
        parallel = ParallelOptions({"fusion": False}) if parts else True
        self.dispatchers = (with_locked_cache(njit(parallel=parallel, **options)(fn)),
                            with_locked_cache(njit(**options)(_renamed(fn, "_serial"))))
        self._parallel, self._serial = self.dispatchers
        self.blas = blas
        self.cost = cost
        self.parts = tuple(parts)
        self._addresses = {}  # the arguments' type fingerprints -> the parts' addresses
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        return self.run(args[0].size * self.cost >= SERIAL_BELOW, *args)

    def run(self, parallel: bool, *args):
        """Call the parallel compilation or the serial twin, as the caller decided."""
        dispatcher = self._parallel if parallel and parallel_allowed else self._serial
        try:
            return self._call(dispatcher, args)
        except Exception as err:
            if not _raised_by_numba_cache(err):
                raise
            _forget_broken_cache(err)
            return self._call(dispatcher, args)  # once: a second failure is a real one

    def _execute(self, dispatcher, args):
        if self.parts:
            args = self.part_addresses(args) + args
        if not self.blas:
            return dispatcher(*args)
        with single_threaded_blas:
            return dispatcher(*args)

    _call = _execute  # what ``run`` calls; rerouted by ``intercepted_calls``

    def part_signature(self, arg_types):
        """The signature of every part of this kernel called on arguments of
        ``arg_types``: the part's index, then the kernel's arguments; no result."""
        return nbtypes.void(nbtypes.int64, *arg_types)

    def part_addresses(self, args) -> tuple:
        """The addresses of the parts compiled for the types of ``args`` (compiled
        or loaded from the disk cache on first use), as the kernel takes them."""
        try:
            key = tuple(map(compute_fingerprint, args))
        except (ValueError, TypeError, NotImplementedError):  # no fingerprint: type it
            key = tuple(map(typeof, args))
        addresses = self._addresses.get(key)
        if addresses is None:
            signature = self.part_signature(tuple(map(typeof, args)))
            addresses = tuple(_address(part, signature) for part in self.parts)
            self._addresses[key] = addresses
        return addresses

    def signature(self, arg_types) -> tuple:
        """The argument types a twin is compiled for, called on ``arg_types``."""
        return (nbtypes.int64,) * len(self.parts) + tuple(arg_types)

    def entry(self, dispatcher, args):
        """What calling ``dispatcher`` (a twin) on ``args`` runs: its compiled entry
        point, with the parts bound, or while it has none for their types a call
        through the dispatcher. A replay calls the same objects every time, so
        the dispatcher's type dispatch on each call (~0.5 us for a conv's 30
        arguments: 1.5 of the cnn's 25 us on one image) would find the same
        overload every time."""
        addresses = self.part_addresses(args) if self.parts else ()
        try:
            overload = dispatcher.overloads.get(
                self.signature(tuple(map(dispatcher.typeof_pyval, args))))
        except Exception:  # noqa: BLE001  (an argument Numba cannot type: keep the dispatcher)
            overload = None
        call = dispatcher if overload is None else overload.entry_point
        return functools.partial(call, *addresses) if addresses else call


def _address(part, signature) -> int:
    """Where ``part`` compiled for ``signature`` starts (Numba's calling convention),
    compiling it or loading it from the disk cache first."""
    result = part.get_compile_result(signature)
    return result.library.get_pointer_to_function(result.fndesc.llvm_func_name)


@intrinsic
def call_part(typingctx, address, *args):
    """Call the part at ``address`` (an int from ``Kernel.part_addresses``) on
    ``args``: the part's index, then the kernel's arguments. An exception the
    part raises propagates. The part must have been compiled for exactly these
    argument types (``Kernel.part_signature``): nothing here can check it."""
    if len(args) == 1 and isinstance(args[0], nbtypes.StarArgTuple):
        args = args[0].types
    signature = nbtypes.void(address, nbtypes.StarArgTuple.from_types(tuple(args)))

    def codegen(context, builder, sig, llargs):
        arg_types = sig.args[1].types
        values = cgutils.unpack_tuple(builder, llargs[1])
        function = context.call_conv.get_function_type(nbtypes.void, arg_types)
        pointer = builder.inttoptr(llargs[0], function.as_pointer())
        status, _ = context.call_conv.call_function(builder, pointer, nbtypes.void, arg_types,
                                                    values)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return signature, codegen


#: Thread id -> where that thread's kernel calls go (``intercepted_calls``).
_interceptors: dict = {}
_interceptors_lock = threading.Lock()


def _routed_call(kernel, dispatcher, args):
    on_call = _interceptors.get(threading.get_ident())
    if on_call is None:
        return kernel._execute(dispatcher, args)
    return on_call(kernel, dispatcher, args)


@contextlib.contextmanager
def intercepted_calls(on_call):
    """While the block runs, this thread's kernel calls go to
    ``on_call(kernel, dispatcher, args)`` (the dispatcher ``run`` chose, with
    the arguments it got) instead of running; ``on_call`` may run them itself
    (``kernel._execute(dispatcher, args)``). Other threads' calls run as
    usual, and other threads may intercept theirs at the same time."""
    ident = threading.get_ident()
    with _interceptors_lock:
        outer = _interceptors.get(ident)
        _interceptors[ident] = on_call
        Kernel._call = _routed_call
    try:
        yield
    finally:
        with _interceptors_lock:
            if outer is None:
                del _interceptors[ident]
            else:
                _interceptors[ident] = outer
            if not _interceptors:
                Kernel._call = Kernel._execute


def intercepting() -> bool:
    """True while this thread's kernel calls are intercepted (``intercepted_calls``)."""
    return threading.get_ident() in _interceptors


def _raised_by_numba_cache(err: BaseException) -> bool:
    """True when ``err`` came out of Numba's on-disk cache (a corrupt or
    truncated index or data file), not out of compiling or running a kernel."""
    tb = err.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.endswith("caching.py") and "numba" in name:
            return True
        tb = tb.tb_next
    return False


def _forget_broken_cache(err: BaseException) -> None:
    """Empty the cache index of every nnjit kernel and helper, so that what was
    cached is compiled again (and re-cached); where the index cannot be
    rewritten (a read-only cache), stop caching that function in this process."""
    import sys
    import warnings

    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    warnings.warn(f"nnjit: Numba's on-disk cache was unreadable ({type(err).__name__}: {err}); "
                  "compiling the kernels again", RuntimeWarning, stacklevel=3)
    for name, module in list(sys.modules.items()):
        if not name.startswith("nnjit.kernels"):
            continue
        for obj in list(vars(module).values()):
            for dispatcher in obj.dispatchers if isinstance(obj, Kernel) else (obj,):
                if isinstance(dispatcher, Dispatcher):
                    try:
                        dispatcher._cache.flush()
                    except Exception:  # noqa: BLE001  (any failure: just stop caching it)
                        dispatcher._cache = NullCache()


def _renamed(fn, suffix):
    """A copy of ``fn`` under another name: Numba's disk cache is keyed by the
    function's name and code, not by ``parallel``, so the twins need two names."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix,
                              fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + suffix
    twin.__module__ = fn.__module__
    return twin


def helper(fn=None, *, reassociate=False):
    """Compile ``fn`` as a serial helper that kernels call (lazily; cached on disk);
    ``reassociate`` as for ``kernel``."""
    if fn is None:
        return lambda f: helper(f, reassociate=reassociate)
    options = dict(_OPTIONS, fastmath=_REASSOCIATE if reassociate else False)
    return with_locked_cache(njit(**options)(fn))


def kernel(fn=None, *, blas=False, reassociate=False, cost=1, parts=()):
    """Compile ``fn`` as a parallel nnjit kernel with a serial twin (lazily, on
    first call; cached on disk). ``@kernel(blas=True)`` marks one that calls
    BLAS: it runs with BLAS at one thread (``nnjit.kernels.blas``).
    ``reassociate=True`` lets its sums be reordered (see the module docstring).
    ``cost``: the work per element of its first array, in units of a simple
    loop's: it runs serially below SERIAL_BELOW / cost elements. ``parts``:
    helpers whose addresses ``fn`` takes as its first arguments and calls with
    ``call_part`` (see the module docstring); callers pass only the other
    arguments."""
    if fn is None:
        return lambda f: Kernel(f, blas, reassociate, cost, parts)
    return Kernel(fn, blas, reassociate, cost, parts)


__all__ = ["kernel", "helper", "prange", "call_part", "Kernel", "SERIAL_BELOW",
           "intercepted_calls", "intercepting"]
