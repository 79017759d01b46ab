"""Winograd F(4x4, 3x3) at inference (``nnjit.kernels.winograd4``) against the
float64 NumPy reference, the reference path of whole models, and its planner
rules."""
import numpy as np
import pytest

import nnjit
import reference as ref
from nnjit import Add, BatchNorm2D, Conv2D, Input, Model, ReLU, Sequential
from nnjit.planner import ConvAlgorithm


def runs_winograd4(conv, shape):
    return conv.plan(shape, training=False).algorithm is ConvAlgorithm.WINOGRAD_4X4


@pytest.mark.parametrize("tiles", [True, False])
@pytest.mark.parametrize("n, c, h, w, oc, padding, relu", [
    (1, 32, 16, 16, 32, 1, True),     # one image: two threads split its 16 tiles
    (1, 32, 12, 20, 24, 1, False),    # 15 tiles: the threads' split falls mid-row
    (5, 64, 8, 8, 64, 1, True),       # ResNet-20's last stage, both threads
    (40, 32, 8, 12, 20, 1, False),    # chunks of several images, not square
    (3, 33, 10, 6, 5, 0, True),       # unpadded: 8x4 outputs; odd channel counts
    (2, 40, 8, 10, 16, (1, 0), True),  # rows padded only: 8x8 outputs
])
def test_inference_matches_the_reference(n, c, h, w, oc, padding, relu, tiles, rng, host_with,
                                         using):
    """Chosen by the planner (from 32 channels, outputs a multiple of 4) or forced;
    with its GEMMs in register tiles (forced on, so on any host) and on BLAS;
    the second predict records a replay, the third replays it."""
    using(host=host_with(tiles=tiles))
    model = Sequential([Conv2D(c, oc, 3, padding=padding)] + ([ReLU()] if relu else []), seed=2)
    conv = model.layers[0]
    conv.bias.value[...] = rng.normal(size=oc)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    want = ref.conv2d(x, conv.weight.value, conv.bias.value, (1, 1), conv.padding)
    want = np.maximum(want, 0) if relu else want
    using(conv="winograd-4x4")
    assert runs_winograd4(conv, x.shape)
    for _ in range(3):
        np.testing.assert_allclose(model.predict(x), want, rtol=1e-4, atol=1e-4)


def test_error_is_near_unfolding_s(rng):
    """The interpolation points 0, +-3/2, +-2/3 keep a 64->64 layer's float32
    error within 2e-6 of its largest output (the usual 0, +-1, +-2: 3.4-4.4e-6;
    unfolding onto a GEMM: 0.6-1.3e-6)."""
    for c, size in ((64, 8), (32, 16)):
        conv = Sequential([Conv2D(c, c, 3, padding=1)], seed=5).layers[0]
        x = np.maximum(rng.standard_normal((4, c, size, size)), 0).astype(np.float32)
        assert runs_winograd4(conv, x.shape)
        want = ref.conv2d(x, conv.weight.value, conv.bias.value, (1, 1), conv.padding)
        got = conv.forward(x, training=False)
        assert np.abs(got - want).max() < 2e-6 * np.abs(want).max()


@pytest.mark.parametrize("n, h, w", [(1, 16, 16), (1, 12, 20), (3, 8, 8)])
def test_two_threads_sharing_a_batch_match_one_thread_exactly(n, h, w, rng, monkeypatch, using):
    """A small batch split by tiles between two threads gives the same bits as one
    thread doing all of it."""
    monkeypatch.setattr(nnjit.threads, "WORK_PER_PART", 1 << 62)  # one part: a shared chunk
    conv = Sequential([Conv2D(32, 48, 3, padding=1), ReLU()], seed=3).layers[0]
    conv.bias.value[...] = rng.normal(size=48)
    x = rng.normal(size=(n, 32, h, w)).astype(np.float32)
    assert runs_winograd4(conv, x.shape)
    results = []
    for threads in (2, 1):
        nnjit.set_num_threads(threads)
        try:
            assert conv._winograd4_plan(x.shape)[2] == threads  # threads sharing the chunk
            results.append(conv.forward(x, training=False).copy())
        finally:
            nnjit.set_num_threads(2)
    np.testing.assert_array_equal(results[0], results[1])
    want = np.maximum(ref.conv2d(x, conv.weight.value, conv.bias.value, (1, 1), (1, 1)), 0)
    np.testing.assert_allclose(results[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [1, 6])
def test_a_residual_block_at_inference_matches_the_reference_path(n, rng):
    """conv-BN-ReLU-conv-BN, the input added, ReLU: both convs by F(4x4, 3x3), the
    norms taken into their filters' transform, the sum and its ReLU in the
    second conv's output pass. In-place changes of a weight and of a norm's
    statistics show in the next predict."""
    inputs = Input((32, 16, 12))
    y = ReLU()(BatchNorm2D(32)(Conv2D(32, 32, 3, padding=1, bias=False)(inputs)))
    y = BatchNorm2D(32)(Conv2D(32, 32, 3, padding=1, bias=False)(y))
    model = Model(inputs, ReLU()(Add()([y, inputs])), seed=4)
    for name, buffer in model.named_buffers():
        buffer[...] = (rng.uniform(0.5, 2, buffer.shape) if "var" in name
                       else rng.normal(size=buffer.shape) * 0.1)
    x = rng.normal(size=(n, 32, 16, 12)).astype(np.float32)
    rows = nnjit.explain(model, (32, 16, 12), batch=n, training=False)
    assert [r.runs for r in rows].count("winograd-4x4") == 2

    def check():
        with nnjit.using(conv="unfold", fusion=False, replay=False):
            want = model.predict(x).copy()
        for _ in range(3):
            got = model.predict(x)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        return got.copy()

    first = check()
    model.layers[1].weight.value[3] *= -2  # the first conv
    second = check()
    norm = next(layer for layer in model.layers if isinstance(layer, BatchNorm2D))
    norm.running_var[5] *= 9
    third = check()
    assert not np.array_equal(first, second) and not np.array_equal(second, third)


def test_never_reads_the_rows_its_workspaces_pad_to(rng):
    """With every workspace filled with NaN between calls, a predict comes out
    bit for bit as before (the products cover only a chunk's tiles)."""
    model = Sequential([Conv2D(32, 40, 3, padding=1), ReLU()], seed=1)
    conv = model.layers[0]
    for n in (1, 3, 40):
        x = rng.standard_normal((n, 32, 12, 16)).astype(np.float32)
        assert runs_winograd4(conv, x.shape)
        before = model.predict(x).copy()
        for name, buf in conv._buffers.items():
            if name.startswith("winograd4/") and name not in ("winograd4/kept", "winograd4/Ut"):
                buf[...] = np.nan
        np.testing.assert_array_equal(model.predict(x), before)


def test_runs_at_inference_on_outputs_a_multiple_of_4_from_32_channels_and_12_tiles(using):
    conv = Sequential([Conv2D(32, 8, 3, padding=1)], seed=0).layers[0]
    assert not runs_winograd4(conv, (1, 32, 8, 8))  # 4 tiles: F(2x2, 3x3)
    assert conv.plan((1, 32, 8, 8), False).algorithm is ConvAlgorithm.WINOGRAD
    narrow = Sequential([Conv2D(16, 8, 3, padding=1)], seed=0).layers[0]
    assert runs_winograd4(conv, (2, 32, 8, 12))
    assert conv.plan((2, 32, 8, 12), True).algorithm is ConvAlgorithm.WINOGRAD  # training
    with nnjit.using(winograd4_in_training=True):
        assert conv.plan((2, 32, 8, 12), True).algorithm is ConvAlgorithm.WINOGRAD_4X4
    for training in (False, True):
        assert conv.plan((2, 32, 6, 8), training).algorithm is ConvAlgorithm.WINOGRAD  # 6x8
    assert not runs_winograd4(narrow, (2, 16, 8, 8))
    assert not runs_winograd4(Sequential([Conv2D(32, 8, 3, stride=2, padding=1)]).layers[0],
                              (2, 32, 16, 16))
    assert not runs_winograd4(Sequential([Conv2D(32, 8, 5, padding=2)]).layers[0],
                              (2, 32, 16, 16))
    double = Sequential([Conv2D(32, 8, 3, padding=1, dtype=np.float64)], seed=0).layers[0]
    assert not runs_winograd4(double, (2, 32, 8, 8))
    using(conv="winograd-4x4")
    with pytest.raises(nnjit.PlanError, match="multiple of 4"):
        conv.plan((2, 32, 6, 8), False)
    with pytest.raises(nnjit.PlanError, match="float32 only"):
        double.plan((2, 32, 8, 8), False)


@pytest.mark.parametrize("n, c, h, w, oc, relu, need_input_grad", [
    (5, 32, 16, 16, 32, True, True),   # ResNet-20's middle stage, a ReLU fused
    (3, 40, 8, 12, 20, False, True),   # not square, no ReLU
    (1, 32, 16, 12, 48, True, False),  # one image shared by two threads; no input gradient
])
def test_training_forward_with_the_2x2_backward_matches_the_unfold_path(
        n, c, h, w, oc, relu, need_input_grad, rng):
    """In training (forced, or ``Tuning.winograd4_in_training``) F(4x4, 3x3)
    computes the output and F(2x2, 3x3) the gradients:
    output, input, weight and bias gradients equal the unfold path's, and a
    training step leaves no F(2x2) workspace reallocated (each keeps its own)."""
    conv = Sequential([Conv2D(c, oc, 3, padding=1)] + ([ReLU()] if relu else []),
                      seed=3).layers[0]
    conv.bias.value[...] = rng.normal(size=oc)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    dy = rng.normal(size=(n, oc, h, w)).astype(np.float32)
    results = []
    for algorithm in ("winograd-4x4", "unfold"):
        with nnjit.using(conv=algorithm):
            assert conv.plan(x.shape, True).algorithm.value == algorithm
            for step in range(2):
                out = conv.forward(x).copy()
                dx = conv.backward(dy if not relu else dy * (out > 0), need_input_grad)
                if step == 0:
                    buffers = {name: id(b) for name, b in conv._buffers.items()}
        assert buffers == {name: id(b) for name, b in conv._buffers.items()}
        results.append((out, None if dx is None else dx.copy(), conv.weight.grad.copy(),
                        conv.bias.grad.copy()))
    assert "winograd/dU" in conv._buffers and "winograd4/Vt" in conv._buffers
    for a, b, name in zip(*results, ("out", "dx", "dweight", "dbias"), strict=True):
        if b is None:
            assert a is None, name
            continue
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max(), err_msg=name)
