"""Models that are graphs: residual sums, concatenation, a tensor read by several
layers; their gradients, fusion, checkpoints and ONNX export."""
import json

import numpy as np
import pytest

import nnjit
import reference as ref
from nnjit import (Add, BatchNorm2D, CheckpointError, Concatenate, Conv2D, Dense, Dropout, Flatten,
                   GlobalAvgPool2D, Input, MaxPool2D, Model, ReLU, Sequential, Softmax,
                   load_checkpoint, save_checkpoint)
from nnjit.onnx_export import export_onnx, onnxruntime_max_difference

F64 = np.float64


def residual_net(dtype=np.float32, channels=(2, 6, 6), seed=0):
    """conv-BN-ReLU-conv-BN + a 1x1 projection of the input, added, ReLU; the
    block's first activation read again by a Concatenate; pooled to classes."""
    c = channels[0]
    x = Input(channels)
    a = ReLU()(BatchNorm2D(3, dtype=dtype)(Conv2D(c, 3, 3, padding=1, dtype=dtype)(x)))
    b = BatchNorm2D(3, dtype=dtype)(Conv2D(3, 3, 3, padding=1, dtype=dtype)(a))
    shortcut = Conv2D(c, 3, 1, dtype=dtype)(x)
    y = ReLU()(Add()([b, shortcut]))
    y = Concatenate()([y, a])
    y = Dense(6, 4, dtype=dtype)(GlobalAvgPool2D()(y))
    return Model(x, Softmax()(y), seed=seed)


def test_graph_gradients_match_finite_differences(rng):
    """Every parameter's gradient of the mean cross-entropy (the training
    forward, batch statistics), with the input read by two convs and the
    first activation by a conv and the concatenation: gradients add up."""
    model = residual_net(F64, seed=1)
    x = rng.normal(size=(3, 2, 6, 6))
    labels = np.array([0, 3, 1])

    def loss():
        return ref.cross_entropy(np.log(model.forward(x)), labels)

    model.forward(x)
    assert model.backward(labels) == pytest.approx(loss(), rel=1e-10)
    for p in model.parameters():
        np.testing.assert_allclose(p.grad, ref.numeric_grad(loss, p.value), rtol=1e-5,
                                   atol=1e-8, err_msg=p.name)


def test_residual_block_predict_matches_a_numpy_reference(rng):
    x_in = Input((2, 5, 7))
    conv1, conv2 = Conv2D(2, 2, 3, padding=1), Conv2D(2, 2, 3, padding=1)
    y = Add()([conv2(ReLU()(conv1(x_in))), x_in])
    model = Model(x_in, Flatten()(ReLU()(y)), seed=4)
    x = rng.normal(size=(3, 2, 5, 7)).astype(np.float32)
    h = np.maximum(ref.conv2d(x, conv1.weight.value, conv1.bias.value, (1, 1), (1, 1)), 0)
    expected = np.maximum(ref.conv2d(h, conv2.weight.value, conv2.bias.value, (1, 1), (1, 1)) + x,
                          0).reshape(3, -1)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.predict(x[:1]), expected[:1], rtol=1e-5, atol=1e-5)


def test_fusion_sees_through_the_graph():
    """conv-BN-ReLU inside the block stays fused in training, the sum's ReLU is
    the Add's epilogue, and at inference each BN folds into its conv."""
    model = residual_net()
    kinds = [type(layer).__name__ for layer in model.layers]
    relus = [i for i, k in enumerate(kinds) if k == "ReLU"]
    norms = [i for i, k in enumerate(kinds) if k == "BatchNorm2D"]
    assert set(relus) <= model.fused_layers(training=True)
    assert set(relus) | set(norms) <= model.fused_layers(training=False)


def test_fused_and_reference_paths_agree(rng, using):
    x = rng.normal(size=(5, 2, 6, 6)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 0])

    def run(model):  # predict before the training pass moves the running statistics
        return model.predict(x), model.forward(x), model.backward(labels), \
            model.flat.grads.copy(), model.predict(x[:2])

    fused = run(residual_net(seed=2))
    using(conv="unfold", fusion=False, replay=False)
    plain = run(residual_net(seed=2))
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def residual_stack(c, hw, seed=0):
    """Two residual blocks: an identity shortcut from the model's input, then a
    stride-2 block whose 1x1 projection comes after its second conv (the
    sum fuses into the projection) and whose sum has no ReLU after it."""
    x = Input((c, hw, hw))

    def conv_bn(inputs, c_in, c_out, k, stride=1):
        conv = Conv2D(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)
        return BatchNorm2D(c_out)(conv(inputs))

    h = ReLU()(conv_bn(x, c, c, 3))
    y = ReLU()(Add()([conv_bn(h, c, c, 3), x]))
    h = ReLU()(conv_bn(y, c, 2 * c, 3, stride=2))
    z = Add()([conv_bn(h, 2 * c, 2 * c, 3), conv_bn(y, c, 2 * c, 1, stride=2)])
    model = Model(x, Softmax()(Dense(2 * c, 5)(GlobalAvgPool2D()(z))), seed=seed)
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # statistics that are not the identity
        if isinstance(layer, BatchNorm2D):
            layer.running_mean[...] = rng.normal(size=layer.num_features) * 0.2
            layer.running_var[...] = rng.uniform(0.5, 2.0, size=layer.num_features)
            layer.weight.value[...] = rng.uniform(0.5, 1.5, size=layer.num_features)
            layer.bias.value[...] = rng.normal(size=layer.num_features) * 0.2
    return model


@pytest.mark.parametrize("channels, settings, head_algorithm", [
    (16, dict(conv="direct"), "direct"), (16, dict(conv="unfold"), "unfold"),
    (32, dict(winograd4_min_channels=64), "winograd"), (32, {}, "winograd-4x4")])
def test_a_residual_sum_runs_in_the_conv_before_it_at_inference(channels, settings,
                                                                head_algorithm, rng, using):
    """At inference each Add (and the ReLU after it) is absorbed into the conv
    that computes its last input, which adds the other (the model's input, or
    a conv's output) in its output pass: the direct conv and Winograd while
    each block of output is in cache, the others in one pass after. Predict
    equals the unfused reference path on one image (replayed), a few and a
    batch run in several passes; training keeps the Adds."""
    using(**settings)
    model = residual_stack(channels, 8, seed=3)
    kinds = [type(layer).__name__ for layer in model.layers]
    adds = {i for i, k in enumerate(kinds) if k == "Add"}
    assert adds <= model.fused_layers(training=False)
    assert not adds & model.fused_layers(training=True)
    inference = model._inference
    assert len(inference.fusion.residuals) == 2
    head = min(inference.fusion.residuals)  # the first block's second conv
    assert inference.fusion.residuals[head] == -1  # adds the model's input
    assert inference.layers[head].plan((300, channels, 8, 8), False).algorithm.value \
        == head_algorithm
    x = rng.normal(size=(300, channels, 8, 8)).astype(np.float32)
    fused = [model.predict(x[:1]), model.predict(x[:1]), model.predict(x[:3]),
             model.predict(x, batch_size=300)]
    using(fusion=False, replay=False)
    plain = [model.predict(x[:1]), model.predict(x[:1]), model.predict(x[:3]), model.predict(x)]
    for a, b in zip(fused, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_fused_sum_of_the_model_input_takes_what_the_add_took(rng):
    """The model's input as the residual: a strided view or a Fortran-ordered
    array predicts as a C-ordered copy does (replayed or not), and a float64 one
    meets the Add's own error, fused or not."""
    x_in = Input((4, 6, 6))
    y = ReLU()(Add()([Conv2D(4, 4, 3, padding=1)(ReLU()(Conv2D(4, 4, 3, padding=1)(x_in))),
                      x_in]))
    model = Model(x_in, Flatten()(y), seed=0)
    assert model._inference.fusion.residuals
    x = rng.normal(size=(3, 4, 6, 12)).astype(np.float32)[:, :, :, ::2]
    want = model.predict(np.ascontiguousarray(x))
    for variant in (x, np.asfortranarray(x), x[:1], x[:1]):
        np.testing.assert_allclose(model.predict(variant), want[:len(variant)], rtol=1e-6)
    for fusion in (True, False):
        with nnjit.using(fusion=fusion), pytest.raises(ValueError, match="one dtype"):
            model.predict(x.astype(np.float64))


def test_a_sum_whose_conv_output_is_read_again_is_not_fused(rng):
    """Not absorbed: the conv's output read by another layer too, and a sum of
    three; their predictions still equal the unfused path's."""
    x_in = Input((4, 6, 6))
    conv = Conv2D(4, 4, 3, padding=1)(x_in)
    twice = Add()([conv, x_in])
    three = Add()([Conv2D(4, 4, 3, padding=1)(x_in), x_in, conv])
    model = Model(x_in, Flatten()(Concatenate()([twice, three, conv])), seed=2)
    assert not model._inference.fusion.residuals
    x = rng.normal(size=(3, 4, 6, 6)).astype(np.float32)
    fused = model.predict(x)
    with nnjit.using(fusion=False):
        np.testing.assert_allclose(fused, model.predict(x), rtol=1e-5, atol=1e-6)


def test_a_conv_takes_a_residual_only_where_the_fusion_gave_it_one(rng):
    conv = Conv2D(2, 3, 3, padding=1)
    x = rng.normal(size=(2, 2, 5, 5)).astype(np.float32)
    residual = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="add epilogue"):
        conv.forward(x, training=False, residual=residual)
    conv.set_epilogue(add=True, add_relu=True)
    with pytest.raises(ValueError, match="add epilogue"):
        conv.forward(x, training=True, residual=residual)
    with pytest.raises(ValueError, match=r"one shape, got \[\(2, 3, 5, 5\), \(2, 2, 5, 5\)\]"):
        conv.forward(x, training=False, residual=residual[:, :2])
    with pytest.raises(ValueError, match=r"one dtype, got \['float32', 'float64'\]"):
        conv.forward(x, training=False, residual=residual.astype(np.float64))
    conv.set_epilogue()
    want = np.maximum(conv.forward(x, training=False) + 1.0, 0)
    conv.set_epilogue(add=True, add_relu=True)
    got = conv.forward(x, training=False, residual=residual + 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_graph_checkpoint_round_trip(tmp_path, rng):
    model = residual_net(seed=3)
    x = rng.normal(size=(2, 2, 6, 6)).astype(np.float32)
    model.forward(x)
    model.backward(np.array([1, 2]))  # running statistics move
    save_checkpoint(model, tmp_path / "m.json", input_shape=[2, 6, 6])
    loaded = load_checkpoint(tmp_path / "m.json").model
    assert type(loaded) is Model and loaded.inputs_of == model.inputs_of
    assert [p.name for p in loaded.parameters()] == [p.name for p in model.parameters()]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_a_chain_saves_as_before_and_loads_as_a_sequential(tmp_path):
    model = Sequential([Flatten(), Dense(4, 3), Softmax()], seed=0)
    save_checkpoint(model, tmp_path / "s.json")
    doc = json.loads((tmp_path / "s.json").read_text())
    assert all("inputs" not in entry for entry in doc["architecture"])
    assert type(load_checkpoint(tmp_path / "s.json").model) is Sequential


@pytest.mark.parametrize("batch", [1, 3])
def test_graph_onnx_export_runs_in_onnxruntime(tmp_path, rng, batch):
    model = residual_net(seed=5)
    export_onnx(model, tmp_path / "m.onnx", (2, 6, 6))
    x = rng.normal(size=(batch, 2, 6, 6)).astype(np.float32)
    assert onnxruntime_max_difference(tmp_path / "m.onnx", model, x) <= 1e-5


def test_building_errors_name_the_problem():
    x = Input((3, 8, 8))
    conv = Conv2D(3, 4, 3)
    y = conv(x)
    with pytest.raises(ValueError, match="already called"):
        conv(x)
    with pytest.raises(ValueError, match="one shape"):
        Add()([y, x])
    with pytest.raises(ValueError, match="does not depend|another Input"):
        Model(x, ReLU()(Input((3, 8, 8))))
    with pytest.raises(ValueError, match="Input"):
        Model(y, ReLU()(y))
    with pytest.raises(ValueError, match="merges"):
        Sequential([Add()])
    with pytest.raises(ValueError, match="shape"):
        Conv2D(5, 4, 3)(x)


def graph_checkpoint(tmp_path, architecture, parameters=()):
    doc = {"format": "nnjit-checkpoint", "version": 1, "architecture": architecture,
           "metadata": {"input_shape": [1, 4, 4]}, "optimizer": None, "layer_state": {},
           "buffers": [], "parameters": list(parameters)}
    path = tmp_path / "g.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("architecture,message", [
    ([{"type": "ReLU", "config": {}, "inputs": [1]}, {"type": "ReLU", "config": {}, "inputs": [0]}],
     "reads 1"),  # a cycle
    ([{"type": "ReLU", "config": {}, "inputs": [-1]}, {"type": "ReLU", "config": {}, "inputs": [7]}],
     "reads 7"),  # a dangling input
    ([{"type": "ReLU", "config": {}, "inputs": [-1]}, {"type": "ReLU", "config": {}, "inputs": [-1]}],
     "never read"),
    ([{"type": "Add", "config": {}, "inputs": [-1]}], "merges"),
    ([{"type": "ReLU", "config": {}, "inputs": "0"}], "inputs"),
    ([{"type": "ReLU", "config": {}, "inputs": [-1]}] * 20_000, "at most"),
])
def test_broken_graph_checkpoints_fail_with_one_clear_error(tmp_path, architecture, message):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(graph_checkpoint(tmp_path, architecture))


def test_a_sum_of_mismatched_shapes_in_a_checkpoint_is_refused(tmp_path):
    architecture = [{"type": "MaxPool2D", "config": {"kernel_size": 2}, "inputs": [-1]},
                    {"type": "Add", "config": {}, "inputs": [-1, 0]}]
    checkpoint = load_checkpoint(graph_checkpoint(tmp_path, architecture))
    with pytest.raises(CheckpointError, match="one shape"):
        checkpoint.input_shape()


def test_dropout_and_pool_in_a_branch_train(rng):
    """A branch with dropout and a max-pool beside a strided conv: shapes meet at
    the sum, training runs and the loss falls on a fixed batch."""
    x_in = Input((1, 8, 8))
    left = MaxPool2D(2)(Dropout(0.2)(Conv2D(1, 4, 3, padding=1)(x_in)))
    right = Conv2D(1, 4, 3, stride=2, padding=1)(x_in)
    out = Softmax()(Dense(64, 3)(Flatten()(ReLU()(Add()([left, right])))))
    model = Model(x_in, out, seed=0)
    from nnjit import Momentum
    opt = Momentum(model.parameters(), lr=0.1, momentum=0.9)
    x = rng.normal(size=(8, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 8)
    losses = []
    for _ in range(30):
        model.forward(x)
        losses.append(model.backward(labels))
        opt.step()
    assert losses[-1] < 0.5 * losses[0]


def test_the_readme_residual_block_builds_and_trains(rng):
    """The README's functional-API example, as written there."""
    import re

    from conftest import ROOT
    text = (ROOT / "README.md").read_text()
    (example,) = re.findall(r"```python\n(from nnjit import Input.*?)```", text, re.S)
    namespace = {}
    exec(example, namespace)  # noqa: S102  (the project's own README)
    model = namespace["model"]
    assert type(model) is Model and any(isinstance(layer, Add) for layer in model.layers)
    x = rng.normal(size=(4, 3, 32, 32)).astype(np.float32)
    assert model.predict(x).shape == (4, 10)
    model.forward(x)
    assert np.isfinite(model.backward(np.array([0, 1, 2, 3])))
