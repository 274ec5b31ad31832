"""``sevisflow run``: every stage in one process, for a small school or a trial."""

from __future__ import annotations

import argparse
import signal
import time

from sevisflow.app.cli.common import settings_from_args
from sevisflow.core.errors import SevisflowError
from sevisflow.app.runner import STAGES, Pipeline


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="run all stages together in one process",
                       description="Runs the connector, processors and sinks as threads of one process. "
                                   "SIGTERM or Ctrl-C drains them and exits.")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset (default all: {','.join(STAGES)})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.stages.split(",") if n.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise SevisflowError(f"unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}")
    pipeline = Pipeline(settings_from_args(args), names).start()
    signal.signal(signal.SIGTERM, lambda *_: pipeline.stop_event.set())
    try:
        while not pipeline.stop_event.is_set():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    failed = pipeline.stop()
    if failed:
        raise SevisflowError("stage(s) failed: " + "; ".join(f"{t.name}: {t.error}" for t in failed))
    return 0
