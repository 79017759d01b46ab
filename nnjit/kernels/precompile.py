"""Compile the kernels some work needs on every core at once, before it first runs.

With a cold Numba cache (a fresh installation) the first call of each kernel
compiles it, one after the other: the cnn's first training step spent 29.5 s
compiling on the 2-core machine, most of it three parts (Winograd's forward
and backward, the unfold conv's backward: 5-6.5 s each).
``compile_ahead(work)`` runs ``work`` once with every kernel call recorded
instead of executed, and compiles the signatures that are neither in memory
nor in the disk cache in worker processes, one per core, the kernels' parts
as jobs of their own, largest first; each writes Numba's disk cache, so the
real first calls only load it. The workers are fresh interpreters (``python
-m nnjit.kernels.precompile``, jobs pickled on stdin, one a line), not
multiprocessing's spawn, which would re-import the user's main script in each.
"""
from __future__ import annotations

import base64
import collections
import importlib
import os
import pickle
import selectors
import subprocess
import sys
from pathlib import Path

from numba import typeof

from ._jit import Kernel, intercepted_calls


def recorded_calls(work) -> list[tuple[Kernel, int, tuple]]:
    """Run ``work()`` with every kernel call recorded, not executed.

    Returns the distinct calls as (kernel, twin: 0 parallel / 1 serial, the
    Numba types of the arguments). Only this thread's calls are recorded;
    other threads' kernels run meanwhile. The kernels' outputs are left
    unwritten, so the work's results are garbage; an exception the garbage
    causes ends the recording early (what was recorded until then is
    returned).
    """
    calls = {}

    def record(kernel, dispatcher, args):
        twin = kernel.dispatchers.index(dispatcher)
        calls[(kernel, twin, tuple(typeof(a) for a in args))] = None

    with intercepted_calls(record):
        try:
            work()
        except Exception:  # noqa: BLE001  (garbage values downstream: keep what was recorded)
            pass
    return list(calls)


def _missing(calls) -> list[tuple[str, str, int | None, tuple]]:
    """The compilations ``calls`` need that are neither in memory nor in the disk
    cache, as picklable jobs (module, name, twin, argument types), the likely
    longest first: the kernels' parts (twin None; each shared by both twins),
    those of BLAS-calling (convolution, Dense) kernels first, then the twins,
    parallel before serial."""
    jobs = {}
    for kernel, twin, types in calls:
        for part in kernel.parts:
            signature = kernel.part_signature(types)
            if not _compiled(part, signature):
                job = (part.py_func.__module__, part.py_func.__name__, None, signature)
                jobs[job] = (True, kernel.blas, False)
        signature = kernel.signature(types)
        if not _compiled(kernel.dispatchers[twin], signature):
            jobs[(kernel.__module__, kernel.__name__, twin, signature)] = \
                (False, kernel.blas, twin == 0)
    return sorted(jobs, key=jobs.get, reverse=True)


def _compiled(dispatcher, signature) -> bool:
    """Whether ``dispatcher`` holds ``signature`` (argument types, or a
    ``Signature`` as a part is compiled for) in memory or in its disk cache."""
    args = getattr(signature, "args", signature)
    return args in dispatcher.overloads or \
        dispatcher._cache.load_overload(signature, dispatcher.targetctx) is not None


def _compile(job) -> None:
    module, name, twin, types = job
    target = getattr(importlib.import_module(module), name)
    (target if twin is None else target.dispatchers[twin]).compile(types)


def compile_ahead(work, processes: int | None = None, on_progress=None) -> int:
    """Compile, in parallel worker processes, the kernels ``work()`` would compile.

    work: a callable doing what is about to be done (e.g. one training step
    on a batch of the real shape); it runs once with the kernels not
    executed (see ``recorded_calls``), so it must not have effects beyond the
    kernels' outputs. processes: at most this many workers (default: the CPU
    count). Returns how many signatures the workers were given: 0 when the
    cache already held everything or one process would do (then the first
    calls compile as usual). Each worker takes the next job, largest first,
    when it finishes one (dealt out in advance, one worker sat idle for 14 of
    the cnn's 26 s). A job that fails, or a worker that dies, leaves its
    kernels to compile on first call, as without it. ``on_progress(done,
    total)``, when given, is called as the workers start (done 0) and after
    each job.
    """
    pending = collections.deque(_missing(recorded_calls(work)))
    given = len(pending)
    processes = min(given, processes or os.cpu_count() or 1)
    if processes < 2:
        return 0
    done = 0
    if on_progress is not None:
        on_progress(done, given)
    root = str(Path(__file__).resolve().parents[2])  # where the nnjit package is
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")])))
    workers = {}
    with selectors.DefaultSelector() as ready:
        try:
            for _ in range(processes):
                worker = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          env=env)
                workers[worker.stdout] = worker
                ready.register(worker.stdout, selectors.EVENT_READ)
                _hand_next(worker, pending)
        except OSError:
            pass  # the workers started compile; the first calls compile the rest
        while ready.get_map():
            for key, _ in ready.select():
                if key.fileobj.readline():  # one job done
                    _hand_next(workers[key.fileobj], pending)
                    done += 1
                    if on_progress is not None:
                        on_progress(done, given)
                else:  # the worker has exited
                    ready.unregister(key.fileobj)
    for worker in workers.values():
        worker.stdout.close()
        worker.wait()
    return given


def _hand_next(worker, pending) -> None:
    """Give ``worker`` the next pending job, or close its input when none is left
    (it then exits)."""
    try:
        if pending:
            worker.stdin.write(base64.b64encode(pickle.dumps(pending.popleft())) + b"\n")
            worker.stdin.flush()
        else:
            worker.stdin.close()
    except OSError:  # it died: its output ends, and the job compiles on first call
        pass


def _serve() -> None:
    """A worker: compile each job read from stdin (one a line), answering a line each."""
    for line in sys.stdin.buffer:
        try:
            _compile(pickle.loads(base64.b64decode(line)))
        except Exception:  # noqa: BLE001  (it compiles on first call, and fails there if it must)
            pass
        sys.stdout.write("\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
