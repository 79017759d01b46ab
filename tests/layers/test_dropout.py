"""Dropout: PyTorch's inverted dropout, seeded masks, identity at inference, checkpointed state."""
import numpy as np
import pytest

import reference as ref
from nnjit import Dense, Dropout, Flatten, Sequential, Softmax
from nnjit.checkpoint import load_checkpoint, save_checkpoint


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_drops_a_fraction_p_and_scales_the_rest(p, rng):
    layer = Dropout(p)
    layer.reset_parameters(rng)
    x = rng.uniform(1, 2, size=(50, 4000)).astype(np.float32)
    out = layer.forward(x)
    dropped = np.mean(out == 0)
    n = x.size
    assert abs(dropped - p) < 4 * np.sqrt(p * (1 - p) / n), dropped
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-6)


def test_masks_are_independent_across_positions_and_steps(rng):
    """The hashed masks (one key per forward) behave like independent coin flips:
    neighbours, the same position in consecutive steps, and per-position counts."""
    layer = Dropout(0.5)
    layer.reset_parameters(rng)
    x = np.ones((1, 4096), np.float32)
    masks = np.array([layer.forward(x)[0] != 0 for _ in range(64)])

    def agree(a, b):
        rate = np.mean(a == b)
        assert abs(rate - 0.5) < 4 * np.sqrt(0.25 / a.size), rate

    agree(masks[:, 1:], masks[:, :-1])  # neighbouring positions
    agree(masks[1:], masks[:-1])  # consecutive steps
    agree(masks[:, 64:], masks[:, :-64])  # positions a row of 64 apart
    counts = masks.sum(axis=0)  # kept per position over 64 steps: binomial(64, 0.5)
    chi2 = np.sum((counts - 32.0) ** 2 / 16.0)
    assert abs(chi2 - 4096) < 6 * np.sqrt(2 * 4096), chi2


def test_backward_uses_the_forward_mask(rng):
    layer = Dropout(0.4)
    layer.reset_parameters(rng)
    x = rng.uniform(1, 2, size=(8, 100)).astype(np.float32)
    out = layer.forward(x).copy()
    dy = rng.normal(size=x.shape).astype(np.float32)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, np.where(out != 0, dy / 0.6, 0), rtol=1e-6)


def test_gradient_by_finite_differences_in_training_mode(rng):
    """L = sum(dropout(x) * g) with the generator rewound before every draw, so the mask is fixed."""
    layer = Dropout(0.3)
    layer.reset_parameters(rng)
    start = layer.get_extra_state()
    x = rng.normal(size=(3, 7))
    g = rng.normal(size=x.shape)

    def loss():
        layer.set_extra_state(start)
        return float(np.sum(layer.forward(x) * g))

    loss()
    dx = layer.backward(g.copy()).copy()
    np.testing.assert_allclose(dx, ref.numeric_grad(loss, x), rtol=1e-6, atol=1e-8)


def test_predict_and_evaluate_are_the_identity(rng):
    dense = Dense(20, 5)
    with_dropout = Sequential([Dropout(0.5), dense, Dropout(0.9), Softmax()], seed=0)
    without = Sequential([Flatten(), Dense(20, 5), Softmax()], seed=0)
    without.layers[1].weight.value[...] = dense.weight.value
    without.layers[1].bias.value[...] = dense.bias.value
    x = rng.normal(size=(6, 20)).astype(np.float32)
    np.testing.assert_array_equal(with_dropout.predict(x), without.predict(x))
    labels = np.arange(6) % 5
    assert with_dropout.evaluate(x, labels) == without.evaluate(x, labels)


def test_masks_follow_the_model_seed(rng):
    x = np.ones((4, 50), np.float32)

    def masks(seed):
        model = Sequential([Dropout(0.5), Dense(50, 3)], seed=seed)
        return [model.layers[0].forward(x).copy() for _ in range(2)]

    a, b, c = masks(1), masks(1), masks(2)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], a[1])  # a new mask every forward
    assert not np.array_equal(a[0], c[0])


def test_checkpoint_keeps_the_mask_generator(tmp_path, rng):
    model = Sequential([Flatten(), Dropout(0.5), Dense(12, 3)], seed=4)
    x = rng.normal(size=(5, 12)).astype(np.float32)
    model.forward(x)  # the generator has moved on
    save_checkpoint(model, tmp_path / "c.json")
    loaded = load_checkpoint(tmp_path / "c.json").model
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


@pytest.mark.parametrize("p", [1.0, -0.1, "0.5", True, float("nan")])
def test_bad_probability_is_refused(p):
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(p)


@pytest.mark.parametrize("state", [{"rng": "not a state"}, {}, {"rng": {"bit_generator": "MT19937"}}])
def test_a_broken_generator_state_is_one_clear_checkpoint_error(state, tmp_path):
    import json

    from nnjit.checkpoint import CheckpointError

    save_checkpoint(Sequential([Flatten(), Dropout(0.5), Dense(12, 3)], seed=4), tmp_path / "c.json")
    doc = json.loads((tmp_path / "c.json").read_text())
    doc["layer_state"]["1"] = state
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="extra state for layer 1"):
        load_checkpoint(tmp_path / "c.json")
