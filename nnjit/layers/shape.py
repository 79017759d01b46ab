"""Flatten: (N, ...) -> (N, prod(...)), a view both ways."""
from __future__ import annotations

import math

from .base import Layer


class Flatten(Layer):
    """Flatten every sample to a vector.

    Shape
    -----
    input (N, d1, d2, ...) -> output (N, d1*d2*...).
    """

    def __init__(self):
        super().__init__()
        self._input_shape = None

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [helper.make_node("Flatten", [x], [y], axis=1)]

    def forward(self, x, training=True):
        x = self._check_input(x, None)
        if x.ndim < 2:
            raise ValueError(f"Flatten expects an array with a batch axis, got shape {x.shape}")
        self._input_shape = x.shape if training else None
        return x.reshape(x.shape[0], -1)  # (N, d1*d2*...)

    def backward(self, dy, need_input_grad=True):
        if self._input_shape is None:
            raise self._no_cache()
        n = self._input_shape[0]
        dy = self._check_grad(dy, (n, math.prod(self._input_shape[1:])), dy.dtype)
        return dy.reshape(self._input_shape) if need_input_grad else None
