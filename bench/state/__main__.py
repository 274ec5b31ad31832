"""Memory store vs RocksDB store, side by side: normalize + sevis_events through a real Kafka.

``python -m bench.state [--students N] [--repeat R] [--kafka BOOTSTRAP] [--json]``

Per repeat, the parent produces a fresh school history (bench.processors' workload: generated
Debezium changes, 3 partitions per change topic, transaction metadata on) to topics of its own,
then runs each stage in a child process per variant (:data:`VARIANTS`: the memory store; RocksDB with
normalize's decoded-value cache unbounded, as before ``[state] cache_entries``; RocksDB with the
cache bounded, the default) — normalize, then sevis_events, each pinned to one core — so each
child's peak RSS (VmHWM) is that stage's alone. Each variant goes first in turn. Prints the medians;
the raw runs go to bench/results/state.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import kafka_bootstrap
from testkit.school import ORG, feed_on_kafka, school_history
from testkit.settings import REPO, KafkaHandle, make_settings

STATE = {"block_cache_mb": 64, "write_buffer_mb": 16, "cache_entries": 10000}  # the [state] defaults
VARIANTS = {  # the store, and normalize's decoded-value cache
    "memory": {"backend": "memory"},  # dicts (the cache is not bounded)
    "rocksdb-unbounded": {"backend": "rocksdb", "cache_entries": 0},  # RocksDB, the cache as before
    "rocksdb": {"backend": "rocksdb"},  # RocksDB, the cache bounded
}
BACKENDS = tuple(VARIANTS)


def _settings(bootstrap: str, unique: str, backend: str, state_dir: str):
    return make_settings(
        KafkaHandle(bootstrap),
        unique=unique,
        school={"org_id": ORG},
        state={**STATE, **VARIANTS[backend], "dir": state_dir},
    )


def produce_workload(bootstrap: str, students: int) -> tuple[str, int]:
    """A fresh school history on topics of its own; returns (unique suffix, SIS row changes)."""
    from sevisflow.processors.normalize.debezium import SisFeed
    from sevisflow.processors.normalize.mapping import load_mapping

    mapping = load_mapping(REPO / "deploy/sis/mapping.toml")
    unique = uuid.uuid4().hex[:8]
    settings = _settings(bootstrap, unique, "memory", "unused")
    feed = SisFeed(prefix=settings.connector.topic_prefix, primary_keys={"public.term": ("term_id",)})
    school_history(feed, students)
    feed_on_kafka(settings, feed, mapping.tables(), partitions=3)
    changes = sum(1 for r in feed.records if r.value is not None and not r.topic.endswith(".transaction"))
    return unique, changes


def child(stage: str, backend: str, bootstrap: str, unique: str, state_dir: str) -> dict:
    """Run one stage over everything on its input (until 15 empty polls); report time, CPU and peak RSS."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as bench.processors
    from sevisflow.core.log import configure

    configure()  # the stage's JSON log on stderr (kept by the parent only when a child fails)
    settings = _settings(bootstrap, unique, backend, state_dir)
    if stage == "normalize":
        from sevisflow.processors.normalize.stage import build_loop

        loop, _ = build_loop(settings)
    else:
        from sevisflow.processors.sevis_events.stage import build_loop as build_events

        loop, _ = build_events(settings, instance="bench")
    rss_start = _peak_rss_mib()
    disk = {"bytes": 0}
    committed = loop.state.committed
    if hasattr(committed, "path"):  # measure the RocksDB folder just before the loop closes (removes) it
        close = committed.close

        def measured_close() -> None:
            disk["bytes"] = sum(f.stat().st_size for f in Path(committed.path).rglob("*") if f.is_file())
            close()

        committed.close = measured_close
    t0, c0 = time.perf_counter(), time.process_time()
    loop.run(max_idle_polls=15)
    wall = time.perf_counter() - t0 - 15 * loop.batch_timeout_s
    return {
        "stage": stage,
        "backend": backend,
        "seconds": wall,
        "cpu_s": time.process_time() - c0,
        "inputs": loop.processed,
        "peak_rss_mib": _peak_rss_mib(),
        "rss_before_loop_mib": rss_start,
        "state_disk_mib": disk["bytes"] / 2**20,
    }


def _peak_rss_mib() -> float:
    """This process image's peak RSS (VmHWM). Not ``ru_maxrss``: Linux keeps that across fork + exec, so a
    child would report the parent's size (the parent holds the generated workload)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(stage: str, backend: str, bootstrap: str, unique: str, state_dir: str) -> dict:
    log = Path(f"{state_dir}-{stage}.log")  # the child's JSON log, readable while it runs
    with log.open("w") as err:
        out = subprocess.run(
            [sys.executable, "-m", "bench.state", "--child", stage, backend, bootstrap, unique, state_dir],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=1800,
        )
    if out.returncode != 0:
        raise SystemExit(f"bench.state child {stage}/{backend} failed:\n{log.read_text()[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(child(*argv[1:6])))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.state")
    ap.add_argument("--students", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kafka", help="bootstrap servers of a running Kafka (default: start a local one)")
    ap.add_argument("--json", action="store_true", help="print the raw runs as JSON too")
    args = ap.parse_args(argv)
    runs: list[dict] = []
    with kafka_bootstrap(args.kafka, "bench-state") as bootstrap, tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            order = BACKENDS[i % len(BACKENDS) :] + BACKENDS[: i % len(BACKENDS)]  # each goes first in turn
            workloads = {b: produce_workload(bootstrap, args.students) for b in order}
            for backend in order:
                unique, changes = workloads[backend]
                n = run_child("normalize", backend, bootstrap, unique, os.path.join(tmp, backend))
                e = run_child("sevis_events", backend, bootstrap, unique, os.path.join(tmp, backend))
                run = {
                    "repeat": i,
                    "backend": backend,
                    "row_changes": changes,
                    "normalize": n,
                    "events": e,
                    "row_changes_per_s": changes / (n["seconds"] + e["seconds"]),
                    "row_changes_per_cpu_s": changes / (n["cpu_s"] + e["cpu_s"]),
                }
                runs.append(run)
                print(
                    f"repeat {i} {backend:17s}: {run['row_changes_per_s']:,.0f} row changes/s "
                    f"(normalize {n['seconds']:.1f}s, events {e['seconds']:.1f}s); peak RSS normalize "
                    f"{n['peak_rss_mib']:.0f} MiB, events {e['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
    results = Path(REPO / "bench/results/state.json")
    results.write_text(
        json.dumps({"students": args.students, "repeat": args.repeat, "state": STATE, "runs": runs}, indent=1)
    )
    print(f"\n{args.students} students, {runs[0]['row_changes']:,} row changes, medians of {args.repeat}:")
    print(
        "| store | row changes/s (wall) | row changes per CPU-s | normalize s | events s "
        "| peak RSS normalize | peak RSS events | RocksDB on disk (normalize / events) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for backend in BACKENDS:
        mine = [r for r in runs if r["backend"] == backend]

        def med(f, mine: list = mine) -> float:
            return statistics.median(f(r) for r in mine)

        disk = (
            f"{med(lambda r: r['normalize']['state_disk_mib']):.1f} / {med(lambda r: r['events']['state_disk_mib']):.1f} MiB"
            if backend.startswith("rocksdb")
            else "–"
        )
        print(
            f"| {backend} | {med(lambda r: r['row_changes_per_s']):,.0f} | {med(lambda r: r['row_changes_per_cpu_s']):,.0f} "
            f"| {med(lambda r: r['normalize']['seconds']):.1f} | {med(lambda r: r['events']['seconds']):.1f} "
            f"| {med(lambda r: r['normalize']['peak_rss_mib']):.0f} MiB | {med(lambda r: r['events']['peak_rss_mib']):.0f} MiB "
            f"| {disk} |"
        )
    if args.json:
        print(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
