"""``sevisflow process normalize|events|batcher``: run one processor stage in the foreground until SIGTERM/Ctrl-C.

Each stage is exactly-once (Kafka transactions) and resumes where it stopped; run one normalize
(it is the sequencer; a second instance takes over from the first) and any number of events
instances (one per partition of ``sevisflow.students`` at most), and any number of batcher
instances (schools are spread over the partitions of ``sevis.events``).
"""

from __future__ import annotations

import argparse

from sevisflow.app.cli.common import run_stage, settings_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "process",
        help="run a stream processor (normalize | events | batcher)",
        description="Run a processor stage in the foreground; stop it with Ctrl-C or SIGTERM.",
    )
    p.add_argument(
        "stage",
        choices=("normalize", "events", "batcher"),
        help="normalize: change topics → sevisflow.students; events: sevisflow.students → sevis.events; "
        "batcher: sevis.events + commands + results → sevis.batches",
    )
    p.add_argument(
        "--instance", default=None, help="events/batcher: stable instance id (default $SEVISFLOW_INSTANCE or host)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.stage == "normalize":
        from sevisflow.processors.normalize import run as run_normalize

        return run_stage(settings, run_normalize, name="normalize")
    if args.stage == "events":
        from sevisflow.processors.sevis_events import run as run_events

        return run_stage(settings, run_events, args.instance, name="events")
    from sevisflow.processors.batcher.stage import run as run_batcher

    return run_stage(settings, run_batcher, args.instance, name="batcher")
