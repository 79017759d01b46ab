"""Export a model to ONNX with standard operators, and check it with onnxruntime."""
from __future__ import annotations

import json
import os

import numpy as np

from .augment import check_tta
from .fileio import atomic_write_bytes
from .graph import MODEL_INPUT
from .layers import Softmax
from .model import Model

OPSET = 13


def to_onnx(model: Model, input_shape: tuple[int, ...], metadata: dict | None = None,
            tta: str | None = None):
    """Build an ``onnx.ModelProto`` for ``model``.

    input_shape: one sample's shape, e.g. (1, 28, 28). The graph has input
    ``input`` (batch, *input_shape) with a symbolic batch dimension, output
    ``probs`` (``logits`` when the model does not end in Softmax) of shape
    (batch, K), and one initializer per parameter and buffer, named as in
    checkpoints ("0.weight", "1.running_mean"). ``metadata`` entries become
    the model's metadata_props (non-string values JSON-encoded). ``tta``
    "flip" (``Model.predict``'s test-time augmentation) runs the network once
    on the images and their left-right mirrors stacked along the batch, and
    outputs the mean of each image's two outputs.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from . import __version__

    rows = model.summary(input_shape)
    nodes, initializers, names = [], [], []
    last = len(model.layers) - 1
    output = "probs" if isinstance(model.layers[last], Softmax) else "logits"
    flip = check_tta(tta)
    source = "input"
    if flip:
        source = "input.views"
        nodes += _mirror_views("input", source, len(input_shape), initializers)
    for i, (layer, inputs) in enumerate(zip(model.layers, model.inputs_of)):
        y = (f"{output}.views" if flip else output) if i == last else \
            f"{i}.{type(layer).__name__.lower()}"
        params = {}
        named = [(attr, p.name, p.value) for attr, p in layer.named_parameters()]
        named += [(attr, f"{i}.{attr}", value) for attr, value in layer.named_buffers()]
        for attr, name, value in named:
            initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name=name))
            params[attr] = name
        x = [source if j == MODEL_INPUT else names[j] for j in inputs]
        nodes += layer.onnx_nodes(x if layer.merges else x[0], y, params)
        names.append(y)
    if flip:
        nodes += _mean_of_views(names[last], output, rows[-1][1], initializers)
    graph = helper.make_graph(
        nodes, "nnjit", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                       ["batch", *input_shape])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", *rows[-1][1]])],
        initializer=initializers)
    proto = helper.make_model(graph, producer_name="nnjit", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    # Pin the IR version to what the opset was released with, so older runtimes load the file.
    proto.ir_version = 7
    meta = {"nnjit_version": __version__, **(metadata or {})}
    helper.set_model_props(proto, {k: v if isinstance(v, str) else json.dumps(v)
                                   for k, v in meta.items()})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _mirror_views(x: str, views: str, sample_dims: int, initializers: list) -> list:
    """Nodes making ``views`` (2N, ...): the batch ``x`` (N, ...) and, after it, its
    images reversed along their last axis (W)."""
    from onnx import helper, numpy_helper

    for name, value in (("mirror.starts", [-1]), ("mirror.ends", [np.iinfo(np.int64).min]),
                        ("mirror.axes", [sample_dims]), ("mirror.steps", [-1])):
        initializers.append(numpy_helper.from_array(np.array(value, np.int64), name=name))
    return [helper.make_node("Slice", [x, "mirror.starts", "mirror.ends", "mirror.axes",
                                       "mirror.steps"], [f"{x}.mirrored"]),
            helper.make_node("Concat", [x, f"{x}.mirrored"], [views], axis=0)]


def _mean_of_views(views: str, y: str, sample_shape: tuple[int, ...], initializers: list) -> list:
    """Nodes making ``y`` (N, ...): the mean of the two halves of ``views`` (2N, ...)."""
    from onnx import helper, numpy_helper

    initializers.append(numpy_helper.from_array(np.array([2, -1, *sample_shape], np.int64),
                                                name="views.shape"))
    return [helper.make_node("Reshape", [views, "views.shape"], [f"{views}.paired"]),
            helper.make_node("ReduceMean", [f"{views}.paired"], [y], axes=[0], keepdims=0)]


def export_onnx(model: Model, path, input_shape, metadata: dict | None = None,
                tta: str | None = None) -> None:
    """Write :func:`to_onnx` of ``model`` to ``path`` atomically (nnjit.fileio)."""
    atomic_write_bytes(path, to_onnx(model, input_shape, metadata, tta).SerializeToString())


def onnxruntime_max_difference(path, model: Model, x: np.ndarray, tta: str | None = None) -> float:
    """Largest |onnxruntime(path)(x) - model.predict(x, tta=tta)|. x: float32 (N, C, H, W)."""
    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": np.ascontiguousarray(x, np.float32)})
    return float(np.max(np.abs(got - model.predict(x, tta=tta))))
