"""``python -m connectors.postgres [--config FILE] [--log-level LEVEL]``: run the connector until SIGTERM/SIGINT.

The same as ``sevisflow [options] connector run``; settings from the TOML file and SEVISFLOW_* variables.
"""

from __future__ import annotations

import sys

from sevisflow.cli import main

if __name__ == "__main__":
    options = sys.argv[1:]
    if "--log-level" not in options:
        options = ["--log-level", "INFO", *options]
    sys.exit(main([*options, "connector", "run"]))
