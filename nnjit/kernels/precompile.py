"""Compile the kernels some work needs on every core at once, before it first runs.

With a cold Numba cache (a fresh installation) the first call of each kernel
compiles it, one after the other: cnn-bn's first training step took 31 s on
the 2-core machine, 23 s of it the two convolution kernels (each re-optimises
the helpers it links in). ``compile_ahead(work)`` runs ``work`` once with every
kernel call recorded instead of executed, and compiles the signatures that are
neither in memory nor in the disk cache in worker processes, one per core,
largest first; each writes Numba's disk cache, so the real first calls only
load it. The workers are fresh interpreters (``python -m
nnjit.kernels.precompile``, jobs pickled on stdin), not multiprocessing's
spawn, which would re-import the user's main script in each.
"""
from __future__ import annotations

import importlib
import os
import pickle
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


def _missing(calls) -> list[tuple[str, str, int, tuple]]:
    """The calls whose compilation is neither in memory nor in the disk cache, as
    picklable jobs (module, kernel name, twin, types), largest kernels first."""
    jobs = []
    for kernel, twin, types in calls:
        dispatcher = kernel.dispatchers[twin]
        if types in dispatcher.overloads:
            continue
        if dispatcher._cache.load_overload(types, dispatcher.targetctx) is not None:
            continue
        jobs.append((kernel.__module__, kernel.__name__, twin, types))
    # The parallel twins of the BLAS-calling (convolution) kernels take longest.
    weight = {(k.__module__, k.__name__): k.blas for k, _, _ in calls}
    return sorted(jobs, key=lambda job: (weight[job[:2]], job[2] == 0), reverse=True)


def _compile(job) -> None:
    module, name, twin, types = job
    kernel = getattr(importlib.import_module(module), name)
    kernel.dispatchers[twin].compile(types)


def compile_ahead(work, processes: int | None = None) -> int:
    """Compile, in parallel worker processes, the kernels ``work()`` would compile.

    work: a callable doing what is about to be done (e.g. one training step
    on a batch of the real shape); it runs once with the kernels not
    executed (see ``recorded_calls``), so it must not have effects beyond the
    kernels' outputs. processes: at most this many workers (default: the CPU
    count). Returns how many signatures the workers were given: 0 when the
    cache already held everything or one process would do (then the first
    calls compile as usual). A worker that fails leaves its kernels to
    compile on first call, as without it.
    """
    jobs = _missing(recorded_calls(work))
    processes = min(len(jobs), processes or os.cpu_count() or 1)
    if processes < 2:
        return 0
    root = str(Path(__file__).resolve().parents[2])  # where the nnjit package is
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")])))
    workers = []
    try:
        for share in (jobs[i::processes] for i in range(processes)):  # largest first, dealt
            worker = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=env)
            workers.append(worker)
            worker.stdin.write(pickle.dumps(share))
            worker.stdin.close()
    except OSError:
        pass  # the workers started compile; the first calls compile the rest
    for worker in workers:
        worker.wait()
    return len(jobs)


if __name__ == "__main__":
    for job in pickle.load(sys.stdin.buffer):
        _compile(job)
