"""Optimizer updates over one flat parameter buffer (and its state)."""
import numpy as np

from ._jit import kernel, prange


@kernel
def sgd_step(value, grad, lr):
    """value, grad: float (n,). Updates value in place: value -= lr * grad."""
    for i in prange(value.size):
        value[i] -= lr * grad[i]


@kernel
def momentum_step(value, grad, velocity, lr, momentum):
    """PyTorch's momentum: v = momentum * v + g; value -= lr * v.

    value, grad, velocity: float (n,); value and velocity updated in place."""
    for i in prange(value.size):
        v = momentum * velocity[i] + grad[i]
        velocity[i] = v
        value[i] -= lr * v


@kernel
def adam_step(value, grad, m, v, lr, beta1, beta2, eps, correction1, correction2):
    """Adam with bias correction (Kingma & Ba, as in PyTorch).

    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
    value -= lr * (m / correction1) / (sqrt(v / correction2) + eps),
    where correction_i = 1 - beta_i**t. value, m, v updated in place."""
    for i in prange(value.size):
        g = grad[i]
        mi = beta1 * m[i] + (1.0 - beta1) * g
        vi = beta2 * v[i] + (1.0 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        value[i] -= lr * (mi / correction1) / (np.sqrt(vi / correction2) + eps)
