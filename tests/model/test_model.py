"""Sequential: parameter names and packing, predict vs forward, description."""
import numpy as np
import pytest

from nnjit import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, Softmax


def make_model(seed=0):
    return Sequential([Conv2D(1, 4, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(4 * 5 * 5, 3),
                       Softmax()], seed=seed)


def test_parameter_names_and_flat_buffer():
    model = make_model()
    names = [p.name for p in model.parameters()]
    assert names == ["0.weight", "0.bias", "4.weight", "4.bias"]
    total = sum(p.value.size for p in model.parameters())
    assert model.flat.values.shape == (total,)
    for p in model.parameters():
        assert np.shares_memory(p.value, model.flat.values)
        assert np.shares_memory(p.grad, model.flat.grads)


def test_forward_returns_probabilities_and_predict_agrees(rng):
    model = make_model()
    x = rng.random((10, 1, 12, 12), dtype=np.float32)
    probs = model.forward(x)
    assert probs.dtype == np.float32 and probs.shape == (10, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
    # BLAS may block a 3-row GEMM differently from a 10-row one: equal up to rounding.
    np.testing.assert_allclose(model.predict(x, batch_size=3), probs, rtol=1e-6, atol=1e-7)
    again = model.forward(x)
    assert again is not probs  # a fresh array each call


def test_predict_keeps_no_cache_for_backward(rng):
    model = make_model()
    model.predict(rng.random((2, 1, 12, 12), dtype=np.float32))
    with pytest.raises(RuntimeError, match="forward"):
        model.backward([0, 1])


def test_predict_on_no_images_gives_an_empty_output_of_the_model_shape():
    model = make_model()
    out = model.predict(np.zeros((0, 1, 12, 12), np.float32))
    assert out.shape == (0, 3) and out.dtype == np.float32
    with pytest.raises(ValueError, match="layer 0"):
        model.predict(np.zeros((0, 2, 12, 12), np.float32))


def test_evaluate_matches_probabilities(rng):
    model = make_model()
    x = rng.random((7, 1, 12, 12), dtype=np.float32)
    labels = rng.integers(0, 3, size=7)
    probs = model.predict(x).astype(np.float64)
    loss, acc = model.evaluate(x, labels, batch_size=4)
    assert loss == pytest.approx(-np.mean(np.log(probs[np.arange(7), labels])), rel=1e-5)
    assert acc == np.mean(probs.argmax(1) == labels)


def test_summary_and_config_round_trip():
    model = make_model()
    rows = model.summary((1, 12, 12))
    assert [shape for _, shape, _ in rows] == [(4, 10, 10), (4, 10, 10), (4, 5, 5), (100,), (3,), (3,)]
    assert [count for _, _, count in rows] == [40, 0, 0, 0, 303, 0]
    rebuilt = Sequential.from_config(model.config())
    assert rebuilt.config() == model.config()
    with pytest.raises(ValueError, match="layer 4"):
        model.summary((1, 14, 14))


def test_load_state_dict_is_strict_and_in_place(rng):
    model, other = make_model(1), make_model(2)
    values = model.flat.values
    model.load_state_dict({k: v.copy() for k, v in other.state_dict().items()})
    assert model.flat.values is values
    np.testing.assert_array_equal(model.flat.values, other.flat.values)
    with pytest.raises(ValueError, match="missing"):
        model.load_state_dict({"0.weight": other.state_dict()["0.weight"]})
    bad = {k: v.copy() for k, v in other.state_dict().items()}
    bad["4.bias"] = np.zeros(4)
    with pytest.raises(ValueError, match="4.bias"):
        model.load_state_dict(bad)


def test_non_layers_are_rejected():
    with pytest.raises(TypeError, match="layer 1"):
        Sequential([ReLU(), "dense"])
