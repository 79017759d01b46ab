"""Threads: parallel kernels vs their serial twins, forked children, and no BLAS pool."""
import multiprocessing
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import errors_in_threads
import nnjit.kernels._jit as jit
import nnjit.threads
from nnjit import (Adam, AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D,
                   ReLU, Sequential, Softmax, softmax_cross_entropy)
from nnjit.spec import build_model
from nnjit.threads import split


def test_split_covers_the_range_in_near_equal_parts():
    assert split(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split(1, 4) == [(0, 1)]  # never an empty part
    assert split(5, 1) == [(0, 5)]


LARGE = 1 << 18  # elements: above SERIAL_BELOW, so the parallel compilations run


def seeded(layer):
    layer.reset_parameters(np.random.default_rng(0))
    return layer


def fused(layer, *following, before=None):
    """``layer`` after the fusion pass gave it ``following`` as its epilogue (as in a
    Sequential of them, in training; ``before``: a layer that runs before it)."""
    from nnjit.fusion import chain, plan_fusion

    layers = ([before] if before is not None else []) + [layer, *following]
    plan = plan_fusion(chain(layers), (len(layers) - 1,), training=True)
    plan.apply()
    first = len(layers) - len(following)
    assert plan.absorbed == set(range(first, len(layers)))
    return layer


def serial_everywhere(monkeypatch, serial: bool):
    """Every kernel on its serial twin and every layer in one part (serial), or the defaults."""
    monkeypatch.setattr(jit, "SERIAL_BELOW", 1 << 62 if serial else jit.SERIAL_BELOW)
    monkeypatch.setattr(nnjit.threads, "WORK_PER_PART", 1 << 62 if serial else 1)


@pytest.mark.parametrize("make,shape", [
    (lambda: MaxPool2D(2), (16, 4, 64, 64)),
    (lambda: Conv2D(4, 8, 3, padding=1), (6, 4, 20, 24)),
    (lambda: fused(Conv2D(4, 8, 3, padding=1), ReLU(), MaxPool2D(2)), (6, 4, 20, 24)),
    (lambda: fused(Conv2D(4, 8, 3), MaxPool2D(3)), (6, 4, 21, 24)),
    (lambda: fused(Conv2D(8, 32, 3, padding=1), ReLU(), MaxPool2D(2)), (6, 8, 20, 24)),  # Winograd
    (lambda: MaxPool2D(3, 2), (16, 4, 64, 64)),
    (lambda: AvgPool2D(3, 2), (16, 4, 64, 64)),
    (GlobalAvgPool2D, (16, 4, 64, 64)),
    (lambda: seeded(Dropout(0.3)), (64, LARGE // 64)),
    (lambda: BatchNorm2D(4), (16, 4, 64, 64)),
    (lambda: fused(BatchNorm2D(4), ReLU(), MaxPool2D(2)), (16, 4, 64, 64)),
    (ReLU, (64, LARGE // 64)),
    (Softmax, (LARGE // 16, 16)),
    (lambda: Dense(64, LARGE // 256), (256, 64)),
])
def test_parallel_kernels_agree_with_their_serial_twins(make, shape, rng, monkeypatch):
    x = rng.normal(size=shape).astype(np.float32)
    results = []
    for serial in (False, True):
        serial_everywhere(monkeypatch, serial)
        layer = make()
        for p in layer.parameters():
            p.value[...] = np.random.default_rng(0).normal(size=p.shape)
        y = layer.forward(x).copy()
        dy = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
        dx = layer.backward(dy).copy()
        results.append([y, dx] + [p.grad.copy() for p in layer.parameters()])
    assert max(a.size for a in results[0]) >= LARGE or isinstance(layer, Conv2D)
    for parallel, serial in zip(*results, strict=True):
        # float32 sums in another order (per-part partial sums): relative to the scale
        np.testing.assert_allclose(parallel, serial, rtol=1e-5, atol=1e-6 * np.abs(serial).max())


def test_a_costly_kernel_goes_parallel_on_fewer_elements():
    """A kernel's ``cost`` (work per element) scales the size below which it runs
    serially: softmax (an exp per value) on 1000 rows of 10 uses both threads,
    ReLU on as many values stays serial."""
    from nnjit.kernels.activation import relu_forward, softmax_forward

    chosen = []
    z = np.zeros(10_000, np.float32)
    with jit.intercepted_calls(lambda kernel, dispatcher, args: chosen.append(dispatcher)):
        softmax_forward(z, 1000, 10, np.empty_like(z))
        relu_forward(z, np.empty_like(z))
    assert z.size < jit.SERIAL_BELOW <= z.size * softmax_forward.cost
    assert chosen == [softmax_forward.dispatchers[0], relu_forward.dispatchers[1]]


def test_conv_evaluating_a_norm_gradient_agrees_with_its_serial_twin(rng, monkeypatch):
    """Conv2D -> BatchNorm2D -> ReLU -> MaxPool2D, the norm handing its input gradient
    back to the conv (as in a Sequential): parallel and serial twins agree."""
    x = rng.normal(size=(6, 4, 20, 24)).astype(np.float32)
    results = []
    for serial in (False, True):
        serial_everywhere(monkeypatch, serial)
        conv = seeded(Conv2D(4, 8, 3, padding=1))
        norm = fused(BatchNorm2D(8), ReLU(), MaxPool2D(2), before=conv)
        assert norm.hands_back_input_grad
        y = norm.forward(conv.forward(x)).copy()
        dy = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
        dx = conv.backward(norm.backward(dy)).copy()
        results.append([y, dx] + [p.grad.copy() for p in conv.parameters() + norm.parameters()])
    # The conv's bias gradient is a sum that a norm after it cancels to ~0: compare it at
    # the scale of the weight gradient, every other result at its own.
    weight_scale = np.abs(results[1][2]).max()
    for i, (parallel, serial) in enumerate(zip(*results, strict=True)):
        scale = weight_scale if i == 3 else np.abs(serial).max()
        np.testing.assert_allclose(parallel, serial, rtol=1e-5, atol=1e-6 * scale)


def test_parallel_loss_and_optimizer_agree_with_serial_twins(rng, monkeypatch):
    logits = rng.normal(size=(LARGE // 10, 10)).astype(np.float32)
    labels = rng.integers(0, 10, len(logits))
    results = []
    for serial in (False, True):
        serial_everywhere(monkeypatch, serial)
        loss, dz = softmax_cross_entropy(logits, labels)
        model = Sequential([Flatten(), Dense(784, LARGE // 784)], seed=0)
        opt = Adam(model.parameters(), lr=0.01)
        model.flat.grads[...] = np.random.default_rng(2).normal(size=model.flat.grads.shape)
        opt.step()
        opt.step()
        results.append((loss, dz.copy(), model.flat.values.copy()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-6, atol=1e-7)


def test_a_forked_child_runs_the_model_on_serial_twins():
    """GNU OpenMP aborts a forked child that starts a parallel region once the
    parent has run one; the child must fall back to the serial twins."""
    model = build_model("cnn", seed=0)
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    parent = model.predict(x)  # parallel kernels ran in this process
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply_async(_predict_in_child, (model, x)).get(timeout=120)
    np.testing.assert_allclose(child, parent, rtol=1e-5, atol=1e-6)


def _predict_in_child(model, x):
    assert not jit.parallel_allowed
    return model.predict(x)


# A user's script: numpy (and its BLAS pool) loaded first or after nnjit, a
# multi-threaded numpy matmul before training. Then nnjit trains; the BLAS
# pool's threads must get no CPU time (nnjit's GEMMs run single-threaded
# inside its own kernels) and the BLAS thread count must be as the user left it.
BLAS_POOL_SCRIPT = textwrap.dedent("""
    import os, sys, time
    first = sys.argv[1]
    if first == "numpy":
        import numpy as np
    pool_threads = {int(t) for t in os.listdir("/proc/self/task")} - {os.getpid()}
    import nnjit
    import numpy as np
    from threadpoolctl import threadpool_info
    from nnjit.spec import build_model

    def cpu_ticks(tids):
        total = 0
        for tid in tids:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        return total

    def blas_threads():  # of the libraries loaded with numpy (Numba may add SciPy's later)
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    a = np.ones((1024, 1024), np.float32)
    a @ a  # the user's own multi-threaded BLAS call
    time.sleep(1.0)  # past OpenBLAS's default spin time after a call
    before, ticks = blas_threads(), cpu_ticks(pool_threads)
    assert sum(before.values()) > len(before), f"BLAS is single-threaded: nothing to check ({before})"
    rng = np.random.default_rng(0)
    for preset in ("cnn", "mlp"):
        model = build_model(preset, seed=0)
        opt = nnjit.SGD(model.parameters(), lr=0.01)
        x = rng.random((256, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, 256)
        for _ in range(20):
            model.forward(x); model.backward(y); opt.step()
        model.predict(x)
    after = blas_threads()
    kept = all(after[k] == v for k, v in before.items())
    print(len(pool_threads), cpu_ticks(pool_threads) - ticks, kept, before)
""")


@pytest.mark.parametrize("first", ["numpy", "nnjit"])
def test_training_never_wakes_the_blas_thread_pool(first, tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(BLAS_POOL_SCRIPT)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2")
    out = subprocess.run([sys.executable, str(script), first], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    pool_size, pool_ticks, count_kept, counts = out.stdout.split(maxsplit=3)
    if first == "numpy":
        assert int(pool_size) >= 1, "numpy's BLAS started no thread pool: nothing to check"
    assert int(pool_ticks) <= 2, f"BLAS pool threads ran {pool_ticks} ticks during nnjit training"
    assert count_kept == "True", f"BLAS thread count changed from {counts}"


def test_threads_running_models_at_once_leave_the_blas_thread_count_as_it_was():
    """A model pass sets BLAS to one thread and restores it after: threads
    predicting at once must never restore a count another one set."""
    from threadpoolctl import threadpool_info

    def counts():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = counts()
    assert max(before.values()) > 1, "BLAS is single-threaded: nothing to check"
    models = [build_model(preset, seed=0) for preset in ("cnn", "mlp", "cnn", "mlp")]
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)

    def predict_many(model):
        for _ in range(30):
            model.predict(x)

    assert not errors_in_threads(predict_many, models)
    after = counts()
    assert all(after[k] == v for k, v in before.items()), (before, after)
