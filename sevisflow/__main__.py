"""``python -m sevisflow``: the ``sevisflow`` command."""

from sevisflow.app.cli import entry_point

if __name__ == "__main__":
    entry_point()  # exits with the command's status
