"""A stride-1 conv's gradients without unfolding (``nnjit.kernels.direct_grad``, the
planner's ``direct_backward``) against the float64 layer's (unfolded, checked against
finite differences in tests/layers/test_gradients.py)."""
import numpy as np
import pytest

import nnjit
import nnjit.kernels._jit as jit
import nnjit.threads
from nnjit import Conv2D
from nnjit.kernels.direct_grad import flipped_transposed

# in channels (8-row tiles, a 4-row one), out channels (a masked panel, two panels),
# image, kernel, padding, bias, fused ReLU
CASES = [(16, 16, 12, 12, 3, 1, False, False), (4, 6, 9, 11, 3, 1, True, True),
         (12, 40, 7, 20, 3, "same", True, False), (8, 5, 10, 9, 5, 2, False, True),
         (20, 33, 6, 6, 3, 0, True, False), (8, 8, 40, 70, 3, 1, False, False),
         (8, 12, 8, 9, (1, 3), 0, True, False), (4, 4, 3, 3, 3, 2, False, False)]


def _gradients(conv, x, dy):
    """(dx, dW, db) of ``conv`` on x for output gradient dy, forward in training."""
    out = conv.forward(x, True)
    if conv.fused_relu:
        dy = np.where(out > 0, dy, 0)
    dx = conv.backward(dy.astype(conv.dtype), need_input_grad=True)
    return dx.copy(), conv.weight.grad.copy(), \
        None if conv.bias is None else conv.bias.grad.copy()


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("c, oc, h, w, k, padding, bias, relu", CASES)
def test_direct_gradients_match_the_float64_layer(c, oc, h, w, k, padding, bias, relu, n, rng,
                                                  host_with, using):
    """Input, weight and bias gradients of the direct backward (tiles forced on,
    as where BLAS lacks AVX-512 kernels, so every case here takes it) equal the
    float64 unfolded layer's, with and without a fused ReLU, for batches split
    among the threads or not. The rule's limits on dropped columns and output
    channels are lifted so that small images (whose gradient rows drop more), 4
    input channels (a 4-row tile alone) and more than 32 output channels (two
    column panels) take it too."""
    using(host=host_with(tiles=True, blas_avx512=False), direct_max_dropped=0.9,
          direct_backward_min_channels=4, direct_backward_max_out_channels=64)

    def build(dtype):
        conv = Conv2D(c, oc, k, padding=padding, bias=bias, dtype=dtype)
        conv.reset_parameters(np.random.default_rng(7))
        if bias:
            conv.bias.value[...] = np.random.default_rng(8).standard_normal(oc)
        conv.set_epilogue(relu=relu)
        return conv

    x = rng.standard_normal((n, c, h, w))
    fast = build(np.float32)
    assert fast.plan(x.shape, True).direct_backward
    dy = rng.standard_normal((n, oc, *fast.problem(x.shape, True).output))
    reference = _gradients(build(np.float64), x, dy)
    got = _gradients(fast, x.astype(np.float32), dy)
    assert "direct/dy_t" in fast._buffers
    for g, want in zip(got, reference, strict=True):
        if want is None:
            assert g is None
            continue
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_direct_gradients_do_not_depend_on_the_threads(rng, monkeypatch, host_with, using):
    """The parallel kernels and their serial twins, one part or several: the same
    gradients, up to float32 rounding (the parts' partial sums add in another order)."""
    using(host=host_with(tiles=True, blas_avx512=False))
    x = rng.standard_normal((9, 16, 14, 14)).astype(np.float32)
    dy = rng.standard_normal((9, 24, 14, 14)).astype(np.float32)
    results = []
    for serial in (False, True):
        monkeypatch.setattr(jit, "SERIAL_BELOW", 1 << 62 if serial else jit.SERIAL_BELOW)
        monkeypatch.setattr(nnjit.threads, "WORK_PER_PART", 1 << 62 if serial else 1)
        conv = Conv2D(16, 24, 3, padding=1)
        conv.reset_parameters(np.random.default_rng(3))
        results.append(_gradients(conv, x, dy))
    for parallel, serial in zip(*results, strict=True):
        np.testing.assert_allclose(parallel, serial, rtol=1e-5, atol=1e-6 * np.abs(serial).max())


def test_the_reference_path_and_other_convs_keep_unfolding(host_with, using):
    """A forced unfold (the reference path), a strided, grouped or pooled conv,
    float64, and input channels the tiles' rows cannot cover keep the unfolded
    gradients; a conv the rule admits does not."""
    from nnjit import MaxPool2D

    using(host=host_with(tiles=True, blas_avx512=False))
    shape = (2, 16, 10, 10)
    assert Conv2D(16, 16, 3, padding=1).plan(shape, True).direct_backward
    assert not Conv2D(16, 16, 3, padding=1).plan(shape, False).direct_backward
    with nnjit.using(conv="unfold"):
        assert not Conv2D(16, 16, 3, padding=1).plan(shape, True).direct_backward
    assert not Conv2D(16, 16, 3, stride=2, padding=1).plan(shape, True).direct_backward
    assert not Conv2D(16, 16, 3, padding=1, groups=4).plan(shape, True).direct_backward
    assert not Conv2D(16, 16, 3, padding=1, dtype=np.float64).plan(shape, True).direct_backward
    assert Conv2D(8, 16, 3, padding=1).plan((2, 8, 10, 10), True).direct_backward
    assert not Conv2D(6, 16, 3, padding=1).plan((2, 6, 10, 10), True).direct_backward
    assert not Conv2D(4, 16, 3, padding=1).plan((2, 4, 10, 10), True).direct_backward
    assert not Conv2D(16, 64, 3, padding=1).plan(shape, True).direct_backward
    pooled = Conv2D(16, 16, 3, padding=1)
    pooled.set_epilogue(pool=MaxPool2D(2))
    assert not pooled.plan(shape, True).direct_backward


def test_flipped_transposed_weight(rng):
    weight = rng.standard_normal((5, 3, 2, 4)).astype(np.float32)
    out = np.empty(weight.size, np.float32)
    flipped_transposed(weight.reshape(-1), 5, 3, 2, 4, out)
    want = np.ascontiguousarray(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    np.testing.assert_array_equal(out.reshape(3, 5, 2, 4), want)


def test_a_handed_back_norm_gradient_takes_the_direct_backward(rng, host_with, using):
    """conv -> batch norm -> ReLU -> max-pool, the norm's gradient handed back to
    the conv (fusion): the direct backward evaluates it first; the gradients
    equal those of the reference path (unfolded, nothing fused)."""
    from nnjit import BatchNorm2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, Softmax

    using(host=host_with(tiles=True, blas_avx512=False))
    x = rng.standard_normal((6, 8, 12, 12)).astype(np.float32)
    labels = rng.integers(0, 10, 6)

    def gradients():
        model = Sequential([Conv2D(8, 16, 3, padding=1, bias=False), BatchNorm2D(16), ReLU(),
                            Conv2D(16, 24, 3, padding=1, bias=False), BatchNorm2D(24), ReLU(),
                            MaxPool2D(2),
                            Flatten(), Dense(24 * 36, 10), Softmax()], seed=5)
        model.forward(x)
        model.backward(labels)
        return model, [p.grad.copy() for p in model.parameters()]

    fast, got = gradients()
    assert fast.layers[3].plan(x[:, :16].shape, True).direct_backward
    assert {5, 6} <= fast.fused_layers()  # the norm's ReLU and pool
    assert "norm/grad" in fast.layers[3]._buffers and "direct/dy_t" in fast.layers[3]._buffers
    with nnjit.using(conv="unfold", fusion=False):
        _, want = gradients()
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max())
