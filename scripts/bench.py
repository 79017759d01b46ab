#!/usr/bin/env python
"""Benchmark nnjit against PyTorch (training) and ONNX Runtime (inference), when importable.

Measured as users run: this script imports numpy before nnjit, as most
scripts and every notebook kernel do (``--import-order nnjit-first`` for the
other order). Every throughput is timed in alternation with the peers (nnjit
block, PyTorch block, ONNX Runtime block, repeated; medians reported),
because these machines are noisy: compare the ratios, not absolute times
across runs. Each peer runs in a process of its own (their thread pools
spin after each op and would take cores from the next side's block in a
shared process); ONNX Runtime runs nnjit's own ONNX export, as a user
deploying the model would.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# ruff: noqa: E402  (the imports below follow the --import-order choice)
IMPORT_ORDERS = ("numpy-first", "nnjit-first")
# Read before the imports it decides: "--import-order X" or "--import-order=X".
_order_args = [a.split("=", 1)[-1] if "=" in a else b for a, b in zip(sys.argv, sys.argv[1:] + [""])
               if a.startswith("--import-order")]
IMPORT_ORDER = _order_args[-1] if _order_args and _order_args[-1] in IMPORT_ORDERS else IMPORT_ORDERS[0]

if "--peer" in sys.argv and "torch" in sys.argv:
    import torch  # noqa: F401  (the peer process: torch loads first, as in its users' scripts)
if IMPORT_ORDER == "numpy-first":
    import numpy as np  # noqa: I001  (the user's order: numpy, then nnjit)
    import nnjit
else:
    import nnjit  # noqa: I001
    import numpy as np

import numba
from rich.table import Table

from nnjit import SGD, Conv2D
from nnjit.cli import HelpFormatter, console, positive_int, run
from nnjit.kernels.blas import blas_description
from nnjit.onnx_export import to_onnx
from nnjit.spec import build_model

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1,
                   help="threads for nnjit, PyTorch and ONNX Runtime alike")
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="interleaved timing blocks per figure (the median is reported)")
    p.add_argument("--latency-calls", type=positive_int, default=1000,
                   help="single-image predict calls per latency figure")
    p.add_argument("--import-order", choices=IMPORT_ORDERS, default=IMPORT_ORDERS[0],
                   help="import numpy before nnjit (as users' scripts and notebooks do) or after")
    p.add_argument("--figures", default="",
                   help="only the figures whose name contains this text (e.g. 'cnn training')")
    p.add_argument("--no-torch", action="store_true", help="no PyTorch columns")
    p.add_argument("--no-onnxruntime", action="store_true", help="no ONNX Runtime columns")
    p.add_argument("--skip-startup", action="store_true", help="skip the cold/warm start figures")
    p.add_argument("--memory", action="store_true",
                   help="also measure peak RSS of a one-epoch cnn run on 60k Fashion-MNIST images")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--markdown", action="store_true",
                   help="print the results as a Markdown table (as in docs/performance.md)")
    p.add_argument("--peer", choices=PEERS,
                   help=argparse.SUPPRESS)  # internal: this process serves as that peer
    return p.parse_args(argv)


# -- FLOP counts (2 x multiply-accumulates) ----------------------------------
def matmul_peak(threads) -> float:
    """Measured float32 GEMM GFLOP/s of numpy at 2048 (best of 5)."""
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    out = np.empty_like(a)
    np.dot(a, a, out=out)
    best = min(_time(lambda: np.dot(a, a, out=out)) for _ in range(5))
    return 2 * 2048 ** 3 / best / 1e9


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- the measured cases, built alike in both processes -------------------------
# A case is a JSON-able list: ["train", model, batch], ["infer", model, calls],
# ["latency", model], ["conv", n, size, with_backward]. Every side builds the
# same model (nnjit's, seed 0; PyTorch's copies its weights, ONNX Runtime runs
# its export) and the same data.
#: Measured models: the two presets, and two networks that are not presets,
#: so that tuning to one network shows.
MODELS = {
    "cnn": ("cnn", (1, 28, 28)),
    "mlp": ("mlp", (1, 28, 28)),
    "cifar-cnn": ("conv:32:3:1:1,relu,pool:2,conv:64:3:1:1,relu,pool:2,"
                  "conv:128:3:1:1,relu,pool:2,dense:10,softmax", (3, 32, 32)),
    "cnn-5x5-pad1": ("conv:32:5:1:1,relu,pool:2,conv:64:5:1:1,relu,pool:2,dense:10,softmax",
                     (1, 28, 28)),
    "cnn+bn": ("conv:32:3,bn,relu,pool:2,conv:64:3,bn,relu,pool:2,dense:10,softmax", (1, 28, 28)),
    "resnet20": ("resnet20", (3, 32, 32)),
    "mobilenet": ("mobilenet", (3, 32, 32)),
}


def model_for(name):
    """The nnjit model of ``name`` in MODELS (seed 0) and its sample shape."""
    spec, shape = MODELS[name]
    return build_model(spec, input_shape=shape, seed=0), shape
CONV_SHAPES = ((16, 28), (64, 28), (16, 128))
TRAIN_IMAGES = 2048  # per timed block of training steps
CONV_PIXELS = 1_000_000  # input pixels per timed block of conv calls (at least one call)
#: Pause before each timed block, so the other side's threads have gone to
#: sleep (OpenMP's default wait spins for ~10 ms after each parallel region,
#: nnjit's included). The pause busy-waits, in the process about to time its
#: block (each side alike): after 50 ms of sleep, the next 12 ms block of
#: nnjit convs ran 1.8x slower on these VMs (cores idled down), after 50 ms
#: of busy-waiting as fast as back-to-back. (With only one side settling,
#: PyTorch's conv blocks, woken cold, ran at 12,800 instead of 47,000 img/s in
#: some runs.)
SETTLE_SECONDS = 0.2


def settle() -> None:
    """Busy-wait SETTLE_SECONDS (see there)."""
    end = time.perf_counter() + SETTLE_SECONDS
    while time.perf_counter() < end:
        pass


def conv_calls(n: int, size: int) -> int:
    """Conv calls per timed block for a (n, 10, size, size) input."""
    return max(1, CONV_PIXELS // (n * size * size))


def infer_calls(flops_per_image: float) -> int:
    """Batch-1000 predict calls per timed block: ~20 GFLOP, so that a block lasts
    0.1-0.2 s on every model (one mlp call is ~1.5 ms, shorter than waking the
    threads after the pause before each block)."""
    return max(1, round(2e10 / (1000 * flops_per_image)))


def train_steps(batch: int) -> int:
    """Optimizer steps per timed block of training at ``batch``."""
    return max(1, TRAIN_IMAGES // batch)


def bench_conv() -> Conv2D:
    """The measured Conv2D 10->20 5x5, with the same weights in both processes."""
    layer = Conv2D(10, 20, 5)
    layer.reset_parameters(np.random.default_rng(0))
    return layer


def case_data(case):
    """The input (and labels) of a case, the same in both processes."""
    rng = np.random.default_rng(0)
    if case[0] == "conv":
        _, n, size, _ = case
        x = rng.random((n, 10, size, size), dtype=np.float32)
        return x, rng.random((n, 20, size - 4, size - 4), dtype=np.float32)
    batch = {"train": case[-1], "infer": 1000, "latency": 1}[case[0]]
    shape = MODELS[case[1]][1]
    return rng.random((batch, *shape), dtype=np.float32), rng.integers(0, 10, batch)


def nnjit_case(case):
    """A function running one timed block of ``case`` in nnjit."""
    x, y = case_data(case)
    if case[0] == "conv":
        layer = bench_conv()
        calls = conv_calls(*case[1:3])

        def block():
            for _ in range(calls):
                layer.forward(x)
                if case[3]:
                    layer.backward(y)
        return block
    model, _ = model_for(case[1])
    if case[0] == "train":
        opt = SGD(model.parameters(), lr=0.01)

        def steps():
            for _ in range(train_steps(len(x))):
                model.forward(x)
                model.backward(y)
                opt.step()
        return steps
    if case[0] == "infer":
        return lambda: [model.predict(x, batch_size=len(x)) for _ in range(case[2])]
    return lambda: model.predict(x, batch_size=len(x))


def torch_twin(model, with_softmax: bool):
    """The same network in PyTorch, same layer indices (the module names, so the
    parameter names match nnjit's), same weights, run in the model's graph."""
    import torch
    from torch import nn

    class Sum(nn.Module):
        def forward(self, *xs):
            return sum(xs[1:], xs[0])

    class Concat(nn.Module):
        def forward(self, *xs):
            return torch.cat(xs, dim=1)

    class Graph(nn.Module):
        def __init__(self, layers, inputs_of):
            super().__init__()
            for i, layer in enumerate(layers):
                self.add_module(str(i), layer)
            self.inputs_of = inputs_of

        def forward(self, x):
            values = []
            for layer, inputs in zip(self.children(), self.inputs_of):
                values.append(layer(*[x if j < 0 else values[j] for j in inputs]))
            return values[-1]

    layers = []
    for entry in model.config():
        cfg = entry["config"]
        make = {
            "Conv2D": lambda: nn.Conv2d(cfg["in_channels"], cfg["out_channels"], cfg["kernel_size"],
                                        cfg["stride"], cfg["padding"], cfg.get("dilation", 1),
                                        cfg.get("groups", 1), cfg.get("bias", True)),
            "MaxPool2D": lambda: nn.MaxPool2d(cfg["kernel_size"], cfg["stride"],
                                              cfg.get("padding", 0)),
            "Dense": lambda: nn.Linear(cfg["in_features"], cfg["out_features"]),
            "AvgPool2D": lambda: nn.AvgPool2d(cfg["kernel_size"], cfg["stride"]),
            "GlobalAvgPool2D": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            "BatchNorm2D": lambda: nn.BatchNorm2d(cfg["num_features"], cfg["eps"], cfg["momentum"]),
            "BatchNorm1D": lambda: nn.BatchNorm1d(cfg["num_features"], cfg["eps"], cfg["momentum"]),
            "Dropout": lambda: nn.Dropout(cfg["p"]),
            "ReLU": nn.ReLU, "Flatten": nn.Flatten, "Softmax": lambda: nn.Softmax(dim=1),
            "Add": Sum, "Concatenate": Concat,
        }[entry["type"]]
        layers.append(make())
    if not with_softmax:
        layers[-1] = nn.Identity()
    twin = Graph(layers, model.inputs_of)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            twin.state_dict()[name].copy_(torch.from_numpy(np.array(value)))
    return twin


def torch_case(case):
    """The same block in PyTorch (run in the peer process)."""
    import torch

    x, y = case_data(case)
    tx = torch.from_numpy(x)
    if case[0] == "conv":
        conv = torch.nn.Conv2d(10, 20, 5)
        with torch.no_grad():
            layer = bench_conv()
            conv.weight.copy_(torch.from_numpy(layer.weight.value))
            conv.bias.copy_(torch.from_numpy(layer.bias.value))
        calls = conv_calls(*case[1:3])
        ty = torch.from_numpy(y)
        tx.requires_grad_(case[3])

        def block():
            for _ in range(calls):
                if case[3]:
                    conv(tx).backward(ty)
                else:
                    with torch.no_grad():
                        conv(tx)
        return block
    model, _ = model_for(case[1])
    if case[0] == "train":
        twin = torch_twin(model, with_softmax=False)
        opt = torch.optim.SGD(twin.parameters(), lr=0.01)
        loss_fn = torch.nn.CrossEntropyLoss()
        ty = torch.from_numpy(y.astype(np.int64))

        def steps():
            for _ in range(train_steps(len(x))):
                opt.zero_grad(set_to_none=False)
                loss_fn(twin(tx), ty).backward()
                opt.step()
        return steps
    twin = torch_twin(model, with_softmax=True).eval()

    def infer():
        with torch.inference_mode():
            for _ in range(case[2] if case[0] == "infer" else 1):
                twin(tx)
    return infer


def time_case(fn, case, calls: int, settled: bool = False) -> float:
    """Seconds of one block of ``case`` (for "latency": the median of ``calls`` single
    calls), after ``settle()`` when ``settled``."""
    if settled:
        settle()
    if case[0] != "latency":
        return _time(fn)
    for _ in range(20):
        fn()
    return statistics.median(_time(fn) for _ in range(calls))


def ort_case(case, threads: int):
    """A function running ``case`` (inference) in ONNX Runtime on nnjit's own export."""
    import onnxruntime as ort

    model, shape = model_for(case[1])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(to_onnx(model, shape).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    x, _ = case_data(case)
    calls = case[2] if case[0] == "infer" else 1
    return lambda: [session.run(None, {"input": x}) for _ in range(calls)]


#: Peer name -> (module it runs, what the report calls it).
PEERS = {"torch": ("torch", "PyTorch"), "ort": ("onnxruntime", "ONNX Runtime")}


class Peer:
    """A peer library in a process of its own, timing cases on request (JSON lines
    on stdin/stdout). Own processes, because every runtime here keeps threads
    spinning after its work (OpenMP's, ONNX Runtime's pool), which would take
    cores from the next side's block in a shared process."""

    def __init__(self, name: str, threads: int):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--peer", name, "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.version = self._ask({"op": "version"})

    def _ask(self, request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {PEERS[self.name][1]} process stopped "
                               f"(exit code {self.proc.wait()})")
        return json.loads(line)

    def time(self, case, calls: int, settled: bool = False) -> float:
        return self._ask({"op": "time", "case": case, "calls": calls, "settled": settled})

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def serve_peer(name: str, threads: int) -> None:
    """The peer process's loop: answer each request line with one JSON line."""
    module = importlib.import_module(PEERS[name][0])
    if name == "torch":
        module.set_num_threads(threads)
    built = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "version":
            answer = module.__version__
        else:
            key = json.dumps(request["case"])
            if key not in built:
                built[key] = (torch_case(request["case"]) if name == "torch"
                              else ort_case(request["case"], threads))
            answer = time_case(built[key], request["case"], request["calls"],
                               request.get("settled", False))
        print(json.dumps(answer), flush=True)


def interleaved(case, peers, args) -> dict:
    """Median seconds per block of ``case`` for nnjit and each peer, timed in alternation.

    peers: name -> object with ``time(case, calls)``; PyTorch is asked for
    every case, ONNX Runtime for inference only.
    """
    own = nnjit_case(case)
    sides = {"nnjit": functools.partial(time_case, own, case, args.latency_calls)}
    for name, peer in peers.items():
        if name == "torch" or case[0] in ("infer", "latency"):
            sides[name] = functools.partial(peer.time, case, args.latency_calls)
    for side in sides.values():  # warm-up (compilation, allocation)
        side()
    repeats = 1 if case[0] == "latency" else args.repeats
    times = {k: [] for k in sides}
    for _ in range(repeats):
        for k, side in sides.items():
            times[k].append(side(settled=len(sides) > 1))
    return {k: statistics.median(v) for k, v in times.items()}


def measure(args, peers) -> list[dict]:
    rows = []

    def add(name, *row_args, **row_kwargs):
        rows.append(figure(name, *row_args, **row_kwargs))

    def wanted(name):
        return args.figures in name

    for model_name, batches, inference in (("cnn", (64, 256), True), ("mlp", (64, 256), True),
                                           ("cifar-cnn", (64,), False),
                                           ("cnn-5x5-pad1", (64,), False),
                                           ("cnn+bn", (64,), False),
                                           ("resnet20", (128,), True),
                                           ("mobilenet", (128,), True)):
        model, shape = model_for(model_name)
        fwd = model.forward_flops(shape)
        for batch in batches:
            name = f"{model_name} training, batch {batch}"
            if wanted(name):
                t = interleaved(["train", model_name, batch], peers, args)
                images = train_steps(batch) * batch
                add(name, "img/s", {k: images / v for k, v in t.items()}, 3 * fwd)
        if not inference:
            continue
        name = f"{model_name} inference, batch 1000"
        if wanted(name):
            calls = infer_calls(fwd)
            t = interleaved(["infer", model_name, calls], peers, args)
            add(name, "img/s", {k: 1000 * calls / v for k, v in t.items()}, fwd)
        name = f"{model_name} single-image latency"
        if wanted(name):
            t = interleaved(["latency", model_name], peers, args)
            add(name, "us", {k: v * 1e6 for k, v in t.items()}, None, lower_is_better=True)
    for n, size in CONV_SHAPES:
        macs = 20 * 10 * 5 * 5 * (size - 4) ** 2  # per image
        label = f"conv 10->20 5x5, {n}x{size}x{size}"
        for with_backward, kind, flops in ((False, "forward", 2 * macs), (True, "fwd+bwd", 6 * macs)):
            if wanted(f"{label} {kind}"):
                t = interleaved(["conv", n, size, with_backward], peers, args)  # PyTorch only
                images = conv_calls(n, size) * n
                add(f"{label} {kind}", "img/s", {k: images / v for k, v in t.items()}, flops)
    return rows


def figure(name, unit, values, flops_per_image, lower_is_better=False):
    """A result row: values per side, nnjit's GFLOP/s, and nnjit's ratio to each peer
    (> 1 favours nnjit; for latency, the peer's time over nnjit's)."""
    row = {"figure": name, "unit": unit, "nnjit": values["nnjit"]}
    if flops_per_image:
        row["nnjit_gflops"] = values["nnjit"] * flops_per_image / 1e9
    for peer in PEERS:
        row[peer] = values.get(peer)
        if row[peer]:
            row[f"ratio_{peer}"] = (row[peer] / row["nnjit"] if lower_is_better
                                    else row["nnjit"] / row[peer])
    return row



def measure_startup():
    """Seconds from spawning scripts/train.py to its exit after one optimizer step, cold and warm."""
    from nnjit.data import write_idx
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        write_idx(tmp / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (64, 28, 28), dtype=np.uint8))
        write_idx(tmp / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 64, dtype=np.uint8))
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp / "numba-cache"))
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--train-data-dir", str(tmp),
               "--split-test", "32", "--batch-size", "32", "--nb-epochs", "1", "--quiet",
               "--checkpoint-folder", str(tmp / "ck")]
        for label in ("cold", "warm"):
            t = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            results[label] = time.perf_counter() - t
    return results


def measure_memory():
    """Peak RSS (MB) of a one-epoch cnn run on 60k Fashion-MNIST images, or (None, reason)."""
    train = [sys.executable, str(ROOT / "scripts" / "train.py"), "--dataset", "fashion-mnist",
             "--nb-epochs", "1", "--quiet", "--checkpoint-folder", tempfile.mkdtemp()]
    # A fresh parent whose only child is the run: RUSAGE_CHILDREN of this process
    # would also count the compiler's peak from the cold-start measurement.
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", probe, *train], capture_output=True, text=True)
    code, maxrss_kb = proc.stdout.split()[-2:]
    if code != "0":
        return None, proc.stderr.strip().splitlines()[-1:]
    return int(maxrss_kb) / 1024, None


def start_peers(args) -> tuple[dict, list[str]]:
    """The peers that can run here (name -> Peer), and a line saying what each is or why not."""
    peers, notes = {}, []
    for name, (module, label) in PEERS.items():
        if getattr(args, f"no_{module}"):
            notes.append(f"{label}: --no-{module} given")
        elif importlib.util.find_spec(module) is None:
            install = "torch==2.13.0" if name == "torch" else module
            notes.append(f"{label}: not installed (pip install {install} to compare)")
        else:
            try:
                peers[name] = Peer(name, args.threads)
                notes.append(f"{label} {peers[name].version} (own process"
                             + (", running nnjit's ONNX export)" if name == "ort" else ")"))
            except RuntimeError as err:  # its stderr, shown above, says why
                notes.append(f"{label} did not start: {err}")
    return peers, notes


def main(argv=None):
    args = parse_args(argv)
    if args.peer:
        serve_peer(args.peer, args.threads)
        return
    nnjit.set_num_threads(args.threads)
    peers, notes = start_peers(args)
    peak = matmul_peak(args.threads)
    try:
        with console.status("measuring..."):
            rows = measure(args, peers)
    finally:
        for peer in peers.values():
            peer.close()
    # After the peers are gone: their idle thread pools cost a compiling process
    # (cold start 44.7 s beside them, 16.0-16.6 s without).
    with console.status("measuring start-up..."):
        startup = None if args.skip_startup or args.figures else measure_startup()
        memory = measure_memory() if args.memory else None
    setup = (f"{args.threads} threads, import order {IMPORT_ORDER}, Numba threading layer "
             f"{numba.threading_layer()}, GEMM: {blas_description()}")
    result = {"setup": setup, "threads": args.threads, "import_order": IMPORT_ORDER,
              "peers": notes, "matmul_peak_gflops": peak, "figures": rows,
              "startup_seconds": startup, "peak_rss_mb_60k_epoch": memory[0] if memory else None}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    if args.markdown:
        print(markdown(result))
        return
    table = Table(title=f"nnjit benchmark: {setup}; float32 matmul peak {peak:.0f} GFLOP/s")
    table.add_column("figure")
    for col in ("nnjit", "GFLOP/s (% peak)"):
        table.add_column(col, justify="right")
    for _, peer in PEERS.values():
        table.add_column(peer, justify="right")
        table.add_column(f"nnjit vs {peer}", justify="right")
    for r in rows:
        gf = f"{r['nnjit_gflops']:.1f} ({100 * r['nnjit_gflops'] / peak:.0f}%)" if "nnjit_gflops" in r else ""
        cells = [r["figure"], f"{r['nnjit']:,.0f} {r['unit']}", gf]
        for peer in PEERS:
            cells.append(f"{r[peer]:,.0f} {r['unit']}" if r[peer] else "-")
            cells.append(f"{r[f'ratio_{peer}']:.2f}x" if r.get(f"ratio_{peer}") else "-")
        table.add_row(*cells)
    console.width = max(console.width, 150)  # one line per figure, also in logs
    console.print(table)
    for note in notes:
        console.print(f"peer: {note}")
    if startup:
        console.print(f"scripts/train.py start to exit after one step: cold cache {startup['cold']:.1f}s, "
                      f"warm cache {startup['warm']:.1f}s")
    if memory:
        console.print("peak RSS, one cnn epoch on 60k Fashion-MNIST images: "
                      + (f"{memory[0]:.0f} MB" if memory[0] else f"not measured ({memory[1]})"))
    console.print("ratios > 1 favour nnjit (for latency: the peer's time / nnjit's).")


def markdown(result: dict) -> str:
    """The results as a Markdown table, its set-up above it and its notes below."""
    peak = result["matmul_peak_gflops"]
    head = ["figure", "nnjit", "GFLOP/s (% peak)"]
    for _, peer in PEERS.values():
        head += [peer, f"nnjit / {peer}"]
    lines = [f"{result['setup']}; float32 matmul peak {peak:.0f} GFLOP/s", "",
             "| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for r in result["figures"]:
        gf = f"{r['nnjit_gflops']:.1f} ({100 * r['nnjit_gflops'] / peak:.0f}%)" \
            if "nnjit_gflops" in r else ""
        cells = [r["figure"], f"{r['nnjit']:,.0f} {r['unit']}", gf]
        for peer in PEERS:
            cells.append(f"{r[peer]:,.0f} {r['unit']}" if r[peer] else "")
            cells.append(f"{r[f'ratio_{peer}']:.2f}x" if r.get(f"ratio_{peer}") else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"peer: {note}" for note in result["peers"]]
    startup = result["startup_seconds"]
    if startup:
        lines.append(f"scripts/train.py start to exit after one step: cold cache "
                     f"{startup['cold']:.1f} s, warm cache {startup['warm']:.1f} s")
    if result["peak_rss_mb_60k_epoch"]:
        lines.append(f"peak RSS, one cnn epoch on 60k Fashion-MNIST images: "
                     f"{result['peak_rss_mb_60k_epoch']:.0f} MB")
    lines.append("Ratios > 1 favour nnjit (for latency: the peer's time / nnjit's).")
    return "\n".join(lines)


if __name__ == "__main__":
    run(main)
