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


def run_stage(settings: Settings, stage: Callable[..., None], *extra: Any, name: str = "stage") -> int:
    """Run one long-lived stage in the foreground, the way ``sevisflow run`` runs several.

    SIGTERM/Ctrl-C ask it to drain and stop; a transient failure (Kafka or PostgreSQL not
    reachable) restarts it after a growing backoff instead of exiting; /metrics, /health and
    /ready are served on ``metrics.port`` while it runs (when set). Returns 0 after a clean stop.
    """
    import signal
    import time

    from sevisflow.errors import SevisflowError
    from sevisflow.runner import Pipeline

    def fn(s: Settings, stop: Any) -> None:
        stage(s, stop, *extra)

    pipeline = Pipeline(settings, [name], functions={name: fn}).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: pipeline.stop_event.set())
    while not pipeline.stop_event.is_set() and any(t.thread.is_alive() for t in pipeline.threads):
        time.sleep(0.2)
    failed = pipeline.stop()
    if failed:
        err = failed[0].error
        if isinstance(err, SevisflowError):
            raise err
        raise RuntimeError(f"stage {name} failed") from err
    return 0
