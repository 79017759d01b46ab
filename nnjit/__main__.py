"""``python -m nnjit train|infer|export|sweep ...``: the ``nnjit`` command."""
import sys

from .commands import main

sys.exit(main())
