"""Shared pieces of the command-line scripts: console, clean errors, exit codes."""
from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.markup import escape

#: The loss became nan or inf (``nnjit train``): the run stops, its checkpoints stay.
EXIT_DIVERGED = 1
EXIT_BAD_INPUT = 2
#: A checkpoint, CSV or plot could not be written (disk full, folder gone or read-only).
EXIT_WRITE_FAILED = 74
EXIT_INTERRUPTED = 130

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False)


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def fail(message: str, code: int = EXIT_BAD_INPUT):
    """Print ``error: message`` to stderr (one line, no traceback) and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(code)


def run(main) -> None:
    """Run a script's ``main()``: any NnjitError that reaches here becomes one
    ``error:`` line and exit 2; a KeyboardInterrupt exits 130 with one line.
    Under an MPI launcher a rank that ends with an error ends the whole job
    (``MPI_Abort``, its message flushed first): its peers would otherwise wait
    in their next collective, or in ``MPI_Finalize``, forever."""
    from .distributed import abort_job_on_error

    with abort_job_on_error():
        _run(main)


def _run(main) -> None:
    from .errors import NnjitError

    try:
        sys.exit(main())
    except NnjitError as err:
        fail(str(err))
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        wanted = "positive" if minimum == 1 else f">= {minimum}"
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0 (e.g. a seed)."""
    return _int_at_least(text, 0)


def _float_at_least(text: str, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        wanted = "a positive number" if positive else "a number >= 0"
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    return _float_at_least(text, positive=True)


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    return _float_at_least(text, positive=False)


def smoothing(text: str) -> float:
    """argparse type: a label smoothing, a float in [0, 1)."""
    value = _float_at_least(text, positive=False)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be below 1, got {text!r}")
    return value


def count_or_fraction(text: str) -> float:
    """argparse type: a whole count >= 1 or a fraction in (0, 1) (``--val-split``)."""
    value = positive_float(text)
    if value >= 1 and not value.is_integer():
        raise argparse.ArgumentTypeError(f"must be a whole count or a fraction in (0, 1), got {text}")
    return int(value) if value >= 1 else value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults (where there is one to show) and keeps the description's line breaks."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)
