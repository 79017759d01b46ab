#!/usr/bin/env python
"""Benchmark nnjit (and PyTorch, when importable) on the cnn and mlp presets.

Every throughput is measured interleaved with the peer in the same process
(nnjit block, PyTorch block, repeated; medians reported), because these
machines are noisy: compare the ratios, not absolute times across runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nnjit  # noqa: F401, I001  (first: sets thread-pool waits before numpy loads; nnjit/_env.py)

import numpy as np
from rich.table import Table

from nnjit import SGD, Conv2D
from nnjit.cli import HelpFormatter, console, positive_int, run
from nnjit.spec import build_model

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1,
                   help="threads for both nnjit and PyTorch")
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="interleaved timing blocks per figure (the median is reported)")
    p.add_argument("--latency-calls", type=positive_int, default=1000,
                   help="single-image predict calls per latency figure")
    p.add_argument("--no-torch", action="store_true", help="measure nnjit alone")
    p.add_argument("--skip-startup", action="store_true", help="skip the cold/warm start figures")
    p.add_argument("--memory", action="store_true",
                   help="also measure peak RSS of a one-epoch cnn run on 60k Fashion-MNIST images")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p.parse_args(argv)


# -- FLOP counts (2 x multiply-accumulates) ----------------------------------
def forward_flops(model, input_shape) -> float:
    """2*MACs of one sample's forward pass through the Conv2D and Dense layers."""
    flops, shape = 0.0, tuple(input_shape)
    for layer in model.layers:
        out = layer.output_shape(shape)
        params = layer.parameters()
        if params:  # weight (out, ...) applied at every output position
            weight = params[0].value
            positions = int(np.prod(out[1:])) if len(out) > 1 else 1
            flops += 2.0 * weight.size * positions
        shape = out
    return flops


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


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each fn, timed in alternation, after one warm-up call each."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(_time(fn))
    return {k: statistics.median(v) for k, v in times.items()}


# -- PyTorch twins -----------------------------------------------------------
def torch_twin(model, with_softmax: bool):
    """The same network in PyTorch, same layer indices, same weights."""
    import torch
    from torch import nn

    layers = []
    for entry in model.config():
        cfg = entry["config"]
        make = {
            "Conv2D": lambda: nn.Conv2d(cfg["in_channels"], cfg["out_channels"], cfg["kernel_size"],
                                        cfg["stride"], cfg["padding"]),
            "MaxPool2D": lambda: nn.MaxPool2d(cfg["kernel_size"], cfg["stride"]),
            "Dense": lambda: nn.Linear(cfg["in_features"], cfg["out_features"]),
            "ReLU": nn.ReLU, "Flatten": nn.Flatten, "Softmax": lambda: nn.Softmax(dim=1),
        }[entry["type"]]
        layers.append(make())
    if not with_softmax:
        layers[-1] = nn.Identity()
    twin = nn.Sequential(*layers)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            twin.state_dict()[name].copy_(torch.from_numpy(np.array(value)))
    return twin


def nnjit_train_step(model, opt, x, y):
    def step():
        model.forward(x)
        model.backward(y)
        opt.step()
    return step


def torch_train_step(twin, x, y):
    import torch

    opt = torch.optim.SGD(twin.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=False)
        loss_fn(twin(tx), ty).backward()
        opt.step()
    return step


def measure_models(args, have_torch):
    torch = None
    if have_torch:
        import torch
    rows = []
    rng = np.random.default_rng(0)
    for preset in ("cnn", "mlp"):
        model = build_model(preset, seed=0)
        opt = SGD(model.parameters(), lr=0.01)
        fwd = forward_flops(model, (1, 28, 28))
        twin = torch_twin(model, with_softmax=False) if have_torch else None
        infer_twin = torch_twin(model, with_softmax=True).eval() if have_torch else None
        for batch in (64, 256):
            x = rng.random((batch, 1, 28, 28), dtype=np.float32)
            y = rng.integers(0, 10, batch)
            steps = max(1, 2048 // batch)
            fns = {"nnjit": lambda s=nnjit_train_step(model, opt, x, y): [s() for _ in range(steps)]}
            if have_torch:
                fns["torch"] = lambda s=torch_train_step(twin, x, y): [s() for _ in range(steps)]
            t = interleaved(fns, args.repeats)
            rows.append(figure(f"{preset} training, batch {batch}", "img/s", {
                k: steps * batch / v for k, v in t.items()}, 3 * fwd))
        x = rng.random((1000, 1, 28, 28), dtype=np.float32)
        fns = {"nnjit": lambda: model.predict(x, batch_size=1000)}
        if have_torch:
            tx = torch.from_numpy(x)

            def torch_infer():
                with torch.inference_mode():
                    infer_twin(tx)
            fns["torch"] = torch_infer
        t = interleaved(fns, args.repeats)
        rows.append(figure(f"{preset} inference, batch 1000", "img/s",
                           {k: 1000 / v for k, v in t.items()}, fwd))
        one = rng.random((1, 1, 28, 28), dtype=np.float32)
        lat = {"nnjit": latency(lambda: model.predict(one), args.latency_calls)}
        if have_torch:
            t1 = torch.from_numpy(one)

            def torch_one():
                with torch.inference_mode():
                    infer_twin(t1)
            lat["torch"] = latency(torch_one, args.latency_calls)
        rows.append(figure(f"{preset} single-image latency", "us",
                           {k: v * 1e6 for k, v in lat.items()}, None, lower_is_better=True))
    return rows


def latency(fn, calls) -> float:
    for _ in range(20):
        fn()
    samples = [_time(fn) for _ in range(calls)]
    return statistics.median(samples)


def measure_conv(args, have_torch):
    rows = []
    rng = np.random.default_rng(1)
    for n, size in ((16, 28), (64, 28), (16, 128)):
        layer = Conv2D(10, 20, 5)
        x = rng.random((n, 10, size, size), dtype=np.float32)
        out = layer.forward(x)
        dy = rng.random(out.shape, dtype=np.float32)
        macs = layer.weight.value.size * out.shape[2] * out.shape[3]
        fns_f = {"nnjit": lambda: layer.forward(x)}
        fns_b = {"nnjit": lambda: layer.backward(dy)}
        if have_torch:
            import torch
            conv = torch.nn.Conv2d(10, 20, 5)
            tx = torch.from_numpy(x).requires_grad_(True)
            tdy = torch.from_numpy(dy)

            def t_fwd():
                with torch.no_grad():
                    conv(tx)

            def t_bwd():
                # forward + backward minus the forward figure gives torch's backward alone
                conv(tx).backward(tdy)
            fns_f["torch"] = t_fwd
            fns_b["torch"] = t_bwd
        tf = interleaved(fns_f, args.repeats)
        # nnjit: forward (keeping caches) + backward, the same work as torch's t_bwd
        fns_b["nnjit"] = lambda: (layer.forward(x), layer.backward(dy))
        tb = interleaved(fns_b, args.repeats)
        label = f"conv 10->20 5x5, {n}x{size}x{size}"
        rows.append(figure(f"{label} forward", "img/s", {k: n / v for k, v in tf.items()}, 2 * macs))
        rows.append(figure(f"{label} fwd+bwd", "img/s", {k: n / v for k, v in tb.items()}, 6 * macs))
    return rows


def figure(name, unit, values, flops_per_image, lower_is_better=False):
    row = {"figure": name, "unit": unit, "nnjit": values["nnjit"], "torch": values.get("torch")}
    if flops_per_image:
        row["nnjit_gflops"] = values["nnjit"] * flops_per_image / 1e9
    if row["torch"]:
        row["ratio"] = (row["torch"] / row["nnjit"]) if lower_is_better else (row["nnjit"] / row["torch"])
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


def main(argv=None):
    args = parse_args(argv)
    nnjit.set_num_threads(args.threads)
    have_torch, why = False, "--no-torch given"
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(args.threads)
            have_torch, why = True, f"PyTorch {torch.__version__}"
        except ImportError:
            why = "PyTorch is not installed (pip install torch==2.13.0 to compare)"
    peak = matmul_peak(args.threads)
    with console.status("measuring..."):
        rows = measure_models(args, have_torch) + measure_conv(args, have_torch)
        startup = None if args.skip_startup else measure_startup()
        memory = measure_memory() if args.memory else None
    result = {"threads": args.threads, "peer": why, "matmul_peak_gflops": peak, "figures": rows,
              "startup_seconds": startup,
              "peak_rss_mb_60k_epoch": memory[0] if memory else None}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"nnjit benchmark, {args.threads} threads; peer: {why}; "
                        f"float32 matmul peak {peak:.0f} GFLOP/s")
    for col in ("figure", "nnjit", "GFLOP/s (% peak)", "PyTorch", "nnjit vs PyTorch"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for r in rows:
        gf = f"{r['nnjit_gflops']:.1f} ({100 * r['nnjit_gflops'] / peak:.0f}%)" if "nnjit_gflops" in r else ""
        torch_v = f"{r['torch']:,.0f} {r['unit']}" if r["torch"] else "-"
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else "-"
        table.add_row(r["figure"], f"{r['nnjit']:,.0f} {r['unit']}", gf, torch_v, ratio)
    console.width = max(console.width, 110)  # one line per figure, also in logs
    console.print(table)
    if startup:
        console.print(f"scripts/train.py start to exit after one step: cold cache {startup['cold']:.1f}s, "
                      f"warm cache {startup['warm']:.1f}s")
    if memory:
        console.print("peak RSS, one cnn epoch on 60k Fashion-MNIST images: "
                      + (f"{memory[0]:.0f} MB" if memory[0] else f"not measured ({memory[1]})"))
    console.print("ratios > 1 favour nnjit (for latency: PyTorch's time / nnjit's).")


if __name__ == "__main__":
    run(main)
