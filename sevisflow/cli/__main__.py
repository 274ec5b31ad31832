"""``python -m sevisflow.cli``: the same as the ``sevisflow`` command."""

from sevisflow.cli import entry_point

entry_point()
