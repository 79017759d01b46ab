"""Small-batch inference without the Python between the kernels.

On one image, ``predict`` spent more time in Python than in its kernels (mlp:
17 us, of which 5 us kernels): each layer checks its input, picks its
buffers and thread split and calls its kernel through Numba's dispatcher. Yet
at inference the layers make the same kernel calls on the same arrays (their
reusable buffers, the parameters) every time for one input shape. So for
inputs of up to ``REPLAY_ELEMENTS`` values, the second ``predict`` of a shape
records the calls (the compiled function the dispatcher chose and its
arguments, arrays by reference), and later calls of that shape copy the input
into the recorded input array and call the same functions on the same
arguments: the same kernels on the same memory, so the same bits (one image:
mlp 17 -> 9.5 us, cnn 76 -> 58 us).

A recording is used only once it has proved itself: replayed on a random
probe input it must give exactly what the layers give on that probe. A layer
that computes anything outside its kernels at inference, or hands a kernel a
freshly allocated array, fails this, and that shape keeps the layers' path. A
recording is made anew when the thread count changes (it fixed each kernel's
split) or when any array it read by reference has been rebound (a parameter
packed anew by ``FlatParameters``, a buffer or parameter replaced).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .kernels import _jit
from .kernels.blas import blas_called, reset_blas_called, single_threaded_blas
from .threads import get_num_threads

#: Inputs of at most this many values are replayed (all of 83 MNIST images);
#: larger ones run the layers: their Python costs ~1% of the kernels' time
#: (cnn, 1000 images) and their recordings would keep large buffers alive.
REPLAY_ELEMENTS = 1 << 16

#: Recordings kept per model (most recently used): a latency loop needs one,
#: a loop over batches two (the last is shorter). A shape is recorded on its
#: second call (recording runs the layers three times), so that inputs of
#: ever-changing shapes cost one check each, not a recording each.
KEPT_RECORDINGS = 8
#: Shapes remembered as called once.
SEEN_SHAPES = 64


class _Recording:
    """The kernel calls of one forward pass on ``x`` (compiled function, arguments),
    ending in ``out``;
    ``bound``: (owner, attribute, object) for each array the model holds.
    ``calls_blas``: False once a replay has shown that the calls make no BLAS
    call (the kernels' choice of BLAS or register tiles depends on shapes
    only): ``run`` then needs no thread-count switch around them."""

    def __init__(self, x, calls, out, bound):
        self.x, self.calls, self.out, self.bound = x, calls, out, bound
        self.calls_blas = True

    def current(self) -> bool:
        """False once an array the calls were recorded with has been rebound."""
        for owner, attribute, value in self.bound:
            if getattr(owner, attribute) is not value:
                return False
        return True

    def run(self, x: np.ndarray) -> np.ndarray:
        """The output for ``x`` (a new array): the recorded calls (``_compiled``) on a
        copy of it.

        The caller holds ``single_threaded_blas.lock`` (``Sequential.predict``
        does, around the whole pass): passes from several threads take turns,
        and the recorded arrays are shared. BLAS is switched to one thread only
        for recordings that call it (the switch and restore cost 0.7 us of
        the cnn's ~23 us on one image)."""
        if self.calls_blas:
            with single_threaded_blas:
                return self._replay(x)
        return self._replay(x)

    def _replay(self, x):
        self.x[...] = x
        for function, args in self.calls:
            function(*args)
        return self.out.copy()


class ReplayedInference:
    """``forward`` (x -> the output array, a buffer it reuses) made cheaper for
    small inputs by replaying its recorded kernel calls (see the module docstring).
    Called with ``single_threaded_blas.lock`` held (``_Recording.run``).

    ``bindings()`` lists (owner, attribute) for every array the layers hold
    (parameters' values, buffers) and every attribute holding a Parameter: a
    recording is used only while each still holds the object it held when
    recorded. Calling this returns a new array, exactly ``forward(x).copy()``.
    """

    def __init__(self, forward, dtype, bindings):
        self._forward = forward
        self._dtype = np.dtype(dtype)
        self._bindings = bindings
        #: (shape, threads, parallel allowed) -> _Recording, or None: not replayable
        self._recordings: OrderedDict = OrderedDict()
        self._seen: OrderedDict = OrderedDict()  # keys called once, not recorded yet
        self._latest = None  # the recording last used (the last in _recordings)

    def __getstate__(self):  # a pickled model (e.g. sent to a worker) records anew
        return dict(vars(self), _recordings=OrderedDict(), _seen=OrderedDict(), _latest=None)

    def __call__(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.dtype != self._dtype \
                or x.size > REPLAY_ELEMENTS or _jit.intercepting():
            return self._forward(x).copy()
        key = (x.shape, get_num_threads(), _jit.parallel_allowed)
        recording = self._recordings.get(key)
        if recording is not None and recording.current():
            if recording is not self._latest:  # ~0.08 us: a latency loop skips it
                self._recordings.move_to_end(key)
                self._latest = recording
            return recording.run(x)
        if recording is None and key in self._recordings or _first_call(self._seen, key):
            return self._forward(x).copy()
        return self._record(key, x)

    def _record(self, key, x):
        """Run ``forward`` on a copy of ``x`` with its kernel calls recorded; keep the
        recording if replaying it on a probe matches ``forward`` on the probe."""
        calls = []

        def record(kernel, dispatcher, args):
            result = kernel._execute(dispatcher, args)  # compiles it, if this is its first call
            calls.append((_compiled(dispatcher, args), args))
            return result

        x_copy = np.array(x, order="C")
        bound = [(owner, name, getattr(owner, name)) for owner, name in self._bindings()]
        with _jit.intercepted_calls(record):
            out = self._forward(x_copy)
        result = out.copy()
        recording = _Recording(x_copy, calls, out, bound)
        probe = np.random.default_rng(0).standard_normal(x.shape).astype(self._dtype)
        try:
            reset_blas_called()
            replayed = recording.run(probe)  # first: stale values from x would show
            recording.calls_blas = blas_called()
            proved = np.array_equal(replayed, self._forward(probe), equal_nan=True)
        except Exception:  # noqa: BLE001  (a probe the layers refuse: keep the layers' path)
            proved = False
        self._recordings[key] = recording if proved else None
        self._latest = None
        self._seen.pop(key, None)
        while len(self._recordings) > KEPT_RECORDINGS:
            self._recordings.popitem(last=False)
        return result


def _compiled(dispatcher, args):
    """The compiled function ``dispatcher`` runs on ``args`` (its overload's entry
    point), or the dispatcher itself while it has none for their types.

    Replayed calls pass the same objects every time, so the dispatcher's type
    dispatch on each call (~0.5 us for a conv's 30 arguments: 1.5 of the cnn's
    25 us on one image) would find the same overload every time."""
    try:
        overload = dispatcher.overloads.get(tuple(dispatcher.typeof_pyval(a) for a in args))
    except Exception:  # noqa: BLE001  (an argument Numba cannot type: keep the dispatcher)
        overload = None
    return dispatcher if overload is None else overload.entry_point


def _first_call(seen: OrderedDict, key) -> bool:
    """True the first time ``key`` comes (remembering it among the last SEEN_SHAPES)."""
    if key in seen:
        return False
    seen[key] = True
    if len(seen) > SEEN_SHAPES:
        seen.popitem(last=False)
    return True
