"""BatchNorm1D/2D: PyTorch's training and inference rules, gradients, buffers in checkpoints."""
import json

import numpy as np
import pytest

import reference as ref
from nnjit import BatchNorm1D, BatchNorm2D, Sequential
from nnjit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nnjit.spec import build_model

F64 = np.float64


def numpy_batchnorm(x, weight, bias, eps):
    """Training-mode batch norm over every axis but 1, and the batch's mean and biased variance."""
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    shape = [1, -1] + [1] * (x.ndim - 2)
    y = (x - mean) / np.sqrt(var + eps) * weight.reshape(shape) + bias.reshape(shape)
    return y, mean.reshape(-1), var.reshape(-1)


@pytest.mark.parametrize("make,shape", [
    (lambda: BatchNorm2D(3, dtype=F64), (4, 3, 5, 6)),
    (lambda: BatchNorm1D(4, dtype=F64), (6, 4)),
    (lambda: BatchNorm1D(2, dtype=F64), (3, 2, 5)),
])
def test_training_forward_and_gradients_by_finite_differences(make, shape, rng):
    layer = make()
    layer.weight.value[...] = rng.uniform(0.5, 2, size=layer.weight.shape)
    layer.bias.value[...] = rng.normal(size=layer.bias.shape)
    x = rng.normal(size=shape) * 3 + 1
    want, _, _ = numpy_batchnorm(x, layer.weight.value, layer.bias.value, layer.eps)
    np.testing.assert_allclose(layer.forward(x), want, rtol=1e-10, atol=1e-10)
    g = rng.normal(size=shape)

    def loss():  # training mode: the batch statistics depend on x
        return float(np.sum(layer.forward(x) * g))

    layer.forward(x)
    dx = layer.backward(g.copy()).copy()
    grads = {p.name: p.grad.copy() for p in layer.parameters()}
    np.testing.assert_allclose(dx, ref.numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    for p in layer.parameters():
        np.testing.assert_allclose(grads[p.name], ref.numeric_grad(loss, p.value), rtol=1e-6,
                                   atol=1e-8, err_msg=p.name)


def test_running_statistics_after_several_steps_equal_a_hand_computation(rng):
    layer = BatchNorm2D(3, momentum=0.2)
    mean, var = np.zeros(3), np.ones(3)
    for _ in range(5):
        x = (rng.normal(size=(4, 3, 2, 3)) * rng.uniform(0.5, 3, size=(1, 3, 1, 1))
             + rng.normal(size=(1, 3, 1, 1))).astype(np.float32)
        layer.forward(x)
        _, m, v = numpy_batchnorm(x.astype(F64), np.ones(3), np.zeros(3), 1e-5)
        n = x.size // 3
        mean = 0.8 * mean + 0.2 * m
        var = 0.8 * var + 0.2 * v * n / (n - 1)  # unbiased variance for the running estimate
    np.testing.assert_allclose(layer.running_mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.running_var, var, rtol=1e-5)


def test_inference_uses_the_running_statistics(rng):
    model = Sequential([BatchNorm1D(4)], seed=0)
    bn = model.layers[0]
    bn.running_mean[...] = rng.normal(size=4)
    bn.running_var[...] = rng.uniform(0.5, 2, size=4)
    bn.weight.value[...] = rng.normal(size=4)
    bn.bias.value[...] = rng.normal(size=4)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    want = (x - bn.running_mean) / np.sqrt(bn.running_var + bn.eps) * bn.weight.value + bn.bias.value
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-6)
    before = bn.running_mean.copy()
    model.predict(x)
    np.testing.assert_array_equal(bn.running_mean, before)  # inference never updates them


def test_one_value_per_channel_cannot_train():
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm1D(3).forward(np.zeros((1, 3), np.float32))


def test_buffers_round_trip_bit_exactly_and_are_checked(tmp_path, rng):
    model = build_model("conv:4:3,bn,relu,pool:2,dense:8,bn,relu,dense:10,softmax", seed=1)
    x = rng.random((16, 1, 28, 28), dtype=np.float32)
    for _ in range(3):
        model.forward(x)
        model.backward(rng.integers(0, 10, 16))
    assert [n for n, _ in model.named_buffers()] == [
        "1.running_mean", "1.running_var", "6.running_mean", "6.running_var"]
    save_checkpoint(model, tmp_path / "c.json")
    loaded = load_checkpoint(tmp_path / "c.json").model
    for (name, a), (_, b) in zip(model.named_buffers(), loaded.named_buffers()):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), name
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    doc = json.loads((tmp_path / "c.json").read_text())
    del doc["buffers"][0]
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="1.running_mean"):
        load_checkpoint(tmp_path / "bad.json")


def test_checkpoints_without_buffers_still_load(tmp_path):
    save_checkpoint(build_model("mlp", seed=0), tmp_path / "c.json")
    doc = json.loads((tmp_path / "c.json").read_text())
    del doc["buffers"], doc["layer_state"]  # as written before BatchNorm and Dropout
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert load_checkpoint(tmp_path / "old.json").model.config() == build_model("mlp").config()


def test_bad_batchnorm_spec_and_shapes():
    with pytest.raises(ValueError, match="unknown layer 'bn:2'"):
        build_model("conv:4:3,bn:2,dense:10")
    with pytest.raises(ValueError, match="BatchNorm2D expects samples of 3 channels"):
        BatchNorm2D(3).forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="BatchNorm1D expects samples of 5 channels"):
        BatchNorm1D(5).forward(np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("make,shape", [(lambda: BatchNorm2D(3, dtype=F64), (4, 3, 3, 4)),
                                        (lambda: BatchNorm1D(5, dtype=F64), (6, 5))])
def test_fused_batchnorm_relu_gradients_by_finite_differences(make, shape, rng):
    """BatchNorm -> ReLU runs as one pass inside a Sequential (training mode, batch statistics)."""
    from nnjit import Dense, Flatten, ReLU

    bn = make()
    flat = int(np.prod(shape[1:]))
    model = Sequential([bn, ReLU(), Flatten(), Dense(flat, 3, dtype=F64)], seed=2)
    assert model.fused_layers() == {1}
    bn.weight.value[...] = rng.uniform(0.5, 2, size=bn.weight.shape)
    bn.bias.value[...] = rng.normal(size=bn.bias.shape) * 0.5
    x = rng.normal(size=shape)
    labels = rng.integers(0, 3, shape[0])

    def loss():
        return ref.cross_entropy(model.forward(x), labels)  # logits: no Softmax at the end

    model.forward(x)
    assert model.backward(labels) == pytest.approx(loss(), rel=1e-10)
    grads = {p.name: p.grad.copy() for p in model.parameters()}
    for p in model.parameters():
        np.testing.assert_allclose(grads[p.name], ref.numeric_grad(loss, p.value), rtol=1e-5,
                                   atol=1e-8, err_msg=p.name)
    # inference applies the ReLU too
    assert np.all(bn.forward(x, training=False) >= 0)


def assert_fused_equals_unfused_and_finite_differences(model, alone, x, labels):
    """``model`` (fused as a Sequential fuses it) and ``alone`` (the same layers and
    weights, each run by itself) give equal outputs and parameter gradients, and
    ``model``'s gradients match finite differences of its training-mode loss."""
    import nnjit

    def loss():
        return ref.cross_entropy(model.forward(x), labels)

    with nnjit.using(fusion=False):
        alone_out = alone.forward(x)
    np.testing.assert_allclose(model.forward(x), alone_out, rtol=1e-12)
    model.backward(labels)
    with nnjit.using(fusion=False):
        alone.backward(labels)
    for p, q in zip(model.parameters(), alone.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12, err_msg=p.name)
    for (name, a), (_, b) in zip(model.named_buffers(), alone.named_buffers(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=name)
    grads = {p.name: p.grad.copy() for p in model.parameters()}
    for p in model.parameters():
        np.testing.assert_allclose(grads[p.name], ref.numeric_grad(loss, p.value), rtol=1e-5,
                                   atol=1e-8, err_msg=p.name)


@pytest.mark.parametrize("pool,relu", [((2, 2), True), ((3, 2), True), ((2, 2), False)])
def test_fused_batchnorm_relu_maxpool_gradients_by_finite_differences(pool, relu, rng):
    """BatchNorm2D -> [ReLU ->] MaxPool2D as one pass (training mode): finite differences,
    and forward and backward equal to the three layers run one by one."""
    from nnjit import Dense, Flatten, MaxPool2D, ReLU

    def make():
        middle = [ReLU()] if relu else []
        bn = BatchNorm2D(3, dtype=F64)
        dense = Dense(3 * 2 * 2, 3, dtype=F64)
        return Sequential([bn, *middle, MaxPool2D(*pool), Flatten(), dense], seed=2)

    model, alone = make(), make()
    assert model.fused_layers() == ({1, 2} if relu else {1})
    for bn in (model.layers[0], alone.layers[0]):
        bn.weight.value[...] = np.linspace(-1.5, 2, 3)  # one negative scale
        bn.bias.value[...] = [0.3, -0.2, 0.1]
    x = rng.normal(size=(4, 3, 5, 5))
    assert_fused_equals_unfused_and_finite_differences(model, alone, x, rng.integers(0, 3, 4))
    first = Sequential([BatchNorm2D(3, dtype=F64), ReLU(), MaxPool2D(2)])  # input gradient too
    first.layers[0].weight.value[...] = [1.0, -0.5, 2.0]
    g = rng.normal(size=(4, 3, 2, 2))

    def input_loss():
        return float(np.sum(first.layers[0].forward(x) * g))

    first.layers[0].forward(x)
    dx = first.layers[0].backward(g.copy()).copy()
    np.testing.assert_allclose(dx, ref.numeric_grad(input_loss, x), rtol=1e-5, atol=1e-8)
    # inference: running statistics, same fused pass
    for name in ("running_mean", "running_var"):
        getattr(alone.layers[0], name)[...] = getattr(model.layers[0], name)
    ref_eval = alone.layers[0].forward(x, training=False)
    if relu:
        ref_eval = np.maximum(ref_eval, 0)
    np.testing.assert_allclose(model.layers[0].forward(x, training=False),
                               ref.maxpool2d(ref_eval, pool[:1] * 2, (2, 2)), rtol=1e-12)


def test_inference_folds_each_norm_into_the_conv_or_dense_before_it(rng):
    """predict runs Conv2D/Dense copies with the norm folded in (and ReLU, pool fused);
    its output equals the layers computed one by one in numpy, and follows later
    changes of the weights and running statistics."""
    model = build_model("conv:4:3:same,bn,relu,pool:2,flatten,dense:6,bn,relu,dense:3,softmax",
                        (2, 6, 6), seed=0)
    conv, bn2, _, _, _, dense, bn1, _, last, _ = model.layers
    assert [type(layer).__name__ for layer in model._inference.layers] == \
        ["Conv2D", "ReLU", "MaxPool2D", "Flatten", "DenseStack", "ReLU", "Dense", "Softmax"]
    x = rng.normal(size=(5, 2, 6, 6)).astype(np.float32)

    def numpy_inference():
        def norm(z, bn):
            shape = [1, -1] + [1] * (z.ndim - 2)
            return ((z - bn.running_mean.reshape(shape)) / np.sqrt(bn.running_var.reshape(shape) + bn.eps)
                    * bn.weight.value.reshape(shape) + bn.bias.value.reshape(shape))
        z = ref.conv2d(x.astype(F64), conv.weight.value, conv.bias.value, (1, 1), (1, 1))
        z = ref.maxpool2d(np.maximum(norm(z, bn2), 0), (2, 2), (2, 2)).reshape(5, -1)
        z = np.maximum(norm(z @ dense.weight.value.T.astype(F64) + dense.bias.value, bn1), 0)
        return ref.softmax(z @ last.weight.value.T.astype(F64) + last.bias.value)

    for step in range(2):
        for bn in (bn1, bn2):
            bn.running_mean[...] = rng.normal(size=bn.num_features)
            bn.running_var[...] = rng.uniform(0.2, 3, size=bn.num_features)
            bn.weight.value[...] = rng.uniform(-2, 2, size=bn.num_features)
            bn.bias.value[...] = rng.normal(size=bn.num_features)
        conv.weight.value[...] *= 1 + step  # a weight change must reach the folded copy
        np.testing.assert_allclose(model.predict(x), numpy_inference(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(model.predict(x, batch_size=2), numpy_inference(), rtol=1e-4,
                                   atol=1e-6)
    loss, _ = model.evaluate(x, np.array([0, 1, 2, 0, 1]))
    assert np.isclose(loss, ref.cross_entropy(np.log(numpy_inference()), np.array([0, 1, 2, 0, 1])),
                      rtol=1e-4)


@pytest.mark.parametrize("pool,relu", [((2, 2), True), ((3, 2), True), ((2, 2), False),
                                       (((2, 3), (1, 2)), True)])
@pytest.mark.parametrize("block_bytes", [None, 1])
def test_conv_evaluates_the_norm_gradient_handed_back_to_it(pool, relu, block_bytes, rng,
                                                            monkeypatch, using):
    """Conv2D -> BatchNorm2D -> [ReLU ->] MaxPool2D in a Sequential: the norm hands its
    input gradient back unevaluated and the conv evaluates it block by block (also one
    output row per block). Every gradient equals the layers run one by one, and finite
    differences, including the conv's input gradient (through a conv before it)."""
    from nnjit import Conv2D, Dense, Flatten, MaxPool2D, ReLU

    if block_bytes is not None:
        using(block_bytes=block_bytes)

    def make():
        middle = [ReLU()] if relu else []
        pooling = MaxPool2D(*pool)
        flat = 3 * int(np.prod(pooling.output_shape((3, 9, 8))[1:]))
        return Sequential([Conv2D(2, 2, 1, dtype=F64), Conv2D(2, 3, 3, padding=1, dtype=F64),
                           BatchNorm2D(3, dtype=F64), *middle, pooling, Flatten(),
                           Dense(flat, 3, dtype=F64)], seed=4)

    model, alone = make(), make()
    assert model.layers[2].hands_back_input_grad
    for bn in (model.layers[2], alone.layers[2]):
        bn.weight.value[...] = [1.5, -0.7, 0.9]  # one negative scale
        bn.bias.value[...] = [0.3, -0.2, 0.1]
    x = rng.normal(size=(3, 2, 9, 8))
    assert_fused_equals_unfused_and_finite_differences(model, alone, x, np.array([2, 0, 1]))


def test_a_handed_back_norm_gradient_is_refused_by_another_conv(rng):
    from nnjit import Conv2D, MaxPool2D, ReLU

    model = Sequential([Conv2D(1, 2, 3), BatchNorm2D(2), ReLU(), MaxPool2D(2)], seed=0)
    other = Conv2D(1, 2, 3)
    x = rng.normal(size=(2, 1, 6, 6)).astype(np.float32)
    model.forward(x)
    other.forward(x)
    grad = model.layers[1].backward(np.ones((2, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="not about its output"):
        other.backward(grad)


@pytest.mark.parametrize("make,shape", [(BatchNorm1D, (16, 6)), (BatchNorm2D, (4, 3, 5, 5))])
def test_float32_gradients_of_features_far_from_zero_keep_their_digits(make, shape, rng):
    """Values near 1000 spread by 0.1: xhat = (x - mean) / std multiplies any
    rounding of the mean by 10. The float32 layer's gradients against the
    batch-norm gradient formula in float64 on the same inputs."""
    x = (1000 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    layer = make(shape[1])
    layer.weight.value[...] = rng.uniform(0.5, 1.5, shape[1])
    layer.forward(x)
    dx = layer.backward(dy.copy())
    axes = (0,) + tuple(range(2, x.ndim))
    b = [1, -1] + [1] * (x.ndim - 2)
    x64, g = x.astype(F64), dy.astype(F64)
    m = x64.size // shape[1]
    invstd = 1 / np.sqrt(x64.var(axis=axes, keepdims=True) + layer.eps)
    xhat = (x64 - x64.mean(axis=axes, keepdims=True)) * invstd
    dxhat = g * layer.weight.value.astype(F64).reshape(b)
    want = invstd / m * (m * dxhat - dxhat.sum(axis=axes, keepdims=True)
                         - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True))
    np.testing.assert_allclose(dx, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(layer.weight.grad, (g * xhat).sum(axis=axes), rtol=1e-4,
                               atol=1e-4)
