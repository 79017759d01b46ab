"""The conv + 2x2 max-pool run window by window at inference (``window_conv_pool``)
against the NumPy reference and the layers' training path."""
import numpy as np
import pytest

import nnjit
import reference as ref
from nnjit import Conv2D, MaxPool2D, ReLU, Sequential


def pooled_conv(c, oc, k, padding, relu, seed=3):
    layers = [Conv2D(c, oc, k, padding=padding)] + ([ReLU()] if relu else []) + [MaxPool2D(2)]
    return Sequential(layers, seed=seed)


@pytest.fixture(autouse=True)
def window_path_on_any_host(host_with, using):
    """The window tiles are plain LLVM vectors: forced on where AVX-512 is absent too."""
    using(host=host_with(tiles=True))


@pytest.mark.parametrize("n, c, h, w, oc, k, padding, relu", [
    (1, 1, 28, 28, 32, 3, 0, True),       # the cnn's first conv, one image
    (3, 3, 12, 12, 32, 3, 1, True),       # the cifar network's first conv (padded copy)
    (2, 1, 13, 11, 32, 5, 1, False),      # 5x5: odd pooled rows and columns, a single last window
    (2, 2, 9, 10, 20, 3, (1, 0), True),   # 20 channels: 32 + a last 16-lane group, 4 lanes unused
    (1, 1, 8, 9, 48, 3, 0, False),        # 48 channels: a 32-lane group then a 16-lane one
    (2, 4, 7, 7, 8, 2, 0, True),          # 8 channels in one padded group; an even kernel
    (2, 12, 9, 9, 24, 5, 1, True),        # 300 taps
])
def test_inference_window_by_window_matches_reference_and_training_path(n, c, h, w, oc, k,
                                                                        padding, relu, rng):
    model = pooled_conv(c, oc, k, padding, relu)
    conv = model.layers[0]
    conv.bias.value[...] = rng.normal(size=oc)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    got = conv.forward(x, training=False).copy()
    assert "windows/pooled" in conv._buffers  # this path ran
    np.testing.assert_allclose(got, ref.conv_relu_maxpool2x2(x, conv, relu), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, conv.forward(x, training=True), rtol=1e-6, atol=1e-6)


def test_nan_and_ties_pool_as_the_training_path(rng):
    """A NaN reaches every window it feeds; equal members (zeros) give the same maximum."""
    model = pooled_conv(1, 16, 3, 0, False)
    conv = model.layers[0]
    x = rng.normal(size=(2, 1, 10, 10)).astype(np.float32)
    x[0, 0, 4, 5] = np.nan
    x[1] = 0
    got = conv.forward(x, training=False).copy()
    want = conv.forward(x, training=True)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[0]).any() and not np.isnan(got[1]).any()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_batch_split_between_threads_matches_one_thread(rng):
    model = pooled_conv(1, 32, 3, 0, True)
    x = rng.random((64, 1, 28, 28), dtype=np.float32)  # enough work for two parts
    conv = model.layers[0]
    threads = nnjit.get_num_threads()
    try:
        nnjit.set_num_threads(1)
        one = conv.forward(x, training=False).copy()
        nnjit.set_num_threads(2)
        assert conv._buffers["windows/pooled"].shape[0] == 1
        both = conv.forward(x, training=False)
        assert conv._buffers["windows/pooled"].shape[0] == 2
    finally:
        nnjit.set_num_threads(threads)
    np.testing.assert_array_equal(both, one)


def test_predict_follows_weight_changes(rng):
    """The transposed weight is rebuilt at every call: a replayed predict sees an
    in-place change of the weight and bias."""
    model = pooled_conv(1, 32, 3, 0, True)
    x = rng.random((1, 1, 12, 12), dtype=np.float32)
    for _ in range(3):
        model.predict(x)
    conv = model.layers[0]
    conv.weight.value[5] *= -2
    conv.bias.value[7] += 1
    np.testing.assert_allclose(model.predict(x), ref.conv_relu_maxpool2x2(x, conv, True), rtol=1e-5,
                               atol=1e-5)


def test_winograd_and_large_weights_keep_their_paths(using):
    """3x3 over 8+ channels stays with Winograd; a transposed weight over
    WINDOW_CONV_WEIGHT_BYTES with the unfold path."""
    winograd = pooled_conv(32, 64, 3, 0, True).layers[0]
    winograd.forward(np.zeros((1, 32, 13, 13), np.float32), training=False)
    assert "windows/pooled" not in winograd._buffers and "winograd/Vt" in winograd._buffers
    using(window_conv_weight_bytes=9 * 32 * 4 - 1)
    unfolded = pooled_conv(1, 32, 3, 0, True).layers[0]
    unfolded.forward(np.zeros((1, 1, 12, 12), np.float32), training=False)
    assert "windows/pooled" not in unfolded._buffers and "cols" in unfolded._buffers


@pytest.mark.parametrize("n, c, h, w, oc, k, padding, relu", [
    (4, 1, 14, 14, 32, 3, 0, True),      # the cnn's first conv
    (3, 3, 10, 9, 20, 3, 1, True),       # the cifar network's, 20 channels, odd pooled width
    (2, 2, 11, 11, 16, 5, 1, False),     # 5x5 padding 1, no ReLU
])
def test_training_window_by_window_gives_the_unfold_paths_output_winners_and_gradients(
        n, c, h, w, oc, k, padding, relu, rng, using):
    """Training forward keeps each window's winner in the unfold path's format, so
    the conv's backward (unchanged) gives the same gradients: against the unfold
    path's forward (register tiles: the same sums in the same order, the same
    bits) and, for the output, the reference."""
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    x[-1] = 0  # every window a four-way tie: the first member wins
    results = []
    for algorithm in ("windows", "unfold"):
        using(conv=algorithm)
        model = pooled_conv(c, oc, k, padding, relu)
        conv = model.layers[0]
        conv.bias.value[...] = np.linspace(-0.5, 0.5, oc)
        out = model.forward(x)
        assert ("windows/pooled" in conv._buffers) == (algorithm == "windows")
        argmax = conv._cache[2].copy()
        dy = np.random.default_rng(7).normal(size=out.shape).astype(np.float32)
        dx = conv.backward(dy)
        results.append((out, argmax, dx, conv.weight.grad.copy(), conv.bias.grad.copy()))
    (out, argmax, dx, dw, db), unfolded = results
    np.testing.assert_allclose(out, ref.conv_relu_maxpool2x2(x, model.layers[0], relu), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(out, unfolded[0])
    np.testing.assert_array_equal(argmax, unfolded[1])
    assert (argmax[-1] == 0).all()
    for got, want in zip((dx, dw, db), unfolded[2:], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
