"""Building a model as a graph: symbolic tensors and the walk from outputs to inputs.

As in Keras's functional API, ``x = nnjit.Input((3, 32, 32))`` stands for a
batch of inputs of one sample shape; calling a layer on symbolic tensors
(``y = Conv2D(3, 16, 3)(x)``) records the layer with what it reads and
returns a symbolic tensor of its output shape; ``nnjit.Model(x, y)`` walks
from ``y`` back to ``x`` (:func:`trace`) and numbers the layers so that every
layer comes after the layers it reads. Nothing is computed while building.
"""
from __future__ import annotations

#: A node's input index meaning the model's input.
MODEL_INPUT = -1

#: The most layers a model holds: far past any network nnjit trains; a
#: checkpoint declaring more is refused before any layer is built.
MAX_LAYERS = 10_000


class SymbolicTensor:
    """A placeholder for a batch of values while a model is built.

    shape: one sample's shape (no batch axis). layer: the layer whose output
    it is (None for an ``Input``); inputs: the tensors that layer read.
    """

    __slots__ = ("shape", "layer", "inputs")

    def __init__(self, shape: tuple[int, ...], layer=None, inputs: tuple = ()):
        self.shape = tuple(shape)
        self.layer = layer
        self.inputs = tuple(inputs)

    def __repr__(self) -> str:
        source = "Input" if self.layer is None else type(self.layer).__name__
        return f"<symbolic tensor {self.shape} from {source}>"


def Input(shape) -> SymbolicTensor:  # noqa: N802  (Keras's name for it)
    """The input of a model being built: a batch of samples of ``shape``
    (e.g. (3, 32, 32), no batch axis). Raises ValueError for a shape that is not
    a tuple of positive ints."""
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                            for s in shape):
        raise ValueError(f"Input shape must be positive ints (no batch axis), got {shape!r}")
    return SymbolicTensor(shape)


def call_symbolic(layer, tensors: tuple) -> SymbolicTensor:
    """``layer`` called on symbolic tensors: the tensor of its output.

    Raises ValueError when the layer is already in a graph (each layer object
    holds one node's weights and buffers: make another layer for another
    place), when its number of inputs is wrong, or when their shapes do not
    fit it (naming the layer and the shapes)."""
    if getattr(layer, "_called", False):
        raise ValueError(f"{layer!r} is already called in a graph: a layer is one node of "
                         "one model, so create another layer for another place")
    if not layer.merges and len(tensors) != 1:
        raise ValueError(f"{type(layer).__name__} takes one input, got {len(tensors)}")
    if layer.merges and len(tensors) < 2:
        raise ValueError(f"{type(layer).__name__} merges two or more inputs, got {len(tensors)}")
    shapes = [t.shape for t in tensors] if layer.merges else tensors[0].shape
    try:
        shape = layer.output_shape(shapes)
    except ValueError as err:
        raise ValueError(f"{layer!r} on input shape {shapes}: {err}") from None
    layer._called = True
    return SymbolicTensor(shape, layer, tensors)


def trace(inputs: SymbolicTensor, outputs: SymbolicTensor):
    """The layers from ``inputs`` to ``outputs`` in an order where each comes after
    what it reads, and what each reads: (layers, inputs_of), inputs_of[i] a
    tuple of layer indices (``MODEL_INPUT`` for the model's input). The output
    is the last layer.

    Raises ValueError when ``outputs`` does not depend on ``inputs``, depends
    on another Input, or is the input itself."""
    if not isinstance(inputs, SymbolicTensor) or inputs.layer is not None:
        raise ValueError(f"Model inputs must be an nnjit.Input(...), got {inputs!r}")
    if not isinstance(outputs, SymbolicTensor):
        raise ValueError(f"Model outputs must be a layer's output on symbolic tensors, "
                         f"got {type(outputs).__name__}")
    if outputs is inputs:
        raise ValueError("the model's output is its input: call layers on the Input first")
    order: list[SymbolicTensor] = []
    index: dict[int, int] = {}
    stack = [(outputs, False)]
    while stack:  # iterative post-order: deep graphs stay off Python's recursion limit
        tensor, expanded = stack.pop()
        if id(tensor) in index or tensor is inputs:
            continue
        if tensor.layer is None:
            raise ValueError(f"the output depends on another Input {tensor.shape} than the "
                             f"model's {inputs.shape}")
        if expanded:
            index[id(tensor)] = len(order)
            order.append(tensor)
            continue
        stack.append((tensor, True))
        stack.extend((t, False) for t in reversed(tensor.inputs))
    if not any(t is inputs for tensor in order for t in tensor.inputs):
        raise ValueError("the output does not depend on the model's Input")
    layers = [t.layer for t in order]
    inputs_of = [tuple(MODEL_INPUT if t is inputs else index[id(t)] for t in tensor.inputs)
                 for tensor in order]
    return layers, inputs_of
