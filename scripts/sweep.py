#!/usr/bin/env python
"""Search hyperparameters on Ray Tune: many training runs with sampled flags, compared
on validation accuracy.

The same as ``nnjit sweep`` (nnjit/commands/sweep.py); --help explains SPACE.json and
the flags."""
from nnjit.cli import run
from nnjit.commands import sweep

if __name__ == "__main__":
    run(sweep.main)
