"""Add (a residual sum) and Concatenate (along channels): layers that read several tensors."""
from __future__ import annotations

import math

from ..kernels.activation import relu_backward
from ..kernels.merge import add_forward, copy_columns
from .base import Layer


class Add(Layer):
    """The elementwise sum of two or more inputs of one shape (a residual
    connection's ``x + f(x)``), then a ReLU when the fusion pass gives it the
    one after it (``nnjit.fusion``).

    Shape
    -----
    inputs: a list of arrays, each (N, ...) of one shape -> output (N, ...).
    ``backward`` returns the gradient for every input: the same array (the
    sum's gradient, masked by the fused ReLU), which callers must not write.
    """

    merges = True
    fused_relu = False

    def __init__(self):
        super().__init__()
        self._out = None

    def set_epilogue(self, relu=False):
        self.fused_relu = bool(relu)

    def output_shape(self, input_shapes):
        shapes = [tuple(s) for s in input_shapes]
        if len(set(shapes)) != 1:
            raise ValueError(f"Add needs inputs of one shape, got {shapes}")
        return shapes[0]

    def onnx_nodes(self, x, y, params):
        # The sum alone: a ReLU fused into it is still a layer of the model, and
        # exports itself.
        from onnx import helper

        return [helper.make_node("Sum", list(x), [y])]

    def forward(self, xs, training=True):
        if not isinstance(xs, (list, tuple)) or len(xs) < 2:
            raise ValueError("Add takes a list of two or more arrays")
        xs = [self._check_input(x, None) for x in xs]
        shapes = {x.shape for x in xs}
        if len(shapes) != 1:
            raise ValueError(f"Add needs inputs of one shape, got {[x.shape for x in xs]}")
        dtypes = {x.dtype for x in xs}
        if len(dtypes) != 1:
            raise ValueError(f"Add needs inputs of one dtype, got {sorted(map(str, dtypes))}")
        out = self._buffer("out/train" if training else "out/eval", xs[0].shape, xs[0].dtype)
        flat = out.reshape(-1)
        last = len(xs) - 1
        add_forward(xs[0].reshape(-1), xs[1].reshape(-1), flat, self.fused_relu and last == 1)
        for k in range(2, len(xs)):
            add_forward(xs[k].reshape(-1), flat, flat, self.fused_relu and k == last)
        self._out = (out, len(xs)) if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._out is None:
            raise self._no_cache()
        out, count = self._out
        dy = self._check_grad(dy, out.shape, out.dtype)
        if not need_input_grad:
            return None
        if self.fused_relu:
            dx = self._buffer("dx", dy.shape, dy.dtype)
            relu_backward(out.reshape(-1), dy.reshape(-1), dx.reshape(-1))
            dy = dx
        return [dy] * count


class Concatenate(Layer):
    """Inputs joined along the first axis of a sample (channels for (N, C, H, W),
    features for (N, F)), in the order given; PyTorch's ``torch.cat(dim=1)``.

    Shape
    -----
    inputs: a list of (N, C_k, *rest), rest the same for all -> output
    (N, sum C_k, *rest). ``backward`` returns each input's slice of the gradient.
    """

    merges = True

    def __init__(self, axis: int = 1):
        super().__init__()
        if axis != 1:
            raise ValueError(f"Concatenate joins along axis 1 (channels), got axis={axis!r}")
        self.axis = 1
        self._shapes = None

    def config(self):
        return {"axis": self.axis}

    def output_shape(self, input_shapes):
        shapes = [tuple(s) for s in input_shapes]
        if len({s[1:] for s in shapes}) != 1 or any(len(s) < 1 for s in shapes):
            raise ValueError(f"Concatenate needs inputs that differ only in their first "
                             f"axis, got {shapes}")
        return (sum(s[0] for s in shapes),) + shapes[0][1:]

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        return [helper.make_node("Concat", list(x), [y], axis=1)]

    def forward(self, xs, training=True):
        if not isinstance(xs, (list, tuple)) or len(xs) < 2:
            raise ValueError("Concatenate takes a list of two or more arrays")
        xs = [self._check_input(x, None) for x in xs]
        if len({x.shape[0] for x in xs}) != 1 or len({x.dtype for x in xs}) != 1:
            raise ValueError(f"Concatenate needs inputs of one batch size and dtype, got "
                             f"{[(x.shape, str(x.dtype)) for x in xs]}")
        shape = (xs[0].shape[0],) + self.output_shape([x.shape[1:] for x in xs])
        out = self._buffer("out/train" if training else "out/eval", shape, xs[0].dtype)
        n, total, start = shape[0], math.prod(shape[1:]), 0
        for x in xs:
            width = math.prod(x.shape[1:])
            copy_columns(x.reshape(-1), n, width, 0, total, start, width, out.reshape(-1))
            start += width
        self._shapes = [x.shape for x in xs] if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._shapes is None:
            raise self._no_cache()
        n = self._shapes[0][0]
        shape = (n,) + self.output_shape([s[1:] for s in self._shapes])
        dy = self._check_grad(dy, shape, dy.dtype)
        if not need_input_grad:
            return None
        total, start, grads = math.prod(shape[1:]), 0, []
        for k, s in enumerate(self._shapes):
            width = math.prod(s[1:])
            dx = self._buffer(f"dx{k}", s, dy.dtype)
            copy_columns(dy.reshape(-1), n, total, start, width, 0, width, dx.reshape(-1))
            grads.append(dx)
            start += width
        return grads
