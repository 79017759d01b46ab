"""Layer forward passes against the NumPy references, and their input checks."""
import numpy as np
import pytest

import reference as ref
from nnjit import AvgPool2D, Conv2D, Dense, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU, Softmax

CONV_CASES = [
    # (N, C, H, W, OC, kernel, stride, padding)
    (1, 1, 7, 7, 2, 3, 1, 0),
    (3, 2, 9, 6, 4, 3, 2, 1),
    (3, 3, 8, 5, 2, 1, 1, 0),
    (1, 2, 6, 9, 3, (2, 3), (2, 1), (1, 0)),
    (3, 1, 5, 5, 2, 3, 2, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("block_rows", [None, 1])
def test_conv_forward_matches_reference(case, dtype, block_rows, rng, force_row_blocks):
    n, c, h, w, oc, k, s, p = case
    layer = Conv2D(c, oc, k, stride=s, padding=p, dtype=dtype)
    if block_rows is not None:
        force_row_blocks(layer, (c, h, w), block_rows)
    layer.bias.value[...] = rng.normal(size=oc)
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    got = layer.forward(x)
    want = ref.conv2d(x, layer.weight.value, layer.bias.value, layer.stride, layer.padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,c,h,w,k,s", [(1, 1, 4, 4, 2, None), (3, 2, 7, 5, 2, None),
                                         (3, 2, 7, 8, 3, 2), (1, 3, 6, 5, (2, 3), (1, 2))])
def test_maxpool_forward_matches_reference(n, c, h, w, k, s, rng):
    layer = MaxPool2D(k, s)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    np.testing.assert_array_equal(layer.forward(x), ref.maxpool2d(x, layer.kernel_size, layer.stride))


def test_maxpool_floors_partial_windows():
    assert MaxPool2D(2).forward(np.zeros((1, 1, 5, 7), np.float32)).shape == (1, 1, 2, 3)


def test_maxpool_backward_routes_ties_to_one_input():
    layer = MaxPool2D(2)
    layer.forward(np.ones((1, 1, 2, 2), np.float32))
    dx = layer.backward(np.ones((1, 1, 1, 1), np.float32))
    assert dx.sum() == 1.0 and np.count_nonzero(dx) == 1


def test_dense_relu_softmax_flatten_forward(rng):
    x = rng.normal(size=(3, 2, 2, 3)).astype(np.float32)
    flat = Flatten().forward(x)
    np.testing.assert_array_equal(flat, x.reshape(3, 12))
    dense = Dense(12, 5)
    dense.bias.value[...] = rng.normal(size=5)
    y = dense.forward(flat)
    np.testing.assert_allclose(y, flat @ dense.weight.value.T + dense.bias.value, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ReLU().forward(y), np.maximum(y, 0))
    probs = Softmax().forward(y)
    np.testing.assert_allclose(probs, ref.softmax(y.astype(np.float64)), rtol=1e-5, atol=1e-7)


def test_exp_float32_is_within_one_ulp_of_exp():
    """The vectorising float32 exp of the softmax and loss kernels against exp in
    float64, rounded: within 1 ulp everywhere, denormal results included; the
    same zeros, infinities and NaNs."""
    from numba import njit

    from nnjit.kernels.activation import exp_float32

    @njit
    def apply(x, out):
        for i in range(x.size):
            out[i] = exp_float32(x[i])

    x = np.concatenate([np.linspace(-106, 90, 400_001), [0.0, -0.0, np.inf, -np.inf, np.nan,
                                                          88.7228, 88.7229, -103.97, -103.98,
                                                          1e30, -1e30]]).astype(np.float32)
    got = np.empty_like(x)
    apply(x, got)
    with np.errstate(over="ignore"):
        exact = np.exp(x.astype(np.float64))
        want = exact.astype(np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got == 0, want == 0) and np.array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want) & (want > 0)
    ulps = np.abs(got[finite] - exact[finite]) / np.spacing(want[finite])
    assert ulps.max() <= 1.0


def test_softmax_of_extreme_logits_matches_reference():
    """Rows far apart in scale (probabilities down to denormals and 0), a row of
    equal logits, and more rows than one block of the kernel (ROWS_PER_BLOCK).
    The reference shifts by the row maximum in the input's precision, as the
    kernel does (that rounding alone moves exp(-66) by up to 4e-6 in float32),
    and takes the exps and sums in float64."""
    from nnjit.kernels.activation import ROWS_PER_BLOCK

    rng = np.random.default_rng(11)
    z = rng.normal(scale=30.0, size=(ROWS_PER_BLOCK * 2 + 5, 13))
    z[0] = np.linspace(-120, 0, 13)
    z[1] = 4.0
    for dtype, tol in ((np.float32, 1e-6), (np.float64, 1e-13)):
        zt = z.astype(dtype)
        got = Softmax().forward(zt, training=False)
        e = np.exp((zt - zt.max(axis=1, keepdims=True)).astype(np.float64))
        np.testing.assert_allclose(got, e / e.sum(axis=1, keepdims=True), rtol=tol, atol=1e-44)


def test_parameters_have_pytorch_shapes():
    conv, dense = Conv2D(3, 8, (3, 5)), Dense(20, 7)
    assert [(p.name, p.shape) for p in conv.parameters()] == [("weight", (8, 3, 3, 5)), ("bias", (8,))]
    assert [(p.name, p.shape) for p in dense.parameters()] == [("weight", (7, 20)), ("bias", (7,))]
    assert all(p.value.dtype == np.float32 for p in conv.parameters() + dense.parameters())


def test_assigning_parameter_values_changes_the_layer(rng):
    dense = Dense(4, 2)
    dense.weight.value[...] = np.arange(8).reshape(2, 4)
    dense.bias.value[...] = [1, -1]
    np.testing.assert_allclose(dense.forward(np.ones((1, 4), np.float32)), [[7, 21]])


@pytest.mark.parametrize("make,x,match", [
    (lambda: Conv2D(3, 4, 3), np.zeros((2, 1, 8, 8), np.float32), r"\(3, H, W\)"),
    (lambda: Conv2D(1, 4, 5), np.zeros((2, 1, 3, 3), np.float32), "does not fit"),
    (lambda: Conv2D(1, 4, 3), np.zeros((1, 8, 8), np.float32), "4-D"),
    (lambda: Conv2D(1, 4, 3), np.zeros((1, 1, 8, 8), np.uint8), "floating-point"),
    (lambda: Dense(10, 2), np.zeros((2, 9), np.float32), r"\(10,\)"),
    (lambda: MaxPool2D(3), np.zeros((1, 1, 2, 2), np.float32), "does not fit"),
])
def test_bad_input_raises_clear_value_error(make, x, match):
    with pytest.raises(ValueError, match=match):
        make().forward(x)


@pytest.mark.parametrize("make,match", [
    (lambda: Conv2D(0, 4, 3), "in_channels"),
    (lambda: Conv2D(1, 4, 3, stride=0), "stride"),
    (lambda: Conv2D(1, 4, 3, padding=-1), "padding"),
    (lambda: Conv2D(1, 4, (3, 3, 3)), "kernel_size"),
    (lambda: Dense(3, 0), "out_features"),
    (lambda: MaxPool2D(2, stride=0), "stride"),
    (lambda: Dense(3, 2, dtype=np.float16), "float32 or float64"),
    (lambda: Conv2D(1, 4, 3, dtype="int32"), "float32 or float64"),
    (lambda: Dense(3, 2, dtype="bogus"), "float32 or float64"),
])
def test_bad_constructor_arguments_name_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_backward_without_forward_is_an_error():
    with pytest.raises(RuntimeError, match="forward"):
        Dense(2, 2).backward(np.zeros((1, 2), np.float32))


@pytest.mark.parametrize("pool", [None, (2, None), (3, 2)])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("block_bytes", [None, 1])
def test_inference_cuts_small_batches_into_row_runs_for_every_thread(pool, n, block_bytes, rng,
                                                                     monkeypatch, using):
    """predict on fewer images than threads splits each image's rows between threads
    (also under a fused max-pool, whose runs follow its windows: the unfold path,
    the 2x2 pool's window-by-window path turned off)."""
    from nnjit import Sequential, get_num_threads

    using(window_conv_weight_bytes=0)
    if block_bytes is not None:
        using(block_bytes=block_bytes)
    conv = Conv2D(2, 3, 3, padding=1)
    layers = [conv, ReLU()] + ([MaxPool2D(*pool)] if pool else [])
    model = Sequential(layers, seed=3)
    x = rng.normal(size=(n, 2, 11, 7)).astype(np.float32)
    want = np.maximum(ref.conv2d(x, conv.weight.value, conv.bias.value, (1, 1), (1, 1)), 0)
    if pool:
        want = ref.maxpool2d(want, layers[2].kernel_size, layers[2].stride)
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-5)
    bounds, blocks, _ = conv._plans[next(k for k in conv._plans if k[5])]  # the inference plan
    assert len(bounds) - 1 == min(get_num_threads(), 2 if n == 1 else n)


@pytest.mark.parametrize("relu", [False, True])
def test_dense_in_row_chunks_matches_numpy(relu, rng):
    """A batch larger than one small GEMM (SMALL_GEMM_MACS) runs in row chunks,
    forward and input gradient; against plain numpy."""
    from nnjit import Sequential
    from nnjit.planner import Tuning

    SMALL_GEMM_MACS = Tuning().small_gemm_macs

    layers = [Dense(300, 40)] + ([ReLU()] if relu else [])
    model = Sequential(layers, seed=1)
    dense = layers[0]
    n = 3 * dense._chunk_rows(1) + 5
    assert dense._chunk_rows(n) * 300 * 40 <= SMALL_GEMM_MACS < n * 300 * 40
    x = rng.normal(size=(n, 300)).astype(np.float32)
    dy = rng.normal(size=(n, 40)).astype(np.float32)
    y = x @ dense.weight.value.T + dense.bias.value
    if relu:
        y = np.maximum(y, 0)
    np.testing.assert_allclose(model.layers[0].forward(x), y, rtol=1e-4, atol=1e-4)
    g = dy * (y > 0) if relu else dy
    dx = dense.backward(dy)
    np.testing.assert_allclose(dx, g @ dense.weight.value, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dense.weight.grad, g.T @ x, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dense.bias.grad, g.sum(axis=0), rtol=1e-4, atol=1e-4)



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, chunk", [(1, 4), (7, 4), (37, 4), (37, 8), (37, 100)])
def test_dense_layers_stacked_at_inference_match_numpy(n, chunk, dtype, rng, monkeypatch):
    """predict runs consecutive Dense layers (ReLUs fused, a Dropout skipped, a
    Flatten between two runs) as stacks: one kernel call, ``chunk`` rows at a time
    through every layer, split between threads; against plain numpy in float64."""
    from nnjit import Dropout, Sequential
    from nnjit.layers.dense import DenseStack

    monkeypatch.setattr(Dense, "_chunk_rows", lambda self, rows: chunk)
    layers = [Flatten(), Dense(30, 17, dtype), ReLU(), Dense(17, 9, dtype), Dense(9, 12, dtype),
              ReLU(), Dropout(0.5), Dense(12, 6, dtype), ReLU(), Flatten(), Dense(6, 5, dtype),
              Softmax()]
    model = Sequential(layers, seed=int(rng.integers(1000)))
    stacks = [layer for layer in model._inference.layers if isinstance(layer, DenseStack)]
    assert [len(stack.layers) for stack in stacks] == [4]  # Flatten ends a run, Dropout not
    x = rng.normal(size=(n, 3, 10)).astype(dtype)
    z = x.reshape(n, -1).astype(np.float64)
    for layer in layers[1:-1]:
        if isinstance(layer, Dense):
            z = z @ layer.weight.value.T.astype(np.float64) + layer.bias.value
        elif isinstance(layer, ReLU):
            z = np.maximum(z, 0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(model.predict(x, batch_size=n), ref.softmax(z), rtol=tol, atol=tol)
    with pytest.raises(ValueError, match=r"\(30,\)"):
        model.predict(np.zeros((2, 3, 9), dtype))  # the first Dense's message


@pytest.mark.parametrize("kernel", [1, 3, 5, (3, 5)])
def test_same_padding_keeps_the_size_and_matches_reference(kernel, rng):
    layer = Conv2D(2, 3, kernel, padding="same")
    kh, kw = layer.kernel_size
    assert layer.padding == (kh // 2, kw // 2)
    layer.bias.value[...] = rng.normal(size=3)
    x = rng.normal(size=(2, 2, 7, 6)).astype(np.float32)
    got = layer.forward(x)
    assert got.shape == (2, 3, 7, 6)
    want = ref.conv2d(x, layer.weight.value, layer.bias.value, (1, 1), layer.padding)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [{"kernel_size": 2}, {"kernel_size": (3, 4)},
                                    {"kernel_size": 3, "stride": 2}])
def test_same_padding_needs_stride_1_and_odd_kernels(kwargs):
    with pytest.raises(ValueError, match='padding="same" needs stride 1 and odd kernel sizes'):
        Conv2D(1, 2, padding="same", **kwargs)



@pytest.mark.parametrize("n,c,h,w,k,s", [(1, 1, 4, 4, 2, None), (3, 2, 7, 5, 2, None),
                                         (3, 2, 7, 8, 3, 2), (1, 3, 6, 5, (2, 3), (1, 2))])
def test_avgpool_forward_matches_reference(n, c, h, w, k, s, rng):
    layer = AvgPool2D(k, s)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    got = layer.forward(x)
    assert got.shape == (n, c) + layer.output_shape((c, h, w))[1:]
    np.testing.assert_allclose(got, ref.avgpool2d(x, layer.kernel_size, layer.stride),
                               rtol=1e-5, atol=1e-6)


def test_global_avgpool_is_the_plane_mean_and_feeds_a_dense(rng):
    x = rng.normal(size=(3, 4, 5, 7)).astype(np.float32)
    layer = GlobalAvgPool2D()
    assert layer.output_shape((4, 5, 7)) == (4,)
    np.testing.assert_allclose(layer.forward(x), x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    from nnjit.spec import build_model
    model = build_model("conv:4:3,relu,gap,dense:10,softmax", seed=0)
    assert [type(layer).__name__ for layer in model.layers][-3:] == ["GlobalAvgPool2D", "Dense",
                                                                     "Softmax"]


@pytest.mark.parametrize("spec,match", [
    ("conv:4:3,avgpool:0,dense:10", "avgpool"),
    ("conv:4:3,gap:2,dense:10", "gap"),
    ("conv:4:3,avgpool:30,dense:10", "does not fit"),
    ("dense:10,gap", "GlobalAvgPool2D expects samples of shape"),
])
def test_bad_pooling_specs_get_one_clear_error(spec, match):
    from nnjit.spec import build_model
    with pytest.raises(ValueError, match=match):
        build_model(spec)
