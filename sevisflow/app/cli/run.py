"""``sevisflow run``: every stage in one process, for a small school or a trial.

``--skip sink-sevis`` (or ``--stages`` without it) runs the pipeline up to the XML outbox: no SEVIS
certificate is needed and nothing is uploaded. Start-up and progress lines go to stderr at the
default log level (see :mod:`sevisflow.app.runner`).
"""

from __future__ import annotations

import argparse
import signal
import time

from sevisflow.app.cli.common import settings_from_args
from sevisflow.app.runner import NO_UPLOAD_HINT, STAGES, Pipeline, StageThread
from sevisflow.core.errors import ConfigError, SevisflowError
from sevisflow.core.log import safe_message


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run all stages together in one process",
        description="Runs the connector, processors and sinks as threads of one process. "
        "SIGTERM or Ctrl-C drains them and exits. Without a SEVIS client "
        "certificate, `--skip sink-sevis` runs everything up to the XML outbox.",
    )
    p.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset (default all: {','.join(STAGES)})"
    )
    p.add_argument(
        "--skip",
        default="",
        metavar="STAGES",
        help="comma-separated stages not to run, e.g. `--skip sink-sevis` to write the XML outbox "
        "without uploading to SEVIS",
    )
    p.set_defaults(func=run)


def stage_names(stages: str, skip: str) -> list[str]:
    """The stages to run, in pipeline order; an unknown name is an error that lists the known ones."""
    names = [n.strip() for n in stages.split(",") if n.strip()]
    skipped = [n.strip() for n in skip.split(",") if n.strip()]
    unknown = [n for n in names + skipped if n not in STAGES]
    if unknown:
        raise SevisflowError(f"unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}")
    chosen = [n for n in STAGES if n in names and n not in skipped]
    if not chosen:
        raise SevisflowError("no stage left to run: --stages and --skip leave nothing")
    return chosen


def failure_message(failed: list[StageThread], names: list[str]) -> str:
    """What the operator reads when a stage failed: which, why (no message that may quote data), what stopped."""
    first = failed[0]
    err = first.error
    assert err is not None
    why = safe_message(err)
    text = f"stage {first.name} failed: {type(err).__name__}" + (
        f": {why}" if why else " (traceback in the stage.failed log line)"
    )
    others = [n for n in names if n not in {t.name for t in failed}]
    if others:
        text += f"; stopped the other stages too: {', '.join(others)}"
    if first.name == "sink-sevis" and (isinstance(err, ConfigError) or getattr(type(err), "pii_free_message", False)):
        text += f"; {NO_UPLOAD_HINT}"
    return text


def run(args: argparse.Namespace) -> int:
    names = stage_names(args.stages, args.skip)
    pipeline = Pipeline(settings_from_args(args), names).start()
    signal.signal(signal.SIGTERM, lambda *_: pipeline.stop_event.set())
    try:
        while not pipeline.stop_event.is_set() and any(t.thread.is_alive() for t in pipeline.threads):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    failed = pipeline.stop()
    if failed:
        raise SevisflowError(failure_message(failed, names))
    return 0
