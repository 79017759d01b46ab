"""The exceptions nnjit raises for bad input and faults it detects.

Every one derives from :class:`NnjitError`, so a program can catch them all
in one place (the scripts turn each into one ``error:`` line and exit 2).
Those about values also derive from ValueError, as before the family existed.
"""


class NnjitError(Exception):
    """Base of every error nnjit raises on purpose; the message says what and where."""


class DataError(NnjitError, ValueError):
    """A dataset or image file is missing, unreadable or malformed."""


class CheckpointError(NnjitError, ValueError):
    """A checkpoint cannot be read or written; the message names the file and the problem."""


class SpecError(NnjitError, ValueError):
    """A model spec (``--model``) is unknown, malformed or does not fit its input."""


class OutOfMemoryError(NnjitError, MemoryError):
    """A computation would need more memory than this machine has; refused before
    anything is allocated."""


class TrainingDiverged(NnjitError, FloatingPointError):
    """The loss became nan or inf; the step that produced it was not applied, so
    the model keeps the weights from before it. ``epoch`` (from 0) and ``batch``
    (from 0 within it) say where."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch
        super().__init__(f"the loss became nan or inf in epoch {epoch + 1}, batch {batch + 1} "
                         "(that step was not applied): the learning rate is most likely too "
                         "high, try a tenth of it")
