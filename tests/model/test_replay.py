"""predict on small inputs replays recorded kernel calls: the same bits as the layers' path."""
import numpy as np
import pytest

import nnjit
from conftest import errors_in_threads
from nnjit import (BatchNorm2D, Conv2D, Dense, Dropout, Flatten, Layer, MaxPool2D, ReLU,
                   Sequential, Softmax)
from nnjit.params import FlatParameters, rebinds
from nnjit.replay import REPLAY_ELEMENTS
from nnjit.spec import build_model


def layers_path(model, x):
    """The model's output for x through its layers' Python path: a loop over
    batches (here two of len(x)) runs the layers, never a replay."""
    return model.predict(np.concatenate([x, x]), batch_size=len(x))[:len(x)]


def small_cnn_bn(seed):
    return Sequential([Conv2D(1, 4, 3), BatchNorm2D(4), ReLU(), MaxPool2D(2), Dropout(0.3),
                       Flatten(), Dense(4 * 5 * 5, 3), Softmax()], seed=seed)


MODELS = {
    "mlp": (lambda seed: build_model("mlp", (1, 12, 12), seed=seed, num_classes=10), (1, 12, 12)),
    "cnn": (lambda seed: build_model("cnn", (1, 16, 14), seed=seed, num_classes=10), (1, 16, 14)),
    "cnn-bn-dropout": (small_cnn_bn, (1, 12, 12)),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n", [1, 3])
def test_repeated_predict_gives_the_layers_bits_for_each_new_input(name, n, rng):
    build, shape = MODELS[name]
    model = build(int(rng.integers(1000)))
    for _ in range(4):  # recorded on the first call, replayed on the later ones
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        got = model.predict(x)
        np.testing.assert_array_equal(got, layers_path(model, x))
        assert got is not model.predict(x)  # a new array each call
    assert any(r is not None for r in model._replayed._recordings.values())


def test_shapes_called_once_are_not_recorded(rng):
    """Recording runs the layers three times: inputs whose shape keeps changing
    must not pay that on every call."""
    model = build_model("mlp", (1, 8, 8), seed=0, num_classes=4)
    for n in range(1, 12):
        x = rng.random((n, 1, 8, 8), dtype=np.float32)
        np.testing.assert_array_equal(model.predict(x), layers_path(model, x))
    assert not model._replayed._recordings


def test_replay_follows_training_steps_and_batch_norm_statistics(rng):
    model = small_cnn_bn(0)
    opt = nnjit.SGD(model.parameters(), lr=0.5)
    x = rng.standard_normal((2, 1, 12, 12)).astype(np.float32)
    before = model.predict(x)
    for _ in range(3):
        model.forward(rng.standard_normal((8, 1, 12, 12)).astype(np.float32) * 3 + 1)
        model.backward(rng.integers(0, 3, 8))
        opt.step()
        got = model.predict(x)
        np.testing.assert_array_equal(got, layers_path(model, x))
    assert not np.array_equal(got, before)


def test_replay_follows_parameters_packed_anew(rng):
    model = build_model("mlp", (1, 8, 8), seed=0, num_classes=4)
    x = rng.random((1, 1, 8, 8), dtype=np.float32)
    model.predict(x)
    model.predict(x)
    FlatParameters(model.parameters())  # rebinds every parameter's value to a new buffer
    for p in model.parameters():
        p.value[...] = rng.standard_normal(p.shape)
    np.testing.assert_array_equal(model.predict(x), layers_path(model, x))


def test_replay_follows_buffers_and_parameters_replaced(rng):
    """A norm not folded (first layer) reads its running statistics in its kernel:
    replacing the arrays, or a whole Parameter, must reach the next predict."""
    model = Sequential([BatchNorm2D(1), Conv2D(1, 3, 3), ReLU(), Flatten(), Dense(3 * 4 * 4, 4),
                        Softmax()], seed=0)
    norm, dense = model.layers[0], model.layers[4]
    x = rng.random((1, 1, 6, 6), dtype=np.float32)
    before = [model.predict(x) for _ in range(2)][-1]
    norm.running_mean = rng.standard_normal(1).astype(np.float32)
    norm.running_var = rng.uniform(0.1, 0.5, 1).astype(np.float32)
    after_norm = model.predict(x)
    np.testing.assert_array_equal(after_norm, layers_path(model, x))
    assert not np.array_equal(after_norm, before)
    dense.weight = nnjit.Parameter("weight",
                                   (rng.standard_normal(dense.weight.shape) * 3).astype(np.float32))
    got = model.predict(x)
    np.testing.assert_array_equal(got, layers_path(model, x))
    assert not np.array_equal(got, after_norm)


def test_training_steps_and_in_place_changes_keep_the_recording(rng):
    """Only rebinding makes a recording stale: training steps and in-place
    changes reach a replay through the arrays it holds, so a predict after each
    step replays the recording it has; replacing a buffer records anew."""
    model = build_model("conv:8:3:same,bn,relu,res:8,gap,dense:3,softmax", (1, 10, 10), seed=0)
    opt = nnjit.Momentum(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    norm = next(layer for layer in model.layers if isinstance(layer, BatchNorm2D))
    x = rng.standard_normal((1, 1, 10, 10)).astype(np.float32)
    model.predict(x)
    model.predict(x)
    recordings = [r for r in model._replayed._recordings.values() if r is not None]
    assert recordings
    before = rebinds()
    for _ in range(3):
        model.forward(rng.standard_normal((4, 1, 10, 10)).astype(np.float32))
        model.backward(rng.integers(0, 3, 4))
        opt.step()
        norm.running_var *= 1.5
        np.testing.assert_array_equal(model.predict(x), layers_path(model, x))
        assert all(any(r is kept for kept in model._replayed._recordings.values())
                   for r in recordings)
    assert rebinds() == before
    norm.running_var = norm.running_var * 2
    assert rebinds() > before
    np.testing.assert_array_equal(model.predict(x), layers_path(model, x))
    assert not any(r is kept for r in recordings for kept in model._replayed._recordings.values())


def test_a_replay_folds_each_norm_anew_from_what_the_parameters_hold(rng):
    """The fold of a norm into its conv is part of the replayed calls: writing
    into the conv's weight or the norm's statistics in place, or replacing the
    statistics, reaches the next replayed predict."""
    model = small_cnn_bn(0)
    conv, norm = model.layers[0], model.layers[1]
    x = rng.standard_normal((1, 1, 12, 12)).astype(np.float32)
    before = [model.predict(x) for _ in range(3)][-1]
    assert any(r is not None for r in model._replayed._recordings.values())
    changes = [lambda: conv.weight.value.__imul__(-1.5),
               lambda: norm.running_var.__imul__(4.0),
               lambda: setattr(norm, "running_mean",
                               rng.standard_normal(4).astype(np.float32))]
    for change in changes:
        change()
        got = model.predict(x)
        np.testing.assert_array_equal(got, layers_path(model, x))
        assert not np.array_equal(got, before)
        before = got


@pytest.mark.parametrize("size, algorithm", [(6, "winograd"), (16, "winograd-4x4"), (5, "unfold")])
def test_a_norm_folded_into_a_conv_winograd_may_run_follows_in_place_changes(size, algorithm, rng):
    """A conv that Winograd may run takes its norm's scale into the filter
    transform (F(2x2, 3x3) or F(4x4, 3x3)), redone only when weight or scale
    change; where its plan is another algorithm (an odd output size) it scales
    its weight itself. Each in
    place change must reach the next predict, replayed or not, as the
    reference path (no folding) computes it."""
    model = Sequential([Conv2D(32, 8, 3, padding=1), BatchNorm2D(8), ReLU(), Flatten(),
                        Dense(8 * size * size, 3)], seed=int(rng.integers(1000)))
    conv, norm = model.layers[0], model.layers[1]
    norm.running_mean[...] = rng.normal(size=8)
    norm.running_var[...] = rng.uniform(0.3, 3, size=8)
    norm.weight.value[...] = rng.uniform(0.5, 1.5, size=8) * rng.choice([-1, 1], 8)
    assert nnjit.explain(model, (32, size, size))[0].runs == algorithm
    x = rng.standard_normal((1, 32, size, size)).astype(np.float32)
    changes = [lambda: None,
               lambda: conv.weight.value.__imul__(-1.5),
               lambda: conv.weight.value[3].__iadd__(0.25),
               lambda: norm.running_var.__imul__(4.0),
               lambda: norm.weight.value.__setitem__(5, -2.0),
               lambda: setattr(conv, "weight", nnjit.Parameter(
                   "weight", rng.standard_normal(conv.weight.shape).astype(np.float32) * 0.2)),
               lambda: setattr(norm, "running_mean", rng.standard_normal(8).astype(np.float32))]
    before = None
    for change in changes:
        change()
        with nnjit.using(conv="unfold", fusion=False, replay=False):
            want = model.predict(x)
        for _ in range(3):  # the layers' path, then recorded, then replayed
            got = model.predict(x)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(layers_path(model, x), got)
        assert before is None or not np.allclose(got, before)
        before = got


class Doubling(Layer):
    """Computes outside any kernel: a recording of its model's kernels alone is not the model."""

    def forward(self, x, training=True):
        return x * 2

    def backward(self, dy, need_input_grad=True):
        return dy * 2


def test_a_layer_computing_outside_kernels_is_not_replayed(rng):
    model = Sequential([Flatten(), Dense(16, 8), Doubling(), ReLU(), Dense(8, 3), Softmax()], seed=0)
    for _ in range(3):
        x = rng.standard_normal((1, 16)).astype(np.float32)
        expected = layers_path(model, x)
        np.testing.assert_array_equal(model.predict(x), expected)
    assert list(model._replayed._recordings.values()) == [None]


def test_each_thread_count_has_its_recording_and_large_inputs_none(rng):
    model = build_model("cnn", (1, 12, 12), seed=0, num_classes=10)
    x = rng.random((4, 1, 12, 12), dtype=np.float32)
    threads = nnjit.get_num_threads()
    try:
        for n in (1, threads):
            nnjit.set_num_threads(n)
            model.predict(x)
            np.testing.assert_array_equal(model.predict(x), layers_path(model, x))
    finally:
        nnjit.set_num_threads(threads)
    assert len(model._replayed._recordings) == len({1, threads})  # each split its own
    big = rng.random((REPLAY_ELEMENTS // 144 + 1, 1, 12, 12), dtype=np.float32)
    model.predict(big, batch_size=len(big))
    assert all(key[0] != big.shape for key in model._replayed._recordings)


@pytest.mark.parametrize("preset", ["mlp", "cnn"])
def test_large_inputs_are_read_in_place_and_left_as_they_were(preset, rng):
    """From IN_PLACE_FROM values a replay reads its input where it lies instead of
    copying it: each new input gives the layers' bits and is left unchanged; an
    input that is not C-contiguous is copied, as below IN_PLACE_FROM."""
    from nnjit.replay import IN_PLACE_FROM

    model = build_model(preset, (1, 12, 12), seed=0, num_classes=10)
    n = IN_PLACE_FROM // 144 + 1
    for _ in range(4):
        x = rng.standard_normal((n, 1, 12, 12)).astype(np.float32)
        before = x.copy()
        got = model.predict(x, batch_size=n)
        np.testing.assert_array_equal(x, before)
        np.testing.assert_array_equal(got, layers_path(model, x))
    recordings = [r for r in model._replayed._recordings.values() if r is not None]
    assert recordings and all(r.slots for r in recordings)
    strided = rng.standard_normal((n, 1, 12, 24)).astype(np.float32)[..., ::2]
    np.testing.assert_array_equal(model.predict(strided, batch_size=n),
                                  layers_path(model, np.ascontiguousarray(strided)))


class ReLUOverItsInput(Layer):
    """Writes its output over its input, by a kernel: read in place, a replay would
    write over the caller's array."""

    def forward(self, x, training=True):
        from nnjit.kernels.activation import relu_forward

        relu_forward(x.reshape(-1), x.reshape(-1))
        return x

    def backward(self, dy, need_input_grad=True):
        return dy


def test_a_model_writing_over_its_input_is_not_replayed_in_place(rng):
    from nnjit.replay import IN_PLACE_FROM

    model = Sequential([ReLUOverItsInput(), Flatten(), Dense(144, 3)], seed=0)
    n = IN_PLACE_FROM // 144 + 1
    for _ in range(3):
        x = rng.standard_normal((n, 1, 12, 12)).astype(np.float32)
        expected = layers_path(model, x.copy())
        np.testing.assert_array_equal(model.predict(x, batch_size=n), expected)
    assert list(model._replayed._recordings.values()) == [None]


def test_compile_ahead_over_predict_leaves_replay_correct(rng):
    model = build_model("mlp", (1, 8, 8), seed=0, num_classes=4)
    x = rng.random((1, 1, 8, 8), dtype=np.float32)
    nnjit.compile_ahead(lambda: model.predict(x))  # kernels not run: nothing recorded
    assert not model._replayed._recordings
    for _ in range(3):
        x = rng.random((1, 1, 8, 8), dtype=np.float32)
        np.testing.assert_array_equal(model.predict(x), layers_path(model, x))


def test_models_recording_in_threads_at_once_each_replay_their_own(rng):
    from nnjit.kernels._jit import Kernel

    models = [build_model(preset, (1, 12, 12), seed=i, num_classes=10)
              for i, preset in enumerate(("cnn", "mlp", "cnn", "mlp"))]
    inputs = [rng.random((1, 1, 12, 12), dtype=np.float32) for _ in range(20)]
    results = {}

    def predict_all(model):
        results[id(model)] = [model.predict(x) for x in inputs]

    assert not errors_in_threads(predict_all, models)
    assert Kernel._call is Kernel._execute  # every interception undone
    for model in models:
        assert any(r is not None for r in model._replayed._recordings.values())
        for x, got in zip(inputs, results[id(model)]):
            np.testing.assert_array_equal(got, layers_path(model, x))


def test_threads_sharing_one_model_each_get_their_own_output(rng):
    """A model served from several threads: each call's output is its own input's,
    replayed (one image) or through the layers in batches (eight images, three at
    a time): model passes take turns."""
    model = build_model("mlp", (1, 12, 12), seed=0, num_classes=10)
    inputs = [rng.random((1, 1, 12, 12), dtype=np.float32) for _ in range(6)]
    batches = [rng.random((8, 1, 12, 12), dtype=np.float32) for _ in range(6)]
    expected = [layers_path(model, x) for x in inputs]
    batch_expected = [model.predict(b, batch_size=3) for b in batches]
    for x in inputs[:2]:
        model.predict(x)  # recorded: the threads below replay
    wrong = []

    def predict_many(i):
        for _ in range(200):
            if not np.array_equal(model.predict(inputs[i]), expected[i]):
                wrong.append(("one image", i))
            if not np.array_equal(model.predict(batches[i], batch_size=3), batch_expected[i]):
                wrong.append(("batches", i))

    errors = errors_in_threads(predict_many, range(len(inputs)))
    assert not errors and not wrong, (errors, wrong[:5])


def blas_threads_seen_by_replays(model, x, monkeypatch):
    """BLAS's thread count inside each replay of model.predict(x) (several calls),
    with BLAS set to two threads outside; and the recordings made."""
    from threadpoolctl import threadpool_limits

    from nnjit.kernels.blas import single_threaded_blas
    from nnjit.replay import _Recording

    get_threads, _ = single_threaded_blas._get_set()
    seen, replay = [], _Recording._replay

    def watched(recording, x):
        seen.append(get_threads())
        return replay(recording, x)

    monkeypatch.setattr(_Recording, "_replay", watched)
    with threadpool_limits(2, user_api="blas"):
        for _ in range(4):
            np.testing.assert_array_equal(model.predict(x), layers_path(model, x))
    return seen, [r for r in model._replayed._recordings.values() if r is not None]


def test_a_replay_that_calls_blas_runs_it_on_one_thread(rng, monkeypatch):
    """float64 convolutions multiply on BLAS (the register tiles are float32 only):
    their recording says so, and its replays hold BLAS at one thread."""
    model = Sequential([Conv2D(1, 4, 3, dtype=np.float64), ReLU(), MaxPool2D(2), Flatten(),
                        Dense(4 * 5 * 5, 3, dtype=np.float64)], seed=0)
    seen, recordings = blas_threads_seen_by_replays(model, rng.standard_normal((1, 1, 12, 12)),
                                                    monkeypatch)
    assert recordings and all(r.calls_blas for r in recordings)
    assert seen and set(seen) == {1}


@pytest.mark.parametrize("blas_avx512", [False, True])
def test_a_replay_switches_blas_threads_only_around_blas_calls(blas_avx512, rng, monkeypatch,
                                                                host_with, using):
    """One image through Dense layers, planned for a host whose BLAS lacks AVX-512
    kernels: dot products, no BLAS call, so no thread-count switch (0.7 us) around
    the replays after the first (the recording's proof, which finds that out).
    For a host whose BLAS has them: BLAS's small-matrix kernel, so every replay
    switches BLAS to one thread."""
    using(host=host_with(blas_avx512=blas_avx512))
    model = build_model("mlp", (1, 12, 12), seed=0, num_classes=10)
    seen, recordings = blas_threads_seen_by_replays(
        model, rng.random((1, 1, 12, 12), dtype=np.float32), monkeypatch)
    assert [r.calls_blas for r in recordings] == [blas_avx512]
    assert len(seen) > 1 and seen[0] == 1 and set(seen[1:]) == ({1} if blas_avx512 else {2})


def serve_windows(race, seconds_of, windows):
    """Feed ``race`` ``windows`` windows of call timings: seconds_of(which, call in window)."""
    from nnjit.replay import WINDOW

    served = []
    for _ in range(windows):
        which = race.serving
        served.append(which)
        race.times.extend(seconds_of(which, call) for call in range(WINDOW))
        race.window_done()
    return served


def test_a_race_serves_the_faster_recording_and_tries_the_other_less_often():
    from nnjit.replay import EXPLORE_FIRST, WARMUP, _Race

    race = _Race(("parallel", "serial"))
    idle = {0: 20e-6, 1: 24e-6}
    served = serve_windows(race, lambda which, call: idle[which], 4 * EXPLORE_FIRST)
    assert served[EXPLORE_FIRST] == 1  # one window tries the single-threaded one...
    assert served.count(1) == 2  # ...then again only after twice as many windows
    assert race.serving == 0

    # One slow call in a window (an interruption) changes nothing.
    spiked = lambda which, call: 500e-6 if call == WARMUP + 3 else idle[which]  # noqa: E731
    served = serve_windows(race, spiked, 3)
    assert served == [0, 0, 0] and race.serving == 0

    # The other core turns busy: split calls slow; the next window tries the other, which stays.
    busy = {0: 50e-6, 1: 24e-6}
    served = serve_windows(race, lambda which, call: busy[which], 3)
    assert served == [0, 1, 1] and race.serving == 1

    # Idle again: a try of the parallel one (its first calls slow: waking the other
    # thread, not counted) brings it back.
    def waking(which, call):
        return 2e-3 if which == 0 and call < WARMUP else idle[which]
    served = serve_windows(race, waking, EXPLORE_FIRST + 2)
    assert served[-2:] == [0, 0] and race.serving == 0


def test_after_a_long_busy_spell_a_race_tries_the_split_recording_within_a_time_bound():
    """A busy spell doubles the windows between tries up to EXPLORE_MOST; for a
    large model that would keep the single-threaded recording serving for
    seconds after the spell. While it serves, no more than EXPLORE_SECONDS of
    served calls pass between tries of the split one, so that one serves again
    soon after; while the split one serves, tries stay as rare as before."""
    from nnjit.replay import EXPLORE_MOST, EXPLORE_SECONDS, WINDOW, _Race

    race = _Race(("parallel", "serial"))
    busy = {0: 1.2e-3, 1: 0.73e-3}  # ResNet-20 on one image, the other core busy
    served = serve_windows(race, lambda which, call: busy[which], 40 * EXPLORE_MOST)
    assert race.serving == 1 and served[-1] == 1
    tries = [i for i in range(1, len(served)) if served[i] == 0 and served[i - 1] == 1]
    assert len(tries) > 20
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    window_seconds = WINDOW * busy[1]
    assert max(gaps) <= EXPLORE_SECONDS / window_seconds + 2  # bounded by time, not 256 windows
    assert max(gaps) < EXPLORE_MOST
    idle = {0: 0.51e-3, 1: 0.73e-3}
    served = serve_windows(race, lambda which, call: idle[which],
                           int(EXPLORE_SECONDS / window_seconds) + 3)
    assert race.serving == 0 and served[-1] == 0
    served = serve_windows(race, lambda which, call: idle[which], 4 * EXPLORE_MOST)
    tries = [i for i in range(1, len(served)) if served[i] == 1 and served[i - 1] == 0]
    assert len(tries) <= 8  # every 16, 32, ... up to EXPLORE_MOST windows, not every 0.5 s


def test_one_image_on_two_threads_races_a_single_threaded_recording(rng, monkeypatch):
    """The cnn's one image splits its second conv between two threads; while split
    calls are slow (a busy core, simulated by a clock), the recording made on
    one thread serves, and the split one again once it is the faster. Every
    output is the layers' own, whichever serves."""
    import nnjit.replay as replay

    threads = nnjit.get_num_threads()
    nnjit.set_num_threads(2)  # at most Numba's pool size: this test needs two
    assert nnjit.get_num_threads() == 2
    model = build_model("cnn", (1, 16, 14), seed=0, num_classes=10)
    clock, cost = [0.0], {True: 50e-6, False: 24e-6}
    run = replay._Recording.run

    def run_on_clock(recording, x):
        clock[0] += cost[recording.parallel]
        return run(recording, x)

    monkeypatch.setattr(replay._Recording, "run", run_on_clock)
    monkeypatch.setattr(replay, "perf_counter", lambda: clock[0])
    try:
        for _ in range(40 * replay.WINDOW):
            x = rng.standard_normal((1, 1, 16, 14)).astype(np.float32)
            np.testing.assert_array_equal(model.predict(x), layers_path(model, x))
        race, = model._replayed._races.values()
        assert race.serving == 1
        serial = model._replayed._recordings[race.keys[1]]
        assert race.keys[1][1] == 1 and not serial.parallel
        assert model._replayed._recordings[race.keys[0]].parallel
        cost[True] = 10e-6
        for _ in range(40 * replay.WINDOW):
            x = rng.standard_normal((1, 1, 16, 14)).astype(np.float32)
            np.testing.assert_array_equal(model.predict(x), layers_path(model, x))
        assert race.serving == 0
    finally:
        nnjit.set_num_threads(threads)


def test_a_large_batch_runs_in_passes_that_equal_the_layers_path(rng, using):
    """predict on more images than a pass holds (``planner.inference_pass``)
    replays pass by pass, the last one shorter, the norms folded once before
    them; the result is the layers' on the same passes (the kernels split their
    work by the images they get, so other passes may differ in the last bits)."""
    model = small_cnn_bn(seed=3)
    largest, intensity = model._pass_shape((1, 12, 12))
    using(inference_pass_bytes=16 * largest, memory_bound_pass_bytes=16 * largest)
    assert nnjit.planner.inference_pass(70, largest, intensity) == 16
    x = rng.random((70, 1, 12, 12), dtype=np.float32)
    want = np.concatenate([layers_path(model, x[i:i + 16]) for i in range(0, 70, 16)])
    for _ in range(3):  # recorded on the second call, replayed after
        np.testing.assert_array_equal(model.predict(x), want)
    assert {key[0][0] for key in model._replayed_pass._recordings} == {16, 6}
    assert not model._replayed._recordings  # the single-pass replays, which fold each call
    # A training step between two such predicts reaches every pass.
    opt = nnjit.SGD(model.parameters(), lr=0.5)
    model.forward(x[:8] * 3 + 1)
    model.backward(np.arange(8) % 3)
    opt.step()
    got = model.predict(x)  # first: the layers' path folds the norms too
    want = np.concatenate([layers_path(model, x[i:i + 16]) for i in range(0, 70, 16)])
    np.testing.assert_array_equal(got, want)


def test_inference_pass_sizes():
    from nnjit.planner import inference_pass, tuning

    limit = tuning().inference_pass_bytes
    assert inference_pass(1000, limit // 100) == 64  # a power of two that fits
    assert inference_pass(1000, limit // 64) == 64
    assert inference_pass(1000, limit) == 16  # at least 16 images
    assert inference_pass(10, limit // 64) == 10  # a small batch in one pass
    assert inference_pass(1000, 100) == 1000


def test_a_memory_bound_network_runs_in_passes_that_stay_in_l2(using):
    """Few FLOPs per byte written: passes sized by memory_bound_pass_bytes."""
    from nnjit.planner import inference_pass, tuning

    using(inference_pass_bytes=64 << 10, memory_bound_pass_bytes=16 << 10,
          memory_bound_flops_per_byte=5.0)
    assert inference_pass(1000, 1 << 10, 4.9) == 16
    assert inference_pass(1000, 1 << 10, 5.0) == 64
    assert inference_pass(1000, 1 << 10) == 64  # intensity unknown: not memory-bound
    assert tuning().memory_bound_pass_bytes < tuning().inference_pass_bytes
    # small_cnn_bn, per image: conv 1->4 3x3 on 12x12 (2*4*9*100 FLOPs) and Dense
    # 100->3 (2*100*3); its input and nine outputs hold 144 + 3*400 + 3*100 + 2*3 values.
    largest, intensity = small_cnn_bn(seed=0)._pass_shape((1, 12, 12))
    assert largest == 400 * 4
    assert intensity == pytest.approx((7200 + 600) / ((144 + 1200 + 300 + 6) * 4))
