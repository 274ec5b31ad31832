"""normalize + sevis_events through one Kafka, the working tree side by side with another git revision.

``python -m bench.processors.kafka_side_by_side --compare-with REV [--students 2000] [--repeat 4]
[--gc frozen|default] [--kafka BOOTSTRAP] [--json-out FILE]``

One broker for every run (a throwaway local Kafka unless ``--kafka``), then ``bench.processors``' through-Kafka
measurement of a ``--students`` school over the working tree and over REV's code (``git archive``) in turn, each
run in a fresh process, the order alternating from repeat to repeat. Pinned to one core, broker included, as
``python -m bench.processors`` is. ``--compare-with HEAD`` on a clean working tree measures one version twice:
what two identical trees differ by here is the smallest change this bench can show. Figures per run: row changes/s
through both stages, and the CPU of each stage's own thread (apart from the client library's threads). The
collector runs as in ``sevisflow run`` (``--gc frozen``, since 2026-12-06; before, as Python has it).
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FIGURES = ("row_changes_per_s", "normalize_main_thread_cpu_s", "events_main_thread_cpu_s", "normalize_s")


@contextmanager
def collector(gc_mode: str) -> Iterator[None]:
    """``frozen``: the collector's freezer thread running, as ``sevisflow run`` runs the stages
    (sevisflow/core/collector.py); ``default``: Python's collector as it comes. Here, not in
    ``bench.processors``, because an older revision's copy of that module is what a child imports."""
    from sevisflow.core.collector import keep_old_objects_frozen

    stop = threading.Event()
    if gc_mode == "frozen":
        keep_old_objects_frozen(stop)
    try:
        yield
    finally:
        stop.set()


def measure(students: int, bootstrap: str, gc_mode: str = "frozen") -> dict[str, Any]:
    """One through-Kafka run in this process (the child's entry point), on fresh topics of the shared broker."""
    from bench.processors.__main__ import through_kafka

    with collector(gc_mode):
        got = through_kafka(students, bootstrap)
    return {f: got[f] for f in ("row_changes", "events", *FIGURES)} | {"gc": gc_mode}


def main() -> None:
    from bench.common import kafka_bootstrap, report_side_by_side, runs_side_by_side

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--compare-with",
        required=True,
        help="a git revision (its compiled parts built), or `interpreted` (this tree without its compiled core), measured side by side with the working tree",
    )
    ap.add_argument("--students", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--kafka", default=None, help="bootstrap servers of a running Kafka (default: start a local one)")
    ap.add_argument(
        "--gc",
        choices=("default", "frozen"),
        default="frozen",
        help="the collector frozen as the running stages keep it (default), or as Python has it",
    )
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, for the broker too
    with kafka_bootstrap(args.kafka, "bench-processors-side-by-side") as bootstrap:
        runs = runs_side_by_side(__file__, [args.students, bootstrap, args.gc], args.repeat, args.compare_with, REPO)
    report_side_by_side(
        runs,
        FIGURES,
        args,
        lambda fig: (
            f"{fig['row_changes_per_s']:,.0f} row changes/s through Kafka; own thread CPU normalize "
            f"{fig['normalize_main_thread_cpu_s']:.2f} s, sevis_events {fig['events_main_thread_cpu_s']:.2f} s"
        ),
    )


if __name__ == "__main__":
    main()
