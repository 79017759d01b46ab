"""Dense (fully connected) layer: y = x W^T + b."""
from __future__ import annotations

import numpy as np

from ..kernels.blas import SMALL_GEMM_MACS, blas_handle
from ..kernels.dense import dense_backward, dense_forward
from ..params import Parameter
from ..threads import parts_for
from .activation import FusesReLU
from .base import Layer, he_uniform, positive_int


class Dense(FusesReLU, Layer):
    """Fully connected layer, PyTorch's ``Linear``.

    Shape
    -----
    input (N, in_features) -> output (N, out_features).
    weight (out_features, in_features), bias (out_features,).
    """

    def __init__(self, in_features, out_features, dtype=np.float32):
        super().__init__()
        shapes = self.array_shapes(in_features=in_features, out_features=out_features)
        self.out_features, self.in_features = shapes["weight"]
        self.dtype = np.dtype(dtype)
        self.weight = Parameter("weight", np.zeros(shapes["weight"], self.dtype))
        self.bias = Parameter("bias", np.zeros(shapes["bias"], self.dtype))
        self.reset_parameters(np.random.default_rng())
        self._cache = None
        self.unfuse()

    @classmethod
    def array_shapes(cls, in_features, out_features, **_):
        n_in, n_out = positive_int(in_features, "in_features"), positive_int(out_features, "out_features")
        return {"weight": (n_out, n_in), "bias": (n_out,)}

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

    def _chunk_rows(self, n):
        """Rows per GEMM: SMALL_GEMM_MACS worth, or all ``n`` when fewer than 4 rows
        fit (measured: chunks of 16-64 rows of 784->128 ran at 39-68 GFLOP/s,
        the whole part at 90, 4-8 rows at 92-95)."""
        rows = SMALL_GEMM_MACS // (self.in_features * self.out_features)
        return rows if rows >= 4 else max(n, 1)

    def forward(self, x, training=True):
        x = self._check_input(x, 2, self.dtype)
        self.output_shape(x.shape[1:])
        n, f = x.shape[0], self.out_features
        out = self._buffer("out/train" if training else "out/eval", (n, f), self.dtype)
        parts = parts_for(n * self.in_features * f, n)
        dense_forward.run(parts > 1, x.reshape(-1), self.weight.value.reshape(-1), self.bias.value,
                          n, self.in_features, f, self.fused_relu, parts, self._chunk_rows(n),
                          out.reshape(-1), blas_handle())
        self._cache = (x, out) if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._cache is None:
            raise self._no_cache()
        x, out = self._cache
        n, f = x.shape[0], self.out_features
        dy = self._check_grad(dy, (n, f), self.dtype)
        parts = parts_for(2 * n * self.in_features * f, min(n, f))
        masked = self._buffer("dy", dy.shape, self.dtype) if self.fused_relu else dy
        dx = self._buffer("dx", x.shape, self.dtype) if need_input_grad else x  # x: never written
        dense_backward.run(parts > 1, x.reshape(-1), out.reshape(-1), dy.reshape(-1),
                           self.weight.value.reshape(-1), n, self.in_features, f, self.fused_relu,
                           parts, self._chunk_rows(n), need_input_grad, masked.reshape(-1),
                           self.weight.grad.reshape(-1), self.bias.grad, dx.reshape(-1),
                           blas_handle())
        self._cache = None
        return dx if need_input_grad else None
