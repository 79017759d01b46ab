"""Dense (fully connected) layer: y = x W^T + b."""
from __future__ import annotations

import numpy as np

from .. import planner
from ..kernels.blas import blas_handle
from ..kernels.dense import dense_backward, dense_forward, dense_forward_transposed
from ..params import Parameter
from ..threads import parts_for
from .activation import AppliesReLU
from .base import Layer, float_dtype, he_uniform, positive_int


#: An empty scratch buffer per dtype, for a stack of one layer (which needs none).
_NO_SCRATCH = {np.dtype(t).char: np.empty(0, t) for t in (np.float32, np.float64)}


class Dense(AppliesReLU, Layer):
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
        self.dtype = float_dtype(dtype)
        self.weight = Parameter("weight", np.zeros(shapes["weight"], self.dtype))
        self.bias = Parameter("bias", np.zeros(shapes["bias"], self.dtype))
        self.reset_parameters(np.random.default_rng())
        self._cache = None
        self._dense_plans = {}
        self.set_epilogue()

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
        """Rows per GEMM: a multiple of 4 within the small-GEMM size, or all ``n`` when
        fewer than 4 rows fit. Measured on 784->128 (2 threads): chunks of 16-64
        rows ran at 39-68 GFLOP/s, the whole part at 90, 4-8 rows at 92-95; at
        inference on 1000 images 4 or 8 rows 1.04-1.12 ms, 9 rows 1.17-1.27 ms
        (the small-matrix kernel's odd row), 12 rows (over the small-GEMM size) 3.2 ms."""
        rows = planner.tuning().small_gemm_macs // (self.in_features * self.out_features)
        return rows // 4 * 4 if rows >= 4 else max(n, 1)

    def plan(self, n, training) -> planner.DensePlan:
        """The planner's plan on ``n`` rows (kept per rows, mode and settings)."""
        key = (n, training, planner.version)
        plan = self._dense_plans.get(key)
        if plan is None:
            if len(self._dense_plans) >= 16:
                self._dense_plans.clear()
            plan = self._dense_plans[key] = planner.plan_dense(
                n, self.in_features, self.out_features, self.dtype, training)
            planner.log_choice("dense", f"{self!r} on {n} rows{' training' if training else ''}",
                               plan.algorithm.value, plan.rule)
        return plan

    def forward(self, x, training=True):
        x = self._check_input(x, 2, self.dtype)
        self.output_shape(x.shape[1:])
        n, f = x.shape[0], self.out_features
        plan = self.plan(n, training)
        out = self._buffer("out/train" if training else "out/eval", (n, f), self.dtype)
        if plan.algorithm is planner.DenseAlgorithm.TRANSPOSED:
            # Training: the backward that follows (2x this work, parallel) keeps the
            # threads awake, so count this with it (one part alone: 69.7 vs 39.6 us).
            parts = parts_for((3 if training else 1) * n * self.in_features * f, min(n, f))
            dense_forward_transposed.run(
                parts > 1, x.reshape(-1), self.weight.value.reshape(-1), self.bias.value, n,
                self.in_features, f, self.fused_relu, parts,
                self._buffer("xt", (x.size,), self.dtype), self._buffer("yt", (n * f,), self.dtype),
                out.reshape(-1), blas_handle())
            self._cache = (x, out) if training else None
            return out
        parts = parts_for(n * self.in_features * f, n)
        dense_forward.run(parts > 1, x.reshape(-1), (self.weight.value.reshape(-1),),
                          (self.bias.value,), (self._packed(plan),),
                          (self.in_features, f), int(self.fused_relu), n, parts,
                          self._chunk_rows(n), plan.dot_below, _NO_SCRATCH[self.dtype.char],
                          out.reshape(-1), blas_handle())
        self._cache = (x, out) if training else None
        return out

    def describe(self, input_shape, training) -> dict:
        """How a call on input (N, in_features) runs, for ``nnjit.explain``."""
        n = input_shape[0]
        plan = self.plan(n, training)
        work = n * self.in_features * self.out_features
        return {"algorithm": plan.algorithm.value, "rule": plan.rule,
                "threads": parts_for((3 if training else 1) * work, n),
                "workspace": 2 * self.weight.value.nbytes if plan.packed else 0,
                "flops": 2 * work}

    def _packed(self, plan):
        """``dense_forward``'s packed weight under ``plan``: the buffer holding it
        transposed between calls (NaN-filled when made: the first call transposes)
        where the product runs in tiles, otherwise empty."""
        if not plan.packed:
            return _NO_SCRATCH[self.dtype.char]
        return self._buffer("packed", (2 * self.weight.value.size,), self.dtype,
                            fill=np.nan)

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
                           self.plan(n, True).backward_tiles, blas_handle())
        self._cache = None
        return dx if need_input_grad else None


class DenseStack:
    """Consecutive Dense layers (each with its fused ReLU, if any) run at
    inference as one kernel call, a chunk of rows at a time through all of
    them, so the rows between layers stay in cache and no pass runs on its own
    (mlp on 1000 images: 1.08-1.20 -> 1.04-1.12 ms; the first GEMM alone ~1.0).

    Not a layer: an inference list (``nnjit.folding.InferenceLayers``) runs it in
    place of the first of ``layers`` and skips the others. It reads their
    parameters at each call, and keeps their validation and error messages.

    Shape
    -----
    input (N, layers[0].in_features) -> output (N, layers[-1].out_features).
    """

    merges = False  # read like a layer's: one input

    def __init__(self, layers: list[Dense]):
        self.layers = list(layers)

    def forward(self, x, training=False):
        """Inference only: float (N, in_features) -> the last layer's reused buffer."""
        if training:
            raise RuntimeError("DenseStack runs at inference only; train the Dense layers")
        first, last = self.layers[0], self.layers[-1]
        x = first._check_input(x, 2, first.dtype)
        first.output_shape(x.shape[1:])
        n = x.shape[0]
        dims = (first.in_features,) + tuple(layer.out_features for layer in self.layers)
        out = last._buffer("out/eval", (n, dims[-1]), last.dtype)
        parts = parts_for(n * sum(a * b for a, b in zip(dims, dims[1:])), n)
        chunk = first._chunk_rows(n)
        rows = min(chunk, -(-n // parts))  # most rows a part has in flight
        scratch = first._buffer("stack/scratch", (parts * 2 * rows * max(dims[1:-1]),), first.dtype)
        relus = sum(int(layer.fused_relu) << i for i, layer in enumerate(self.layers))
        plans = [layer.plan(n, False) for layer in self.layers]
        packed = tuple(layer._packed(plan) for layer, plan in zip(self.layers, plans))
        dense_forward.run(parts > 1, x.reshape(-1),
                          tuple(layer.weight.value.reshape(-1) for layer in self.layers),
                          tuple(layer.bias.value for layer in self.layers), packed, dims, relus,
                          n, parts, chunk, plans[0].dot_below, scratch, out.reshape(-1),
                          blas_handle())
        return out

    def describe(self, input_shape, training=False) -> dict:
        """How a call on input (N, in_features) runs, for ``nnjit.explain``."""
        n = input_shape[0]
        dims = (self.layers[0].in_features,) + tuple(layer.out_features for layer in self.layers)
        work = n * sum(a * b for a, b in zip(dims, dims[1:]))
        tiles = [layer.plan(n, False).packed for layer in self.layers]
        how = ", ".join("tiles" if t else "BLAS" for t in tiles)
        return {"algorithm": f"dense stack of {len(self.layers)}",
                "rule": f"consecutive Dense layers in one kernel, chunks of rows through all ({how})",
                "threads": parts_for(work, n), "workspace": 0, "flops": 2 * work}

    def __repr__(self):
        return f"DenseStack({self.layers!r})"
