"""The package as users install it: a wheel built from the tracked files, installed
into a fresh virtual environment outside the checkout, its ``nnjit`` command run
from there (this catches files missing from the package)."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT
from synthetic import write_dataset


def tracked_files():
    proc = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"git ls-files failed in {ROOT}: {proc.stderr}")
    return [line for line in proc.stdout.splitlines() if (ROOT / line).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, venv bin folder, a folder outside the checkout) with nnjit's wheel installed."""
    tmp = tmp_path_factory.mktemp("package")
    source = tmp / "source"  # the tracked files only, so that the build writes nothing in ROOT
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                            "--outdir", str(tmp / "dist"), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheel, = (tmp / "dist").glob("nnjit-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    packaged = {n for n in names if n.startswith("nnjit/") and n.endswith(".py")}
    expected = {n for n in tracked_files() if n.startswith("nnjit/") and n.endswith(".py")}
    assert packaged == expected, f"missing from the wheel: {sorted(expected - packaged)}"
    for requirement in ("numpy", "numba", "onnx", "rich", "threadpoolctl"):
        assert f"Requires-Dist: {requirement}" in metadata
    assert "nnjit = nnjit.commands:main" in entry_points
    # The dependencies come from this interpreter's site-packages; nnjit from the wheel only.
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index",
                          "--disable-pip-version-check", "--quiet", str(wheel)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    outside = tmp / "work"
    outside.mkdir()
    return python, bin_dir, outside


def run_in(folder, *cmd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(c) for c in cmd], cwd=folder, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_the_installed_nnjit_is_the_wheels(installed):
    python, _, outside = installed
    proc = run_in(outside, python, "-c", "import nnjit; print(nnjit.__file__)")
    assert proc.returncode == 0, proc.stderr
    assert str(python.parent.parent) in proc.stdout, proc.stdout


@pytest.mark.parametrize("command", ["train", "infer", "export", "sweep"])
def test_installed_command_and_module_show_every_subcommands_help(installed, command):
    python, bin_dir, outside = installed
    for cmd in ([bin_dir / "nnjit", command, "--help"], [python, "-m", "nnjit", command, "--help"]):
        proc = run_in(outside, *cmd)
        assert proc.returncode == 0, proc.stderr
        assert f"usage: nnjit {command}" in proc.stdout
    overview = run_in(outside, bin_dir / "nnjit", "--help")
    assert overview.returncode == 0 and all(c in overview.stdout for c in ("train", "infer", "export",
                                                                             "sweep"))
    unknown = run_in(outside, bin_dir / "nnjit", "fly")
    assert unknown.returncode == 2 and "unknown command 'fly'" in unknown.stderr


def test_installed_command_trains_infers_and_exports_outside_the_checkout(installed):
    python, bin_dir, outside = installed
    write_dataset(outside / "d", n_train=256, n_test=64)
    nnjit = bin_dir / "nnjit"
    proc = run_in(outside, nnjit, "train", "--train-data-dir", "d", "--model", "mlp",
                  "--nb-epochs", 2, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "final 9" in proc.stdout or "final 100" in proc.stdout, proc.stdout  # easy blocks
    assert (outside / "checkpoints" / "latest.json").is_file()
    proc = run_in(outside, python, "-m", "nnjit", "infer", "checkpoints/latest.json", "--idx",
                  "d/t10k-images-idx3-ubyte.gz", "d/t10k-labels-idx1-ubyte.gz")
    assert proc.returncode == 0 and "accuracy" in proc.stdout, proc.stderr
    proc = run_in(outside, nnjit, "export", "--checkpoint-path", "checkpoints/latest.json",
                  "--onnx-path", "m.onnx", "--verify")
    assert proc.returncode == 0, proc.stderr
    assert (outside / "m.onnx").stat().st_size > 1000
    bad = run_in(outside, nnjit, "train", "--batch-size", "0")
    assert bad.returncode == 2 and "error" in bad.stderr and "Traceback" not in bad.stderr
