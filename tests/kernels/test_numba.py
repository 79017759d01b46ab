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
model = nnjit.Sequential([nnjit.Dense(6, 5), nnjit.ReLU(), nnjit.Dense(5, 3), nnjit.Softmax()], seed=0)
x = np.random.default_rng(0).random((4, 6), dtype=np.float32)

def step():
    model.forward(x)
    model.backward(np.array([0, 1, 2, 0]))

compiled = nnjit.compile_ahead(step)
step()
kernels = [v for m in list(sys.modules) if m.startswith("nnjit.kernels.")
           for v in vars(sys.modules[m]).values() if isinstance(v, Kernel)]
stats = [d.stats for k in kernels for d in k.dispatchers]
print(json.dumps({"compiled_ahead": compiled,
                  "misses": sum(sum(s.cache_misses.values()) for s in stats),
                  "hits": sum(sum(s.cache_hits.values()) for s in stats),
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
    assert cold["compiled_ahead"] >= 4, cold  # two dense kernels, relu, softmax, loss...
    assert cold["misses"] == 0 and cold["hits"] >= cold["compiled_ahead"], cold
    assert warm["compiled_ahead"] == 0 and warm["misses"] == 0, warm
    assert cold["probs"] == warm["probs"]


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
