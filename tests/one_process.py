"""Many short command lines of nnjit's scripts, run one after another in one child Python.

A command line that ends early (a bad flag, a broken file) takes about 0.8 s as
a process of its own, nearly all of it importing nnjit and Numba. Run here,
each goes through ``nnjit.cli.run`` as the script would, with its own stdout and
stderr, and the child imports nnjit once. An exception that escapes ``run``
is printed with its traceback, as Python would print it, and exits 1.
"""
import json
import subprocess
import sys

_CHILD = """
import contextlib, importlib, io, json, sys, traceback
from nnjit.cli import run
SCRIPTS = {"train": "train.py", "infer": "infer.py", "export": "export_onnx.py"}
results = []
for command, argv in json.loads(sys.stdin.read()):
    module = importlib.import_module(f"nnjit.commands.{command}")
    sys.argv = [SCRIPTS[command], *argv]  # the usage line names the script
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run(lambda: module.main(argv))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def run_in_one_process(runs, timeout=600, cwd=None) -> list[subprocess.CompletedProcess]:
    """runs: (command, argv) pairs, command one of "train", "infer", "export"
    (``nnjit.commands``), argv a list of strings. One CompletedProcess per run,
    in order, with its exit code, stdout and stderr."""
    runs = [(command, [str(a) for a in argv]) for command, argv in runs]
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(runs),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return [subprocess.CompletedProcess([command, *argv], code, out, err)
            for (command, argv), (code, out, err) in zip(runs, results)]
