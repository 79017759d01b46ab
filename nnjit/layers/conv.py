"""Conv2D: im2col + one GEMM forward; GEMMs + col2im backward."""
from __future__ import annotations

import numpy as np

from ..kernels.conv import col2im, im2col, nchw_to_ymat, ymat_to_nchw
from ..params import Parameter
from .base import Layer, he_uniform, pair, positive_int


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as in PyTorch) with zero padding.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding : int or (h, w)
    dtype : float32 (default) or float64 (for gradient checks)

    Shape
    -----
    input (N, C, H, W) -> output (N, OC, OH, OW), with
    OH = (H + 2*PH - KH) // SH + 1 and OW likewise from W.
    weight (OC, C, KH, KW), bias (OC,).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dtype=np.float32):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = pair(stride, "stride", 1)
        self.padding = pair(padding, "padding", 0)
        self.dtype = np.dtype(dtype)
        kh, kw = self.kernel_size
        self.weight = Parameter("weight", np.zeros((out_channels, in_channels, kh, kw), self.dtype))
        self.bias = Parameter("bias", np.zeros(out_channels, self.dtype))
        self.reset_parameters(np.random.default_rng())
        self._cache = None

    def reset_parameters(self, rng):
        kh, kw = self.kernel_size
        self.weight.value[...] = he_uniform(rng, self.weight.shape, self.in_channels * kh * kw)
        self.bias.value[...] = 0

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"Conv2D expects samples of shape ({self.in_channels}, H, W), "
                             f"got {tuple(input_shape)}")
        _, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"Conv2D kernel {self.kernel_size} with padding {self.padding} "
                             f"does not fit a {h}x{w} input")
        return (self.out_channels, oh, ow)

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        (ph, pw) = self.padding
        return [helper.make_node("Conv", [x, params["weight"], params["bias"]], [y],
                                 kernel_shape=list(self.kernel_size), strides=list(self.stride),
                                 pads=[ph, pw, ph, pw])]

    def forward(self, x, training=True):
        x = self._check_input(x, 4, self.dtype)
        n, c, h, w = x.shape
        oc, oh, ow = self.output_shape(x.shape[1:])
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        k, p = c * kh * kw, oh * ow
        mode = "train" if training else "eval"
        cols = self._buffer(f"cols/{mode}", (k, n * p), self.dtype)  # (C*KH*KW, N*OH*OW)
        im2col(x.reshape(-1), n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow, cols.reshape(-1))
        ymat = self._buffer(f"ymat/{mode}", (oc, n * p), self.dtype)  # (OC, N*OH*OW)
        np.matmul(self.weight.value.reshape(oc, k), cols, out=ymat)
        out = self._buffer(f"out/{mode}", (n, oc, oh, ow), self.dtype)
        ymat_to_nchw(ymat.reshape(-1), self.bias.value, n, p, oc, False, out.reshape(-1))
        self._cache = (x.shape, cols) if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._cache is None:
            raise self._no_cache()
        (n, c, h, w), cols = self._cache
        oc, oh, ow = self.output_shape((c, h, w))
        dy = self._check_grad(dy, (n, oc, oh, ow), self.dtype)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        k, p = c * kh * kw, oh * ow
        dymat = self._buffer("dymat", (oc, n * p), self.dtype)  # (OC, N*OH*OW)
        nchw_to_ymat(dy.reshape(-1), n, p, oc, dymat.reshape(-1), self.bias.grad)
        np.matmul(dymat, cols.T, out=self.weight.grad.reshape(oc, k))  # (OC, C*KH*KW)
        if not need_input_grad:
            return None
        # cols is spent once dW is known: reuse its memory for dcols.
        self._cache = None
        dcols = np.matmul(self.weight.value.reshape(oc, k).T, dymat, out=cols)  # (K, N*OH*OW)
        dx = self._buffer("dx", (n, c, h, w), self.dtype)
        col2im(dcols.reshape(-1), n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow, dx.reshape(-1))
        return dx
