"""ReLU, Softmax and the other pointwise activations (LeakyReLU, Sigmoid, Tanh,
GELU, SiLU, ReLU6, Hardswish), with PyTorch's semantics."""
from __future__ import annotations

import math

from ..kernels.activation import (GELU as GELU_OP, GELU_TANH, HARDSWISH, LEAKY_RELU, RELU6,
                                  SIGMOID, SILU, TANH, pointwise_backward, pointwise_forward,
                                  relu_backward, relu_forward, softmax_backward, softmax_forward)
from .base import LAYER_TYPES, Layer


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


class _Pointwise(Layer):
    """Base of the pointwise activations other than ReLU: y = f(x) elementwise
    by ``pointwise_forward`` (activation code ``op``). Shape: any (N, ...) -> same."""

    op = -1
    alpha = 0.0

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, x, training=True):
        x = self._check_input(x, None)
        out = self._buffer("out/train" if training else "out/eval", x.shape, x.dtype)
        pointwise_forward(x.reshape(-1), self.op, self.alpha, out.reshape(-1))
        self._cache = (x, out) if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._cache is None:
            raise self._no_cache()
        x, out = self._cache
        dy = self._check_grad(dy, out.shape, out.dtype)
        if not need_input_grad:
            return None
        dx = self._buffer("dx", dy.shape, dy.dtype)
        pointwise_backward(x.reshape(-1), out.reshape(-1), dy.reshape(-1), self.op, self.alpha,
                           dx.reshape(-1))
        return dx


def _constant(name: str, value: float):
    """An ONNX Constant node holding the float scalar ``value`` as tensor ``name``."""
    from onnx import TensorProto, helper

    return helper.make_node("Constant", [], [name],
                            value=helper.make_tensor(name, TensorProto.FLOAT, [], [value]))


class LeakyReLU(_Pointwise):
    """x where x >= 0, negative_slope * x elsewhere (PyTorch's default slope 0.01)."""

    op = LEAKY_RELU

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool) \
                or not math.isfinite(negative_slope):
            raise ValueError(f"negative_slope must be a finite number, got {negative_slope!r}")
        self.alpha = float(negative_slope)

    def config(self):
        return {"negative_slope": self.alpha}

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [helper.make_node("LeakyRelu", [x], [y], alpha=self.alpha)]


class Sigmoid(_Pointwise):
    """1 / (1 + exp(-x))."""

    op = SIGMOID

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [helper.make_node("Sigmoid", [x], [y])]


class Tanh(_Pointwise):
    """tanh(x)."""

    op = TANH

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [helper.make_node("Tanh", [x], [y])]


class GELU(_Pointwise):
    """x * Phi(x), Phi the standard normal CDF (``approximate="none"``), or its
    tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    (``approximate="tanh"``), as PyTorch's ``nn.GELU``."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f'approximate must be "none" or "tanh", got {approximate!r}')
        self.approximate = approximate
        self.op = GELU_OP if approximate == "none" else GELU_TANH

    def config(self):
        return {"approximate": self.approximate}

    def onnx_nodes(self, x, y, params):
        # Opset 13 has no Gelu: its definition in Erf (or Tanh), Mul and Add.
        from onnx import helper

        p = f"{y}."
        if self.approximate == "none":
            nodes = [_constant(p + "inv_sqrt2", math.sqrt(0.5)),
                     helper.make_node("Mul", [x, p + "inv_sqrt2"], [p + "scaled"]),
                     helper.make_node("Erf", [p + "scaled"], [p + "inner"])]
        else:
            nodes = [_constant(p + "cubic", 0.044715),
                     _constant(p + "sqrt_2_over_pi", math.sqrt(2 / math.pi)),
                     helper.make_node("Mul", [x, x], [p + "x2"]),
                     helper.make_node("Mul", [p + "x2", x], [p + "x3"]),
                     helper.make_node("Mul", [p + "x3", p + "cubic"], [p + "c3"]),
                     helper.make_node("Add", [x, p + "c3"], [p + "poly"]),
                     helper.make_node("Mul", [p + "poly", p + "sqrt_2_over_pi"], [p + "arg"]),
                     helper.make_node("Tanh", [p + "arg"], [p + "inner"])]
        return nodes + [_constant(p + "one", 1.0), _constant(p + "half", 0.5),
                        helper.make_node("Add", [p + "inner", p + "one"], [p + "sum"]),
                        helper.make_node("Mul", [x, p + "sum"], [p + "prod"]),
                        helper.make_node("Mul", [p + "prod", p + "half"], [y])]


class SiLU(_Pointwise):
    """x * sigmoid(x) (also called swish)."""

    op = SILU

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [helper.make_node("Sigmoid", [x], [y + ".sigmoid"]),
                helper.make_node("Mul", [x, y + ".sigmoid"], [y])]


class ReLU6(_Pointwise):
    """min(max(x, 0), 6)."""

    op = RELU6

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [_constant(y + ".low", 0.0), _constant(y + ".high", 6.0),
                helper.make_node("Clip", [x, y + ".low", y + ".high"], [y])]


class Hardswish(_Pointwise):
    """x * relu6(x + 3) / 6 (MobileNetV3's)."""

    op = HARDSWISH

    def onnx_nodes(self, x, y, params):
        # HardSwish arrives in opset 14; HardSigmoid(alpha=1/6, beta=1/2) is relu6(x+3)/6.
        from onnx import helper

        return [helper.make_node("HardSigmoid", [x], [y + ".gate"], alpha=1 / 6, beta=0.5),
                helper.make_node("Mul", [x, y + ".gate"], [y])]


del LAYER_TYPES["_Pointwise"]  # a shared base, no layer type
