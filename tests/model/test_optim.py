"""Optimizer updates: hand-computed single steps and a NumPy reference over many steps."""
import numpy as np
import pytest

from nnjit import SGD, Adam, AdamW, Momentum, Parameter
from nnjit.optim import one_cycle_lr


def make_params():
    a = Parameter("a", np.array([1.0, -2.0], np.float32))
    b = Parameter("b", np.array([[0.5]], np.float32))
    return a, b


def set_grads(a, b, ga, gb):
    a.grad[...] = ga
    b.grad[...] = gb


def test_sgd_one_step_by_hand():
    a, b = make_params()
    opt = SGD([a, b], lr=0.1)
    set_grads(a, b, [0.5, 0.25], [[-1.0]])
    opt.step()
    np.testing.assert_allclose(a.value, [0.95, -2.025], rtol=1e-7)
    np.testing.assert_allclose(b.value, [[0.6]], rtol=1e-7)


def test_momentum_two_steps_by_hand():
    a, b = make_params()
    opt = Momentum([a, b], lr=0.1, momentum=0.9)
    set_grads(a, b, [0.5, 0.25], [[-1.0]])
    opt.step()  # v = g = [0.5, 0.25]; a = [0.95, -2.025]
    set_grads(a, b, [1.0, 0.0], [[0.0]])
    opt.step()  # v = 0.9*[0.5, 0.25] + [1, 0] = [1.45, 0.225]; a -= 0.1 v
    np.testing.assert_allclose(a.value, [0.805, -2.0475], rtol=1e-6)
    np.testing.assert_allclose(b.value, [[0.6 + 0.09]], rtol=1e-6)  # v = [-0.9]


def test_adam_first_step_by_hand():
    # After bias correction m_hat = g and v_hat = g^2, so the step is lr * g / (|g| + eps).
    a, b = make_params()
    opt = Adam([a, b], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    set_grads(a, b, [0.5, -0.25], [[0.0]])
    opt.step()
    np.testing.assert_allclose(a.value, [0.9, -1.9], rtol=1e-6)
    np.testing.assert_allclose(b.value, [[0.5]])


def numpy_reference(kind, value, grads, lr, **hp):
    """PyTorch's update rules (torch.optim.SGD / Adam / AdamW), written out in float64."""
    value = value.astype(np.float64)
    m = np.zeros_like(value)
    v = np.zeros_like(value)
    wd = hp.get("weight_decay", 0.0)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if kind == "adamw":
            value = value * (1 - lr * wd)
        else:
            g = g + wd * value
        if kind == "sgd":
            value = value - lr * g
        elif kind == "momentum":
            m = hp["momentum"] * m + g
            value = value - lr * (g + hp["momentum"] * m if hp.get("nesterov") else m)
        else:
            b1, b2 = hp["betas"]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            value = value - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + hp["eps"])
    return value


@pytest.mark.parametrize("kind,cls,hp", [
    ("sgd", SGD, {}),
    ("sgd", SGD, {"weight_decay": 0.05}),
    ("momentum", Momentum, {"momentum": 0.9}),
    ("momentum", Momentum, {"momentum": 0.9, "weight_decay": 5e-4}),
    ("momentum", Momentum, {"momentum": 0.8, "weight_decay": 0.05, "nesterov": True}),
    ("adam", Adam, {"betas": (0.8, 0.99), "eps": 1e-6}),
    ("adam", Adam, {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05}),
    ("adamw", AdamW, {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05}),
])
@pytest.mark.parametrize("lr", [0.01, 5.0])
def test_optimizers_match_numpy_over_many_steps(kind, cls, hp, lr, rng):
    start = rng.normal(size=1000).astype(np.float32)
    p = Parameter("w", start.copy())
    opt = cls([p], lr=lr, **hp)
    grads = [rng.normal(size=1000).astype(np.float32) for _ in range(7)]
    for g in grads:
        opt.zero_grad()
        assert not p.grad.any()
        p.grad[...] = g
        opt.step()
    want = numpy_reference(kind, start, grads, lr, **hp)
    np.testing.assert_allclose(p.value, want, rtol=1e-5, atol=1e-5 * lr * max(1, np.abs(want).max()))


def test_adamw_defaults_are_pytorchs():
    opt = AdamW(list(make_params()))
    assert opt.hyperparameters() == {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8,
                                     "weight_decay": 0.01}


def test_nesterov_two_steps_by_hand():
    a = Parameter("a", np.array([1.0], np.float32))
    opt = Momentum([a], lr=0.1, momentum=0.5, nesterov=True)
    a.grad[...] = 1.0
    opt.step()  # v = 1; a -= 0.1 * (1 + 0.5 * 1) = 0.85
    a.grad[...] = 2.0
    opt.step()  # v = 0.5 + 2 = 2.5; a -= 0.1 * (2 + 1.25) = 0.525
    np.testing.assert_allclose(a.value, [0.525], rtol=1e-6)


def test_one_cycle_rises_then_falls():
    lrs = [one_cycle_lr(0.05, t, 1000) for t in range(1001)]
    assert lrs[0] == pytest.approx(0.05 / 25)
    assert max(lrs) == pytest.approx(0.05) and int(np.argmax(lrs)) == 300
    assert lrs[-1] == pytest.approx(0.05 / 25 / 1e4)
    assert all(x <= y for x, y in zip(lrs[:300], lrs[1:301]))  # warm-up rises
    assert all(x >= y for x, y in zip(lrs[300:], lrs[301:]))  # then only falls
    assert one_cycle_lr(0.05, 2000, 1000) == lrs[-1]


@pytest.mark.parametrize("make,match", [
    (lambda p: SGD(p, lr=0), "lr"),
    (lambda p: SGD(p, lr=-1), "lr"),
    (lambda p: Momentum(p, lr=0.1, momentum=1.0), "momentum"),
    (lambda p: Adam(p, lr=0.1, betas=(0.9,)), "betas"),
    (lambda p: SGD([], lr=0.1), "empty"),
    (lambda p: SGD(p, lr=0.1, weight_decay=-1), "weight_decay"),
    (lambda p: Momentum(p, lr=0.1, momentum=0.0, nesterov=True), "nesterov"),
    (lambda p: Momentum(p, lr=0.1, nesterov="yes"), "nesterov"),
    (lambda p: AdamW(p, lr=0.1, weight_decay=float("nan")), "weight_decay"),
])
def test_bad_hyperparameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make(list(make_params()))
