"""Randomly generated networks: the fast paths (the planner's algorithms, fusion,
folding, replayed predict) against the reference path forced through
``nnjit.using(conv="unfold", fusion=False, replay=False)``, on the same model:
predict, a training forward and the gradients, and predict again after
training steps, ``load_state_dict`` and in-place changes of parameters and
buffers."""
import contextlib

import numpy as np
import pytest

import nnjit
from conftest import FUZZ_SEED
from nnjit import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                   GlobalAvgPool2D, MaxPool2D, ReLU, Sequential, Softmax)

#: Output channels around the 16-lane vectors and the 8 x 32 register tiles.
CHANNELS = (1, 3, 4, 8, 15, 16, 17, 20, 31, 32, 33, 48, 64)
NORMS = (BatchNorm1D, BatchNorm2D)


def random_network(rng):
    """(model, input shape (C, H, W)): a few conv blocks (any kernel, stride and
    padding; batch norm before or after the ReLU; max- or average-pool), then a
    dense head or global pooling, maybe a Softmax. A network with a norm whose
    feature hardly varies over a batch is drawn again (``ill_conditioned``)."""
    while True:
        c, h, w = int(rng.choice([1, 3, 8])), int(rng.integers(6, 22)), int(rng.integers(6, 22))
        layers, channels = [], c
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.choice([1, 2, 3, 3, 5]))
            stride = int(rng.choice([1, 1, 1, 2]))
            padding = "same" if stride == 1 and k % 2 and rng.random() < 0.2 \
                else int(rng.integers(0, 3))
            oc = int(rng.choice(CHANNELS))
            layers.append(Conv2D(channels, oc, k, stride=stride, padding=padding))
            channels = oc
            order = rng.choice(["bn-relu", "relu-bn", "relu", "bn", "none"])
            for part in order.split("-"):
                if part == "bn":
                    layers.append(BatchNorm2D(oc))
                elif part == "relu":
                    layers.append(ReLU())
            pool = rng.choice(["max2", "max3s2", "avg2", "none"])
            if pool == "max2":
                layers.append(MaxPool2D(2))
            elif pool == "max3s2":
                layers.append(MaxPool2D(3, stride=2))
            elif pool == "avg2":
                layers.append(AvgPool2D(2))
            if rng.random() < 0.2:
                layers.append(Dropout(0.3))
        try:
            shape = Sequential(list(layers)).summary((c, h, w))[-1][1]
        except ValueError:
            continue  # the image shrank away: draw again
        if rng.random() < 0.3:
            layers += [GlobalAvgPool2D(), Flatten(), Dense(channels, 10)]
        else:
            hidden = int(rng.choice([5, 16, 40]))
            layers.append(Flatten())
            if rng.random() < 0.3:  # a norm that follows no conv or dense
                layers.append(BatchNorm1D(int(np.prod(shape))))
            layers.append(Dense(int(np.prod(shape)), hidden))
            if rng.random() < 0.4:
                layers.append(BatchNorm1D(hidden))
            layers += [ReLU(), Dense(hidden, 10)]
        if rng.random() < 0.6:
            layers.append(Softmax())
        model = Sequential(layers, seed=int(rng.integers(1 << 30)))
        spread_norms(model, rng)
        probe = rng.standard_normal((16, c, h, w)).astype(np.float32)
        if any(varies_too_little(norm, values)
               for norm, values in reference_inputs(model, probe, NORMS)):
            continue  # likely so on every batch: draw again
        return model, (c, h, w)


def spread_norms(model, rng):
    """Every batch norm's statistics and affine parameters far from (0, 1), so that
    folding them shows."""
    for layer in model.layers:
        if isinstance(layer, BatchNorm1D):
            n = layer.num_features
            layer.running_mean[...] = rng.normal(size=n) * 0.5
            layer.running_var[...] = rng.uniform(0.3, 3, size=n)
            layer.weight.value[...] = rng.uniform(0.5, 1.5, size=n) * rng.choice([-1, 1], n)
            layer.bias.value[...] = rng.normal(size=n) * 0.3


def reference(fn):
    with nnjit.using(conv="unfold", fusion=False, replay=False):
        return fn()


def assert_close(got, want, what):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * scale, err_msg=what)


def assert_predict_agrees(model, x, what, reference=reference):
    """predict, called often enough to be recorded and replayed, equals the reference."""
    want = reference(lambda: model.predict(x))
    for call in range(3):
        assert_close(model.predict(x), want, f"{what}: predict call {call}")


def assert_training_agrees(model, x, labels, what, reference=reference):
    """A training forward, its loss and every gradient equal the reference's."""
    out, loss, grads = training_step(model, x, labels)
    want_out, want_loss, want_grads = reference(lambda: training_step(model, x, labels))
    assert_close(out, want_out, f"{what}: training forward")
    assert loss == pytest.approx(want_loss, rel=1e-4, abs=1e-5)
    for p, g, want in zip(model.parameters(), grads, want_grads, strict=True):
        assert_close(g, want, f"{what}: gradient of {p.name}")


@contextlib.contextmanager
def state_kept(model):
    """While the block runs, the model's running statistics and dropout generators
    may change: afterwards they are as they were before it."""
    state = model.get_extra_state()
    buffers = [b.copy() for _, b in model.named_buffers()]
    try:
        yield
    finally:
        model.set_extra_state(state)
        for (_, b), saved in zip(model.named_buffers(), buffers):
            b[...] = saved


def training_step(model, x, labels):
    """(output, loss, gradients) of a forward and backward on (x, labels), leaving
    the running statistics and dropout generators as they were."""
    with state_kept(model):
        out = model.forward(x)
        loss = model.backward(labels)
        return out, loss, [p.grad.copy() for p in model.parameters()]


def reference_inputs(model, x, kinds):
    """(layer, its input as float64) for each layer of ``kinds``, in the reference
    path's training forward of x (the model's statistics and generators kept)."""
    layers = [layer for layer in model.layers if isinstance(layer, kinds)]
    seen = []
    if not layers:
        return seen
    for layer in layers:  # each records its input, then runs as it does
        layer.forward = lambda x, *args, run=layer.forward, layer=layer, **kwargs: \
            seen.append((layer, np.asarray(x, dtype=np.float64))) or run(x, *args, **kwargs)
    try:
        with state_kept(model):
            reference(lambda: model.forward(x))
    finally:
        for layer in layers:
            del layer.forward
    return seen


def max_pool_near_tie(pool, values, within):
    """Whether a window of ``pool`` over ``values`` (N, C, H, W) holds two different
    values, its largest and the next, within ``within`` (relative to the
    largest of all values) of each other."""
    (kh, kw), (sh, sw), (ph, pw) = pool.kernel_size, pool.stride, pool.padding
    padded = np.pad(values, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw]
    largest = windows.max(axis=(-2, -1), keepdims=True)
    second = np.where(windows == largest, -np.inf, windows).max(axis=(-2, -1), keepdims=True)
    return bool((largest - second <= within * max(float(np.abs(values).max()), 1.0)).any())


def varies_too_little(norm, values, least_variance=10):
    """Whether a feature of the batch norm ``norm``'s input ``values`` has a batch
    variance below ``least_variance`` times its eps. There the norm is no longer
    blind to its input's scale, so the relative rounding error of a small
    input passes on: a feature that was a constant 0.0063, computed by a norm
    as a difference of numbers near 1, differed by 5.5e-4 of itself between
    the paths, and its variance of 1.7 eps carried that into the next norm's
    output and 7e-4 into the weight gradients."""
    axes = (0, 2, 3) if values.ndim == 4 else 0
    return bool((values.var(axis=axes) < least_variance * norm.eps).any())


def ill_conditioned(model, x, within=2e-7):
    """Whether the two paths' last-bit differences can change the gradients of a
    training step on x by more than the tolerance, in the reference path's forward:

    - a ReLU's input has a nonzero value within ``within`` (relative to the largest
      of that input) of 0: the differences can fall on either side of 0, the ReLU
      passes the gradient on one path and not on the other, and the sums built
      on it differ by that element's share (a batch norm's output of 1.2e-7 on
      one path was <= 0 on the other). Exact zeros, as of zero padding, are zero
      on both paths.
    - a max-pool window's largest value and the next differ by at most 5
      ``within``: the differences can swap them, and the gradient goes to the
      other one (a gap of 5.3e-8 moved the first conv's weight gradients by
      1.2e-3 of their largest).
    - a batch norm's feature varies too little (``varies_too_little``)."""
    for layer, values in reference_inputs(model, x, (ReLU, MaxPool2D) + NORMS):
        if isinstance(layer, ReLU):
            size = np.abs(values)
            if ((size > 0) & (size <= within * max(float(size.max()), 1.0))).any():
                return True
        elif isinstance(layer, MaxPool2D):
            if max_pool_near_tie(layer, values, 5 * within):
                return True
        elif varies_too_little(layer, values):
            return True
    return False


@pytest.mark.parametrize("case", range(40))
def test_random_networks_agree_with_the_reference_path(case):
    rng = np.random.default_rng([FUZZ_SEED, case])
    model, shape = random_network(rng)
    what = f"case {case} (NNJIT_FUZZ_SEED={FUZZ_SEED}): {model!r}"
    for n in (1, 3, int(rng.integers(4, 300))):
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        assert_predict_agrees(model, x, f"{what}, batch {n}")

    for _ in range(10):  # a batch whose gradients both paths define alike
        x = rng.standard_normal((int(rng.integers(2, 70)), *shape)).astype(np.float32)
        if not ill_conditioned(model, x):
            break
    labels = rng.integers(0, 10, len(x))
    assert_training_agrees(model, x, labels, what)

    small = rng.standard_normal((2, *shape)).astype(np.float32)
    opt = nnjit.Momentum(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        model.forward(x)
        model.backward(labels)
        opt.step()
    assert_predict_agrees(model, small, f"{what}: after training steps")

    other, _ = random_network(np.random.default_rng([FUZZ_SEED, case]))
    other_state = {k: v + 0.01 for k, v in other.state_dict().items()}
    model.load_state_dict(other_state)
    assert_predict_agrees(model, small, f"{what}: after load_state_dict")

    for layer in model.layers:  # in place, as a user might
        if isinstance(layer, BatchNorm1D):
            layer.running_mean[...] += 0.25
            layer.running_var[...] *= 1.5
        elif isinstance(layer, (Conv2D, Dense)):
            layer.weight.value[0] *= -1
    assert_predict_agrees(model, small, f"{what}: after in-place changes")


def test_a_norm_after_a_relu_follows_training_in_replayed_predict():
    """The network whose replayed predict kept the old batch-norm statistics."""
    rng = np.random.default_rng(0)
    m = Sequential([Conv2D(1, 8, 3), ReLU(), BatchNorm2D(8), MaxPool2D(2),
                    Flatten(), Dense(8 * 13 * 13, 10), Softmax()], seed=0)
    opt = nnjit.Momentum(m.parameters(), lr=0.05, momentum=0.9)
    x = rng.random((4, 1, 28, 28), dtype=np.float32)
    xb = rng.random((64, 1, 28, 28), dtype=np.float32)
    for _ in range(3):
        m.predict(x)
    for _ in range(5):
        m.forward(xb)
        m.backward(rng.integers(0, 10, 64))
        opt.step()
    a = m.predict(x)
    b = m.predict(np.concatenate([x, x, x]))[:4]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a, reference(lambda: m.predict(x)), rtol=1e-4, atol=1e-5)


def test_two_norms_in_a_row_before_a_pool_train():
    """A norm fused with a pool hands its input gradient back only to a conv that
    runs alone before it, never to another norm (inference folds the first norm
    into the conv: the two passes' decisions must not mix)."""
    rng = np.random.default_rng(1)
    m = Sequential([Conv2D(1, 1, 1), BatchNorm2D(1), BatchNorm2D(1), MaxPool2D(2), Flatten(),
                    Dense(4, 3)], seed=0)
    x = rng.standard_normal((5, 1, 4, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 5)
    m.predict(x)  # builds the inference pass too
    out, loss, grads = training_step(m, x, labels)
    want_out, want_loss, want_grads = reference(lambda: training_step(m, x, labels))
    assert_close(out, want_out, "forward")
    for g, want in zip(grads, want_grads, strict=True):
        assert_close(g, want, "gradient")
    assert m.layers[2].hands_back_input_grad is False


ACTIVATIONS = (lambda: nnjit.ReLU(), lambda: nnjit.LeakyReLU(0.1), lambda: nnjit.Sigmoid(),
               lambda: nnjit.Tanh(), lambda: nnjit.GELU(), lambda: nnjit.GELU("tanh"),
               lambda: nnjit.SiLU(), lambda: nnjit.ReLU6(), lambda: nnjit.Hardswish())


def random_graph(rng):
    """(model, input shape): a stem conv, then blocks that are residual (an identity or
    1x1-projection shortcut, stride 1 or 2), concatenations of two branches,
    depthwise or grouped or dilated convs, padded max-pools; then global pooling
    and a dense head, maybe a Softmax."""
    c, h, w = int(rng.choice([1, 3])), int(rng.integers(8, 20)), int(rng.integers(8, 20))
    x = nnjit.Input((c, h, w))

    def act(t):
        return ACTIVATIONS[int(rng.integers(len(ACTIVATIONS)))]()(t)

    def conv(t, oc, k=3, stride=1, groups=1, dilation=1, bias=True):
        pad = dilation * (k - 1) // 2
        return Conv2D(t.shape[0], oc, k, stride, pad, bias=bias, groups=groups,
                      dilation=dilation)(t)

    y = act(BatchNorm2D(8)(conv(x, 8, bias=False)))
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.choice(["residual", "concat", "depthwise", "grouped", "pool"])
        ch = y.shape[0]
        if kind == "residual":
            oc = int(rng.choice([ch, ch * 2]))
            stride = int(rng.choice([1, 2])) if min(y.shape[1:]) >= 6 else 1
            z = act(BatchNorm2D(oc)(conv(y, oc, stride=stride, bias=False)))
            z = BatchNorm2D(oc)(conv(z, oc, bias=False))
            short = y if oc == ch and stride == 1 else BatchNorm2D(oc)(
                conv(y, oc, k=1, stride=stride, bias=False))
            y = nnjit.Add()([z, short])
            y = nnjit.ReLU()(y) if rng.random() < 0.7 else y
        elif kind == "concat":
            y = nnjit.Concatenate()([conv(y, int(rng.choice([4, 8])), k=1),
                                     act(conv(y, int(rng.choice([4, 16]))))])
        elif kind == "depthwise":
            y = act(BatchNorm2D(ch)(conv(y, ch, groups=ch, bias=False,
                                         dilation=int(rng.choice([1, 2])))))
            y = act(conv(y, int(rng.choice([8, 16, 17])), k=1))
        elif kind == "grouped":
            y = act(conv(y, 2 * ch, groups=int(rng.choice([2, ch])) if ch % 2 == 0 else 1))
        elif min(y.shape[1:]) >= 4:
            y = MaxPool2D(3, 2, padding=1)(y) if rng.random() < 0.5 else MaxPool2D(2)(y)
        if rng.random() < 0.2:
            y = Dropout(0.3)(y)
    y = Dense(y.shape[0], 10)(GlobalAvgPool2D()(y))
    if rng.random() < 0.6:
        y = Softmax()(y)
    model = nnjit.Model(x, y, seed=int(rng.integers(1 << 30)))
    spread_norms(model, rng)
    return model, (c, h, w)


def graph_reference(fn):
    """The reference for graphs: the grouped kernels (which run every conv, and are
    checked against NumPy), nothing fused, nothing replayed."""
    with nnjit.using(conv="grouped", fusion=False, replay=False):
        return fn()


@pytest.mark.parametrize("case", range(16))
def test_random_graphs_agree_with_the_reference_path(case):
    rng = np.random.default_rng([FUZZ_SEED, 1000 + case])
    model, shape = random_graph(rng)
    what = f"graph case {case} (NNJIT_FUZZ_SEED={FUZZ_SEED}): {model!r}"
    for n in (1, int(rng.integers(2, 120))):
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        assert_predict_agrees(model, x, f"{what}, batch {n}", graph_reference)
    x = rng.standard_normal((int(rng.integers(2, 40)), *shape)).astype(np.float32)
    labels = rng.integers(0, 10, len(x))
    assert_training_agrees(model, x, labels, what, graph_reference)
