"""Small-batch inference without the Python between the kernels.

On one image, ``predict`` spent more time in Python than in its kernels (mlp:
17 us, of which 5 us kernels): each layer checks its input, picks its
buffers and thread split and calls its kernel through Numba's dispatcher. Yet
at inference the layers make the same kernel calls on the same arrays (their
reusable buffers, the parameters) every time for one input shape. So for
inputs of up to ``REPLAY_ELEMENTS`` values, the second ``predict`` of a shape
records the calls (the compiled function the dispatcher chose and its
arguments, arrays by reference), and later calls of that shape copy the input
into the recorded input array (or, for large inputs, pass the input itself
where the recorded one was passed) and call the same functions on the same
arguments: the same kernels on the same memory, so the same bits (one image:
mlp 17 -> 9.5 us, cnn 76 -> 58 us; the mlp on 1000 images: 15 -> 4 us of
Python around its kernels).

A recording is used only once it has proved itself: replayed on a random
probe input it must give exactly what the layers give on that probe, and
leave the probe as it was. A layer
that computes anything outside its kernels at inference, or hands a kernel a
freshly allocated array, fails this, and that shape keeps the layers' path. A
recording is made anew when the thread count changes (it fixed each kernel's
split) or when any array it may read by reference has been rebound (a parameter
packed anew by ``FlatParameters``, a buffer or parameter replaced), which
``nnjit.params.rebinds`` counts: comparing each array a recording holds
instead took ~12 us of ResNet-20's ~520 on one image (258 arrays).

With several threads, a shape whose recording runs a parallel kernel (the cnn's
one image: its second conv split between two threads) also gets a recording
made on one thread, and the two race: calls are served in windows from one
of them, timed, and now and then a window tries the other; the faster
serves. A parallel kernel waits for its slowest thread: while another
process kept the second core busy, the split pass took 46-61 us against 24
us on one thread (idle: 21 against 24; ONNX Runtime 22 idle, 35 busy).
"""
from __future__ import annotations

from collections import OrderedDict
from time import perf_counter

import numpy as np

from . import params, planner
from .kernels import _jit
from .kernels.blas import blas_called, reset_blas_called, single_threaded_blas
from .threads import get_num_threads, threads_set_to

#: Inputs of at most this many values are replayed (1,337 MNIST images, 341 of
#: CIFAR's); larger ones run the layers, whose Python is then a small part of
#: the time (the mlp on 1000 images: ~15 of ~430 us). Replayed inputs of at
#: least IN_PLACE_FROM values are read where they lie, not copied (see
#: ``_input_slots``): copying the mlp's 1000 images cost more than the
#: Python it saves.
REPLAY_ELEMENTS = 1 << 20
IN_PLACE_FROM = 1 << 14
#: Only inputs of at most this many values race (module docstring): on larger
#: ones a window on one thread costs milliseconds.
RACE_ELEMENTS = 1 << 16

#: Recordings kept per model (most recently used): a latency loop needs one,
#: a loop over batches two (the last is shorter). A shape is recorded on its
#: second call (recording runs the layers three times), so that inputs of
#: ever-changing shapes cost one check each, not a recording each.
KEPT_RECORDINGS = 8
#: Shapes remembered as called once.
SEEN_SHAPES = 64
#: A raced shape (module docstring) serves its calls in windows of WINDOW
#: calls from one recording, timing each call. A window's mean leaves out its
#: first WARMUP calls (the first split call after single-threaded ones wakes
#: the other thread: ~0.1 ms idle, ~1 ms with its core busy) and its slowest
#: (one interruption). One window tries the other recording after
#: EXPLORE_FIRST windows, then after twice as many each time that one stays
#: the slower (up to EXPLORE_MOST), and at once when a window of the serving
#: one is slower than the other's last. Windows, not single timings: each
#: recording slows the other's next calls (a thread left spinning after split
#: calls, or asleep before one). While the single-threaded one serves, the
#: split one is also tried after EXPLORE_SECONDS of calls: a core turning busy
#: slows the split recording at once, but one turning free again does not
#: slow the single-threaded one, and after a busy spell had doubled the
#: interval to 256 windows, ResNet-20 on one image stayed on its
#: single-threaded recording (~730 us a call, against ~510 split) for seconds
#: after the other core was free (250-call medians after a 5 s spell: 743,
#: 743, 682, 588, 557 us; with the bound 724, 511, 514).
WINDOW = 16
WARMUP = 4
EXPLORE_FIRST = 16
EXPLORE_MOST = 256
EXPLORE_SECONDS = 0.5
#: The index of the single-threaded recording in a race's keys.
SINGLE_THREADED = 1


class _Recording:
    """The kernel calls of one forward pass on ``x`` (compiled function, arguments),
    ending in ``out``;
    ``rebinds``: ``nnjit.params.rebinds()`` before the pass.
    ``calls_blas``: False once a replay has shown that the calls make no BLAS
    call (the kernels' choice of BLAS or register tiles depends on shapes
    only): ``run`` then needs no thread-count switch around them.
    ``parallel``: a call runs a kernel's parallel compilation."""

    def __init__(self, x, calls, out, rebinds, parallel):
        self.x, self.calls, self.out, self.rebinds = x, calls, out, rebinds
        self.calls_blas = True
        self.parallel = parallel  # a call ran a kernel's parallel compilation
        self.slots = _input_slots(calls, x)

    def current(self) -> bool:
        """False once any parameter or buffer has been rebound since the recording."""
        return self.rebinds == params.rebinds()

    def run(self, x: np.ndarray) -> np.ndarray:
        """The output for ``x`` (a new array): the recorded calls (``Kernel.entry``) on a
        copy of it, or on x itself where it can be read in place (``_input_slots``;
        from IN_PLACE_FROM values, C-contiguous, aligned and writeable: the
        types the recorded calls were compiled for).

        The caller holds ``single_threaded_blas.lock`` (``Model.predict``
        does, around the whole pass): passes from several threads take turns,
        and the recorded arrays are shared. BLAS is switched to one thread only
        for recordings that call it (the switch and restore cost 0.7 us of
        the cnn's ~23 us on one image)."""
        if self.calls_blas:
            with single_threaded_blas:
                return self._replay(x)
        return self._replay(x)

    def _replay(self, x):
        calls = self.calls
        flags = x.flags
        if self.slots is not None and x.size >= IN_PLACE_FROM and flags.c_contiguous \
                and flags.aligned and flags.writeable:
            calls = list(calls)
            for i, j, shape in self.slots:
                function, args = calls[i]
                calls[i] = (function, args[:j] + (x.reshape(shape),) + args[j + 1:])
        else:
            self.x[...] = x
        for function, args in calls:
            function(*args)
        return self.out.copy()


class _Race:
    """The two recordings of one shape that race (module docstring): ``keys``,
    (the parallel one's, the single-threaded one's: index SINGLE_THREADED);
    ``serving``, the index of
    the one that serves the current window; ``times``, the seconds of the
    window's calls so far (the caller appends, then calls ``window_done`` at
    WINDOW: a method call per call cost ~0.2 us)."""

    def __init__(self, keys):
        self.keys = keys
        self.serving = 0
        self.times: list[float] = []
        self._means = [None, None]  # each recording's last window mean (seconds)
        self._trying = False  # the current window tries the recording that did not serve
        self._interval = EXPLORE_FIRST  # windows between tries
        self._until_try = EXPLORE_FIRST
        self._since_try = 0.0  # seconds of calls served since the last try (see EXPLORE_SECONDS)

    def window_done(self) -> None:
        """Take the mean of the window's calls; pick the recording that serves the next."""
        counted = sorted(self.times[WARMUP:])[:-1]  # past the warm-up, but the slowest
        self._since_try += sum(self.times)
        self.times = []
        current, other = self.serving, 1 - self.serving
        mean = self._means[current] = sum(counted) / len(counted)
        if self._trying:  # both measured: the faster serves
            self._trying = False
            if mean < self._means[other]:
                self._interval = EXPLORE_FIRST
            else:
                self.serving = other
                self._interval = min(2 * self._interval, EXPLORE_MOST)
            self._until_try = self._interval
            self._since_try = 0.0
            return
        self._until_try -= 1
        if self._until_try <= 0 \
                or current == SINGLE_THREADED and self._since_try >= EXPLORE_SECONDS \
                or self._means[other] is not None and mean > self._means[other]:
            self._trying = True
            self.serving = other


class ReplayedInference:
    """``forward`` (x -> the output array, a buffer it reuses) made cheaper for
    small inputs by replaying its recorded kernel calls (see the module docstring).
    Called with ``single_threaded_blas.lock`` held (``_Recording.run``).

    A recording is used only while no parameter or buffer has been rebound
    since it was made (``nnjit.params.rebinds``). Calling this returns a new
    array, exactly ``forward(x).copy()``.
    """

    def __init__(self, forward, dtype):
        self._forward = forward
        self._dtype = np.dtype(dtype)
        #: (shape, threads, parallel allowed, planner.version) -> _Recording, or None:
        #: not replayable
        self._recordings: OrderedDict = OrderedDict()
        self._seen: OrderedDict = OrderedDict()  # keys called once, not recorded yet
        self._latest = None  # the recording last used (the last in _recordings)
        #: key of a parallel recording -> its _Race (module docstring)
        self._races: OrderedDict = OrderedDict()

    def __getstate__(self):  # a pickled model (e.g. sent to a worker) records anew
        return dict(vars(self), _recordings=OrderedDict(), _seen=OrderedDict(), _latest=None,
                    _races=OrderedDict())

    def __call__(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.dtype != self._dtype \
                or x.size > REPLAY_ELEMENTS or _jit.intercepting() or not planner.settings().replay:
            return self._forward(x).copy()
        key = (x.shape, get_num_threads(), _jit.parallel_allowed, planner.version)
        race = self._races.get(key)
        if race is not None:
            return self._raced_call(race, x)
        recording = self._recordings.get(key)
        if recording is not None and recording.current():
            if recording is not self._latest:  # ~0.08 us: a latency loop skips it
                self._recordings.move_to_end(key)
                self._latest = recording
            return recording.run(x)
        if recording is None and key in self._recordings or _first_call(self._seen, key):
            return self._forward(x).copy()
        return self._record(key, x)

    def _raced_call(self, race, x):
        """Call ``x`` on the recording serving ``race``, timed; recorded first where
        it is missing or stale (untimed)."""
        key = race.keys[race.serving]
        recording = self._recordings.get(key)
        if recording is None or not recording.current():
            if key in self._recordings and recording is None:  # not replayable: no race
                self._races.pop(race.keys[0], None)
                return self._forward(x).copy()
            return self._record(key, x)
        if recording is not self._latest:
            self._recordings.move_to_end(key)
            self._latest = recording
        start = perf_counter()
        out = recording.run(x)
        times = race.times
        times.append(perf_counter() - start)
        if len(times) == WINDOW:
            race.window_done()
        return out

    def _record(self, key, x):
        """Run ``forward`` on a copy of ``x`` with its kernel calls recorded; keep the
        recording if replaying it on a probe matches ``forward`` on the probe. A
        recording that runs a parallel kernel on several threads starts a race
        with one made on one thread (module docstring). Records on key's thread count."""
        if key[1] != get_num_threads():
            with threads_set_to(key[1]):
                return self._record(key, x)
        calls = []
        parallel = False

        def record(kernel, dispatcher, args):
            nonlocal parallel
            result = kernel._execute(dispatcher, args)  # compiles it, if this is its first call
            calls.append((kernel.entry(dispatcher, args), args))
            parallel |= dispatcher is kernel.dispatchers[0]
            return result

        x_copy = np.array(x, order="C")
        rebinds = params.rebinds()
        with _jit.intercepted_calls(record):
            out = self._forward(x_copy)
        result = out.copy()
        recording = _Recording(x_copy, calls, out, rebinds, parallel)
        probe = np.random.default_rng(0).standard_normal(x.shape).astype(self._dtype)
        unchanged = probe.copy()
        try:
            reset_blas_called()
            replayed = recording.run(probe)  # first: stale values from x would show
            recording.calls_blas = blas_called()
            # Read in place, the input must come out as it went in.
            proved = np.array_equal(probe, unchanged, equal_nan=True) and \
                np.array_equal(replayed, self._forward(probe), equal_nan=True)
        except Exception:  # noqa: BLE001  (a probe the layers refuse: keep the layers' path)
            proved = False
        self._recordings[key] = recording if proved else None
        self._latest = None
        self._seen.pop(key, None)
        while len(self._recordings) > KEPT_RECORDINGS:
            self._races.pop(self._recordings.popitem(last=False)[0], None)
        if proved and parallel and key[1] > 1 and x.size <= RACE_ELEMENTS \
                and key not in self._races:
            self._races[key] = _Race((key, (key[0], 1, *key[2:])))
        return result


def _input_slots(calls, x):
    """[(call, argument, shape)] of every argument of ``calls`` that is all of x,
    reshaped (the same memory, C order), or None if some argument holds part of
    x or x inside a tuple: then a replay must copy its input into x."""
    slots = []
    start = x.__array_interface__["data"][0]
    for i, (_, args) in enumerate(calls):
        for j, arg in enumerate(args):
            if isinstance(arg, tuple):
                if any(isinstance(a, np.ndarray) and np.may_share_memory(a, x) for a in arg):
                    return None
            elif isinstance(arg, np.ndarray) and np.may_share_memory(arg, x):
                if not (arg.__array_interface__["data"][0] == start and arg.nbytes == x.nbytes
                        and arg.dtype == x.dtype and arg.flags.c_contiguous):
                    return None
                slots.append((i, j, arg.shape))
    return slots


def _first_call(seen: OrderedDict, key) -> bool:
    """True the first time ``key`` comes (remembering it among the last SEEN_SHAPES)."""
    if key in seen:
        return False
    seen[key] = True
    if len(seen) > SEEN_SHAPES:
        seen.popitem(last=False)
    return True
