"""BatchNorm1D and BatchNorm2D: PyTorch's batch normalisation."""
from __future__ import annotations

import numpy as np

from ..kernels.batchnorm import (affine_pool_forward, batchnorm_backward, batchnorm_forward_eval,
                                 batchnorm_forward_train, batchnorm_inference_affine,
                                 batchnorm_pool_coefficients,
                                 batchnorm_pool_input_grad, batchnorm_statistics)
from ..params import Parameter
from ..threads import parts_for, split_bounds
from .activation import AppliesReLU
from .base import Layer, PooledNormGrad, float_dtype, positive_int


#: ``parts_for`` work per input value of the fused affine + max-pool pass: it
#: runs ~0.4 ns per value on one thread (cnn-bn's first block, 1.2M values:
#: 0.49 ms), about what 20 of a conv's multiply-adds take.
AFFINE_POOL_WORK = 20


class BatchNorm1D(AppliesReLU, Layer):
    """Batch normalisation over features, PyTorch's ``BatchNorm1d``.

    Training forward: y = (x - mean) / sqrt(var + eps) * weight + bias with
    the batch's mean and biased variance per feature, and
    running_mean <- (1 - momentum) running_mean + momentum mean,
    running_var <- (1 - momentum) running_var + momentum unbiased_var.
    Inference (``predict``/``evaluate``): the running statistics instead.

    Parameters
    ----------
    num_features : int
    eps : float, default 1e-5
    momentum : float in [0, 1], default 0.1

    Shape
    -----
    input (N, C) or (N, C, L) -> same. weight, bias, running_mean,
    running_var (C,); the running statistics are buffers: saved in
    checkpoints and exported, not optimised.
    """

    #: Samples' number of dimensions this layer takes: (C,) or (C, L).
    sample_dims = (1, 2)
    buffer_names = ("running_mean", "running_var")
    #: A MaxPool2D whose work the output pass does (BatchNorm2D only).
    fused_pool = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        (self.num_features,) = self.array_shapes(num_features=num_features)["weight"]
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) \
                or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.eps, self.momentum = float(eps), float(momentum)
        self.dtype = float_dtype(dtype)
        self.weight = Parameter("weight", np.ones(num_features, self.dtype))
        self.bias = Parameter("bias", np.zeros(num_features, self.dtype))
        self.running_mean = np.zeros(num_features, self.dtype)
        self.running_var = np.ones(num_features, self.dtype)
        self._cache = None
        self.set_epilogue()

    @classmethod
    def array_shapes(cls, num_features, **_):
        c = (positive_int(num_features, "num_features"),)
        return {"weight": c, "bias": c, "running_mean": c, "running_var": c}

    def reset_parameters(self, rng):
        self.weight.value[...] = 1
        self.bias.value[...] = 0
        self.reset_running_stats()

    def reset_running_stats(self):
        """Running mean 0 and variance 1, as at construction."""
        self.running_mean[...] = 0
        self.running_var[...] = 1

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}

    def output_shape(self, input_shape):
        if len(input_shape) not in self.sample_dims or input_shape[0] != self.num_features:
            raise ValueError(f"{type(self).__name__} expects samples of {self.num_features} "
                             f"channels with {' or '.join(map(str, self.sample_dims))} dims, "
                             f"got {tuple(input_shape)}")
        return tuple(input_shape)

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [helper.make_node("BatchNormalization",
                                 [x, params["weight"], params["bias"], params["running_mean"],
                                  params["running_var"]], [y], epsilon=self.eps)]

    def _layout(self, x):
        """(N, C, P) of an input x."""
        self.output_shape(x.shape[1:])
        n, c = x.shape[:2]
        return n, c, int(np.prod(x.shape[2:], dtype=np.int64))

    def forward(self, x, training=True):
        x = self._check_input(x, None, self.dtype)
        if self.fused_pool is not None:
            return self._forward_pooled(x, training)
        n, c, p = self._layout(x)
        out = self._buffer("out/train" if training else "out/eval", x.shape, self.dtype)
        if not training:
            batchnorm_forward_eval(x.reshape(-1), n, c, p, self.eps, self.weight.value,
                                   self.bias.value, self.running_mean, self.running_var,
                                   self.fused_relu, out.reshape(-1))
            return out
        if n * p < 2:
            raise ValueError(f"{type(self).__name__} needs more than one value per channel "
                             f"to train, got input of shape {x.shape}")
        # float64: the backward recomputes xhat = (x - mean) * invstd from them, and
        # a mean rounded to float32 is off by ~1e-7 of itself, which invstd
        # multiplies (a feature far from 0 with a small spread lost 3 digits)
        mean = self._buffer("mean", (c,), np.float64)
        invstd = self._buffer("invstd", (c,), np.float64)
        batchnorm_forward_train(x.reshape(-1), n, c, p, self.eps, self.momentum, self.weight.value,
                                self.bias.value, self.fused_relu, out.reshape(-1), mean, invstd,
                                self.running_mean, self.running_var)
        # x itself, not a copy: the layer before keeps its output until its own
        # backward, which runs after this one's
        self._cache = (x, out, mean, invstd)
        return out

    def backward(self, dy, need_input_grad=True):
        if self._cache is None:
            raise self._no_cache()
        if self.fused_pool is not None:
            return self._backward_pooled(dy, need_input_grad)
        x, out, mean, invstd = self._cache
        self._cache = None
        dy = self._check_grad(dy, x.shape, self.dtype)
        n, c, p = self._layout(x)
        dx = self._buffer("dx", x.shape, self.dtype) if need_input_grad else dy  # dy: not written
        batchnorm_backward(dy.reshape(-1), x.reshape(-1), out.reshape(-1), mean, invstd,
                           self.weight.value, n, c, p, self.fused_relu, need_input_grad,
                           dx.reshape(-1), self.weight.grad, self.bias.grad)
        return dx if need_input_grad else None


class BatchNorm2D(BatchNorm1D):
    """Batch normalisation per channel over (N, C, H, W), PyTorch's ``BatchNorm2d``
    (see BatchNorm1D for the rules).

    Shape
    -----
    input (N, C, H, W) -> same.
    """

    sample_dims = (3,)

    def set_epilogue(self, relu=False, pool=None, hand_back=False):
        """What the normalising pass applies after it (the fusion pass decides,
        ``nnjit.fusion``): a ReLU, then a max-pool (a MaxPool2D whose shape
        parameters it reads). With a pool it writes only the pooled output, and
        backward recomputes the normalised values from the input instead of
        storing them (cnn-bn's first block: 2.5 -> 1.3 ms fwd+bwd at batch 64).
        ``hand_back``: backward returns a :class:`PooledNormGrad` that the conv
        before it evaluates block by block as its backward reads it (the 4.8 MB
        dx of cnn-bn's first block at batch 64 never written and read back)."""
        self.fused_relu = bool(relu)
        self.fused_pool = pool
        self.hands_back_input_grad = bool(hand_back) and pool is not None

    def _forward_pooled(self, x, training):
        n, c, h, w = x.shape
        self.output_shape(x.shape[1:])
        kh, kw, sh, sw, oh, ow = self.fused_pool._geometry((c, h, w))
        mode = "train" if training else "eval"
        out = self._buffer(f"out/{mode}", (n, c, oh, ow), self.dtype)
        argmax = self._buffer(f"argmax/{mode}", (n, c, oh, ow), np.int32)
        winner = self._buffer(f"winner/{mode}", (n, c, oh, ow), self.dtype)
        scale, shift = self._buffer("scale", (c,), self.dtype), self._buffer("shift", (c,), self.dtype)
        if training:
            if n * h * w < 2:
                raise ValueError(f"{type(self).__name__} needs more than one value per channel "
                                 f"to train, got input of shape {x.shape}")
            mean, invstd = self._buffer("mean", (c,), np.float64), self._buffer("invstd", (c,), np.float64)
            batchnorm_statistics(x.reshape(-1), n, c, h * w, self.eps, self.momentum,
                                 self.weight.value, self.bias.value, mean, invstd, scale, shift,
                                 self.running_mean, self.running_var)
        else:  # in a kernel, so that a replayed predict recomputes it from the buffers
            batchnorm_inference_affine(self.weight.value, self.bias.value, self.running_mean,
                                       self.running_var, self.eps, scale, shift)
        parts = parts_for(x.size * AFFINE_POOL_WORK, n * c)
        bounds = split_bounds(n * c, parts)
        affine_pool_forward.run(parts > 1, x.reshape(-1), n * c, c, h, w, scale, shift,
                                self.fused_relu, kh, kw, sh, sw, oh, ow, bounds,
                                self._buffer("scratch", (len(bounds) - 1, h * w), self.dtype),
                                out.reshape(-1), argmax.reshape(-1), winner.reshape(-1))
        self._cache = (x, out, argmax, winner, mean, invstd) if training else None
        return out

    def _backward_pooled(self, dy, need_input_grad):
        x, out, argmax, winner, mean, invstd = self._cache
        self._cache = None
        dy = self._check_grad(dy, out.shape, self.dtype)
        n, c, h, w = x.shape
        coef = self._buffer("coef", (4 * c,), self.dtype)
        batchnorm_pool_coefficients(dy.reshape(-1), out.reshape(-1), winner.reshape(-1), mean,
                                    invstd, self.weight.value, n, c, h * w, out[0, 0].size,
                                    self.fused_relu, self.weight.grad, self.bias.grad, coef)
        if not need_input_grad:
            return None
        if self.hands_back_input_grad:
            return PooledNormGrad(x, dy, out, argmax, coef, self.fused_relu,
                                  self.fused_pool.kernel_size, self.fused_pool.stride)
        dx = self._buffer("dx", x.shape, self.dtype)
        batchnorm_pool_input_grad(x.reshape(-1), dy.reshape(-1), out.reshape(-1),
                                  argmax.reshape(-1), coef, n, c, h * w, out[0, 0].size,
                                  self.fused_relu, dx.reshape(-1))
        return dx
