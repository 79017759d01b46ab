#!/usr/bin/env python
"""Export a checkpoint to ONNX (opset 13, standard operators), optionally checked with onnxruntime.

The same as ``nnjit export`` (nnjit/commands/export.py); --help lists the flags."""
from nnjit.cli import run
from nnjit.commands import export

if __name__ == "__main__":
    run(export.main)
