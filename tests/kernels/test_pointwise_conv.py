"""1x1 convs at stride 1 without padding (``pointwise_conv_forward``): against a
numpy product, finite differences and the unfold path, on register tiles and on
BLAS, for batches smaller than the thread count (output channels split)."""
import numpy as np
import pytest

import nnjit
from nnjit import Conv2D, ReLU, Sequential
from nnjit.planner import ConvAlgorithm
from nnjit.spec import build_model
from test_gradients import check_layer_gradients


def numpy_pointwise(x, weight, bias, relu):
    """out[n, o] = sum_c weight[o, c] * x[n, c] + bias[o], in float64."""
    out = np.einsum("oc,nchw->nohw", weight[:, :, 0, 0].astype(np.float64),
                    x.astype(np.float64)) + bias.astype(np.float64)[None, :, None, None]
    return np.maximum(out, 0) if relu else out


@pytest.mark.parametrize("n, c, oc, h, w, relu", [
    (1, 16, 32, 8, 8, True),     # one image: its output channels split between the threads
    (5, 3, 20, 7, 9, False),     # odd sizes; 20 rows: tiles of 8 and 4
    (3, 64, 18, 5, 5, True),     # 18 rows: the last two off the tiles
    (2, 7, 3, 4, 6, True),       # fewer rows than a tile
    (64, 32, 64, 4, 4, False),   # many images to a thread
])
@pytest.mark.parametrize("tiles", [True, False])
def test_pointwise_matches_numpy(n, c, oc, h, w, relu, tiles, rng, host_with, using):
    using(host=host_with(tiles=tiles))
    model = Sequential([Conv2D(c, oc, 1)] + ([ReLU()] if relu else []), seed=3)
    conv = model.layers[0]
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    assert conv.plan(x.shape, False).algorithm is ConvAlgorithm.POINTWISE
    want = numpy_pointwise(x, conv.weight.value, conv.bias.value, relu)
    tol = dict(rtol=1e-5, atol=1e-5 * np.sqrt(c) * np.abs(want).max())
    np.testing.assert_allclose(model.predict(x), want, **tol)
    np.testing.assert_allclose(model.forward(x), want, **tol)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("n", [1, 3])
def test_pointwise_gradients_match_finite_differences(bias, relu, n, rng):
    layer = Conv2D(5, 11, 1, bias=bias, dtype=np.float64)
    layer.set_epilogue(relu=relu)
    if bias:
        layer.bias.value[...] = rng.normal(size=11)
    x = rng.standard_normal((n, 5, 4, 6))
    assert layer.plan(x.shape, True).algorithm is ConvAlgorithm.POINTWISE
    check_layer_gradients(layer, x, rng)


def test_pointwise_trains_as_the_unfold_path(rng):
    """Training steps of a 1x1 conv network: the same losses and weights whichever
    algorithm runs the 1x1 convs' forward (backward is unfold's for both)."""
    x = rng.standard_normal((12, 6, 5, 5)).astype(np.float32)
    y = rng.integers(0, 4, 12)
    results = []
    for algorithm in ("pointwise", "unfold"):
        model = build_model("conv:24:1,relu,conv:8:1,relu,flatten,dense:4,softmax",
                                  (6, 5, 5), seed=1)
        with nnjit.using(conv=algorithm):
            history = model.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0)
        results.append((history.history["loss"], [p.value.copy() for p in model.parameters()]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_pointwise_is_not_chosen_for_other_convs():
    for conv, shape in [(Conv2D(4, 8, 1, stride=2), (1, 4, 8, 8)),
                        (Conv2D(4, 8, 1, padding=1), (1, 4, 8, 8)),
                        (Conv2D(4, 8, 3), (1, 4, 8, 8))]:
        assert conv.plan(shape, False).algorithm is not ConvAlgorithm.POINTWISE
