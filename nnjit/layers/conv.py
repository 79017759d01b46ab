"""Conv2D: im2col + one GEMM forward; GEMMs + col2im backward."""
from __future__ import annotations

import numpy as np

from ..kernels.conv import (col2im, im2col, nchw_to_ymat, pooled_grad_to_ymat, pooled_weight_grad,
                            ymat_to_nchw, ymat_to_pooled_nchw)
from ..params import Parameter
from .activation import ReLU
from .pool import MaxPool2D
from .base import Layer, he_uniform, pair, positive_int


#: Largest block of im2col columns. A batch whose cols fit is unfolded once and
#: its cols kept for backward (measured fastest for cnn training at batch 64
#: and 256); a larger one goes through in blocks, which bounds memory and lets
#: backward unfold each block again. Tests lower it to force blocking.
COLS_BLOCK_BYTES = 64 << 20


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
        self.unfuse()

    def unfuse(self):
        self.fused_relu = False
        self.fused_pool = None

    def fuse_next(self, layer) -> bool:
        """Absorb a following ReLU and then a MaxPool2D into the output pass.

        Inside a Sequential, conv -> ReLU -> max-pool then runs as one GEMM and
        one kernel that writes only the pooled output (the full-size
        activation is never stored), and backward likewise.
        """
        if isinstance(layer, ReLU) and not self.fused_relu and self.fused_pool is None:
            self.fused_relu = True
            return True
        if isinstance(layer, MaxPool2D) and self.fused_pool is None:
            self.fused_pool = layer
            return True
        return False

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

    def _chunk(self, n: int, k: int, p: int) -> int:
        """Images per im2col block: as many as keep cols within COLS_BLOCK_BYTES."""
        return max(1, min(n, COLS_BLOCK_BYTES // (k * p * self.dtype.itemsize)))

    def _unfold(self, x, start, stop, cols):
        """im2col of images [start, stop) of x into cols (K, (stop-start)*OH*OW)."""
        _, c, h, w = x.shape
        _, oh, ow = self.output_shape(x.shape[1:])
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        im2col(x[start:stop].reshape(-1), stop - start, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow,
               cols.reshape(-1))

    def forward(self, x, training=True):
        x = self._check_input(x, 4, self.dtype)
        n, c, h, w = x.shape
        oc, oh, ow = self.output_shape(x.shape[1:])
        kh, kw = self.kernel_size
        k, p = c * kh * kw, oh * ow
        mode = "train" if training else "eval"
        if self.fused_pool is None:
            out = self._buffer(f"out/{mode}", (n, oc, oh, ow), self.dtype)
            argmax = None
        else:
            _, poh, pow_ = self.fused_pool.output_shape((oc, oh, ow))
            out = self._buffer(f"out/{mode}", (n, oc, poh, pow_), self.dtype)
            argmax = self._buffer(f"argmax/{mode}", (n, oc, poh, pow_), np.int32)
        # One GEMM for the whole batch, unless its cols would pass COLS_BLOCK_BYTES:
        # then one per block of images, so memory stays bounded for large inputs.
        chunk = self._chunk(n, k, p)
        weight = self.weight.value.reshape(oc, k)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            m = stop - start
            cols = self._buffer(f"cols/{mode}", (k, m * p), self.dtype)  # (C*KH*KW, m*OH*OW)
            self._unfold(x, start, stop, cols)
            ymat = self._buffer(f"ymat/{mode}", (oc, m * p), self.dtype)  # (OC, m*OH*OW)
            np.matmul(weight, cols, out=ymat)
            if argmax is None:
                ymat_to_nchw(ymat.reshape(-1), self.bias.value, m, p, oc, self.fused_relu,
                             out[start:stop].reshape(-1))
            else:
                (pkh, pkw), (psh, psw) = self.fused_pool.kernel_size, self.fused_pool.stride
                ymat_to_pooled_nchw(ymat.reshape(-1), self.bias.value, m, oh, ow, oc,
                                    self.fused_relu, pkh, pkw, psh, psw, out.shape[2], out.shape[3],
                                    out[start:stop].reshape(-1), argmax[start:stop].reshape(-1))
        # One block: keep its cols for backward. Several: backward unfolds again.
        kept = cols if chunk >= n else None
        self._cache = (x, kept, out, argmax) if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._cache is None:
            raise self._no_cache()
        x, kept, out, argmax = self._cache
        n, c, h, w = x.shape
        oc, oh, ow = self.output_shape((c, h, w))
        dy = self._check_grad(dy, out.shape, self.dtype)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        k, p = c * kh * kw, oh * ow
        chunk = self._chunk(n, k, p)
        weight = self.weight.value.reshape(oc, k)
        dweight = self.weight.grad.reshape(oc, k)
        dx = self._buffer("dx", (n, c, h, w), self.dtype) if need_input_grad else None
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            m = stop - start
            cols = kept if kept is not None else self._buffer("cols/train", (k, m * p), self.dtype)
            if kept is None:
                self._unfold(x, start, stop, cols)
            if argmax is not None and not need_input_grad:
                pooled_weight_grad(dy[start:stop].reshape(-1), out[start:stop].reshape(-1),
                                   argmax[start:stop].reshape(-1), cols.reshape(-1), m, p, oc,
                                   out[0, 0].size, k, self.fused_relu, start > 0,
                                   dweight.reshape(-1), self.bias.grad)
                continue
            dymat = self._buffer("dymat", (oc, m * p), self.dtype)  # (OC, m*OH*OW)
            dbias = self.bias.grad if start == 0 else self._buffer("dbias", (oc,), self.dtype)
            if argmax is None:
                nchw_to_ymat(dy[start:stop].reshape(-1), out[start:stop].reshape(-1), m, p, oc,
                             self.fused_relu, dymat.reshape(-1), dbias)
            else:
                pooled_grad_to_ymat(dy[start:stop].reshape(-1), out[start:stop].reshape(-1),
                                    argmax[start:stop].reshape(-1), m, p, oc, out[0, 0].size,
                                    self.fused_relu, dymat.reshape(-1), dbias)
            if start == 0:
                np.matmul(dymat, cols.T, out=dweight)  # (OC, C*KH*KW)
            else:
                self.bias.grad += dbias
                dweight += np.matmul(dymat, cols.T, out=self._buffer("dw", (oc, k), self.dtype))
            if need_input_grad:
                # cols is spent once this block's dW is known: reuse its memory for dcols.
                dcols = np.matmul(weight.T, dymat, out=cols)  # (C*KH*KW, m*OH*OW)
                col2im(dcols.reshape(-1), m, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow,
                       dx[start:stop].reshape(-1))
        self._cache = None
        return dx
