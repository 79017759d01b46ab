"""The planner (``nnjit.planner``), its switch (``nnjit.using``) and ``nnjit.explain``:
each algorithm forced agrees with the unfold reference; a forced algorithm that
cannot run a problem says why; the choices follow the host and the thresholds."""
import dataclasses

import numpy as np
import pytest

import nnjit
from nnjit import Conv2D, MaxPool2D, PlanError, ReLU, Sequential
from nnjit.planner import ConvAlgorithm, ConvProblem, Host, Tuning, plan_conv
from nnjit.spec import PRESETS, build_model

CIFAR_CNN = ("conv:32:3:1:1,relu,pool:2,conv:64:3:1:1,relu,pool:2,conv:128:3:1:1,relu,pool:2,"
             "dense:10,softmax")

#: (algorithm, layers after the conv, input (C, H, W)): a problem each can run.
CASES = [
    ("winograd", lambda: [ReLU(), MaxPool2D(2)], (16, 11, 9)),
    ("windows", lambda: [ReLU(), MaxPool2D(2)], (3, 12, 13)),
    ("direct", lambda: [ReLU()], (5, 10, 17)),
    ("unfold", lambda: [ReLU(), MaxPool2D(3, stride=2)], (4, 9, 9)),
]


def run_forced(algorithm, layers, x, dy_seed=7):
    """(predict, training output, dx, weight and bias gradients) of a fresh model's
    first conv, with ``algorithm`` forced."""
    model = Sequential(layers, seed=5)
    conv = model.layers[0]
    with nnjit.using(conv=algorithm):
        assert conv.plan(x.shape, True).algorithm is ConvAlgorithm(algorithm)
        predicted = model.predict(x)
        out = model.forward(x)
        dy = np.random.default_rng(dy_seed).standard_normal(out.shape).astype(np.float32)
        dx = conv.backward(dy)
    return [predicted, out.copy(), dx.copy(), conv.weight.grad.copy(), conv.bias.grad.copy()]


@pytest.mark.parametrize("algorithm, following, shape", CASES)
@pytest.mark.parametrize("n", [1, 5])
def test_each_algorithm_forced_agrees_with_the_unfold_reference(algorithm, following, shape, n,
                                                                 rng):
    c = shape[0]
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    got = run_forced(algorithm, [Conv2D(c, 20, 3, padding=1)] + following(), x)
    want = run_forced("unfold", [Conv2D(c, 20, 3, padding=1)] + following(), x)
    for a, b, name in zip(got, want, ("predict", "forward", "dx", "dweight", "dbias"),
                          strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1, np.abs(b).max()),
                                   err_msg=f"{algorithm}: {name}")


@pytest.mark.parametrize("algorithm, layers, words", [
    ("winograd", [Conv2D(4, 8, 5), ReLU(), MaxPool2D(2)], "3x3 kernel"),
    ("winograd", [Conv2D(4, 8, 3), ReLU(), MaxPool2D(3)], "2x2, stride-2 max-pool"),
    ("windows", [Conv2D(4, 8, 3, stride=2), MaxPool2D(2)], "stride 1"),
    ("direct", [Conv2D(4, 8, 3), MaxPool2D(2)], "without a fused max-pool"),
    ("direct", [Conv2D(4, 2, 3)], "4 output channels"),
    ("pointwise", [Conv2D(4, 8, 3)], "1x1 kernel at stride 1 without padding"),
    ("pointwise", [Conv2D(4, 8, 1), MaxPool2D(2)], "without a fused max-pool"),
])
def test_a_forced_algorithm_that_cannot_run_a_conv_says_why(algorithm, layers, words):
    model = Sequential(layers, seed=0)
    with nnjit.using(conv=algorithm), pytest.raises(PlanError) as err:
        model.predict(np.zeros((1, 4, 12, 12), np.float32))
    assert f"conv={algorithm!r}" in str(err.value) and words in str(err.value)
    assert "Conv2D(" in str(err.value) and "(1, 4, 12, 12)" in str(err.value)


def test_using_refuses_unknown_values_and_restores_the_settings():
    with pytest.raises(ValueError, match="conv must be one of"):
        with nnjit.using(conv="fft"):
            pass
    with pytest.raises(ValueError, match="unknown threshold"):
        with nnjit.using(block_size=3):
            pass
    with pytest.raises(ValueError, match="fusion must be True or False"):
        with nnjit.using(fusion="no"):
            pass
    before = nnjit.planner.settings()
    with nnjit.using(conv="unfold", fusion=False, block_bytes=4096) as inside:
        assert inside.conv is ConvAlgorithm.UNFOLD and not inside.fusion
        assert nnjit.planner.tuning().block_bytes == 4096
    assert nnjit.planner.settings() == before and nnjit.planner.tuning() == Tuning()


def problem(**changes):
    base = ConvProblem(batch=64, channels=32, height=13, width=13, out_channels=64,
                       kernel=(3, 3), stride=(1, 1), padding=(0, 0), dtype="float32",
                       relu=True, pool=(2, 2, 2, 2), training=True)
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("tiles", [True, False])
def test_the_rules_choose_by_problem_host_and_thresholds(tiles, using):
    using(host=Host(tiles=tiles, blas_avx512=True, cores=2))
    assert plan_conv(problem()).algorithm is ConvAlgorithm.WINOGRAD
    assert plan_conv(problem(channels=4)).algorithm is \
        (ConvAlgorithm.WINDOWS if tiles else ConvAlgorithm.UNFOLD)
    assert plan_conv(problem(dtype="float64", channels=4)).algorithm is ConvAlgorithm.UNFOLD
    unpooled = problem(pool=None, width=28, height=28, channels=16)
    assert plan_conv(unpooled).algorithm is \
        (ConvAlgorithm.DIRECT if tiles else ConvAlgorithm.UNFOLD)
    assert plan_conv(problem(pool=None, width=16, height=16)).algorithm is \
        ConvAlgorithm.WINOGRAD  # 32 channels, an even output (14x14)
    assert plan_conv(problem(pool=None, width=13, height=13)).algorithm is not \
        ConvAlgorithm.WINOGRAD
    assert plan_conv(problem(pool=None, width=18, height=18)).algorithm is \
        ConvAlgorithm.WINOGRAD  # training: F(4x4, 3x3) off (Tuning.winograd4_in_training)
    assert plan_conv(problem(pool=None, width=18, height=18, training=False)).algorithm is \
        ConvAlgorithm.WINOGRAD_4X4  # a 16x16 output at inference
    assert plan_conv(problem(pool=None, width=18, height=18, training=False,
                             batch=1)).algorithm is ConvAlgorithm.WINOGRAD_4X4  # 16 tiles
    assert plan_conv(problem(pool=None, width=10, height=10, training=False,
                             batch=2)).algorithm is ConvAlgorithm.WINOGRAD  # 8 tiles
    with nnjit.using(winograd_in_training=False):
        assert plan_conv(problem()).algorithm is not ConvAlgorithm.WINOGRAD
        assert plan_conv(problem(training=False)).algorithm is ConvAlgorithm.WINOGRAD
    with nnjit.using(direct_max_dropped=0.0):
        assert plan_conv(unpooled).algorithm is ConvAlgorithm.UNFOLD
    pointwise = problem(pool=None, kernel=(1, 1))
    assert plan_conv(pointwise).algorithm is ConvAlgorithm.POINTWISE
    assert plan_conv(dataclasses.replace(pointwise, padding=(1, 1))).algorithm is not \
        ConvAlgorithm.POINTWISE
    for p in (problem(), problem(channels=4), unpooled):
        assert plan_conv(p).rule  # every choice says why


@pytest.mark.parametrize("name, shape", [(name, (1, 28, 28)) for name in PRESETS]
                         + [(CIFAR_CNN, (3, 32, 32)), ("resnet20", (3, 32, 32)),
                            ("mobilenet", (3, 32, 32))])
@pytest.mark.parametrize("training, batch", [(False, 1), (True, 64)])
def test_explain_answers_for_every_preset_and_the_cifar_network(name, shape, training, batch):
    model = build_model(name, shape, seed=0)
    steps = nnjit.explain(model, shape, training=training, batch=batch)
    assert [s.index for s in steps] == list(range(len(model.layers)))
    names = {a.value for a in ConvAlgorithm}
    for step, layer in zip(steps, model.layers, strict=True):
        assert step.runs and step.rule
        if isinstance(layer, Conv2D):
            assert step.runs in names and step.threads >= 1 and step.flops > 0
            if training:  # (at inference a copy with a norm folded in may run instead)
                sample = sample_input(model, shape, step.index)
                assert step.runs == layer.plan((batch, *sample), True).algorithm.value
    fused = model.fused_layers(training)
    assert {s.index for s in steps if s.runs.startswith(("fused", "folded"))} <= fused
    text = str(steps)
    assert ("training" if training else "inference") in text and "why" in text


def sample_input(model, shape, index):
    """The sample shape layer ``index`` reads, for model inputs of ``shape``."""
    return model.input_shapes(shape)[index]


def test_explain_says_which_layers_fuse_fold_and_stack():
    model = build_model("cnn-bn", (1, 28, 28), seed=0)
    inference = {s.index: s.runs for s in nnjit.explain(model, (1, 28, 28))}
    assert inference[1] == "folded into 0" and inference[2] == inference[3] == "fused into 0"
    assert inference[8] == "skipped"  # dropout
    training = {s.index: s.runs for s in nnjit.explain(model, (1, 28, 28), training=True,
                                                        batch=32)}
    assert training[1] == "kernel" and training[2] == training[3] == "fused into 1"
    mlp = {s.index: s.runs for s in nnjit.explain(build_model("mlp", seed=0), (1, 28, 28))}
    assert mlp[1].startswith("dense stack") and mlp[3] == "in a Dense stack"
    with nnjit.using(fusion=False):
        alone = nnjit.explain(model, (1, 28, 28))
    assert not any(s.runs.startswith(("fused", "folded")) for s in alone)


def test_verbose_logs_each_choice_once(monkeypatch, capfd):
    monkeypatch.setenv("NNJIT_VERBOSE", "1")
    model = build_model("cnn", seed=0)
    x = np.zeros((2, 1, 28, 28), np.float32)
    model.predict(x)
    model.predict(x)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("nnjit: conv")]
    assert len(lines) == 2, err  # two convs, each planned once for this shape
    for line, conv in zip(lines, (model.layers[0], model.layers[3]), strict=True):
        shape = (2, conv.in_channels, 28 if conv is model.layers[0] else 13,
                 28 if conv is model.layers[0] else 13)
        plan = conv.plan(shape, False)
        assert f": {plan.algorithm.value} (" in line and plan.rule in line


def test_replay_can_be_turned_off(rng):
    model = build_model("mlp", seed=0)
    x = rng.random((1, 1, 28, 28), dtype=np.float32)
    with nnjit.using(replay=False):
        for _ in range(4):
            model.predict(x)
    assert not model._replayed._recordings
    for _ in range(4):
        model.predict(x)
    assert any(r is not None for r in model._replayed._recordings.values())


@pytest.mark.parametrize("width, kernel, padding, skips", [
    (32, 3, 1, True),   # OW 32: no vector crosses a row's end, 6% dropped
    (64, 3, 1, True),   # OW 64, 3% dropped
    (20, 3, 1, False),  # OW 20: crossings, 9% dropped
    (28, 5, 0, True),   # OW 24: crossings, but 14% dropped
    (14, 3, 1, False),  # OW 14: under one vector
])
def test_the_direct_conv_skips_dropped_columns_where_it_pays(width, kernel, padding, skips):
    """Skipping tiles store the output itself: where OW is a multiple of 16 they
    cost nothing more; elsewhere each row-end crossing must be paid for by the
    dropped columns (``Tuning.skipping_min_dropped``)."""
    p = ConvProblem(8, 16, width, width, 16, (kernel, kernel), (1, 1), (padding, padding),
                    "float32", True, None, False)
    with nnjit.using(host=Host(tiles=True, blas_avx512=True, cores=2)):
        plan = plan_conv(p)
    assert plan.algorithm is ConvAlgorithm.DIRECT
    assert plan.skip_dropped is skips


@pytest.mark.parametrize("c, oc, width, kernel, padding, direct", [
    (16, 32, 32, 3, 1, True),    # ResNet-20's first strided conv: OW 16, every phase read
    (32, 64, 16, 3, 1, False),   # OW 8: rows under a vector, nothing skipped
    (16, 32, 32, 1, 0, False),   # 1x1: one phase of four read
    (8, 16, 64, 2, 0, True),     # 2x2: one tap in each phase, OW 32
])
def test_the_direct_conv_runs_stride_2_where_it_skips_and_reads_every_phase(
        c, oc, width, kernel, padding, direct):
    """At stride 2 the direct conv runs on each image split into its phases: only
    where its product skips the dropped columns and each phase holds a tap.
    Stride 3 it refuses."""
    p = ConvProblem(1, c, width, width, oc, (kernel, kernel), (2, 2), (padding, padding),
                    "float32", False, None, False)
    with nnjit.using(host=Host(tiles=True, blas_avx512=True, cores=2)):
        plan = plan_conv(p)
        assert plan.algorithm is (ConvAlgorithm.DIRECT if direct else ConvAlgorithm.UNFOLD)
        assert plan.skip_dropped is direct
        with nnjit.using(conv="direct"), pytest.raises(PlanError, match="stride 1 or 2"):
            plan_conv(dataclasses.replace(p, stride=(3, 3)))


def test_inference_splits_one_image_finer_than_training(monkeypatch):
    """At inference one image's output rows (a 1x1 conv's output channels) are
    shared between the threads from less work per thread than training asks
    (``inference_split_finer``): a 16->16 3x3 conv on one 32x32 image (2.5e6
    multiply-adds with its output moves) and a 64->64 1x1 on one 16x16 (1.0e6)
    split there, not in training."""
    import numba

    import nnjit.threads
    from nnjit.threads import threads_set_to

    monkeypatch.setattr(nnjit.threads, "WORK_PER_PART", 4_000_000)  # the library's, not the suite's

    conv = Conv2D(16, 16, 3, padding=1)
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    with threads_set_to(threads):
        inference = conv._plan(1, 32, 32, 16 * 9, share_images=True)
        training = conv._plan(1, 32, 32, 16 * 9, share_images=False)
        with nnjit.using(inference_split_finer=1):
            coarse = conv._plan(1, 32, 32, 16 * 9, share_images=True)
    assert len(inference[0]) - 1 == threads
    assert len(training[0]) - 1 == 1
    assert len(coarse[0]) - 1 == 1
    pointwise = Conv2D(64, 64, 1)
    with threads_set_to(threads):
        assert pointwise._pointwise_split(1, 64, 16 * 16, training=False) == (threads, threads)
        assert pointwise._pointwise_split(1, 64, 16 * 16, training=True) == (1, 1)
