"""``python -m sevisflow.app.cli``: the same as the ``sevisflow`` command."""

from sevisflow.app.cli import entry_point

entry_point()
