#!/usr/bin/env python
"""Train a network on MNIST, Fashion-MNIST, CIFAR-10, an image folder or an .npz, with
checkpoints, a loss CSV and a plot.

The same as ``nnjit train`` (nnjit/commands/train.py); --help lists the flags."""
import time

START = time.perf_counter()  # before nnjit loads: the start-up it reports includes loading it

from nnjit.cli import run  # noqa: E402
from nnjit.commands import train  # noqa: E402

if __name__ == "__main__":
    run(lambda: train.main(started=START))
