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
