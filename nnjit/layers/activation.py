"""ReLU and Softmax."""
from __future__ import annotations

from ..kernels.activation import relu_backward, relu_forward, softmax_backward, softmax_forward
from .base import Layer


class ReLU(Layer):
    """max(x, 0) elementwise. Shape: any (N, ...) -> same."""

    def __init__(self):
        super().__init__()
        self._out = None

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [helper.make_node("Relu", [x], [y])]

    def forward(self, x, training=True):
        x = self._check_input(x, None)
        out = self._buffer("out/train" if training else "out/eval", x.shape, x.dtype)
        relu_forward(x.reshape(-1), out.reshape(-1))
        self._out = out if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._out is None:
            raise self._no_cache()
        dy = self._check_grad(dy, self._out.shape, self._out.dtype)
        if not need_input_grad:
            return None
        dx = self._buffer("dx", dy.shape, dy.dtype)
        relu_backward(self._out.reshape(-1), dy.reshape(-1), dx.reshape(-1))
        return dx


class AppliesReLU:
    """Mixin for a layer whose output pass can apply a ReLU after it (Dense's bias
    pass, BatchNorm's normalising pass) and mask its backward, when the fusion
    pass (``nnjit.fusion``) gives it one."""

    fused_relu = False

    def set_epilogue(self, relu=False):
        self.fused_relu = bool(relu)


class Softmax(Layer):
    """Row-wise softmax over the last axis. Shape: (N, K) -> (N, K).

    ``backward`` is the true vector-Jacobian product. A model that ends in
    Softmax does not call it in training: ``Sequential.backward`` starts from
    the fused cross-entropy gradient at this layer's input (the logits, which
    the model records as it runs).
    """

    def __init__(self):
        super().__init__()
        self._out = None

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [helper.make_node("Softmax", [x], [y], axis=-1)]

    def forward(self, x, training=True):
        x = self._check_input(x, 2)
        n, k = x.shape
        out = self._buffer("out/train" if training else "out/eval", x.shape, x.dtype)
        softmax_forward(x.reshape(-1), n, k, out.reshape(-1))
        self._out = out if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._out is None:
            raise self._no_cache()
        dy = self._check_grad(dy, self._out.shape, self._out.dtype)
        if not need_input_grad:
            return None
        n, k = dy.shape
        dx = self._buffer("dx", dy.shape, dy.dtype)
        softmax_backward(self._out.reshape(-1), dy.reshape(-1), n, k, dx.reshape(-1))
        return dx
