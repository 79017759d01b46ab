"""Compile the kernels some work needs on every core at once, before it first runs.

With a cold Numba cache (a fresh installation) the first call of each kernel
compiles it, one after the other: cnn-bn's first training step took 31 s on
the 2-core machine, 23 s of it the two convolution kernels (each re-optimises
the helpers it links in). ``compile_ahead(work)`` runs ``work`` once with every
kernel call recorded instead of executed, and compiles the signatures that are
neither in memory nor in the disk cache in worker processes, one per core,
largest first; each writes Numba's disk cache, so the real first calls only
load it.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os

from numba import typeof

from ._jit import Kernel


def recorded_calls(work) -> list[tuple[Kernel, int, tuple]]:
    """Run ``work()`` with every kernel call recorded, not executed.

    Returns the distinct calls as (kernel, twin: 0 parallel / 1 serial, the
    Numba types of the arguments). The kernels' outputs are left unwritten,
    so the work's results are garbage; an exception the garbage causes ends
    the recording early (what was recorded until then is returned).
    """
    calls = {}
    original = Kernel._call

    def record(kernel, dispatcher, args):
        twin = kernel.dispatchers.index(dispatcher)
        calls[(kernel, twin, tuple(typeof(a) for a in args))] = None

    Kernel._call = record
    try:
        work()
    except Exception:  # noqa: BLE001  (garbage values downstream: keep what was recorded)
        pass
    finally:
        Kernel._call = original
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
    count). Returns how many signatures the workers compiled: 0 when the
    cache already held everything or one process would do (then the first
    calls compile as usual). Any failure also falls back to that.
    """
    jobs = _missing(recorded_calls(work))
    processes = min(len(jobs), processes or os.cpu_count() or 1)
    if processes < 2:
        return 0
    try:
        # spawn: a forked child of a process that ran OpenMP cannot (see _jit.py)
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            for _ in pool.imap_unordered(_compile, jobs):
                pass
    except Exception:  # noqa: BLE001  (the first calls compile instead)
        return 0
    return len(jobs)
