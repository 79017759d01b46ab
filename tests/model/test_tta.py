"""Test-time augmentation: predict, evaluate and fit with tta="flip" against numpy."""
import numpy as np
import pytest

from nnjit import Dense, Flatten, Sequential, Softmax


def dense_model(softmax=True, seed=0):
    """Flatten -> Dense(48, 5) [-> Softmax] on (1, 6, 8) images, so numpy can compute it."""
    return Sequential([Flatten(), Dense(48, 5)] + ([Softmax()] if softmax else []), seed=seed)


def logits_of(model, x):
    weight, bias = (p.value.astype(np.float64) for p in model.parameters())
    return x.reshape(len(x), -1).astype(np.float64) @ weight.T + bias


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def mirror(x):
    return x[:, :, :, ::-1]


@pytest.mark.parametrize("batch_size", [2, 256])
def test_flip_averages_the_outputs_of_each_image_and_of_its_mirror(rng, batch_size):
    model = dense_model()
    x = rng.random((5, 1, 6, 8), dtype=np.float32)
    expected = (softmax(logits_of(model, x)) + softmax(logits_of(model, mirror(x)))) / 2
    got = model.predict(x, batch_size, tta="flip")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    single = softmax(logits_of(model, x))
    assert np.abs(got - single).max() > 1e-3  # the mirror changed something
    np.testing.assert_allclose(model.predict(x, tta="none"), single, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(x, tta=None), single, rtol=1e-5, atol=1e-6)


def test_flip_evaluates_the_loss_and_accuracy_of_the_mean_probabilities(rng):
    model = dense_model()
    x = rng.random((9, 1, 6, 8), dtype=np.float32)
    labels = rng.integers(0, 5, size=9)
    mean = (softmax(logits_of(model, x)) + softmax(logits_of(model, mirror(x)))) / 2
    loss, accuracy = model.evaluate(x, labels, batch_size=4, tta="flip")
    assert loss == pytest.approx(-np.mean(np.log(mean[np.arange(9), labels])), rel=1e-5)
    assert accuracy == np.mean(mean.argmax(1) == labels)


def test_flip_on_a_model_ending_in_logits_averages_the_logits(rng):
    model = dense_model(softmax=False)
    x = rng.random((6, 1, 6, 8), dtype=np.float32)
    labels = rng.integers(0, 5, size=6)
    mean = (logits_of(model, x) + logits_of(model, mirror(x))) / 2
    np.testing.assert_allclose(model.predict(x, tta="flip"), mean, rtol=1e-5, atol=1e-5)
    loss, accuracy = model.evaluate(x, labels, tta="flip")
    assert loss == pytest.approx(-np.mean(np.log(softmax(mean)[np.arange(6), labels])), rel=1e-5)
    assert accuracy == np.mean(mean.argmax(1) == labels)


def test_fit_reports_validation_figures_with_flip(rng):
    model = dense_model()
    x = rng.random((64, 1, 6, 8), dtype=np.float32)
    y = rng.integers(0, 5, size=64)
    x_val, y_val = x[:16] + 0.1, y[:16]
    history = model.fit(x, y, epochs=1, batch_size=16, validation_data=(x_val, y_val),
                        tta="flip", verbose=0)
    mean = (softmax(logits_of(model, x_val)) + softmax(logits_of(model, mirror(x_val)))) / 2
    assert history.history["val_accuracy"][-1] == np.mean(mean.argmax(1) == y_val)
    assert history.history["val_loss"][-1] == pytest.approx(
        -np.mean(np.log(mean[np.arange(16), y_val])), rel=1e-4)


def test_an_unknown_augmentation_is_refused(rng):
    model = dense_model()
    x = rng.random((2, 1, 6, 8), dtype=np.float32)
    for call in (lambda: model.predict(x, tta="rotate"),
                 lambda: model.evaluate(x, [0, 1], tta="flip,crop"),
                 lambda: model.fit(x, [0, 1], tta="rotate", verbose=0)):
        with pytest.raises(ValueError, match="tta must be one of none, flip"):
            call()
