"""JSON checkpoints: exact round trip, atomic writes, clear errors for broken files."""
import json
import subprocess
import sys

import numpy as np
import pytest

from nnjit import SGD, Adam, AdamW, Momentum
from nnjit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nnjit.spec import build_model


def trained(spec="conv:4:3:2:1,relu,pool:2,dense:10,softmax", opt_type=Adam, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    model = build_model(spec, seed=seed)
    opt = opt_type(model.parameters(), lr=0.01)
    for _ in range(steps):
        model.forward(rng.random((8, 1, 28, 28), dtype=np.float32))
        model.backward(rng.integers(0, 10, 8))
        opt.step()
    return model, opt


@pytest.mark.parametrize("opt_type", [SGD, Momentum, Adam, AdamW])
def test_round_trip_is_bit_exact(tmp_path, opt_type, rng):
    model, opt = trained(opt_type=opt_type)
    save_checkpoint(model, tmp_path / "c.json", opt, epoch=2, class_names=list("0123456789"))
    ckpt = load_checkpoint(tmp_path / "c.json")
    for a, b in zip(model.parameters(), ckpt.model.parameters()):
        assert a.name == b.name and a.value.dtype == b.value.dtype == np.float32
        assert np.array_equal(a.value.view(np.uint32), b.value.view(np.uint32))
    x = rng.random((5, 1, 28, 28), dtype=np.float32)
    assert np.array_equal(model.predict(x), ckpt.model.predict(x))
    restored = ckpt.make_optimizer()
    assert type(restored) is opt_type and restored.steps == opt.steps
    assert restored.hyperparameters() == opt.hyperparameters()
    for name in opt.state:
        assert np.array_equal(restored.state[name], opt.state[name])
    assert ckpt.metadata["epoch"] == 2 and "nnjit_version" in ckpt.metadata and "date" in ckpt.metadata


def test_extreme_float32_values_survive(tmp_path):
    model, _ = trained(spec="mlp")
    values = np.array([np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45, -0.0,
                       np.nextafter(np.float32(1), np.float32(2)), 0.1], np.float32)
    model.parameters()[-1].value[:6] = values
    save_checkpoint(model, tmp_path / "c.json")
    got = load_checkpoint(tmp_path / "c.json").model.parameters()[-1].value[:6]
    assert np.array_equal(got.view(np.uint32), values.view(np.uint32))


def test_every_kind_of_float32_survives(tmp_path, rng):
    """Random bit patterns (every exponent, subnormals, both signs) in a 100k-value
    weight read back bit-exactly."""
    model, _ = trained(spec="mlp")
    weight = model.parameters()[0].value.reshape(-1)
    bits = rng.integers(0, 2**32, weight.size, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    values[~np.isfinite(values)] = -0.0
    weight[:] = values
    save_checkpoint(model, tmp_path / "c.json")
    got = load_checkpoint(tmp_path / "c.json").model.parameters()[0].value.reshape(-1)
    assert np.array_equal(got.view(np.uint32), values.view(np.uint32))


def test_resumed_optimizer_continues_exactly(tmp_path, rng):
    model, opt = trained(opt_type=Adam)
    save_checkpoint(model, tmp_path / "c.json", opt)
    ckpt = load_checkpoint(tmp_path / "c.json")
    twin, twin_opt = ckpt.model, ckpt.make_optimizer()
    x, labels = rng.random((8, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 8)
    for m, o in ((model, opt), (twin, twin_opt)):
        m.forward(x)
        m.backward(labels)
        o.step()
    assert np.array_equal(model.flat.values, twin.flat.values)


def write_doc(path, mutate):
    model, opt = trained()
    save_checkpoint(model, path, opt)
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))


def insert_nan(path):
    write_doc(path, lambda d: None)
    path.write_text(path.read_text().replace('"values": [', '"values": [NaN, ', 1))


@pytest.mark.parametrize("breaker,match", [
    (lambda p: p.write_text("not json at all"), "not valid JSON"),
    (lambda p: (write_doc(p, lambda d: None), p.write_text(p.read_text()[:5000])), "truncated"),
    (lambda p: write_doc(p, lambda d: d.update(version=99)), "version 99"),
    (lambda p: write_doc(p, lambda d: d.update(format="other")), "not an nnjit checkpoint"),
    (lambda p: write_doc(p, lambda d: d["architecture"][1].update(type="Dropout3D")),
     "unknown layer type 'Dropout3D'"),
    (lambda p: write_doc(p, lambda d: d.update(layer_state={"1": {"rng": "not a state"}})),
     "extra state for layer 1: .*ReLU keeps no extra state"),
    (lambda p: write_doc(p, lambda d: d.update(layer_state={"9": {}})), "extra state for layer 9"),
    (lambda p: write_doc(p, lambda d: d["parameters"][0].update(shape=[4, 1, 5, 5])),
     "'0.weight' has shape \\(4, 1, 5, 5\\) but layer Conv2D needs \\(4, 1, 3, 3\\)"),
    (lambda p: write_doc(p, lambda d: d["parameters"][1]["values"].__setitem__(0, 1e39)),
     "non-finite"),
    (lambda p: insert_nan(p), "non-finite"),
    (lambda p: None, "cannot read"),
])
def test_broken_files_get_one_clear_error(tmp_path, breaker, match):
    path = tmp_path / "c.json"
    breaker(path)
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_non_finite_weights_are_not_saved(tmp_path):
    model, _ = trained()
    model.parameters()[0].value[0, 0, 0, 0] = np.nan
    with pytest.raises(CheckpointError, match="0.weight holds nan"):
        save_checkpoint(model, tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()


WRITER = """
import sys, time, numpy as np
from nnjit.spec import build_model
from nnjit.checkpoint import save_checkpoint
import nnjit.fileio as fileio
model = build_model('cnn', seed=int(sys.argv[2]))
def slow_fsync(fd):
    print('writing', flush=True)
    time.sleep(30)  # killed here, before the rename
fileio.os.fsync = slow_fsync
save_checkpoint(model, sys.argv[1])
"""


def test_killed_writer_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "c.json"
    save_checkpoint(build_model("cnn", seed=1), path)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "2"], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"  # mid-save, new bytes written to a temp file
    proc.kill()
    proc.wait()
    assert path.read_bytes() == before
    assert load_checkpoint(path).model.flat.values.size > 0
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "c.json"]
    assert all(name.endswith(".tmp") for name in leftovers)


def test_checkpoints_from_before_weight_decay_still_load(tmp_path):
    """Optimizer hyperparameters saved before weight_decay/nesterov existed: the defaults apply."""
    model, opt = trained(opt_type=Momentum)
    save_checkpoint(model, tmp_path / "c.json", opt)
    doc = json.loads((tmp_path / "c.json").read_text())
    hyper = doc["optimizer"]["hyperparameters"]
    del hyper["weight_decay"], hyper["nesterov"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    restored = load_checkpoint(tmp_path / "old.json").make_optimizer()
    assert restored.weight_decay == 0.0 and restored.nesterov is False
    assert np.array_equal(restored.state["velocity"], opt.state["velocity"])


def test_same_padding_and_average_pooling_survive_a_round_trip(tmp_path, rng):
    spec = "conv:4:3:same,relu,avgpool:3:2,conv:6:3,relu,gap,dense:10,softmax"
    model, opt = trained(spec=spec, opt_type=SGD)
    save_checkpoint(model, tmp_path / "c.json", opt)
    loaded = load_checkpoint(tmp_path / "c.json").model
    conv = loaded.layers[0]
    assert conv.same_padding and conv.padding == (1, 1) and conv.config()["padding"] == "same"
    assert loaded.config() == model.config()
    x = rng.random((3, 1, 28, 28), dtype=np.float32)
    assert np.array_equal(loaded.predict(x), model.predict(x))


def test_a_network_with_every_new_layer_round_trips_and_resumes_its_masks(tmp_path, rng):
    from test_onnx import EVERY_NEW_LAYER

    model, opt = trained(spec=EVERY_NEW_LAYER, opt_type=Momentum)
    save_checkpoint(model, tmp_path / "c.json", opt)
    ckpt = load_checkpoint(tmp_path / "c.json")
    x = rng.random((4, 1, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(ckpt.model.predict(x), model.predict(x))
    np.testing.assert_array_equal(ckpt.model.forward(x), model.forward(x))  # same dropout masks
