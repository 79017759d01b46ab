"""Dense (fully connected) layer: y = x W^T + b."""
from __future__ import annotations

import numpy as np

from ..kernels.activation import relu_backward
from ..kernels.dense import bias_add_rows, bias_grad_rows
from ..params import Parameter
from .activation import ReLU
from .base import Layer, he_uniform, positive_int


class Dense(Layer):
    """Fully connected layer, PyTorch's ``Linear``.

    Shape
    -----
    input (N, in_features) -> output (N, out_features).
    weight (out_features, in_features), bias (out_features,).
    """

    def __init__(self, in_features, out_features, dtype=np.float32):
        super().__init__()
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.dtype = np.dtype(dtype)
        self.weight = Parameter("weight", np.zeros((out_features, in_features), self.dtype))
        self.bias = Parameter("bias", np.zeros(out_features, self.dtype))
        self.reset_parameters(np.random.default_rng())
        self._cache = None
        self.unfuse()

    def unfuse(self):
        self.fused_relu = False

    def fuse_next(self, layer) -> bool:
        """Absorb a following ReLU into the bias pass."""
        if isinstance(layer, ReLU) and not self.fused_relu:
            self.fused_relu = True
            return True
        return False

    def reset_parameters(self, rng):
        self.weight.value[...] = he_uniform(rng, self.weight.shape, self.in_features)
        self.bias.value[...] = 0

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features}

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"Dense expects samples of shape ({self.in_features},), "
                             f"got {tuple(input_shape)}")
        return (self.out_features,)

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [helper.make_node("Gemm", [x, params["weight"], params["bias"]], [y], transB=1)]

    def forward(self, x, training=True):
        x = self._check_input(x, 2, self.dtype)
        self.output_shape(x.shape[1:])
        n = x.shape[0]
        out = self._buffer("out/train" if training else "out/eval", (n, self.out_features), self.dtype)
        np.matmul(x, self.weight.value.T, out=out)
        bias_add_rows(out.reshape(-1), self.bias.value, n, self.out_features, self.fused_relu)
        self._cache = (x, out) if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._cache is None:
            raise self._no_cache()
        x, out = self._cache
        n = x.shape[0]
        dy = self._check_grad(dy, (n, self.out_features), self.dtype)
        if self.fused_relu:
            masked = self._buffer("dy", dy.shape, self.dtype)
            relu_backward(out.reshape(-1), dy.reshape(-1), masked.reshape(-1))
            dy = masked
        bias_grad_rows(dy.reshape(-1), n, self.out_features, self.bias.grad)
        np.matmul(dy.T, x, out=self.weight.grad)  # (out, in)
        if not need_input_grad:
            return None
        return np.matmul(dy, self.weight.value, out=self._buffer("dx", x.shape, self.dtype))
