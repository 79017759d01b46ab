"""Parameters, and packing many of them into one flat buffer.

A :class:`Parameter` is a named pair of arrays, ``value`` and ``grad``, of the
same shape and dtype. Code outside this module assigns into them in place
(``p.value[...] = new``) and never rebinds them, so the flat buffers built
here, and the optimizer state laid out against them, stay attached.
"""
from __future__ import annotations

import threading

import numpy as np

_rebinds = 0
_rebinds_lock = threading.Lock()


def rebinds() -> int:
    """How many times an array that kernels may hold by reference has been
    rebound: a Parameter's ``value``, or a layer attribute holding a Parameter
    or a buffer (``Layer.__setattr__``). A replayed ``predict`` whose count has
    moved since it recorded its kernel calls records them anew."""
    return _rebinds


def note_rebinding() -> None:
    """Count one rebinding (see :func:`rebinds`)."""
    global _rebinds
    with _rebinds_lock:  # two threads' += must not count once
        _rebinds += 1


class Parameter:
    """A trainable array and its gradient.

    Attributes
    ----------
    name : str
        Local name inside its layer (``"weight"``, ``"bias"``); containers
        prefix it (``"0.weight"``).
    value, grad : ndarray
        Same shape and dtype; ``grad`` is overwritten by each backward pass.
    """

    def __init__(self, name: str, value: np.ndarray):
        self.name = name
        self.value = np.ascontiguousarray(value)
        self.grad = np.zeros_like(self.value)
        self._flat: FlatParameters | None = None

    def __setattr__(self, name, value):
        rebinding = name == "value" and self.__dict__.get("value", value) is not value
        object.__setattr__(self, name, value)
        if rebinding:  # counted once it is done (``Layer.__setattr__``)
            note_rebinding()

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.shape}, dtype={self.value.dtype})"


class FlatParameters:
    """One contiguous 1-D buffer for the values and one for the gradients.

    Building it copies every parameter's current value into the buffer and
    rebinds ``p.value`` / ``p.grad`` to views of it, so one kernel call can
    update all parameters at once. ``FlatParameters.of(params)`` returns the
    existing packing when ``params`` already are exactly one, in order.

    Shape
    -----
    values, grads : (sum of parameter sizes,), dtype of the parameters.
    """

    def __init__(self, params: list[Parameter]):
        dtypes = {p.value.dtype for p in params}
        if len(dtypes) > 1:
            raise ValueError(f"parameters mix dtypes {sorted(map(str, dtypes))}")
        dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        total = sum(p.value.size for p in params)
        self.params = list(params)
        self.values = np.empty(total, dtype=dtype)
        self.grads = np.zeros(total, dtype=dtype)
        offset = 0
        for p in self.params:
            end = offset + p.value.size
            self.values[offset:end] = p.value.reshape(-1)
            p.value = self.values[offset:end].reshape(p.value.shape)
            p.grad = self.grads[offset:end].reshape(p.value.shape)
            p._flat = self
            offset = end

    @classmethod
    def of(cls, params: list[Parameter]) -> "FlatParameters":
        """The packing that holds exactly ``params`` in order, made if needed."""
        flat = params[0]._flat if params else None
        if flat is not None and len(flat.params) == len(params) and all(
            a is b for a, b in zip(flat.params, params)
        ):
            return flat
        return cls(params)
