"""Pooling layers: MaxPool2D (remembering where each maximum was), AvgPool2D, GlobalAvgPool2D."""
from __future__ import annotations

import numpy as np

from ..kernels.pool import (avgpool_backward, avgpool_forward, maxpool_backward,
                            maxpool_forward, maxpool_forward_padded)
from .base import Layer, pair


class Pool2D(Layer):
    """Base of the windowed pooling layers: window and stride, no padding,
    partial windows dropped (floor), PyTorch's defaults.

    Parameters
    ----------
    kernel_size : int or (h, w)
    stride : int or (h, w), default ``kernel_size``

    Shape
    -----
    input (N, C, H, W) -> output (N, C, OH, OW), OH = (H - KH) // SH + 1.
    """

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", 1)
        self._cache = None

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride)}

    def _geometry(self, input_shape):
        """(KH, KW, SH, SW, OH, OW) for one sample of ``input_shape`` (C, H, W)."""
        if len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} expects samples of shape (C, H, W), "
                             f"got {tuple(input_shape)}")
        _, h, w = input_shape
        (kh, kw), (sh, sw) = self._window(h, w)
        if kh > h or kw > w:
            raise ValueError(f"{type(self).__name__} window {(kh, kw)} does not fit a {h}x{w} input")
        return kh, kw, sh, sw, (h - kh) // sh + 1, (w - kw) // sw + 1

    def _window(self, h, w):
        """(kernel, stride) for an input plane of h x w."""
        return self.kernel_size, self.stride

    def output_shape(self, input_shape):
        *_, oh, ow = self._geometry(input_shape)
        return (input_shape[0], oh, ow)

    #: The ONNX operator with the same window semantics (no padding, floor).
    onnx_op: str = ""

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [helper.make_node(self.onnx_op, [x], [y], kernel_shape=list(self.kernel_size),
                                 strides=list(self.stride))]


class MaxPool2D(Pool2D):
    """2-D max pooling (see Pool2D); forward keeps each window's argmax, so
    backward routes every gradient to exactly one input, even on ties.

    padding : int or (h, w), default 0
        Implicit -inf padding on each side, at most half the window (PyTorch's
        rule), so every window holds an input: OH = (H + 2*PH - KH) // SH + 1.
        (torchvision's ResNet stem pools 3x3, stride 2, padding 1.)
    """

    onnx_op = "MaxPool"

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__(kernel_size, stride)
        self.padding = pair(padding, "padding", 0)
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding {padding!r} must be at most half the window "
                             f"{self.kernel_size}")

    def config(self):
        return {**super().config(), **({"padding": list(self.padding)} if any(self.padding)
                                       else {})}

    def _geometry(self, input_shape):
        if not any(self.padding):
            return super()._geometry(input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"MaxPool2D expects samples of shape (C, H, W), got "
                             f"{tuple(input_shape)}")
        _, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if kh > h + 2 * ph or kw > w + 2 * pw:
            raise ValueError(f"MaxPool2D window {(kh, kw)} does not fit a {h}x{w} input "
                             f"padded by {(ph, pw)}")
        return kh, kw, sh, sw, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        ph, pw = self.padding
        return [helper.make_node("MaxPool", [x], [y], kernel_shape=list(self.kernel_size),
                                 strides=list(self.stride), pads=[ph, pw, ph, pw])]

    def forward(self, x, training=True):
        x = self._check_input(x, 4)
        n, c, h, w = x.shape
        _, oh, ow = self.output_shape(x.shape[1:])
        mode = "train" if training else "eval"
        out = self._buffer(f"out/{mode}", (n, c, oh, ow), x.dtype)
        argmax = self._buffer(f"argmax/{mode}", (n, c, oh, ow), np.int32)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if ph or pw:
            maxpool_forward_padded(x.reshape(-1), n * c, h, w, kh, kw, sh, sw, ph, pw, oh, ow,
                                   out.reshape(-1), argmax.reshape(-1))
        else:
            maxpool_forward(x.reshape(-1), n * c, h, w, kh, kw, sh, sw, oh, ow,
                            out.reshape(-1), argmax.reshape(-1))
        self._cache = (x.shape, argmax) if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._cache is None:
            raise self._no_cache()
        (n, c, h, w), argmax = self._cache
        dy = self._check_grad(dy, argmax.shape, dy.dtype)
        if not need_input_grad:
            return None
        dx = self._buffer("dx", (n, c, h, w), dy.dtype)
        _, _, oh, ow = argmax.shape
        maxpool_backward(dy.reshape(-1), argmax.reshape(-1), n * c, h, w, oh, ow, dx.reshape(-1))
        return dx


class AvgPool2D(Pool2D):
    """2-D average pooling (see Pool2D), PyTorch's ``AvgPool2d`` with its defaults."""

    onnx_op = "AveragePool"

    def forward(self, x, training=True):
        x = self._check_input(x, 4)
        n, c, h, w = x.shape
        kh, kw, sh, sw, oh, ow = self._geometry(x.shape[1:])
        out = self._buffer("out/train" if training else "out/eval",
                           (n,) + self.output_shape(x.shape[1:]), x.dtype)
        avgpool_forward(x.reshape(-1), n * c, h, w, kh, kw, sh, sw, oh, ow, out.reshape(-1))
        self._cache = x.shape if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._cache is None:
            raise self._no_cache()
        n, c, h, w = self._cache
        dy = self._check_grad(dy, (n,) + self.output_shape((c, h, w)), dy.dtype)
        self._cache = None
        if not need_input_grad:
            return None
        kh, kw, sh, sw, oh, ow = self._geometry((c, h, w))
        dx = self._buffer("dx", (n, c, h, w), dy.dtype)
        avgpool_backward(dy.reshape(-1), n * c, h, w, kh, kw, sh, sw, oh, ow, dx.reshape(-1))
        return dx


class GlobalAvgPool2D(AvgPool2D):
    """Mean over each whole plane: (N, C, H, W) -> (N, C), so that a Dense can
    follow without Flatten (PyTorch's ``AdaptiveAvgPool2d(1)`` then ``flatten(1)``).

    Shape
    -----
    input (N, C, H, W) -> output (N, C).
    """

    def __init__(self):
        super().__init__(1)

    def config(self):
        return {}

    def _window(self, h, w):
        return (h, w), (h, w)

    def output_shape(self, input_shape):
        self._geometry(input_shape)
        return (input_shape[0],)

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [helper.make_node("GlobalAveragePool", [x], [f"{y}/nchw"]),
                helper.make_node("Flatten", [f"{y}/nchw"], [y], axis=1)]
