"""In what order normalize's loop hands a backlog to the stage, with and without its reorder window.

``python -m bench.processors.fetch_order [--students 4000] [--windows 0,24] [--kafka BOOTSTRAP] [--json-out FILE]``

A generated school's history (``bench.processors``' workload) is produced to fresh topics — change topics with 3
partitions each, the transaction topic with one — and then normalize runs over it from the start, as after a
downtime, once per ``[kafka] reorder_window_mb`` in ``--windows``. Every record the stage is handed is matched to
its place in the produced history. Reported per window: how many ascending runs the handed order falls into (1 =
exactly the produce order), a record's median and 90th-percentile distance from its produce position — over all
records, and over the change topics' rows alone (without the transaction topic's BEGIN/END records) — and the CPU
of normalize's own thread.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import kafka_bootstrap
from bench.processors.__main__ import IDLE_POLLS, MAPPING, generated_school
from testkit.school import feed_on_kafka


def order_figures(handed: list[int]) -> dict[str, Any]:
    """Ascending runs and distances from the produce position of ``handed`` (produce positions, handed order; the
    positions need not be contiguous: each counts by its rank among them)."""
    rank = {p: i for i, p in enumerate(sorted(handed))}
    handed = [rank[p] for p in handed]
    runs = 1 + sum(1 for a, b in itertools.pairwise(handed) if b < a)
    distance = sorted(abs(i - p) for i, p in enumerate(handed))
    return {
        "records": len(handed),
        "ascending_runs": runs,
        "median_distance": statistics.median(distance) if distance else 0,
        "p90_distance": distance[int(0.9 * (len(distance) - 1))] if distance else 0,
    }


def handed_order(students: int, bootstrap: str, window_mb: int) -> dict[str, Any]:
    """normalize over a fresh copy of the school's history; the produce positions in the order it handled them."""
    from sevisflow.processors.normalize.stage import build_loop

    settings, feed = generated_school(students, bootstrap, window_mb)
    where = {(r.topic, r.key, r.value): i for i, r in enumerate(feed.records)}
    feed_on_kafka(settings, feed, MAPPING.tables(), partitions=3)
    loop, _ = build_loop(settings, MAPPING)
    handle = loop.handler
    handed: list[int] = []

    def spy(msg: Any, state: Any) -> Any:
        handed.append(where[(msg.topic(), msg.key(), msg.value())])
        return handle(msg, state)

    loop.handler = spy
    cpu = time.thread_time()
    loop.run(max_idle_polls=IDLE_POLLS)
    tx_topic = f"{settings.connector.topic_prefix}.transaction"
    rows = [p for p in handed if feed.records[p].topic != tx_topic]
    return (
        {"window_mb": window_mb, "normalize_thread_cpu_s": time.thread_time() - cpu}
        | order_figures(handed)
        | {f"rows_{k}": v for k, v in order_figures(rows).items()}
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.processors.fetch_order")
    ap.add_argument("--students", type=int, default=4000)
    ap.add_argument("--windows", default="0,24", help="[kafka] reorder_window_mb values, comma-separated")
    ap.add_argument("--kafka", help="bootstrap servers of a running Kafka (default: start a local one)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    results = []
    with kafka_bootstrap(args.kafka, "bench-fetch-order") as bootstrap:
        for w in (int(x) for x in args.windows.split(",")):
            got = handed_order(args.students, bootstrap, w)
            results.append(got)
            print(
                f"reorder_window_mb {w}: {got['records']} records handed in {got['ascending_runs']} ascending runs; "
                f"distance from the produce position median {got['median_distance']:,.0f}, "
                f"p90 {got['p90_distance']:,}; the change topics' rows alone: {got['rows_ascending_runs']} runs, median "
                f"distance {got['rows_median_distance']:,.0f}, p90 {got['rows_p90_distance']:,}; normalize's thread "
                f"{got['normalize_thread_cpu_s']:.2f} CPU-s"
            )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"students": args.students, "runs": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
