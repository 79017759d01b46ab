"""Training end to end: overfitting one batch, determinism, and real MNIST accuracy."""
import numpy as np

from nnjit import SGD, Adam, Conv2D, Dense, Flatten, MaxPool2D, Momentum, ReLU, Sequential, Softmax
from nnjit.data import to_float


def small_cnn(seed):
    return Sequential([Conv2D(1, 8, 3), ReLU(), MaxPool2D(2), Flatten(),
                       Dense(8 * 13 * 13, 10), Softmax()], seed=seed)


def paper_cnn(seed):
    """The network of the core issue (and of the README)."""
    return Sequential([
        Conv2D(1, 32, kernel_size=3), ReLU(), MaxPool2D(2),
        Conv2D(32, 64, kernel_size=3, stride=1, padding=0), ReLU(), MaxPool2D(2),
        Flatten(), Dense(1600, 10), Softmax(),
    ], seed=seed)


def test_overfits_one_random_batch():
    rng = np.random.default_rng(0)
    x = rng.random((64, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, size=64)
    model = small_cnn(seed=0)
    opt = Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(300):
        model.forward(x)
        losses.append(model.backward(labels))
        opt.step()
    assert losses[0] > 2.0  # random labels start near ln(10)
    assert min(losses) < 0.1, f"loss only reached {min(losses):.3f}"


def test_same_seed_same_batches_gives_bit_identical_weights():
    rng = np.random.default_rng(5)
    batches = [(rng.random((16, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 16))
               for _ in range(4)]
    weights = []
    for _ in range(2):
        model = small_cnn(seed=42)
        opt = Momentum(model.parameters(), lr=0.05, momentum=0.9)
        for x, labels in batches:
            model.forward(x)
            model.backward(labels)
            opt.step()
        weights.append(model.flat.values.copy())
    assert np.array_equal(weights[0], weights[1])
    assert not np.array_equal(weights[0], small_cnn(seed=42).flat.values)  # it did train


def test_different_seeds_give_different_weights():
    assert not np.array_equal(small_cnn(1).flat.values, small_cnn(2).flat.values)


def test_cnn_learns_real_mnist(mnist_test_set):
    """The issue's recipe: first 8,000 test images, 3 epochs, batch 64, momentum 0.9, lr 0.01."""
    images, labels = mnist_test_set
    x = to_float(images)
    x_train, y_train, x_val, y_val = x[:8000], labels[:8000], x[8000:], labels[8000:]
    model = paper_cnn(seed=0)
    opt = Momentum(model.parameters(), lr=0.01, momentum=0.9)
    order_rng = np.random.default_rng(0)
    for _ in range(3):
        order = order_rng.permutation(len(x_train))
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            model.forward(x_train[idx])
            model.backward(y_train[idx])
            opt.step()
    _, accuracy = model.evaluate(x_val, y_val)
    assert accuracy >= 0.97, f"accuracy {accuracy:.4f} on the last 2,000 images"


def test_sgd_reduces_loss_on_a_fixed_batch():
    rng = np.random.default_rng(3)
    x = rng.random((32, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, size=32)
    model = small_cnn(seed=1)
    opt = SGD(model.parameters(), lr=0.05)
    model.forward(x)
    first = model.backward(labels)
    for _ in range(20):
        opt.step()
        model.forward(x)
        last = model.backward(labels)
    assert last < first * 0.8


def test_stopping_mid_epoch_and_resuming_from_a_checkpoint_is_exact(tmp_path):
    """The mechanism behind Ctrl-C + --resume: stop after 3 batches, save, load, skip them."""
    from nnjit.checkpoint import load_checkpoint, save_checkpoint
    from nnjit.optim import cosine_lr
    from nnjit.trainer import Trainer

    rng = np.random.default_rng(2)
    x = rng.random((200, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 200)

    def lr_at(step):
        return cosine_lr(0.05, step, 2 * 7)

    straight = small_cnn(seed=3)
    trainer = Trainer(straight, Momentum(straight.parameters(), lr=0.05), 32, seed=9, lr_at=lr_at)
    for epoch in (1, 2):
        trainer.run_epoch(x, y, epoch)

    model = small_cnn(seed=3)
    trainer = Trainer(model, Momentum(model.parameters(), lr=0.05), 32, seed=9, lr_at=lr_at)
    trainer.run_epoch(x, y, 1)
    calls = []
    stopped = trainer.run_epoch(x, y, 2, should_stop=lambda: calls.append(1) or len(calls) >= 3)
    assert stopped.stopped and stopped.batches_done == 3
    save_checkpoint(model, tmp_path / "c.json", trainer.optimizer)
    ckpt = load_checkpoint(tmp_path / "c.json")
    resumed = Trainer(ckpt.model, ckpt.make_optimizer(), 32, seed=9, lr_at=lr_at)
    rest = resumed.run_epoch(x, y, 2, start_batch=3)
    assert rest.batches_done == 7 and resumed.optimizer.steps == 14
    assert np.array_equal(ckpt.model.flat.values, straight.flat.values)


def test_batchnorm_cnn_learns_real_mnist_at_least_as_well_as_the_plain_cnn(mnist_test_set):
    """The same recipe as above for the plain cnn and for it with BatchNorm2D after each conv.

    Seed 0 (the recipe's): 97.75% plain, 97.85% with BatchNorm. Other seeds of this short
    constant-rate recipe differ either way (seeds 1-3: +0.2, +1.25, -0.6 points), so the
    comparison is made where the recipe was fixed, not tuned to it."""
    from nnjit.spec import build_model

    images, labels = mnist_test_set
    x = to_float(images)
    accuracies = {}
    for spec in ("conv:32:3,relu,pool:2,conv:64:3,relu,pool:2,dense:10,softmax",
                 "conv:32:3,bn,relu,pool:2,conv:64:3,bn,relu,pool:2,dense:10,softmax"):
        model = build_model(spec, seed=0)
        opt = Momentum(model.parameters(), lr=0.01, momentum=0.9)
        order_rng = np.random.default_rng(0)
        for _ in range(3):
            order = order_rng.permutation(8000)
            for start in range(0, 8000, 64):
                idx = order[start:start + 64]
                model.forward(x[idx])
                model.backward(labels[idx])
                opt.step()
        accuracies[spec] = model.evaluate(x[8000:], labels[8000:])[1]
    plain, with_bn = accuracies.values()
    assert with_bn >= plain >= 0.97, accuracies
