"""Numba behaviour: lazy compilation, disk cache reuse, and 1 vs 2 threads agreeing."""
import json
import os
import subprocess
import sys
import threading

import numpy as np

from nnjit import set_num_threads

STEP = """
import json, numpy as np, importlib, pkgutil
import nnjit, nnjit.kernels
from nnjit.kernels._jit import Kernel
kernels = []
for m in pkgutil.iter_modules(nnjit.kernels.__path__):
    mod = importlib.import_module('nnjit.kernels.' + m.name)
    kernels += [d for v in vars(mod).values() if isinstance(v, Kernel) for d in v.dispatchers]
assert len(kernels) >= 12, kernels
compiled_at_import = sum(len(k.signatures) for k in kernels)
model = nnjit.Sequential([nnjit.Conv2D(1, 4, 3), nnjit.ReLU(), nnjit.MaxPool2D(2), nnjit.Flatten(),
                          nnjit.Dense(4 * 13 * 13, 10), nnjit.Softmax()], seed=0)
opt = nnjit.Momentum(model.parameters(), lr=0.01)
x = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
model.forward(x); model.backward(np.arange(8)); opt.step()
misses = sum(sum(k.stats.cache_misses.values()) for k in kernels)
hits = sum(sum(k.stats.cache_hits.values()) for k in kernels)
print(json.dumps({"at_import": compiled_at_import, "misses": misses, "hits": hits,
                  "checksum": float(model.flat.values.sum())}))
"""


def run_step(threads):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_compiles_nothing_and_second_run_uses_the_disk_cache():
    first = run_step(2)  # may compile (cold cache) and writes the cache
    assert first["at_import"] == 0
    for threads in (1, 2):
        warm = run_step(threads)
        assert warm["misses"] == 0, f"recompiled at {threads} thread(s): {warm}"
        assert warm["hits"] > 0
        assert warm["checksum"] == first["checksum"]


def test_one_and_two_threads_agree(rng):
    from nnjit import Conv2D, Dense, Flatten, MaxPool2D, Momentum, ReLU, Sequential, Softmax

    x = rng.random((16, 1, 14, 14), dtype=np.float32)
    labels = rng.integers(0, 10, 16)
    results = []
    try:
        for threads in (1, 2):
            set_num_threads(threads)
            model = Sequential([Conv2D(1, 4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(),
                                Dense(4 * 7 * 7, 10), Softmax()], seed=0)
            opt = Momentum(model.parameters(), lr=0.1)
            for _ in range(3):
                model.forward(x)
                model.backward(labels)
                opt.step()
            results.append(model.flat.values.copy())
    finally:
        set_num_threads(os.cpu_count() or 1)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


AHEAD = """
import json, sys, numpy as np
import nnjit
from nnjit.kernels._jit import Kernel
model = nnjit.Sequential([nnjit.Flatten(), nnjit.Dense(64, 32), nnjit.ReLU(), nnjit.Dense(32, 5),
                          nnjit.ReLU(), nnjit.Dense(5, 3), nnjit.Softmax()], seed=0)
x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)

def step():
    model.forward(x)
    model.backward(np.array([0, 1, 2, 0]))

progress = []
compiled = nnjit.compile_ahead(step, on_progress=lambda done, total: progress.append([done, total]))
step()
kernels = [v for m in list(sys.modules) if m.startswith("nnjit.kernels.")
           for v in vars(sys.modules[m]).values() if isinstance(v, Kernel)]
stats = [d.stats for k in kernels for d in k.dispatchers]
parts = [p.stats for k in kernels for p in k.parts]
print(json.dumps({"compiled_ahead": compiled, "progress": progress,
                  "misses": sum(sum(s.cache_misses.values()) for s in stats + parts),
                  "hits": sum(sum(s.cache_hits.values()) for s in stats),
                  "part_hits": sum(sum(s.cache_hits.values()) for s in parts),
                  "probs": model.forward(x).tolist()}))
"""


def test_compile_ahead_compiles_in_workers_and_the_first_calls_only_load(tmp_path):
    """A cold cache: compile_ahead compiles the step's kernels in worker processes,
    after which the real step compiles nothing; a second process finds it all cached."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", AHEAD], env=env, capture_output=True,
                             text=True, check=True, timeout=600)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold["compiled_ahead"] >= 6, cold  # dense kernels and their parts, softmax...
    # the progress it reports: 0 of M as the workers start, then one step per job
    assert cold["progress"] == [[i, cold["compiled_ahead"]]
                                for i in range(cold["compiled_ahead"] + 1)], cold
    assert warm["progress"] == [], warm
    assert cold["misses"] == 0 and cold["hits"] >= 4, cold
    assert cold["part_hits"] >= 2, cold  # the dense layers' parts, compiled apart
    assert warm["compiled_ahead"] == 0 and warm["misses"] == 0, warm
    assert cold["probs"] == warm["probs"]


TWIN = """
import json, numpy as np
import nnjit
from nnjit.kernels.conv import conv_backward, conv_backward_part
from nnjit.kernels.precompile import recorded_calls
model = nnjit.Sequential([nnjit.Conv2D(2, 3, 3, stride=2), nnjit.Flatten(), nnjit.Softmax()],
                         seed=0)
x = np.random.default_rng(0).random((2, 2, 9, 9), dtype=np.float32)
calls = recorded_calls(lambda: (model.forward(x), model.backward(np.array([0, 1]))))
(types,) = {t for k, _, t in calls if k is conv_backward}
signature = conv_backward.signature(types)
conv_backward.dispatchers[0].compile(signature)
ir = conv_backward.dispatchers[0].inspect_llvm(signature)
mangled = "4conv18conv_backward_part"  # the part's symbol (its argument has its name too)
print(json.dumps({"part_compiled": len(conv_backward_part.signatures),
                  "defines": sum(line.startswith("define") for line in ir.splitlines()),
                  "part_defined": [line for line in ir.splitlines()
                                   if line.startswith("define") and mangled in line]}))
"""


def test_a_twin_calls_its_part_by_address_without_compiling_it(tmp_path):
    """Compiling conv_backward's parallel twin (empty cache) neither compiles
    nor links conv_backward_part: the twin takes it as an argument."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", TWIN], env=env, capture_output=True, text=True,
                         check=True, timeout=600)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["defines"] > 0, result
    assert result["part_compiled"] == 0 and result["part_defined"] == [], result


def test_recorded_calls_run_no_kernel(rng):
    from nnjit import Dense
    from nnjit.kernels.precompile import recorded_calls

    layer = Dense(3, 2)
    x = rng.random((5, 3), dtype=np.float32)
    before = layer.forward(x, training=False).copy()
    layer._buffers["out/eval"][...] = np.nan  # what a real call would overwrite
    calls = recorded_calls(lambda: layer.forward(x, training=False))
    assert [k.__name__ for k, _, _ in calls] == ["dense_forward"]
    assert np.isnan(layer._buffers["out/eval"]).all()
    np.testing.assert_allclose(layer.forward(x, training=False), before)

    other, results = Dense(3, 2), []  # another thread's kernels still run meanwhile
    other.weight.value[...] = layer.weight.value
    other.bias.value[...] = layer.bias.value

    def work():
        thread = threading.Thread(target=lambda: results.append(other.forward(x).copy()))
        thread.start()
        thread.join()

    recorded_calls(work)
    np.testing.assert_allclose(results[0], before)


SAVER = """
import sys
from nnjit.kernels.cache import LockedCacheFile
cache = LockedCacheFile(cache_path=sys.argv[1], filename_base="f", source_stamp=("stamp",))
for i in range(200):
    cache.save((sys.argv[2], i), f"code of {sys.argv[2]} {i}")
"""


def test_processes_saving_signatures_of_one_function_at_once_keep_each_its_own(tmp_path):
    """Four processes each save 200 signatures of one function into one cache at
    once: every signature is then in the index and loads its own data. (Numba's own
    save, in the same race, lost 209 of the 800 and named 69 with another's data.)"""
    from nnjit.kernels.cache import LockedCacheFile

    savers = [subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path), name])
              for name in "abcd"]
    assert [s.wait(timeout=120) for s in savers] == [0] * 4
    cache = LockedCacheFile(cache_path=str(tmp_path), filename_base="f", source_stamp=("stamp",))
    loaded = {(name, i): cache.load((name, i)) for name in "abcd" for i in range(200)}
    assert loaded == {(name, i): f"code of {name} {i}" for name in "abcd" for i in range(200)}


def test_every_cached_kernel_and_helper_saves_under_the_lock():
    import importlib
    import pkgutil

    import nnjit.kernels
    from nnjit.kernels._jit import Kernel
    from nnjit.kernels.cache import LockedCacheFile
    from numba.core.dispatcher import Dispatcher

    dispatchers = []
    for info in pkgutil.iter_modules(nnjit.kernels.__path__):
        module = importlib.import_module(f"nnjit.kernels.{info.name}")
        for obj in vars(module).values():
            dispatchers += obj.dispatchers if isinstance(obj, Kernel) else \
                [obj] if isinstance(obj, Dispatcher) else []
    assert len(dispatchers) > 100
    unlocked = [d.py_func.__qualname__ for d in dispatchers
                if type(d._cache._cache_file) is not LockedCacheFile]
    assert not unlocked



TWO_SIGNATURES = """
import numpy as np
from numba.core.cpu import ParallelOptions
from nnjit.kernels._jit import call_part, helper, kernel, prange

@helper
def add_one(p, out):
    out[p] += 1

@kernel(parts=(add_one,))
def add_ones(add, out):
    for p in prange(out.size):
        call_part(add, np.int64(p), out)
    for p in prange(out.size):
        call_part(add, np.int64(p), out)

for dtype in (np.float64, np.float32):
    out = np.zeros(64, dtype)
    add_ones.run(True, out)
    assert (out == 2).all(), out
options = add_ones.dispatchers[0].targetoptions["parallel"]
print(ParallelOptions(options).fusion)
"""


def test_a_kernel_with_parts_compiles_every_signature_with_its_loops_apart(tmp_path):
    """Loops over parts must never be fused (Numba cannot see what a part reads and
    writes), in the first signature compiled and in those after it: Numba consumed
    a dict of parallel options on the first compilation, and later ones fused (a
    Winograd weight gradient compiled for float32 after float64 came out wrong)."""
    (tmp_path / "two_signatures.py").write_text(TWO_SIGNATURES)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, str(tmp_path / "two_signatures.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"  # fusion, after two compilations
