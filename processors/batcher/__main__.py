"""``python -m sevisflow.processors.batcher [--config FILE] [--instance NAME]``: run the batcher until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from sevisflow.core import log
from sevisflow.core.config import load_settings
from sevisflow.core.errors import SevisflowError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sevisflow.processors.batcher", description=__doc__)
    p.add_argument("--config", default=None, help="settings file (default: $SEVISFLOW_CONFIG or ./sevisflow.toml)")
    p.add_argument(
        "--instance",
        default=None,
        help="stable name of this instance (default $SEVISFLOW_INSTANCE or the host name); "
        "a restart with the same name takes over at once",
    )
    p.add_argument("--session-timeout-ms", type=int, default=None, help="consumer session timeout")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    log.configure(args.log_level.upper())
    from sevisflow.processors.batcher.stage import run

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    overrides = {"session.timeout.ms": args.session_timeout_ms} if args.session_timeout_ms else None
    try:
        run(load_settings(args.config), stop, instance=args.instance, consumer_overrides=overrides)
    except SevisflowError as exc:
        print(f"batcher: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
