#!/usr/bin/env python
"""nnjit's training speed in the set-ups users actually have.

The same cnn training steps (batch 64, SGD) in one long-lived process per
set-up: numpy, SciPy, pandas or PyTorch imported before nnjit or after it,
OMP_NUM_THREADS / OPENBLAS_NUM_THREADS set by the user, an explicit
``nnjit.set_num_threads``, and a Jupyter (IPython) kernel whose first cell
imports numpy. Timed blocks alternate between the processes (medians
reported; a busy-wait before each block lets the previous process's threads
go to sleep), because these machines are noisy: read the ratio to the
"nnjit first" set-up, which should be 1.0 within noise for every row.
Set-ups whose packages are not installed are listed as skipped.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

BLOCK = """
import json, sys, time
import numpy as np
import nnjit
from nnjit.spec import build_model

model = build_model("cnn", seed=0)
opt = nnjit.SGD(model.parameters(), lr=0.01)
rng = np.random.default_rng(0)
x = rng.random((64, 1, 28, 28), dtype=np.float32)
y = rng.integers(0, 10, 64)

def block(steps=32):
    t = time.perf_counter()
    for _ in range(steps):
        model.forward(x)
        model.backward(y)
        opt.step()
    return steps * len(x) / (time.perf_counter() - t)

block(4)
"""

#: The user's own multi-threaded numpy work between training blocks (wakes numpy's BLAS pool).
USER_MATMUL = "a = np.ones((512, 512), np.float32)\nfor _ in range(20):\n    a @ a\n"

#: name -> (code run before BLOCK, extra environment, module that must be importable,
#: code run before every timed block)
SETUPS = {
    "nnjit first": ("import nnjit\n", {}, None, ""),
    "numpy first": ("import numpy\n", {}, None, ""),
    "scipy first": ("import scipy.linalg\n", {}, "scipy", ""),
    "pandas first": ("import pandas\n", {}, "pandas", ""),
    "torch first": ("import torch\n", {}, "torch", ""),
    "numpy first, OMP_NUM_THREADS=2": ("import numpy\n", {"OMP_NUM_THREADS": "2"}, None, ""),
    "numpy first, OPENBLAS_NUM_THREADS=1": ("import numpy\n", {"OPENBLAS_NUM_THREADS": "1"}, None, ""),
    "numpy first, OPENBLAS_NUM_THREADS=2": ("import numpy\n", {"OPENBLAS_NUM_THREADS": "2"}, None, ""),
    "numpy first, nnjit.set_num_threads(2)": (
        "import numpy\nimport nnjit\nnnjit.set_num_threads(2)\n", {}, None, ""),
    "numpy first, user matmuls before each block": ("import numpy\n", {}, None, USER_MATMUL),
    "Jupyter kernel, numpy in the first cell": ("import numpy\n", {}, "ipykernel", ""),
}
SETTLE_SECONDS = 0.2


class ProcessSetup:
    """A python process that answers each stdin line with one timed block (img/s)."""

    def __init__(self, prelude, env, before):
        serve = ("\nfor _ in sys.stdin:\n" + "".join(f"    {line}\n" for line in before.splitlines())
                 + "    print(json.dumps(block()), flush=True)\n")
        self.proc = subprocess.Popen([sys.executable, "-c", prelude + BLOCK + serve],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, **env))

    def time(self) -> float:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"set-up process stopped (exit code {self.proc.wait()})")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


class KernelSetup:
    """A Jupyter (IPython) kernel; each timed block is one executed cell."""

    def __init__(self, prelude, env, before):
        from jupyter_client import KernelManager

        self.manager = KernelManager(kernel_name="python3", transport="ipc")
        self.manager.start_kernel(env=dict(os.environ, **env))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)
        self._run(prelude)
        self._run(BLOCK)
        self.before = before

    def _run(self, code) -> str:
        out = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                raise RuntimeError("\n".join(msg["content"]["traceback"]))

        self.client.execute_interactive(code, output_hook=hook, timeout=600)
        return "".join(out)

    def time(self) -> float:
        return float(self._run(self.before + "print(block())"))

    def close(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def settle():
    end = time.perf_counter() + SETTLE_SECONDS
    while time.perf_counter() < end:
        pass


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="timed blocks per set-up (median)")
    args = p.parse_args(argv)
    console = Console(highlight=False)
    setups, skipped = {}, []
    with console.status("starting one process per set-up..."):
        for name, (prelude, env, needs, before) in SETUPS.items():
            if needs and importlib.util.find_spec(needs) is None:
                skipped.append(f"{name} ({needs} not installed)")
                continue
            kind = KernelSetup if name.startswith("Jupyter") else ProcessSetup
            setups[name] = kind(prelude, env, before)
    times = {name: [] for name in setups}
    try:
        with console.status("timing..."):
            for _ in range(args.repeats):
                for name, setup in setups.items():
                    settle()
                    times[name].append(setup.time())
    finally:
        for setup in setups.values():
            setup.close()
    base = statistics.median(times["nnjit first"])
    table = Table(title="nnjit cnn training, batch 64, by set-up (img/s, median of "
                        f"{args.repeats} alternating blocks)")
    table.add_column("set-up")
    table.add_column("img/s", justify="right")
    table.add_column("vs nnjit first", justify="right")
    for name, values in times.items():
        value = statistics.median(values)
        table.add_row(name, f"{value:,.0f}", f"{value / base:.2f}x")
    console.print(table)
    for name in skipped:
        console.print(f"skipped: {name}")


if __name__ == "__main__":
    main()
