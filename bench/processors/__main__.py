"""Benchmark normalize + sevis_events on one core: pure functions, then through a real Kafka.

``python -m bench.processors [--students N] [--kafka BOOTSTRAP | --pure-only] [--gc default|frozen] [--warm]
[--reorder-window-mb N]``
``python -m bench.processors --pure-only --compare-with REV|interpreted [--repeat 5] [--gc …] [--json-out FILE]``
Without --kafka it starts a throwaway local Kafka (deploy/local/stack.py) and stops it after.
The input is a generated school history in Debezium format (processors/normalize/debezium.py):
per student a five-table admission commit, activation, term registration, and an end-date +
e-mail change; every change topic has 3 partitions and transaction metadata is on. Through Kafka it also reports the CPU of the stages' own thread, apart from
the client library's threads (tests/integration/test_bench_processors_small.py runs it tiny in CI).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import kafka_bootstrap, report_side_by_side, runs_side_by_side
from sevisflow.core.collector import keep_old_objects_frozen
from sevisflow.core.config import Settings
from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.normalize.mapping import load_mapping
from sevisflow.processors.sevis_events.pure import PurePipeline
from testkit.school import ORG, feed_on_kafka, school_history
from testkit.settings import REPO, KafkaHandle, make_settings

MAPPING = load_mapping(REPO / "deploy/sis/mapping.toml")
IDLE_POLLS = 30
"""Empty polls in a row that end a stage's run (subtracted from its time). normalize releases its start-up hold
in idle turns, once an admin client's ListOffsets has answered; with 15 (3 s) the small case once ended, on a
broker just started, with fewer events than the pure pipeline derives (not seen again in 8 runs; the likeliest
cause a slow first ListOffsets), so 6 s."""


def pure(n: int, gc_mode: str = "default") -> dict[str, float]:
    """The pure functions over a generated school's history, in this process. ``gc_mode`` ``frozen``: the
    collector as the running stages have it (the freezer thread, sevisflow/core/collector.py), with the
    generated input frozen first (in a stage the records wait in the Kafka client's C buffers, not in Python's
    heap); ``default``: Python's collector as it comes."""
    feed = SisFeed(primary_keys={"public.term": ("term_id",)})
    school_history(feed, n)
    stop = threading.Event()
    if gc_mode == "frozen":
        gc.freeze()
        keep_old_objects_frozen(stop)
    t0 = time.perf_counter()
    try:
        out = PurePipeline(MAPPING, org_id=ORG).feed(feed.records)
    finally:
        dt = time.perf_counter() - t0
        stop.set()
        gc.unfreeze()  # the freezer unfreezes when it stops; this is for the input frozen above
    changes = sum(1 for r in feed.records if r.value is not None and not r.topic.endswith(".transaction"))
    return {
        "records": len(feed.records),
        "row_changes": changes,
        "events": len(out.events),
        "seconds": dt,
        "row_changes_per_s": changes / dt,
        "events_per_s": len(out.events) / dt,
        "gc": gc_mode,
    }


def measure(n: int, gc_mode: str) -> dict[str, Any]:
    """One pure run on one core (the child's entry point of ``--compare-with``)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    return pure(n, gc_mode)


def generated_school(n: int, bootstrap: str, reorder_window_mb: int | None = None) -> tuple[Settings, SisFeed]:
    """Settings with fresh topic names on ``bootstrap`` (normalize's ``[kafka] reorder_window_mb`` if given) and the
    history of an ``n``-student school for those topics (not produced yet)."""
    settings = make_settings(KafkaHandle(bootstrap), unique=uuid.uuid4().hex[:8], school={"org_id": ORG})
    if reorder_window_mb is not None:
        kafka = dataclasses.replace(settings.kafka, reorder_window_mb=reorder_window_mb)
        settings = dataclasses.replace(settings, kafka=kafka)
    feed = SisFeed(prefix=settings.connector.topic_prefix, primary_keys={"public.term": ("term_id",)})
    school_history(feed, n)
    return settings, feed


def through_kafka(n: int, bootstrap: str, warm: bool = False, reorder_window_mb: int | None = None) -> dict[str, float]:
    """Both stages in turn over a generated school's history on fresh topics, every record produced before
    they start. Cold (the default): normalize's first records ever, so all of them go through its start-up
    hold and are applied as it releases (docs/MAPPING.md, "The initial snapshot"). ``warm``: the school's
    first transaction is produced and both stages run through it first, unmeasured, so the measured records
    take the streaming path a running school's changes take. ``reorder_window_mb``: normalize's ``[kafka]
    reorder_window_mb`` (None: the default)."""
    from sevisflow.processors.normalize.stage import build_loop as build_normalize
    from sevisflow.processors.sevis_events.stage import build_loop as build_events

    settings, feed = generated_school(n, bootstrap, reorder_window_mb)
    tx_topic = f"{settings.connector.topic_prefix}.transaction"
    first = 0
    if warm:  # the first transaction: its BEGIN, rows and END
        first = [i for i, r in enumerate(feed.records) if r.topic == tx_topic][1] + 1
        feed_on_kafka(settings, feed, MAPPING.tables(), partitions=3, records=slice(None, first))
        for build in (
            lambda: build_normalize(settings, MAPPING)[0],
            lambda: build_events(settings, instance="bench")[0],
        ):
            build().run(max_idle_polls=IDLE_POLLS)
    feed_on_kafka(settings, feed, MAPPING.tables(), partitions=3, records=slice(first, None))
    measured = feed.records[first:]
    changes = sum(1 for r in measured if r.value is not None and r.topic != tx_topic)
    res: dict[str, float] = {"records": len(measured), "row_changes": changes, "warm": warm}
    loop, _ = build_normalize(settings, MAPPING)
    t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
    loop.run(max_idle_polls=IDLE_POLLS)
    res["normalize_s"] = time.perf_counter() - t0 - IDLE_POLLS * loop.batch_timeout_s
    res["normalize_cpu_s"] = time.process_time() - c0
    res["normalize_main_thread_cpu_s"] = time.thread_time() - m0
    views = loop.processed
    loop2, _ = build_events(settings, instance="bench")
    t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
    loop2.run(max_idle_polls=IDLE_POLLS)
    res["events_stage_s"] = time.perf_counter() - t0 - IDLE_POLLS * loop2.batch_timeout_s
    res["events_cpu_s"] = time.process_time() - c0
    res["events_main_thread_cpu_s"] = time.thread_time() - m0
    from sevisflow.core.kafka_io import read_topic

    n_events = sum(1 for _ in read_topic(settings.kafka, settings.topics.events))
    res.update(
        {
            "normalize_inputs": views,
            "student_versions": loop2.processed,
            "events": n_events,
            "row_changes_per_s": changes / (res["normalize_s"] + res["events_stage_s"]),
            "events_per_s": n_events / (res["normalize_s"] + res["events_stage_s"]),
        }
    )
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.processors")
    ap.add_argument("--students", type=int, default=2000)
    ap.add_argument("--kafka", help="bootstrap servers of a running Kafka (default: start a local one)")
    ap.add_argument("--pure-only", action="store_true")
    ap.add_argument(
        "--gc",
        choices=("default", "frozen"),
        default="default",
        help="Python's collector as it comes, or frozen as the running stages keep it (pure functions: the "
        "input frozen too)",
    )
    ap.add_argument(
        "--compare-with",
        help="pure functions only: a git revision, or `interpreted` (this tree without its compiled core), "
        "measured in turn with this tree in fresh processes",
    )
    ap.add_argument("--repeat", type=int, default=5, help="with --compare-with: runs per version")
    ap.add_argument(
        "--warm",
        action="store_true",
        help="through Kafka: the stages run through the school's first transaction before the measured records, "
        "which then take the streaming path (default: all of them go through normalize's start-up hold)",
    )
    ap.add_argument(
        "--reorder-window-mb",
        type=int,
        default=None,
        help="through Kafka: normalize's [kafka] reorder_window_mb (default: the setting's default; 0 = records in "
        "the order fetched)",
    )
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    if args.compare_with:
        runs = runs_side_by_side(__file__, [args.students, args.gc], args.repeat, args.compare_with, REPO)
        report_side_by_side(
            runs,
            ["row_changes_per_s"],
            args,
            lambda m: f"{m['row_changes_per_s']:,.0f} row changes/s (pure functions, gc {args.gc})",
        )
        return 0
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    p = pure(args.students, args.gc)
    print(
        f"pure functions, {args.students} students: {p['row_changes']} row changes → {p['events']} events "
        f"in {p['seconds']:.2f}s = {p['row_changes_per_s']:,.0f} row changes/s, {p['events_per_s']:,.0f} events/s"
    )
    if args.pure_only:
        return 0
    from bench.processors.kafka_side_by_side import collector

    with kafka_bootstrap(args.kafka, "bench-processors") as bootstrap, collector(args.gc):
        k = through_kafka(args.students, bootstrap, args.warm, args.reorder_window_mb)
    print(
        f"through Kafka ({'warm' if args.warm else 'cold'}; exactly-once, both stages, one core): "
        f"{k['row_changes']} row changes → {k['events']} "
        f"events; normalize {k['normalize_s']:.1f}s + sevis_events {k['events_stage_s']:.1f}s = "
        f"{k['row_changes_per_s']:,.0f} row changes/s, {k['events_per_s']:,.0f} events/s "
        f"(CPU time of this process {k['normalize_cpu_s'] + k['events_cpu_s']:.1f}s, incl. client threads; "
        f"of it the stages' own thread: normalize {k['normalize_main_thread_cpu_s']:.1f}s, "
        f"sevis_events {k['events_main_thread_cpu_s']:.1f}s)"
    )
    if args.json_out:
        got = {
            "students": args.students,
            "gc": args.gc,
            "reorder_window_mb": args.reorder_window_mb,
            "pure": p,
            "kafka": k,
        }
        Path(args.json_out).write_text(json.dumps(got, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
