"""Dropout: random zeroing while training, identity at inference."""
from __future__ import annotations

import numpy as np

from ..kernels.activation import dropout_backward, dropout_forward
from .base import Layer


class Dropout(Layer):
    """Inverted dropout, PyTorch's ``Dropout``.

    In a training forward each element is zeroed with probability ``p`` and
    the kept ones are scaled by 1 / (1 - p), so the expected output equals the
    input; ``predict``/``evaluate`` (training=False) pass the input through.
    Each forward draws one 64-bit key from the layer's own generator, seeded
    from the model's seed (``Sequential(..., seed=...)``), and the kernel
    hashes (key, position) into the mask (``kernels.activation.mixed_bits``):
    a seeded run is reproducible, the mask costs no random-number pass and is
    recomputed in backward, not stored. The generator's state is saved in
    checkpoints (``get_extra_state``), so a resumed run draws the masks the
    uninterrupted one would have.

    Shape: any (N, ...) -> same.
    """

    def __init__(self, p=0.5):
        super().__init__()
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = np.random.default_rng()
        self._key = None

    def reset_parameters(self, rng):
        self.rng = np.random.default_rng(rng.integers(2 ** 63))

    def config(self):
        return {"p": self.p}

    def get_extra_state(self):
        return {"rng": self.rng.bit_generator.state}

    def set_extra_state(self, state):
        generator = np.random.PCG64()
        generator.state = state["rng"]
        self.rng = np.random.Generator(generator)

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [helper.make_node("Identity", [x], [y])]  # inference: dropout is the identity

    def _threshold(self) -> np.uint64:
        """p * 2**32: a 32-bit draw below it drops the element."""
        return np.uint64(round(self.p * 2 ** 32))

    def identity_at_inference(self):
        return True

    def forward(self, x, training=True):
        x = self._check_input(x, None)
        if not training:
            return x
        key = self.rng.integers(0, 2 ** 64, dtype=np.uint64)
        out = self._buffer("out", x.shape, x.dtype)
        dropout_forward(x.reshape(-1), key, self._threshold(), 1.0 / (1.0 - self.p),
                        out.reshape(-1))
        self._key = (key, x.shape)
        return out

    def backward(self, dy, need_input_grad=True):
        if self._key is None:
            raise self._no_cache()
        (key, shape), self._key = self._key, None
        dy = self._check_grad(dy, shape, dy.dtype)
        if not need_input_grad:
            return None
        dx = self._buffer("dx", dy.shape, dy.dtype)
        dropout_backward(dy.reshape(-1), key, self._threshold(), 1.0 / (1.0 - self.p),
                         dx.reshape(-1))
        return dx
