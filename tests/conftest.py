import atexit
import os
import pathlib
import shutil
import tempfile

# The suite runs two pytest processes on two cores, and many tests start more
# (scripts, MPI ranks, a Ray cluster). GNU OpenMP's threads (Numba's pool) spin
# between parallel regions by default, so each process's idle threads take
# the cores another process's parallel region waits for: a kernel called a
# thousand times on a small input waited a time slice per call (a finite-
# difference test took 6.8 s in the suite against 0.02 s alone; the suite
# 383 s warm against 283 s passive). Set before Numba starts its pool; the
# processes the tests start inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
from hypothesis import configuration, settings

# Hypothesis keeps its example database and caches in .hypothesis/ under the
# folder pytest starts in: the checkout. Tests write only under temp dirs.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="nnjit-hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)
configuration.set_hypothesis_home_dir(_HYPOTHESIS_HOME)
settings.register_profile("nnjit", database=None)
settings.load_profile("nnjit")

ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = pathlib.Path(os.environ.get("NNJIT_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def in_a_temp_dir(tmp_path, monkeypatch):
    """Every test runs in its own temporary folder, so that a relative path (a
    script's default ``checkpoints/``, a fuzzed flag value that names a file)
    lands there and never in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def layers_use_every_thread(monkeypatch):
    """Small test layers split their work between all threads, as large batches do,
    so the multi-part paths (per-part dW/db sums) are what the tests check."""
    import nnjit.threads

    monkeypatch.setattr(nnjit.threads, "WORK_PER_PART", 1)


@pytest.fixture
def using():
    """using(**settings): ``nnjit.using(**settings)`` for the rest of the test (an
    algorithm forced, fusion or replay off, another host, thresholds changed)."""
    import contextlib

    import nnjit

    with contextlib.ExitStack() as stack:
        yield lambda **settings: stack.enter_context(nnjit.using(**settings))


@pytest.fixture
def host_with():
    """host_with(**capabilities): this machine's ``nnjit.planner.Host`` with the
    given capabilities changed (``tiles``, ``blas_avx512``)."""
    import dataclasses

    from nnjit.planner import detected_host

    return lambda **changes: dataclasses.replace(detected_host(), **changes)


@pytest.fixture
def force_row_blocks(using):
    """force_row_blocks(layer, (C, H, W), rows): make a Conv2D unfold ``rows``
    output rows per block (as for images too large for one block)."""

    def force(layer, input_shape, rows):
        _, oh, ow = layer.output_shape(input_shape)
        k = input_shape[0] * int(np.prod(layer.kernel_size))
        row_bytes = (k + layer.out_channels) * ow * layer.dtype.itemsize
        using(block_bytes=rows * row_bytes)
        blocks = layer._blocks(0, 1, oh, ow, k)
        assert len(blocks) > 1 and all(r1 - r0 <= rows for _, _, r0, r1, _, _ in blocks)

    return force


@pytest.fixture(scope="session", autouse=True)
def kernels_compile_behind(request):
    """A run of many tests starts ``compile_behind.py``: on a cold Numba cache it
    compiles the kernels beside the tests (see that module). Stopped at the
    end of the run if it has not finished."""
    import subprocess
    import sys

    # Under pytest-xdist, beside the first process only: two would compile the
    # same kernels (beside both processes, it takes a fresh clone's suite from
    # ~600 to ~555 s on 2 cores).
    if len(request.session.items) < 100 or os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0":
        yield
        return
    worker = subprocess.Popen([sys.executable, str(ROOT / "tests" / "compile_behind.py")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield
    worker.kill()
    worker.wait()


@pytest.fixture(scope="session")
def mnist_test_set():
    """The real MNIST test set as (uint8 images (10000, 28, 28), uint8 labels (10000,)).

    Skipped only when the files are absent; .ci/run sets NNJIT_REQUIRE_DATA=1
    so that in CI their absence fails instead.
    """
    from nnjit.data import read_idx

    missing = [f for f in MNIST_FILES if not (MNIST_DIR / f).exists()]
    if missing:
        msg = f"real MNIST test set not found in {MNIST_DIR} (missing {missing})"
        if os.environ.get("NNJIT_REQUIRE_DATA"):
            pytest.fail(msg)
        pytest.skip(msg)
    return read_idx(MNIST_DIR / MNIST_FILES[0]), read_idx(MNIST_DIR / MNIST_FILES[1])


#: Seed of every property-based (hypothesis) test in this run: random unless
#: NNJIT_FUZZ_SEED is set, and printed in the header and with any failure.
FUZZ_SEED = int(os.environ.get("NNJIT_FUZZ_SEED") or np.random.SeedSequence().entropy % 2**32)


def pytest_report_header(config):
    return f"fuzz seed: {FUZZ_SEED} (NNJIT_FUZZ_SEED={FUZZ_SEED} reproduces the fuzz tests' inputs)"


def pytest_runtest_makereport(item, call):
    if call.excinfo is not None and "fuzz" in item.name:
        item.add_report_section("call", "fuzz seed", f"NNJIT_FUZZ_SEED={FUZZ_SEED} found this")


def errors_in_threads(fn, args) -> list:
    """Run fn(arg) for each of ``args`` on a thread of its own, all at once; the
    exceptions they raised."""
    import threading

    errors = []

    def run(arg):
        try:
            fn(arg)
        except Exception as err:  # noqa: BLE001  (returned to the test)
            errors.append(err)

    threads = [threading.Thread(target=run, args=(arg,)) for arg in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.fixture(scope="session")
def ray_address():
    """The address of one local Ray (2 CPUs, a 256 MB object store) that every Ray
    test of the run shares: each Ray start costs seconds and about 1 GB here.
    Started on first use, in a temp dir, and torn down after the run."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("Ray is not installed (pip install -e '.[test]' installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Without a token on either side: Ray's token authentication would keep one in
    # ~/.ray; the test processes (sweep.py, infer.py --ray) inherit this.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    temp = tempfile.mkdtemp(prefix="nnjit-ray-")  # short: Ray's socket paths must fit
    log = open(os.path.join(temp, "head.log"), "w")
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
         "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2", "--object-store-memory", str(256 << 20),
         "--temp-dir", temp, "--include-dashboard", "false", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in open(log.name).read():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the shared Ray did not start:\n{open(log.name).read()[-3000:]}")
            time.sleep(0.2)
        yield address
    finally:
        # It drains the node and stops the processes it started; with idle workers left
        # the drain waits 30 s for them (5 s was never enough at the end of a run), so
        # they are killed after a second.
        head.terminate()
        try:
            head.wait(timeout=1)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


#: Folders whose tests run command lines in child processes: the longest files.
_LONGEST_FIRST = ("scripts", "robustness")


def pytest_collection_modifyitems(config, items):
    """The script and robustness tests first: pytest-xdist hands out whole files in
    this order, and the longest ones started last left one process running
    alone for minutes at the end of the suite."""
    def folder_rank(item):
        folder = pathlib.Path(str(item.fspath)).parent.name
        return _LONGEST_FIRST.index(folder) if folder in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=folder_rank)  # stable: each file's tests keep their order
