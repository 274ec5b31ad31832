"""Helpers every CLI command shares: loading settings, printing tables and JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

import orjson

from sevisflow.config import Settings, load_settings


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings for this invocation (``--config`` or the default file, plus SEVISFLOW_* env)."""
    return load_settings(getattr(args, "config", None))


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str).decode() + "\n")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns (no colours: it goes into terminals, logs and e-mails)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells[1:]]
    return "\n".join(lines)


def run_stage(settings: Settings, stage: Callable[..., None], *extra: Any) -> int:
    """Run a long-lived stage in the foreground: SIGTERM/Ctrl-C ask it to drain and stop, and
    /metrics, /health and /ready are served on ``metrics.port`` while it runs (when set)."""
    import signal
    import threading

    from sevisflow.observability import serve_for

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = serve_for(settings.metrics.port, settings.metrics.host)
    try:
        stage(settings, stop, *extra)
    finally:
        if server:
            server.stop()
    return 0
