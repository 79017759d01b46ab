"""Optimizers: SGD, Momentum, Adam and AdamW over one flat parameter buffer.

The base class owns the parameters, ``zero_grad`` and ``step``; a subclass
only says how to update (``_update``) and which state it keeps. Every
optimizer works on :class:`~nnjit.params.FlatParameters`, so it neither knows
nor cares which layers the parameters came from, and one kernel call updates
them all.
"""
from __future__ import annotations

import math

import numpy as np

from .kernels.optim import adam_step, momentum_step, sgd_step
from .params import FlatParameters, Parameter

#: Every Optimizer subclass by class name, so checkpoints can rebuild one.
OPTIMIZER_TYPES: dict[str, type["Optimizer"]] = {}


def _positive(value, name):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _non_negative(value, name):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _fraction(value, name):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


class Optimizer:
    """Base: holds the flat parameters, per-parameter state and a step count."""

    #: names of the state buffers (each shaped like the flat parameters)
    state_names: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        OPTIMIZER_TYPES[cls.__name__] = cls

    def __init__(self, params: list[Parameter], lr: float):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        self.lr = _positive(lr, "lr")
        self.flat = FlatParameters.of(params)
        self.state = {name: np.zeros_like(self.flat.values) for name in self.state_names}
        self.steps = 0

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero."""
        self.flat.grads[...] = 0

    def step(self) -> None:
        """Apply one update from the current gradients."""
        self.steps += 1
        self._update()

    def _update(self) -> None:
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        """Constructor keyword arguments except ``params`` (JSON-safe)."""
        return {"lr": self.lr}

    def state_dict(self) -> dict:
        """Name, hyperparameters, step count and state buffers (as flat arrays)."""
        return {"name": type(self).__name__, "hyperparameters": self.hyperparameters(),
                "steps": self.steps, "state": {k: v for k, v in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` output in place (buffers keep their identity)."""
        if state["name"] != type(self).__name__:
            raise ValueError(f"optimizer state is for {state['name']}, not {type(self).__name__}")
        for name in self.state_names:
            src = np.asarray(state["state"][name], dtype=self.flat.values.dtype)
            if src.shape != self.state[name].shape:
                raise ValueError(f"optimizer state {name!r} has shape {src.shape}, "
                                 f"expected {self.state[name].shape}")
            self.state[name][...] = src
        self.steps = int(state["steps"])


class SGD(Optimizer):
    """Plain stochastic gradient descent, with PyTorch's (coupled) L2 weight decay.

    for each parameter p with gradient g:  p <- p - lr * (g + weight_decay * p)
    """

    def __init__(self, params, lr, weight_decay=0.0):
        super().__init__(params, lr)
        self.weight_decay = _non_negative(weight_decay, "weight_decay")

    def hyperparameters(self):
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def _update(self):
        sgd_step(self.flat.values, self.flat.grads, self.lr, self.weight_decay)


class Momentum(Optimizer):
    """SGD with momentum, PyTorch's convention (velocity accumulates raw gradients).

    g <- g + weight_decay * p
    v <- momentum * v + g
    p <- p - lr * v                      (nesterov: p <- p - lr * (g + momentum * v))
    (v starts at 0, so the first plain step equals SGD.)
    """

    state_names = ("velocity",)

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        self.momentum = _fraction(momentum, "momentum")
        self.weight_decay = _non_negative(weight_decay, "weight_decay")
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        self.nesterov = nesterov

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov}

    def _update(self):
        momentum_step(self.flat.values, self.flat.grads, self.state["velocity"],
                      self.lr, self.momentum, self.weight_decay, self.nesterov)


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba 2015; PyTorch's formulation).

    g <- g + weight_decay * p            (coupled L2, as PyTorch's Adam)
    t <- t + 1
    m <- b1 m + (1 - b1) g
    v <- b2 v + (1 - b2) g^2
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    state_names = ("m", "v")
    #: AdamW decays the weights themselves instead of adding to the gradient.
    decoupled = False

    def __init__(self, params, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        self.betas = (_fraction(betas[0], "betas[0]"), _fraction(betas[1], "betas[1]"))
        self.eps = _positive(eps, "eps")
        self.weight_decay = _non_negative(weight_decay, "weight_decay")

    def hyperparameters(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}

    def _update(self):
        b1, b2 = self.betas
        adam_step(self.flat.values, self.flat.grads, self.state["m"], self.state["v"],
                  self.lr, b1, b2, self.eps, 1.0 - b1 ** self.steps, 1.0 - b2 ** self.steps,
                  self.weight_decay, self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019; PyTorch's AdamW and defaults).

    p <- p * (1 - lr * weight_decay), then Adam's step (without decay in g).
    """

    decoupled = True

    def __init__(self, params, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine decay from ``base_lr`` at step 0 to 0 at ``total_steps`` (Loshchilov & Hutter).

    lr(t) = base_lr * (1 + cos(pi * t / total_steps)) / 2, held at 0 past the end.
    """
    t = min(step, total_steps) / max(total_steps, 1)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))


def one_cycle_lr(max_lr: float, step: int, total_steps: int, warmup: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4) -> float:
    """One-cycle schedule (Smith & Topin; PyTorch's OneCycleLR, cosine annealing, lr only).

    Rises from max_lr / div_factor to max_lr over the first ``warmup`` fraction
    of the steps, then falls to max_lr / (div_factor * final_div_factor) by
    ``total_steps``, both along half a cosine; held at the end past it.
    """
    start, end = max_lr / div_factor, max_lr / (div_factor * final_div_factor)
    peak = max(1.0, warmup * total_steps)
    step = min(step, total_steps)
    if step <= peak:
        lo, hi, t = start, max_lr, step / peak
    else:
        lo, hi, t = max_lr, end, (step - peak) / max(1.0, total_steps - peak)
    return hi + (lo - hi) * 0.5 * (1.0 + math.cos(math.pi * t))
