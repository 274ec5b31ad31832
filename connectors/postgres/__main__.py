"""``python -m sevisflow.connectors.postgres [--config FILE] [--log-level LEVEL]``: run the connector until SIGTERM/SIGINT.

The same as ``sevisflow connector run``; settings from the TOML file and SEVISFLOW_* variables.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from sevisflow.core import log
from sevisflow.core.config import load_settings
from sevisflow.core.errors import SevisflowError
from sevisflow.core.observability import serve_for


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sevisflow.connectors.postgres", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="settings file (default: $SEVISFLOW_CONFIG or ./sevisflow.toml)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    log.configure(args.log_level.upper())
    from sevisflow.connectors.postgres import run_connector

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        settings = load_settings(args.config)
        server = serve_for(settings.metrics.port, settings.metrics.host)
        try:
            run_connector(settings, stop)
        finally:
            if server:
                server.stop()
    except SevisflowError as exc:
        print(f"connector: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
