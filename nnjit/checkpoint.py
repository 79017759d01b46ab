"""JSON checkpoints: architecture, parameters, optimizer state and metadata.

Format (``"format": "nnjit-checkpoint"``, ``"version": 1``)::

    {"format": "nnjit-checkpoint", "version": 1,
     "architecture": [{"type": "Conv2D", "config": {...}}, ...],
         (a graph's entries also hold "inputs": the indices of the layers each
          reads, -1 for the model's input; a chain's do not)
     "parameters": [{"name": "0.weight", "shape": [32, 1, 3, 3], "dtype": "float32",
                     "values": [...]}, ...],
     "optimizer": {"name": "Momentum", "hyperparameters": {...}, "steps": 375,
                   "state": {"velocity": [...]}} or null,
     "layer_state": {"4": {"rng": {...}}},   (layers' extra state, e.g. Dropout's generator)
     "buffers": [{"name": "1.running_mean", ...}, ...],   (like parameters; BatchNorm's)
     "metadata": {"epoch": 3, "nnjit_version": "...", "date": "...", ...}}

Values are plain JSON numbers, flattened in C order. Each float32 is written
as the shortest decimal that reads back as the same float32, so a round trip
is bit-exact. A checkpoint of the ``cnn`` preset
is about 0.5 MB without optimizer state, 1 MB with momentum and 1.4 MB with
Adam's two moments.
"""
from __future__ import annotations

import datetime
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .augment import check_tta
from .errors import CheckpointError, OutOfMemoryError
from .fileio import atomic_write_text, read_bounded
from .layers import LAYER_TYPES
from .graph import MAX_LAYERS
from .model import Model
from .optim import OPTIMIZER_TYPES, Optimizer

FORMAT = "nnjit-checkpoint"
VERSION = 1
#: Largest checkpoint file read: JSON of ~50M float32 values (a checkpoint holds
#: about 20 bytes of text per value), far past any model nnjit trains; a
#: larger file (or a device such as /dev/zero) is refused before it is read.
MAX_CHECKPOINT_BYTES = 1 << 30




@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model, optimizer state, metadata."""

    model: Model
    optimizer_state: dict | None
    metadata: dict = field(default_factory=dict)
    path: str = ""

    def input_shape(self) -> tuple[int, ...]:
        """The sample shape (C, H, W) recorded in the metadata ((1, 28, 28) when absent),
        checked to fit the model; CheckpointError otherwise."""
        shape = self.metadata.get("input_shape", [1, 28, 28])
        if not (isinstance(shape, list) and len(shape) == 3 and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16
                for v in shape)):
            raise CheckpointError(f"{self.path}: input_shape {shape!r} is not three sizes "
                                  "(C, H, W) in 1..65536")
        try:
            self.model.check_fits(tuple(shape))
        except OutOfMemoryError as err:
            raise CheckpointError(f"{self.path}: {err}") from None
        except ValueError as err:
            raise CheckpointError(f"{self.path}: the model does not take inputs of shape "
                                  f"{tuple(shape)}: {err}") from None
        return tuple(shape)

    def tta(self) -> str:
        """The test-time augmentation the run was trained with (train.py's --tta):
        "none" when the metadata records none; CheckpointError for an unknown one."""
        tta = self.metadata.get("tta") or "none"
        try:
            check_tta(tta)
        except ValueError as err:
            raise CheckpointError(f"{self.path}: metadata 'tta': {err}") from None
        return tta

    def class_names(self, k: int) -> list[str]:
        """The k class names recorded in the metadata, or "0".."k-1" when they are
        absent or do not number k."""
        names = self.metadata.get("class_names")
        if isinstance(names, list) and len(names) == k:
            return [str(n) for n in names]
        return [str(i) for i in range(k)]

    def make_optimizer(self) -> Optimizer | None:
        """Rebuild the saved optimizer over ``self.model``'s parameters, with its state."""
        if self.optimizer_state is None:
            return None
        state = self.optimizer_state
        try:
            opt = OPTIMIZER_TYPES[state["name"]](self.model.parameters(),
                                                 **state["hyperparameters"])
            opt.load_state_dict(state)
        except (KeyError, TypeError, ValueError, ArithmeticError) as err:
            raise CheckpointError(f"{self.path}: optimizer state does not rebuild its optimizer "
                                  f"({type(err).__name__}: {err})") from None
        return opt


def _float_list(values: np.ndarray) -> str:
    """A JSON array of the values that reads back (via float64) bit-exactly.

    float32 values are written with 9 significant digits, which always read
    back exactly, through float64 too: they are within 5e-9 of the value,
    relative, where the nearest other float32 is at least 6e-8 away. (A
    shortest-decimal search per value took three times as long, and a
    checkpoint is written after every epoch.) Negative zero is written -0.0,
    since JSON reads -0 as the integer 0.
    """
    flat = np.ascontiguousarray(values).reshape(-1)
    if flat.dtype != np.float32:
        return json.dumps(flat.tolist())
    texts = ["%.9g" % v for v in flat.tolist()]
    for i in np.flatnonzero(np.signbit(flat) & (flat == 0)).tolist():
        texts[i] = "-0.0"
    return "[" + ",".join(texts) + "]"


def save_checkpoint(model: Model, path, optimizer: Optimizer | None = None, **metadata) -> None:
    """Write ``model`` (and ``optimizer``'s state) to ``path`` as one JSON document, atomically.

    ``metadata`` (JSON-safe values: epoch, dataset, class names, ...) is stored
    beside ``nnjit_version`` and ``date``, which are filled in.

    Raises CheckpointError if a parameter or optimizer buffer holds nan or inf.
    """
    try:
        text = checkpoint_text(model, optimizer, **metadata)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    atomic_write_text(path, text)


def checkpoint_text(model: Model, optimizer: Optimizer | None = None, **metadata) -> str:
    """The JSON document :func:`save_checkpoint` writes (for writing one state
    to several files without rendering it again).

    Raises CheckpointError if a parameter or optimizer buffer holds nan or inf.
    """
    from . import __version__

    arrays = {p.name: p.value for p in model.parameters()}
    if optimizer is not None:
        arrays.update({f"optimizer {k}": v for k, v in optimizer.state.items()})
    for name, array in arrays.items():
        if not np.all(np.isfinite(array)):
            raise CheckpointError(f"not saved, {name} holds nan or inf")
    meta = {"nnjit_version": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    meta.update(metadata)
    params = _array_entries((p.name, p.value) for p in model.parameters())
    buffers = _array_entries(model.named_buffers())
    if optimizer is None:
        opt = "null"
    else:
        sd = optimizer.state_dict()
        state = ", ".join(f"{json.dumps(k)}: {_float_list(v)}" for k, v in sd["state"].items())
        opt = (f'{{"name": {json.dumps(sd["name"])}, "hyperparameters": '
               f'{json.dumps(sd["hyperparameters"])}, "steps": {sd["steps"]}, "state": {{{state}}}}}')
    text = (f'{{"format": "{FORMAT}", "version": {VERSION},\n'
            f'"architecture": {json.dumps(model.config())},\n'
            f'"metadata": {json.dumps(meta, allow_nan=False)},\n'
            f'"optimizer": {opt},\n"layer_state": {json.dumps(model.get_extra_state())},\n'
            f'"buffers": [\n{buffers}\n],\n"parameters": [\n{params}\n]}}\n')
    return text


def _array_entries(named_arrays) -> str:
    """JSON entries {"name", "shape", "dtype", "values"}, one per line, for (name, array) pairs."""
    return ",\n".join(
        f'{{"name": {json.dumps(name)}, "shape": {json.dumps(list(value.shape))}, '
        f'"dtype": "{value.dtype}", "values": {_float_list(value)}}}'
        for name, value in named_arrays)


def _reject_constant(name):
    raise ValueError(f"non-finite value {name}")


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` and rebuild its model.

    Raises
    ------
    CheckpointError
        "<path>: <problem>" for an unreadable file, invalid or truncated JSON,
        another format or version, an unknown layer type, a parameter that
        does not fit its layer, or non-finite values.
    """
    path = os.fspath(path)

    def fail(problem):
        return CheckpointError(f"{path}: {problem}")

    try:
        text = read_bounded(path, MAX_CHECKPOINT_BYTES, "r")
    except (OSError, UnicodeDecodeError) as err:
        raise fail(f"cannot read ({getattr(err, 'strerror', None) or err})") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise fail(f"not valid JSON, truncated or corrupt ({err.msg} at line {err.lineno} "
                   f"column {err.colno})") from None
    except ValueError as err:
        raise fail(str(err)) from None
    except RecursionError:
        raise fail("JSON nested too deeply to be a checkpoint") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise fail(f"not an nnjit checkpoint (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise fail(f"unknown checkpoint format version {doc.get('version')!r} "
                   f"(this nnjit reads version {VERSION})")
    try:
        _check_declared_sizes(doc["architecture"], doc["parameters"], doc.get("buffers", []))
        model = Model.from_config(doc["architecture"])
        _load_parameters(model, doc["parameters"])
        _load_buffers(model, doc.get("buffers", []))  # absent before BatchNorm existed
        model.set_extra_state(doc.get("layer_state") or {})  # absent before Dropout existed
        opt_state = _check_optimizer(doc.get("optimizer"), model)
        metadata = dict(doc.get("metadata") or {})
    except CheckpointError as err:
        raise fail(str(err)) from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ArithmeticError) as err:
        what = f"missing entry {err}" if isinstance(err, KeyError) else str(err)
        raise fail(what) from None
    return Checkpoint(model, opt_state, metadata, path)


def _check_declared_sizes(architecture, parameters, buffers) -> None:
    """Refuse an architecture whose layers would hold other arrays than the file
    stores, before any layer is built: a config asking for a billion-feature
    layer fails here instead of allocating it. Memory used on any file is then
    bounded by the values the file itself holds."""
    if not isinstance(architecture, list) or not isinstance(parameters, list) \
            or not isinstance(buffers, list):
        raise CheckpointError("architecture, parameters and buffers must be lists")
    if len(architecture) > MAX_LAYERS:
        raise CheckpointError(f"{len(architecture):,} layers: a model holds at most "
                              f"{MAX_LAYERS:,}")
    stored = {}
    for entry in parameters + buffers:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not isinstance(entry.get("values"), list):
            raise CheckpointError("every parameter and buffer needs a name and a list of values")
        stored[entry["name"]] = len(entry["values"])
    for i, layer in enumerate(architecture):
        layer_type = LAYER_TYPES.get(layer.get("type")) if isinstance(layer, dict) else None
        if layer_type is None:
            raise CheckpointError(f"layer {i}: unknown layer type "
                                  f"{layer.get('type') if isinstance(layer, dict) else layer!r}")
        config = layer.get("config", {})
        if not isinstance(config, dict):
            raise CheckpointError(f"layer {i}: config must be an object")
        try:
            shapes = layer_type.array_shapes(**config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"layer {i} ({layer_type.__name__}): {err}") from None
        for name, shape in shapes.items():
            key = f"{i}.{name}"
            if key in stored and stored[key] != math.prod(shape):
                raise CheckpointError(f"layer {i} ({layer_type.__name__}) declares {key} of shape "
                                      f"{shape} ({math.prod(shape):,} values), the file holds "
                                      f"{stored[key]:,}")
            if key not in stored:
                if not buffers and name in layer_type.buffer_names:
                    continue  # checkpoints from before buffers existed: defaults are fine
                raise CheckpointError(f"layer {i} ({layer_type.__name__}) needs {key}, which the "
                                      "file does not hold")


def _values(entry_name, values, shape, dtype) -> np.ndarray:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        raise CheckpointError(f"{entry_name}: values must be a list of numbers")
    if len(values) != math.prod(shape):
        raise CheckpointError(f"{entry_name}: {len(values)} values for shape {tuple(shape)}")
    with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf: caught below
        array = np.asarray(values, dtype=np.float64).astype(dtype)
    if not np.all(np.isfinite(array)):
        raise CheckpointError(f"{entry_name}: holds non-finite values (or values beyond {dtype})")
    return array.reshape(shape)


def _load_parameters(model: Model, entries) -> None:
    params = {p.name: p for p in model.parameters()}
    names = [e.get("name") for e in entries]
    if sorted(names) != sorted(params):
        raise CheckpointError(f"parameters {names} do not match the architecture's "
                              f"{list(params)}")
    for entry in entries:
        p = params[entry["name"]]
        shape = tuple(entry["shape"])
        if shape != p.shape:
            layer = model.layers[int(p.name.split(".")[0])]
            raise CheckpointError(f"parameter {p.name!r} has shape {shape} but layer "
                                  f"{type(layer).__name__} needs {p.shape}")
        if entry.get("dtype", "float32") != str(p.value.dtype):
            raise CheckpointError(f"parameter {p.name!r} has dtype {entry.get('dtype')}, "
                                  f"expected {p.value.dtype}")
        p.value[...] = _values(f"parameter {p.name!r}", entry["values"], shape, p.value.dtype)


def _load_buffers(model: Model, entries) -> None:
    buffers = dict(model.named_buffers())
    names = [e.get("name") for e in entries]
    if sorted(names) != sorted(buffers):
        raise CheckpointError(f"buffers {names} do not match the architecture's {list(buffers)}")
    for entry in entries:
        buffer = buffers[entry["name"]]
        if tuple(entry["shape"]) != buffer.shape:
            raise CheckpointError(f"buffer {entry['name']!r} has shape {tuple(entry['shape'])}, "
                                  f"expected {buffer.shape}")
        buffer[...] = _values(f"buffer {entry['name']!r}", entry["values"], buffer.shape,
                              buffer.dtype)


def _check_optimizer(state, model) -> dict | None:
    if state is None:
        return None
    if state.get("name") not in OPTIMIZER_TYPES:
        raise CheckpointError(f"unknown optimizer {state.get('name')!r}")
    size = model.flat.values.size
    state = dict(state)
    state["state"] = {k: _values(f"optimizer state {k!r}", v, (size,), model.dtype)
                      for k, v in state["state"].items()}
    missing = set(OPTIMIZER_TYPES[state["name"]].state_names) - state["state"].keys()
    if missing:
        raise CheckpointError(f"optimizer state lacks {sorted(missing)}")
    return state
