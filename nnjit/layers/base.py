"""The Layer base class: parameter discovery, input checks, reusable buffers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import memory
from ..params import Parameter, note_rebinding

#: Every Layer subclass by class name, so checkpoints can rebuild a model.
LAYER_TYPES: dict[str, type["Layer"]] = {}


class Layer:
    """Base of every layer.

    A layer computes ``y = forward(x)`` and, after a training forward,
    ``dx = backward(dy)``: it returns dL/dx shaped like ``x`` and overwrites
    each parameter's ``grad`` with dL/dparameter, never materialising a
    Jacobian.

    Arrays returned by ``forward`` and ``backward`` live in buffers the layer
    reuses: the next call of the same method overwrites them, so copy a result
    to keep it. (Reuse is what keeps a training loop free of allocations.)
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.forward is not Layer.forward:  # shared bases (Pool2D) are no layer type
            LAYER_TYPES[cls.__name__] = cls

    #: True for a layer that reads several tensors (``Add``, ``Concatenate``):
    #: its ``forward`` takes a list of arrays, ``backward`` returns a list of
    #: gradients, and ``output_shape`` takes a list of shapes.
    merges = False

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def __setattr__(self, name, value):
        # A replayed predict holds parameters and buffers by reference: replacing
        # one must reach it (``nnjit.params.rebinds``).
        held = self.__dict__
        rebinding = name in held and held[name] is not value and (
            name in self.buffer_names or isinstance(value, Parameter)
            or isinstance(held[name], Parameter))
        object.__setattr__(self, name, value)
        if rebinding:  # counted once it is done: a recording made before sees the count move
            note_rebinding()

    def __call__(self, *inputs):
        """On symbolic tensors (``nnjit.Input`` and layers' outputs): record this
        layer as a node of a graph and return its output's symbolic tensor
        (``nnjit.graph``). On arrays: ``forward(x, training=False)``, copied.
        A merge layer takes its inputs as arguments or as one list."""
        from ..graph import SymbolicTensor, call_symbolic

        if self.merges and len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
            inputs = tuple(inputs[0])  # Keras's spelling: Add()([a, b])
        if inputs and all(isinstance(t, SymbolicTensor) for t in inputs):
            return call_symbolic(self, inputs)
        if any(isinstance(t, SymbolicTensor) for t in inputs):
            raise TypeError(f"{type(self).__name__} called on a mix of symbolic tensors and "
                            "arrays")
        if len(inputs) != 1 and not self.merges:
            raise TypeError(f"{type(self).__name__} takes one input, got {len(inputs)}")
        return self.forward(list(inputs) if self.merges else inputs[0], training=False).copy()

    # -- what subclasses provide ------------------------------------------
    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        """Compute the layer's output; with ``training`` keep what backward needs."""
        raise NotImplementedError

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Given dL/dy, fill parameter grads and return dL/dx (None if not needed)."""
        raise NotImplementedError

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one output sample for one input sample of ``input_shape``."""
        return tuple(input_shape)

    def config(self) -> dict:
        """Constructor keyword arguments that rebuild this layer (JSON-safe)."""
        return {}

    @classmethod
    def array_shapes(cls, **config) -> dict[str, tuple[int, ...]]:
        """Shapes of the parameters and buffers that ``cls(**config)`` holds, found
        without building it (a checkpoint reader checks them against the values a
        file holds before allocating anything). Raises ValueError/TypeError for a
        config the constructor would refuse. Default: none."""
        return {}

    def reset_parameters(self, rng: np.random.Generator) -> None:
        """Draw fresh initial values for the parameters from ``rng``."""

    def get_extra_state(self) -> dict:
        """State that is neither a parameter nor configuration (JSON-safe), saved in
        checkpoints: e.g. a random generator's position. Default: none."""
        return {}

    def set_extra_state(self, state: dict) -> None:
        """Restore :meth:`get_extra_state` output; raise ValueError/TypeError/KeyError
        if it does not fit."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no extra state")

    def identity_at_inference(self) -> bool:
        """True when ``forward(x, training=False)`` returns ``x`` itself, so that
        inference may skip the layer. Default: no."""
        return False

    def onnx_nodes(self, x: str, y: str, params: dict[str, str]) -> list:
        """ONNX nodes computing tensor ``y`` from tensor ``x``.

        ``params`` maps this layer's parameter attributes ("weight") to the
        initializer names the exporter gave them ("0.weight").
        """
        raise NotImplementedError(f"{type(self).__name__} has no ONNX lowering")

    # -- shared machinery ----------------------------------------------------
    def named_parameters(self) -> list[tuple[str, Parameter]]:
        """(attribute name, Parameter) pairs, found among the attributes in definition order."""
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Parameter)]

    def parameters(self) -> list[Parameter]:
        """This layer's Parameters, in definition order."""
        return [p for _, p in self.named_parameters()]

    #: Attributes holding buffers: arrays that are state but not optimised
    #: (BatchNorm's running statistics); saved in checkpoints and exported.
    buffer_names: tuple[str, ...] = ()

    def named_buffers(self) -> list[tuple[str, np.ndarray]]:
        """(attribute name, array) for each buffer, in ``buffer_names`` order."""
        return [(name, getattr(self, name)) for name in self.buffer_names]

    def _buffer(self, name: str, shape: tuple[int, ...], dtype, fill=None) -> np.ndarray:
        """A reusable array, reallocated only when shape or dtype change: uninitialised,
        or ``fill`` in every element when (re)allocated."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = memory.empty(shape, dtype)
            if fill is not None:
                buf[...] = fill
            self._buffers[name] = buf
        return buf

    def _check_input(self, x, ndim: int | None, dtype=None) -> np.ndarray:
        """Validate a float array of ``ndim`` dims (None: any); return it C-contiguous.

        ``dtype`` (a parameterised layer's dtype) converts floating input to it;
        otherwise the input keeps its floating dtype.
        """
        name = type(self).__name__
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} expects a numpy array, got {type(x).__name__}")
        if x.dtype.kind != "f":
            raise ValueError(
                f"{name} expects floating-point input, got dtype {x.dtype} "
                "(convert images with nnjit.data.to_float first)"
            )
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{name} expects a {ndim}-D input, got shape {x.shape}")
        if x.flags.c_contiguous and (dtype is None or x.dtype == dtype):
            return x
        return np.ascontiguousarray(x, dtype=dtype or x.dtype)

    def _check_grad(self, dy, expected_shape: tuple[int, ...], dtype) -> np.ndarray:
        if getattr(dy, "shape", None) != tuple(expected_shape):
            raise ValueError(
                f"{type(self).__name__}.backward expects dy of shape {tuple(expected_shape)}, "
                f"got {getattr(dy, 'shape', type(dy).__name__)}"
            )
        return np.ascontiguousarray(dy, dtype=dtype)

    def _no_cache(self):
        return RuntimeError(
            f"{type(self).__name__}.backward called without a training forward before it"
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


@dataclass
class PooledNormGrad:
    """The input gradient of a batch norm followed by a max-pool (and maybe a
    ReLU), left for the layer before it to evaluate while it reads it anyway
    (``kernels.batchnorm.routed_affine_segment``): dx = (x - m) * a + b per
    channel, plus gk * dy routed to each pooled window's maximum. The
    full-size dx is then never written to memory and read back.

    x: the norm's input (N, C, H, W) (the previous layer's output); dy, out,
    argmax: (N, C, PH, PW) at the pooled output (argmax: int32 flat positions
    in each plane); coef: (4*C,) rows (a, b, gk, m); pool_kernel and
    pool_stride: (h, w) of the max-pool.
    """

    x: np.ndarray
    dy: np.ndarray
    out: np.ndarray
    argmax: np.ndarray
    coef: np.ndarray
    relu: bool
    pool_kernel: tuple[int, int]
    pool_stride: tuple[int, int]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the gradient this stands for: the norm's input's."""
        return self.x.shape


def pair(value, name: str, minimum: int) -> tuple[int, int]:
    """Normalise an int or a pair of ints to (h, w), each >= ``minimum``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        hw = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        hw = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(hw) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return hw


def float_dtype(dtype) -> np.dtype:
    """``dtype`` as a numpy dtype, raising ValueError unless float32 or float64
    (the dtypes the kernels are compiled for)."""
    try:
        dt = np.dtype(dtype) if dtype is not None else None  # np.dtype(None) is float64
    except TypeError:
        dt = None
    if dt is None or dt.char not in "fd":
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def positive_int(value, name: str) -> int:
    """Return ``value`` as int, raising ValueError unless it is an int >= 1."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def he_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """He/Kaiming-uniform draw: U(-b, b) with b = sqrt(6 / fan_in), suited to ReLU."""
    bound = np.sqrt(6.0 / fan_in)
    return rng.uniform(-bound, bound, size=shape)
