"""Grouped, depthwise and dilated convolutions, convs without a bias, and max-pooling
with padding: against NumPy references, finite differences, the unfold path,
checkpoints and onnxruntime."""
import numpy as np
import onnxruntime as ort
import pytest

import reference as ref
from nnjit import (BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, PlanError, ReLU, Sequential,
                   Softmax, load_checkpoint, save_checkpoint, using)
from nnjit.kernels.grouped_conv import planes_in_registers
from nnjit.onnx_export import export_onnx
from test_gradients import check_layer_gradients

F64 = np.float64

#: (C, OC, kernel, stride, padding, groups, dilation)
CONVS = [
    (4, 8, 3, 2, 1, 4, (1, 2)),  # depthwise with a channel multiplier 2, dilated columns
    (6, 6, 3, 1, 1, 6, 1),       # depthwise
    (4, 6, (3, 2), 1, 0, 2, 2),  # two groups, dilated
    (3, 5, 3, 1, 2, 1, 2),       # dilated only
    (6, 3, 1, 1, 0, 3, 1),       # grouped 1x1
    (6, 6, 3, 2, 1, 6, 1),       # depthwise at stride 2 (MobileNet's): two phases a side
    (4, 4, 5, 3, 2, 4, 1),       # depthwise 5x5 at stride 3
    (4, 8, 3, 2, 2, 2, 2),       # grouped, stride 2 and dilation 2: taps in one phase
    (4, 4, 3, (2, 1), 1, 4, 1),  # different strides: two phases of rows, one of columns
]


@pytest.mark.parametrize("c,oc,k,s,p,groups,dilation", CONVS)
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (np.float32, 1e-5)])
def test_forward_matches_numpy(c, oc, k, s, p, groups, dilation, dtype, tol, rng):
    conv = Conv2D(c, oc, k, stride=s, padding=p, groups=groups, dilation=dilation, dtype=dtype)
    conv.bias.value[...] = rng.normal(size=oc)
    x = rng.normal(size=(3, c, 9, 8)).astype(dtype)
    assert conv.weight.shape == (oc, c // groups, *conv.kernel_size)
    want = ref.conv2d_grouped(x, conv.weight.value, conv.bias.value, conv.stride, conv.padding,
                              groups, conv.dilation)
    np.testing.assert_allclose(conv.forward(x, training=False), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("c,oc,k,s,p,groups,dilation", CONVS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_finite_differences(c, oc, k, s, p, groups, dilation, bias, rng):
    conv = Conv2D(c, oc, k, stride=s, padding=p, groups=groups, dilation=dilation, bias=bias,
                  dtype=F64)
    if bias:
        conv.bias.value[...] = rng.normal(size=oc)
    else:
        assert conv.bias is None and [n for n, _ in conv.named_parameters()] == ["weight"]
    check_layer_gradients(conv, rng.normal(size=(2, c, 9, 8)), rng, eps=1e-3)


@pytest.mark.parametrize("width", [7, 8, 33, 40])
@pytest.mark.parametrize("pad", [0, 1, 2])
def test_stride2_rows_of_any_width_and_padding(width, pad, rng):
    """At column stride 2 each input row is split into its even and odd columns
    (and the input gradient's rows merged back) a vector pair at a time: odd and
    even widths, rows longer than one pair, each padding parity."""
    conv = Conv2D(2, 2, 3, stride=2, padding=pad, groups=2, dtype=F64)
    conv.bias.value[...] = rng.normal(size=2)
    x = rng.normal(size=(2, 2, 5, width))
    want = ref.conv2d_grouped(x, conv.weight.value, conv.bias.value, conv.stride, conv.padding,
                              2, conv.dilation)
    np.testing.assert_allclose(conv.forward(x, training=False), want, rtol=1e-12, atol=1e-12)
    check_layer_gradients(conv, x, rng, eps=1e-3)


@pytest.mark.parametrize("width", [4, 8, 9, 15, 16, 17, 33, 40])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (np.float32, 1e-5)])
def test_wide_depthwise_planes_with_and_without_relu(width, stride, dilation, dtype, tol, rng,
                                                     using):
    """Depthwise 3x3 planes whose output rows fill half a vector or more are summed
    row by row in place (half-vector rows two at a time, an odd count leaving
    one): every width around half, one and two vectors, both strides, dilation,
    the fused ReLU (at inference) or not, against numpy."""
    conv = Conv2D(4, 4, 3, stride=stride, padding=1, groups=4, dilation=dilation, dtype=dtype)
    check_against_numpy_with_relu(conv, rng.normal(size=(3, 4, 7, width)).astype(dtype), tol,
                                  rng)


def check_against_numpy_with_relu(conv, x, tol, rng):
    """conv (a random bias given) on x against numpy, alone and with a ReLU fused
    into it at inference."""
    conv.bias.value[...] = rng.normal(size=conv.out_channels)
    want = ref.conv2d_grouped(x, conv.weight.value, conv.bias.value, conv.stride, conv.padding,
                              conv.groups, conv.dilation)
    np.testing.assert_allclose(conv.forward(x, training=False), want, rtol=tol, atol=tol)
    model = Sequential([conv, ReLU()])
    assert 1 in model.fused_layers(training=False)
    np.testing.assert_allclose(model.predict(x), np.maximum(want, 0), rtol=tol, atol=tol)


@pytest.mark.parametrize("height,width,stride", [(8, 8, 1), (4, 4, 1), (16, 16, 1), (3, 32, 1),
                                                 (16, 16, 2), (8, 16, 2), (6, 32, 2)])
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (np.float32, 1e-5)])
def test_depthwise_planes_summed_in_registers(height, width, stride, dtype, tol, rng, using):
    """Depthwise 3x3 convs whose planes are summed straight from the input (rows of
    a few to a vector, or of whole vectors; at stride 2 rows of one or two
    vectors), with a channel multiplier, against numpy; and fused with ReLU at
    inference."""
    conv = Conv2D(3, 6, 3, stride=stride, padding=1, groups=3, dtype=dtype)
    x = rng.normal(size=(5, 3, height, width)).astype(dtype)
    # float64's rows of 32 at stride 2 are four vectors: the padded copy's path
    in_registers = not (dtype == F64 and width == 32 and stride == 2)
    assert planes_in_registers(conv._geometry(x.shape), 1, 1, 1, x.itemsize) == in_registers
    check_against_numpy_with_relu(conv, x, tol, rng)


@pytest.mark.parametrize("height,width", [(8, 8), (4, 4), (3, 16), (8, 2)])
def test_depthwise_input_gradient_in_registers_matches_finite_differences(height, width, rng):
    """A depthwise 3x3 conv at stride 1 (one output channel a group) takes its
    input gradient as the same register path's conv of the output gradient
    with each filter turned round: planes of whole vectors, two and four rows
    to a vector (float64's lanes), against finite differences."""
    conv = Conv2D(3, 3, 3, padding=1, groups=3, dtype=F64)
    x = rng.normal(size=(2, 3, height, width))
    assert planes_in_registers(conv._geometry(x.shape), 1, 1, 1, x.itemsize)
    check_layer_gradients(conv, x, rng, eps=1e-3)


@pytest.mark.parametrize("tail", [[], [ReLU], [ReLU, MaxPool2D]])
def test_forced_grouped_path_agrees_with_unfold_on_plain_convs(tail, rng, using):
    """The grouped kernels run any conv: forced on a plain one (with the fused
    epilogue the fusion pass gives it), the unfold path's outputs and gradients."""
    def run():
        layers = [Conv2D(3, 5, 3, padding=1, dtype=F64)] + [t(2) if t is MaxPool2D else t()
                                                            for t in tail]
        model = Sequential(layers + [Flatten(), Dense(5 * (4 if tail[1:] else 8) ** 2, 3,
                                                      dtype=F64)], seed=1)
        x = np.random.default_rng(0).normal(size=(4, 3, 8, 8))
        out = model.forward(x).copy()
        model.backward(np.array([0, 1, 2, 0]))
        return out, model.flat.grads.copy()

    want = run()
    using(conv="grouped")
    got = run()
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_a_grouped_conv_before_a_pooled_norm_trains_right(rng):
    """conv(groups) -> BN -> ReLU -> pool: the norm does not hand its gradient back to
    a grouped conv (only plain convs evaluate it); every gradient by finite differences."""
    model = Sequential([Conv2D(2, 4, 3, groups=2, bias=False, dtype=F64), BatchNorm2D(4, dtype=F64),
                        ReLU(), MaxPool2D(2), Flatten(), Dense(4 * 3 * 3, 3, dtype=F64)], seed=2)
    x = rng.normal(size=(3, 2, 8, 8))
    labels = np.array([0, 2, 1])

    def loss():
        return ref.cross_entropy(model.forward(x), labels)

    model.forward(x)
    model.backward(labels)
    for p in model.parameters():
        np.testing.assert_allclose(p.grad, ref.numeric_grad(loss, p.value), rtol=1e-5,
                                   atol=1e-8, err_msg=p.name)


@pytest.mark.parametrize("forced", ["unfold", "winograd", "windows", "direct", "pointwise"])
def test_other_algorithms_refuse_grouped_convs(forced):
    conv = Conv2D(4, 4, 3, groups=4)
    with using(conv=forced), pytest.raises(PlanError, match="groups"):
        conv.forward(np.zeros((1, 4, 8, 8), np.float32))


@pytest.mark.parametrize("bad,match", [
    (dict(groups=3), "divisible"), (dict(groups=0), "groups"), (dict(dilation=0), "dilation"),
    (dict(bias="yes"), "bias"),
])
def test_bad_options_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        Conv2D(4, 8, 3, **bad)


def mobile_block_net(dtype=np.float32):
    """conv, depthwise (dilated) + BN + ReLU, pointwise without bias + BN, a padded pool."""
    return Sequential([Conv2D(1, 4, 3, padding=1, dtype=dtype), ReLU(),
                       Conv2D(4, 4, 3, padding=2, groups=4, dilation=2, bias=False, dtype=dtype),
                       BatchNorm2D(4, dtype=dtype), ReLU(),
                       Conv2D(4, 6, 1, bias=False, dtype=dtype), BatchNorm2D(6, dtype=dtype),
                       ReLU(), MaxPool2D(3, 2, padding=1), Flatten(),
                       Dense(6 * 4 * 4, 3, dtype=dtype), Softmax()], seed=0)


def trained_a_little(model, rng):
    from nnjit import Momentum
    opt = Momentum(model.parameters(), lr=0.05, momentum=0.9)
    x = rng.normal(size=(8, 1, 8, 8)).astype(model.dtype)
    for _ in range(3):  # the norms' running statistics move away from 0 and 1
        model.forward(x)
        model.backward(rng.integers(0, 3, 8))
        opt.step()
    return x


def test_folded_inference_matches_the_reference_path(rng, using):
    """At inference each BN folds into the bias-less conv before it (which then
    gains a bias): predict equals the unfused, unfolded path's."""
    model = mobile_block_net()
    x = trained_a_little(model, rng)
    folded = model.predict(x)
    assert {3, 6} <= model.fused_layers(training=False)
    using(fusion=False, replay=False)
    np.testing.assert_allclose(folded, model.predict(x), rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip(tmp_path, rng):
    model = mobile_block_net()
    x = trained_a_little(model, rng)
    save_checkpoint(model, tmp_path / "m.json", input_shape=[1, 8, 8])
    loaded = load_checkpoint(tmp_path / "m.json").model
    assert loaded.config() == model.config()
    assert loaded.layers[2].groups == 4 and loaded.layers[2].bias is None
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


@pytest.mark.parametrize("batch", [1, 4])
def test_onnx_export_runs_in_onnxruntime(tmp_path, rng, batch):
    model = mobile_block_net()
    x = trained_a_little(model, rng)[:batch]
    export_onnx(model, tmp_path / "m.onnx", (1, 8, 8))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x})
    np.testing.assert_allclose(got, model.predict(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), ((3, 2), 1, (1, 1)), (2, 2, 1)])
def test_padded_max_pool_matches_numpy_and_finite_differences(k, s, p, rng):
    pool = MaxPool2D(k, s, padding=p)
    x = rng.normal(size=(2, 3, 7, 6))
    want = ref.maxpool2d_padded(x, pool.kernel_size, pool.stride, pool.padding)
    np.testing.assert_array_equal(pool.forward(x, training=False), want)
    check_layer_gradients(pool, x, rng)


def test_padded_pool_is_not_fused_into_the_conv():
    model = Sequential([Conv2D(1, 2, 3), ReLU(), MaxPool2D(3, 2, padding=1)])
    assert model.fused_layers(training=True) == {1}


def test_pool_padding_over_half_the_window_is_refused():
    with pytest.raises(ValueError, match="half"):
        MaxPool2D(2, padding=2)
