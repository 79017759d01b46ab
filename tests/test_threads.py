"""Worker threads and the serial/parallel kernel twins: same answers, errors surface."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info

import nnjit.kernels._jit as jit
from nnjit import Adam, Dense, Flatten, MaxPool2D, ReLU, Sequential, Softmax, softmax_cross_entropy
from nnjit.threads import run_workers, split


def test_split_covers_the_range_in_near_equal_parts():
    assert split(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split(1, 4) == [(0, 1)]  # never an empty part
    assert split(5, 1) == [(0, 5)]


def blas_threads():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.parametrize("failing_worker", [0, 1])
def test_run_workers_raises_a_workers_error_after_all_stopped(failing_worker):
    before = blas_threads()
    finished = []

    def work(worker, start, stop):
        if worker == failing_worker:
            raise ValueError(f"worker {worker} failed")
        finished.append((start, stop))

    with pytest.raises(ValueError, match=f"worker {failing_worker} failed"):
        run_workers(work, [(0, 2), (2, 4)])
    assert finished == [(2, 4)] if failing_worker == 0 else [(0, 2)]
    assert blas_threads() == before  # single-threaded BLAS was only for the call


def test_run_workers_gives_every_range_to_one_worker():
    seen = {}
    run_workers(lambda worker, a, b: seen.setdefault(worker, (a, b)), split(9, 3))
    assert seen == {0: (0, 3), 1: (3, 6), 2: (6, 9)}


def test_run_workers_works_in_a_forked_child():
    """A child forked after the pool started inherits no pool threads: it must not hang."""
    import multiprocessing

    run_workers(lambda worker, a, b: None, [(0, 1), (1, 2)])  # the pool exists now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        result = pool.apply_async(_sum_in_workers)
        assert result.get(timeout=60) == sum(range(10))


def _sum_in_workers():
    parts = {}
    run_workers(lambda worker, a, b: parts.__setitem__(worker, sum(range(a, b))), split(10, 2))
    return sum(parts.values())


LARGE = 1 << 18  # elements: above SERIAL_BELOW, so the parallel compilations run


@pytest.mark.parametrize("make,shape", [
    (lambda: MaxPool2D(2), (16, 4, 64, 64)),
    (lambda: MaxPool2D(3, 2), (16, 4, 64, 64)),
    (ReLU, (64, LARGE // 64)),
    (Softmax, (LARGE // 16, 16)),
    (lambda: Dense(64, LARGE // 256), (256, 64)),
])
def test_parallel_kernels_agree_with_their_serial_twins(make, shape, rng, monkeypatch):
    x = rng.normal(size=shape).astype(np.float32)
    results = []
    for serial_below in (jit.SERIAL_BELOW, 1 << 62):
        monkeypatch.setattr(jit, "SERIAL_BELOW", serial_below)
        layer = make()
        for p in layer.parameters():
            p.value[...] = np.random.default_rng(0).normal(size=p.shape)
        y = layer.forward(x).copy()
        dy = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
        dx = layer.backward(dy).copy()
        results.append([y, dx] + [p.grad.copy() for p in layer.parameters()])
    assert max(a.size for a in results[0]) >= LARGE
    for parallel, serial in zip(*results, strict=True):
        np.testing.assert_allclose(parallel, serial, rtol=1e-5, atol=1e-5)


def test_parallel_loss_and_optimizer_agree_with_serial_twins(rng, monkeypatch):
    logits = rng.normal(size=(LARGE // 10, 10)).astype(np.float32)
    labels = rng.integers(0, 10, len(logits))
    results = []
    for serial_below in (jit.SERIAL_BELOW, 1 << 62):
        monkeypatch.setattr(jit, "SERIAL_BELOW", serial_below)
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
