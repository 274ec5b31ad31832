"""``python -m sevisflow``: the ``sevisflow`` command."""

import sys

from sevisflow.app.cli import entry_point

if __name__ == "__main__":
    sys.exit(entry_point())
