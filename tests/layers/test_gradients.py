"""Every analytic gradient against central finite differences, in float64.

For a layer y = f(x), L = sum(y * g) with a fixed random g; backward(g) must
return dL/dx and fill dL/dparameter for every parameter.
"""
import numpy as np
import pytest

import reference as ref
from nnjit import (AvgPool2D, Conv2D, Dense, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU, Sequential,
                   Softmax, softmax_cross_entropy)

F64 = np.float64


def check_layer_gradients(layer, x, rng, rtol=1e-6, atol=1e-8, eps=1e-6):
    """``eps``: the finite differences' step. A layer linear in x and in each
    parameter (a conv, a Dense) takes a large one (no truncation error, and the
    loss's rounding divided by a larger step: at 1e-6, a few ulps of a sum of
    720 terms came to 1e-8)."""
    g = rng.normal(size=layer.forward(x.copy()).shape)

    def loss():
        return float(np.sum(layer.forward(x, training=False) * g))

    layer.forward(x)
    dx = layer.backward(g.copy())
    dx = None if dx is None else dx.copy()
    analytic = {p.name: p.grad.copy() for p in layer.parameters()}
    np.testing.assert_allclose(dx, ref.numeric_grad(loss, x, eps), rtol=rtol, atol=atol,
                               err_msg="dx")
    for p in layer.parameters():
        np.testing.assert_allclose(analytic[p.name], ref.numeric_grad(loss, p.value, eps),
                                   rtol=rtol, atol=atol, err_msg=p.name)


@pytest.mark.parametrize("n,c,h,w,oc,k,s,p", [
    (2, 2, 6, 5, 3, 3, 1, 0),
    (3, 2, 7, 6, 2, 3, 2, 1),
    (1, 3, 6, 7, 2, (2, 3), (2, 1), (1, 0)),
    (2, 1, 5, 5, 2, 1, 1, 0),
])
@pytest.mark.parametrize("block_rows", [None, 1, 2])
@pytest.mark.parametrize("gemm", ["slices", "columns", "whole"])
def test_conv2d_gradients(n, c, h, w, oc, k, s, p, block_rows, gemm, rng, force_row_blocks,
                          monkeypatch, using):
    """Also with blocks of 1 or 2 output rows (as for large images) instead of whole images,
    and with each block's GEMMs cut into one-column slices or run whole (as from 64 channels)."""

    if gemm == "columns":
        using(min_slice_cols=1)
        using(small_gemm_macs=1)
    elif gemm == "whole":
        using(whole_gemm_channels=1)
        using(whole_gemm_cols=1)
    layer = Conv2D(c, oc, k, stride=s, padding=p, dtype=F64)
    if block_rows is not None:
        force_row_blocks(layer, (c, h, w), block_rows)
    layer.bias.value[...] = rng.normal(size=oc)
    check_layer_gradients(layer, rng.normal(size=(n, c, h, w)), rng)



@pytest.mark.parametrize("shape,k,s", [((2, 2, 6, 6), 2, None), ((1, 2, 7, 5), 3, 2),
                                       ((2, 1, 6, 7), 3, 1), ((1, 1, 5, 6), (2, 3), (1, 2))])
def test_maxpool_gradients(shape, k, s, rng):
    # Distinct values spaced far beyond eps: no ties, no argmax flips under perturbation.
    x = rng.permutation(np.prod(shape)).reshape(shape) * 0.01
    check_layer_gradients(MaxPool2D(k, s), x.astype(F64), rng)


def test_dense_gradients(rng):
    layer = Dense(7, 4, dtype=F64)
    layer.bias.value[...] = rng.normal(size=4)
    check_layer_gradients(layer, rng.normal(size=(3, 7)), rng)


@pytest.mark.parametrize("make,shape", [
    (lambda: AvgPool2D(2), (2, 3, 6, 5)),
    (lambda: AvgPool2D(3, 2), (2, 2, 7, 8)),  # overlapping windows
    (lambda: AvgPool2D((2, 3), (1, 2)), (1, 2, 5, 7)),
    (GlobalAvgPool2D, (3, 2, 4, 5)),
    (lambda: AvgPool2D((4, 5), (4, 5)), (2, 2, 5, 5)),  # one window of whole rows, the last row out
])
def test_average_pooling_gradients(make, shape, rng):
    check_layer_gradients(make(), rng.normal(size=shape), rng)


def test_relu_gradients(rng):
    x = rng.uniform(0.1, 1.0, size=(3, 2, 4)) * rng.choice([-1, 1], size=(3, 2, 4))
    check_layer_gradients(ReLU(), x, rng)


def test_flatten_gradients(rng):
    check_layer_gradients(Flatten(), rng.normal(size=(2, 3, 2, 2)), rng)


def test_softmax_vector_jacobian_product(rng):
    check_layer_gradients(Softmax(), rng.normal(size=(4, 6)) * 3, rng)


def test_softmax_cross_entropy_value_and_gradient(rng):
    z = rng.normal(size=(5, 4)) * 2
    labels = rng.integers(0, 4, size=5)
    loss, dz = softmax_cross_entropy(z, labels)
    assert loss == pytest.approx(ref.cross_entropy(z, labels), rel=1e-12)
    np.testing.assert_allclose(dz, ref.numeric_grad(lambda: softmax_cross_entropy(z, labels)[0], z),
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, F64])
def test_softmax_cross_entropy_is_stable_for_huge_logits(dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4 - 5], [3e4, 3e4, -3e4]], dtype=dtype)
    labels = np.array([0, 0, 1])
    loss, dz = softmax_cross_entropy(z, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(dz))
    assert loss == pytest.approx(ref.cross_entropy(z, labels), rel=1e-6)
    np.testing.assert_allclose(dz.sum(axis=1), 0, atol=1e-6)


def test_softmax_cross_entropy_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        softmax_cross_entropy(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="shape"):
        softmax_cross_entropy(np.zeros((2, 3)), [0])


@pytest.mark.parametrize("ends_in_softmax", [True, False])
def test_model_backward_is_gradient_of_mean_loss(ends_in_softmax, rng):
    """The whole model: every parameter's grad is d(mean cross-entropy)/dparameter.

    Catches any extra 1/N (the 1/B^2 bug) or a missing one."""
    layers = [Conv2D(1, 2, 3, stride=2, padding=1, dtype=F64), ReLU(), MaxPool2D(2),
              Flatten(), Dense(8, 3, dtype=F64)] + ([Softmax()] if ends_in_softmax else [])
    model = Sequential(layers, seed=3)
    x = rng.normal(size=(4, 1, 8, 8))
    labels = np.array([0, 2, 1, 2])

    def loss():
        out = model.predict(x)
        return ref.cross_entropy(np.log(out) if ends_in_softmax else out, labels)

    model.forward(x)
    reported = model.backward(labels)
    assert reported == pytest.approx(loss(), rel=1e-10)
    for p in model.parameters():
        np.testing.assert_allclose(p.grad, ref.numeric_grad(loss, p.value), rtol=1e-5, atol=1e-8,
                                   err_msg=p.name)


FUSED_STACKS = [
    # (conv args, pool args): conv -> ReLU -> MaxPool2D, fused inside Sequential
    ((2, 3, 3, 1, 1), (2, None)),    # pool-major order, the unrolled 2x2 windows
    ((2, 3, 3, 1, 1), (3, None)),    # pool-major order, general windows (3x3)
    ((2, 2, 3, 2, 1), ((2, 3), None)),  # pool-major, 2x3 windows, strided padded conv
    ((2, 3, (2, 3), (2, 1), (1, 0)), (3, 2)),  # general path, overlapping windows
    ((2, 2, 3, 1, 0), ((2, 3), (1, 2))),
]


@pytest.mark.parametrize("conv,pool", FUSED_STACKS)
@pytest.mark.parametrize("block_bytes", [None, 1])
def test_fused_conv_relu_pool_gradients(conv, pool, block_bytes, rng, monkeypatch, using):
    """Conv2D -> ReLU -> MaxPool2D runs as one fused pass in a Sequential; check its
    gradients by finite differences, also when the batch is unfolded one image per block."""

    if block_bytes is not None:
        using(block_bytes=block_bytes)
    c, oc, k, s, p = conv
    layers = [Conv2D(c, oc, k, stride=s, padding=p, dtype=F64), ReLU(), MaxPool2D(*pool), Flatten()]
    flat = int(np.prod(MaxPool2D(*pool).output_shape(layers[0].output_shape((c, 9, 8)))))
    model = Sequential(layers + [Dense(flat, 3, dtype=F64)], seed=5)
    assert model.fused_layers() == {1, 2}
    # Distinct conv outputs (no pooling ties): random weights on random input.
    x = rng.normal(size=(3, c, 9, 8))
    labels = np.array([0, 2, 1])

    def loss():
        return ref.cross_entropy(model.predict(x), labels)

    model.forward(x)
    assert model.backward(labels) == pytest.approx(loss(), rel=1e-10)
    for prm in model.parameters():
        np.testing.assert_allclose(prm.grad, ref.numeric_grad(loss, prm.value), rtol=1e-5,
                                   atol=1e-8, err_msg=prm.name)


@pytest.mark.parametrize("conv,pool", FUSED_STACKS)
def test_fused_forward_equals_the_layers_run_one_by_one(conv, pool, rng):
    c, oc, k, s, p = conv
    model = Sequential([Conv2D(c, oc, k, stride=s, padding=p), ReLU(), MaxPool2D(*pool)], seed=2)
    alone = Conv2D(c, oc, k, stride=s, padding=p)  # not in a Sequential: nothing fused
    alone.weight.value[...] = model.layers[0].weight.value
    alone.bias.value[...] = rng.normal(size=oc)
    model.layers[0].bias.value[...] = alone.bias.value
    x = rng.normal(size=(4, c, 9, 8)).astype(np.float32)
    expected = MaxPool2D(*pool).forward(ReLU().forward(alone.forward(x)))
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6, atol=1e-6)


#: Non-overlapping pooling windows the random cases cycle through (each of the
#: epilogue's paths: the unrolled 2x2 one, and the general one for other sizes).
POOL_MAJOR_WINDOWS = [(2, 2), (3, 3), (2, 3), (1, 2), (3, 1), (2, 1)]


def _random_fused_stack(draw, window):
    """(conv args, input shape) of a random conv to put before a ReLU and a max-pool
    with ``window`` (stride = window), small enough to run in a blink."""
    c, oc = int(draw.integers(1, 4)), int(draw.integers(1, 5))
    k = (int(draw.integers(1, 4)), int(draw.integers(1, 4)))
    s = (int(draw.integers(1, 3)), int(draw.integers(1, 3)))
    p = (int(draw.integers(0, k[0])), int(draw.integers(0, k[1])))
    h, w = (int(draw.integers(window[i] * s[i] + k[i], 14)) for i in range(2))
    return (c, oc, k, s, p), (int(draw.integers(1, 6)), c, h, w)


@pytest.mark.parametrize("case", range(12))
@pytest.mark.parametrize("block_bytes", [None, 1])
def test_fused_pool_major_pass_equals_the_layers_one_by_one(case, block_bytes, monkeypatch, using):
    """Random shapes, strides, paddings, windows and batch sizes: the fused
    conv -> ReLU -> max-pool (pool-major order) gives the output and every
    gradient that the three layers give run one by one (float64, no ties)."""

    if block_bytes is not None:
        using(block_bytes=block_bytes)
    draw = np.random.default_rng([case, 2026])
    window = POOL_MAJOR_WINDOWS[case % len(POOL_MAJOR_WINDOWS)]
    (c, oc, k, s, p), shape = _random_fused_stack(draw, window)
    fused = Sequential([Conv2D(c, oc, k, stride=s, padding=p, dtype=F64), ReLU(),
                        MaxPool2D(window)], seed=case)
    assert fused.fused_layers() == {1, 2} and fused.layers[0]._pool_major()
    alone = [Conv2D(c, oc, k, stride=s, padding=p, dtype=F64), ReLU(), MaxPool2D(window)]
    alone[0].weight.value[...] = fused.layers[0].weight.value
    alone[0].bias.value[...] = draw.normal(size=oc)
    fused.layers[0].bias.value[...] = alone[0].bias.value
    x = draw.normal(size=shape)
    want = x
    for layer in alone:
        want = layer.forward(want)
    got = fused.layers[0].forward(x)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fused.layers[0].forward(x, training=False), want, rtol=1e-12,
                               atol=1e-12)
    fused.layers[0].forward(x)
    dy = draw.normal(size=want.shape)
    dx_got = fused.layers[0].backward(dy)
    dx_want = dy
    for layer in reversed(alone):
        dx_want = layer.backward(dx_want)
    np.testing.assert_allclose(dx_got, dx_want, rtol=1e-10, atol=1e-12)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(getattr(fused.layers[0], name).grad,
                                   getattr(alone[0], name).grad, rtol=1e-10, atol=1e-12,
                                   err_msg=name)


def test_fused_dense_relu_gradients(rng):
    """Dense -> ReLU runs as one bias+ReLU pass inside a Sequential: check every gradient."""
    model = Sequential([Flatten(), Dense(12, 6, dtype=F64), ReLU(), Dense(6, 3, dtype=F64), Softmax()],
                       seed=4)
    assert model.fused_layers() == {2}
    for p in model.parameters():
        if p.name.endswith("bias"):
            p.value[...] = rng.normal(size=p.shape) * 0.5
    x = rng.normal(size=(4, 1, 3, 4))
    labels = np.array([0, 2, 1, 2])

    def loss():
        return ref.cross_entropy(np.log(model.predict(x)), labels)

    model.forward(x)
    assert model.backward(labels) == pytest.approx(loss(), rel=1e-10)
    for p in model.parameters():
        np.testing.assert_allclose(p.grad, ref.numeric_grad(loss, p.value), rtol=1e-5, atol=1e-8,
                                   err_msg=p.name)
