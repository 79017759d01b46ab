"""The pointwise activations: values against their formulas, gradients against
finite differences (and PyTorch's choice at the kinks), checkpoints and ONNX."""
import math

import numpy as np
import onnxruntime as ort
import pytest

import reference as ref
from nnjit import (GELU, Conv2D, Dense, Flatten, Hardswish, LeakyReLU, ReLU6, Sequential, Sigmoid,
                   SiLU, Softmax, Tanh, load_checkpoint, save_checkpoint)
from nnjit.onnx_export import export_onnx

erf = np.vectorize(math.erf)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


#: (layer, its formula in NumPy: the reference)
ACTIVATIONS = [
    (lambda: LeakyReLU(), lambda x: np.where(x >= 0, x, 0.01 * x)),
    (lambda: LeakyReLU(0.2), lambda x: np.where(x >= 0, x, 0.2 * x)),
    (lambda: Sigmoid(), sigmoid),
    (lambda: Tanh(), np.tanh),
    (lambda: GELU(), lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))),
    (lambda: GELU("tanh"),
     lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))),
    (lambda: SiLU(), lambda x: x * sigmoid(x)),
    (lambda: ReLU6(), lambda x: np.clip(x, 0, 6)),
    (lambda: Hardswish(), lambda x: x * np.clip(x + 3, 0, 6) / 6),
]
IDS = ["leaky", "leaky0.2", "sigmoid", "tanh", "gelu", "gelu-tanh", "silu", "relu6", "hardswish"]


def away_from_kinks(rng, shape):
    """Values in (-8, 8) at least 0.05 from 0, +-3 and 6, where some activations bend."""
    x = rng.uniform(-8, 8, size=shape)
    for kink in (0, 3, -3, 6):
        near = np.abs(x - kink) < 0.05
        x[near] += 0.1
    return x


@pytest.mark.parametrize("make,formula", ACTIVATIONS, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_values_match_the_formula(make, formula, dtype, tol, rng):
    x = np.concatenate([rng.uniform(-9, 9, 2000), [-100, -3, 0, 3, 6, 100]]).astype(dtype)
    y = make().forward(x.reshape(2, -1), training=False).reshape(-1)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, formula(x.astype(np.float64)), rtol=tol, atol=tol)


@pytest.mark.parametrize("make,formula", ACTIVATIONS, ids=IDS)
def test_gradients_match_finite_differences(make, formula, rng):
    layer = make()
    x = away_from_kinks(rng, (3, 2, 4, 5))
    g = rng.normal(size=x.shape)
    layer.forward(x)
    dx = layer.backward(g).copy()

    def loss():
        return float(np.sum(layer.forward(x, training=False) * g))

    np.testing.assert_allclose(dx, ref.numeric_grad(loss, x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("layer,x,expected", [
    (LeakyReLU(0.2), 0.0, 0.2),   # PyTorch: the slope at 0
    (ReLU6(), 0.0, 0.0), (ReLU6(), 6.0, 0.0), (ReLU6(), 5.5, 1.0),
    (Hardswish(), -3.0, -0.5), (Hardswish(), 3.0, 1.5), (Hardswish(), -3.5, 0.0),
    (Hardswish(), 3.5, 1.0),
])
def test_derivatives_at_the_kinks_are_pytorchs(layer, x, expected):
    layer.forward(np.array([[x]]))
    assert layer.backward(np.array([[1.0]]))[0, 0] == pytest.approx(expected)


def every_activation_net():
    return Sequential([Conv2D(1, 4, 3), LeakyReLU(0.1), Conv2D(4, 4, 3), GELU(), Conv2D(4, 4, 1),
                       GELU("tanh"), Conv2D(4, 4, 1), SiLU(), Conv2D(4, 4, 1), ReLU6(),
                       Conv2D(4, 4, 1), Hardswish(), Flatten(), Dense(4 * 4 * 4, 6), Tanh(),
                       Dense(6, 5), Sigmoid(), Dense(5, 3), Softmax()], seed=0)


def test_every_activation_round_trips_a_checkpoint(tmp_path, rng):
    model = every_activation_net()
    save_checkpoint(model, tmp_path / "a.json", input_shape=[1, 8, 8])
    loaded = load_checkpoint(tmp_path / "a.json").model
    assert loaded.config() == model.config()
    x = rng.normal(size=(4, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


@pytest.mark.parametrize("batch", [1, 5])
def test_every_activation_exports_to_onnx(tmp_path, rng, batch):
    model = every_activation_net()
    for p in model.parameters():
        p.value[...] = rng.normal(size=p.shape) * 0.8  # spread the activations' inputs wide
    export_onnx(model, tmp_path / "a.onnx", (1, 8, 8))
    session = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    x = (rng.normal(size=(batch, 1, 8, 8)) * 3).astype(np.float32)
    (got,) = session.run(None, {"input": x})
    np.testing.assert_allclose(got, model.predict(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad", [dict(negative_slope=float("nan")), dict(negative_slope="a")])
def test_bad_slopes_are_refused(bad):
    with pytest.raises(ValueError, match="negative_slope"):
        LeakyReLU(**bad)


def test_bad_gelu_approximation_is_refused():
    with pytest.raises(ValueError, match="approximate"):
        GELU("fast")
