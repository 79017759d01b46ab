"""Optimizer updates over one flat parameter buffer (and its state)."""
import numpy as np

from ._jit import kernel, prange


@kernel
def sgd_step(value, grad, lr, weight_decay):
    """value, grad: float (n,). Updates value in place:
    value -= lr * (grad + weight_decay * value) (PyTorch's coupled L2)."""
    for i in prange(value.size):
        value[i] -= lr * (grad[i] + weight_decay * value[i])


@kernel
def momentum_step(value, grad, velocity, lr, momentum, weight_decay, nesterov):
    """PyTorch's momentum: g = grad + weight_decay * value; v = momentum * v + g;
    value -= lr * (g + momentum * v if nesterov else v).

    value, grad, velocity: float (n,); value and velocity updated in place."""
    for i in prange(value.size):
        g = grad[i] + weight_decay * value[i]
        v = momentum * velocity[i] + g
        velocity[i] = v
        if nesterov:
            value[i] -= lr * (g + momentum * v)
        else:
            value[i] -= lr * v


@kernel
def adam_step(value, grad, m, v, lr, beta1, beta2, eps, correction1, correction2, weight_decay,
              decoupled):
    """Adam with bias correction (Kingma & Ba, as in PyTorch), with weight decay
    coupled (Adam: g += weight_decay * value) or ``decoupled`` (AdamW:
    value *= 1 - lr * weight_decay before the step; Loshchilov & Hutter).

    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
    value -= lr * (m / correction1) / (sqrt(v / correction2) + eps),
    where correction_i = 1 - beta_i**t. value, m, v updated in place."""
    for i in prange(value.size):
        g = grad[i]
        if decoupled:
            value[i] *= 1.0 - lr * weight_decay
        else:
            g += weight_decay * value[i]
        mi = beta1 * m[i] + (1.0 - beta1) * g
        vi = beta2 * v[i] + (1.0 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        value[i] -= lr * (mi / correction1) / (np.sqrt(vi / correction2) + eps)
