"""Class weights and label smoothing: PyTorch's CrossEntropyLoss rules, against a
NumPy transcription of them and finite differences."""
import numpy as np
import pytest

import reference as ref
from nnjit import Conv2D, CrossEntropyLoss, Dense, Flatten, ReLU, Sequential, Softmax
from nnjit.losses import class_weights


def reference_loss(z, labels, weight, smoothing):
    """PyTorch's documented formula, with log-softmax in float64."""
    z = z.astype(np.float64)
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    n, k = z.shape
    w = np.ones(k) if weight is None else np.asarray(weight, np.float64)
    total = w[labels].sum()
    nll = -(w[labels] * logp[np.arange(n), labels]).sum() / total
    smooth = -(logp * w).sum() / total
    return (1 - smoothing) * nll + smoothing / k * smooth


@pytest.mark.parametrize("weight", [None, [0.5, 2.0, 1.0, 0.0]])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_and_gradient(weight, smoothing, dtype, rng):
    z = (rng.normal(size=(7, 4)) * 3).astype(dtype)
    labels = np.array([0, 1, 2, 3, 1, 0, 2])
    loss_fn = CrossEntropyLoss(weight, smoothing)
    loss, dz = loss_fn(z, labels)
    assert dz.dtype == dtype
    assert loss == pytest.approx(reference_loss(z, labels, weight, smoothing), rel=1e-6)
    if dtype == np.float64:
        numeric = ref.numeric_grad(lambda: reference_loss(z, labels, weight, smoothing), z)
        np.testing.assert_allclose(dz, numeric, rtol=1e-6, atol=1e-9)


def test_a_model_trains_on_its_loss(rng):
    """model.loss is what backward differentiates: every parameter's gradient of the
    weighted, smoothed loss by finite differences."""
    model = Sequential([Conv2D(1, 2, 3, dtype=np.float64), ReLU(), Flatten(),
                        Dense(2 * 4 * 4, 3, dtype=np.float64), Softmax()], seed=0)
    model.loss = CrossEntropyLoss([1.0, 3.0, 0.5], label_smoothing=0.2)
    x = rng.normal(size=(5, 1, 6, 6))
    labels = np.array([0, 1, 2, 1, 0])

    def loss():
        return reference_loss(np.log(model.forward(x)), labels, [1.0, 3.0, 0.5], 0.2)

    model.forward(x)
    assert model.backward(labels) == pytest.approx(loss(), rel=1e-10)
    for p in model.parameters():
        np.testing.assert_allclose(p.grad, ref.numeric_grad(loss, p.value), rtol=1e-5,
                                   atol=1e-8, err_msg=p.name)
    evaluated, _ = model.evaluate(x, labels, batch_size=2)  # three batches, one weighted mean
    assert evaluated == pytest.approx(reference_loss(np.log(model.predict(x)), labels,
                                                     [1.0, 3.0, 0.5], 0.2), rel=1e-9)


def test_balanced_weights():
    labels = np.array([0, 0, 0, 1, 2, 2])
    np.testing.assert_allclose(class_weights("balanced", labels, 4),
                               [6 / (4 * 3), 6 / 4, 6 / (4 * 2), 0])
    np.testing.assert_allclose(class_weights("1,2.5,3", labels, 3), [1, 2.5, 3])
    with pytest.raises(ValueError, match="3 classes"):
        class_weights("1,2", labels, 3)
    with pytest.raises(ValueError, match="balanced"):
        class_weights("heavy", labels, 3)


@pytest.mark.parametrize("bad", [dict(label_smoothing=1.0), dict(label_smoothing=-0.1),
                                 dict(weight=[1, -1]), dict(weight=[0, 0]),
                                 dict(weight=[1, float("nan")])])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        CrossEntropyLoss(**bad)
