"""The ``nnjit`` command: ``nnjit train``, ``infer``, ``export`` and ``sweep`` (also
``python -m nnjit ...``), each with the flags of the script of the same job in
``scripts/``, which are wrappers over these modules."""
from __future__ import annotations

import importlib
import sys

#: subcommand -> (module in this package, what it does)
COMMANDS = {
    "train": ("train", "train a network (MNIST, Fashion-MNIST, CIFAR-10, a folder or an .npz)"),
    "infer": ("infer", "run a checkpoint on one image, or evaluate it on a test set"),
    "export": ("export", "export a checkpoint to ONNX, optionally checked with onnxruntime"),
    "sweep": ("sweep", "search hyperparameters over many training runs on Ray Tune"),
}

USAGE = "usage: nnjit {train,infer,export,sweep} [flags]   (nnjit COMMAND --help for its flags)\n\n" + \
    "\n".join(f"  {name:<8}{text}" for name, (_, text) in COMMANDS.items())


def main(argv: list[str] | None = None) -> int | None:
    """Run ``nnjit COMMAND FLAGS...`` (argv: the words after ``nnjit``, default
    sys.argv[1:]); the command's errors become one ``error:`` line and exit 2."""
    from ..cli import run

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"nnjit: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(f".{COMMANDS[argv[0]][0]}", __name__)
    sys.argv[0] = f"nnjit {argv[0]}"  # argparse names the program after it
    run(lambda: module.main(argv[1:]))
