"""ONNX export: the checker's full check, then onnxruntime against nnjit's forward."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import ROOT
from nnjit import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, Softmax
from nnjit.checkpoint import save_checkpoint
from nnjit.onnx_export import export_onnx
from nnjit.spec import build_model

#: padding "same", BatchNorm2D/1D, Dropout, AvgPool2D and GlobalAvgPool2D in one network
EVERY_NEW_LAYER = ("conv:6:3:same,bn,relu,avgpool:2,dropout:0.25,conv:8:3,bn,relu,gap,dense:12,bn,"
                   "relu,dropout:0.1,dense:10,softmax")

SPECS = [
    "cnn",
    "mlp",
    "conv:6:3:2:1,relu,pool:3:2,conv:8:3:1:1,relu,dense:10,softmax",
    "conv:4:5:2:2,relu,pool:3:1,flatten,dense:32,relu,dense:10",
    "conv:6:3:same,relu,pool:2,conv:8:5:1:same,relu,pool:2,dense:10,softmax",
    "conv:6:3:same,relu,avgpool:3:2,conv:8:3,relu,gap,dense:10,softmax",
    "conv:6:3,relu,pool:2,dropout:0.5,dense:16,relu,dropout:0.2,dense:10,softmax",
    "conv:6:3:same,bn,relu,pool:2,conv:8:3,bn,relu,gap,dense:12,bn,relu,dense:10,softmax",
    EVERY_NEW_LAYER,
    "non-square",
    "cifar:cnn",  # 3x32x32 input
    "cifar:cnn-bn",
]


def input_shape(spec):
    return (3, 32, 32) if spec.startswith("cifar:") else (1, 28, 28)


def make_model(spec):
    if spec.startswith("cifar:"):
        return build_model(spec.split(":", 1)[1], input_shape(spec), seed=3)
    if spec != "non-square":
        return build_model(spec, seed=3)
    return Sequential([Conv2D(1, 5, (2, 3), stride=(2, 1), padding=(1, 0)), ReLU(),
                       MaxPool2D((3, 2), stride=(2, 3)), Flatten(), Dense(5 * 7 * 9, 10), Softmax()],
                      seed=3)


@pytest.mark.parametrize("spec", SPECS)
def test_onnxruntime_matches_nnjit_at_batch_1_and_64(spec, tmp_path):
    model = make_model(spec)
    for p in model.parameters():  # non-zero biases, so a dropped bias would show
        if p.name.endswith("bias"):
            p.value[...] = np.random.default_rng(1).normal(size=p.shape) * 0.1
    for name, buffer in model.named_buffers():  # running statistics away from 0 and 1
        buffer[...] = np.random.default_rng(2).uniform(0.5, 2, size=buffer.shape)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, input_shape(spec), {"class_names": list("0123456789")})
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 13
    # every layer's parameters, then its buffers, named as in checkpoints
    assert [i.name for i in proto.graph.initializer] == [
        f"{k}.{attr}" for k, layer in enumerate(model.layers)
        for attr in [a for a, _ in layer.named_parameters()] + list(layer.buffer_names)]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    props = {p.key: p.value for p in proto.metadata_props}
    assert "nnjit_version" in props and "class_names" in props
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((64, *input_shape(spec)), dtype=np.float32)
    for batch in (x[:1], x):
        (got,) = session.run(None, {"input": batch})
        np.testing.assert_allclose(got, model.predict(batch), rtol=0, atol=1e-5)
    ops = {n.op_type for n in proto.graph.node}
    assert ops <= {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Flatten", "Gemm",
                   "Softmax", "Identity", "BatchNormalization"}


def test_output_is_named_probs():
    from nnjit.onnx_export import to_onnx
    assert to_onnx(build_model("mlp"), (1, 28, 28)).graph.output[0].name == "probs"


@pytest.mark.parametrize("spec,shape", [("cnn-bn", (1, 28, 28)),
                                        ("conv:4:3,relu,res:4,dense:3", (3, 9, 13))])
def test_flip_in_the_graph_averages_each_image_with_its_mirror(spec, shape, tmp_path):
    from nnjit.onnx_export import to_onnx
    model = build_model(spec, shape, seed=3)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, shape, tta="flip")
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert [o.name for o in proto.graph.output] == \
        [o.name for o in to_onnx(model, shape).graph.output]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((5, *shape), dtype=np.float32)
    for batch in (x[:1], x):
        (got,) = session.run(None, {"input": batch})
        expected = (model.predict(batch) + model.predict(batch[..., ::-1].copy())) / 2
        assert np.abs(expected - model.predict(batch)).max() > 1e-4  # the mirror matters
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


SCRIPT = str(ROOT / "scripts" / "export_onnx.py")


def test_script_exports_and_verifies(tmp_path):
    save_checkpoint(build_model("cnn", seed=0), tmp_path / "c.json", input_shape=[1, 28, 28],
                    class_names=list("0123456789"))
    proc = subprocess.run([sys.executable, SCRIPT, "--checkpoint-path", tmp_path / "c.json",
                           "--onnx-path", tmp_path / "m.onnx", "--verify"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "max |difference|" in proc.stdout
    onnx.checker.check_model(onnx.load(tmp_path / "m.onnx"), full_check=True)


def test_script_exports_the_checkpoints_test_time_flips_unless_told_otherwise(tmp_path):
    model = build_model("cnn", seed=0)
    save_checkpoint(model, tmp_path / "c.json", input_shape=[1, 28, 28], tta="flip")
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    single = model.predict(x)
    flipped = (single + model.predict(x[..., ::-1].copy())) / 2
    for extra, expected, tta in (((), flipped, "flip"), (("--tta", "none"), single, "none")):
        proc = subprocess.run([sys.executable, SCRIPT, "--checkpoint-path", tmp_path / "c.json",
                               "--onnx-path", tmp_path / "m.onnx", "--verify", *extra],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        proto = onnx.load(tmp_path / "m.onnx")
        assert {p.key: p.value for p in proto.metadata_props}["tta"] == tta
        session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, atol=1e-5)


@pytest.mark.parametrize("ckpt,out,match", [
    ("{tmp}/missing.json", "{tmp}/m.onnx", "cannot read"),
    ("{tmp}/c.json", "{tmp}/no/such/folder/m.onnx", "cannot write"),
    ("{tmp}/bad_tta.json", "{tmp}/m.onnx", "metadata 'tta': tta must be one of"),
])
def test_script_bad_input_exits_2(tmp_path, ckpt, out, match):
    save_checkpoint(build_model("mlp", seed=0), tmp_path / "c.json")
    save_checkpoint(build_model("mlp", seed=0), tmp_path / "bad_tta.json", tta="rotate")
    proc = subprocess.run([sys.executable, SCRIPT, "--checkpoint-path", ckpt.format(tmp=tmp_path),
                           "--onnx-path", out.format(tmp=tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and match in proc.stderr and "Traceback" not in proc.stderr
