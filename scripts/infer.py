#!/usr/bin/env python
"""Run a trained checkpoint on one image, or evaluate it on a whole test set (IDX files,

The same as ``nnjit infer`` (nnjit/commands/infer.py); --help lists the flags."""
from nnjit.cli import run
from nnjit.commands import infer

if __name__ == "__main__":
    run(infer.main)
