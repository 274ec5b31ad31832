"""CPU per event of the batcher stage as its open batch grows (no Kafka: the stage's own handle and view).

``python -m bench.batcher.big_open_batch [--sizes 1000,5000,20000] [--events 2000] [--repeat 3]
[--passes 5] [--backend memory|rocksdb] [--gc frozen|default|both] [--compare-with REV] [--json-out FILE]``

For each size N: an open batch of N records (one PersonalInfo update per student, SEVIS IDs known) is
built through ``BatcherStage.handle``; then ``--events`` more events are timed — 3 in 4 replace a
student's open record, 1 in 4 adds a new student — committed every 200 events with the open-batch view
published at each commit, as the stage's transactional loop does. The figure is CPU microseconds per
timed event (and the child's peak RSS, the build included). Then the stage's periodic passes over the
whole open batch are timed (``--passes`` times each, median): the worklist gauges (every 5 s in a running
stage) and the scheduler tick with ``close_early_when_due`` (every 2 s). The state is in RocksDB, as in a
running stage (``--backend``, for the per-event figure too; the tables in bench/README.md made before
2026-12-05 used the memory store). ``--gc``: with ``frozen`` (the default) the child runs
:func:`sevisflow.core.collector.keep_old_objects_frozen`, as a running stage does, with ``default`` Python's
collector as it comes; ``both`` measures the two in turn. The full collector passes during the timed events
are counted (``gc_full_passes``, ``gc_full_ms``). ``--compare-with REV`` runs the same
measurement on the code of git revision REV (exported to a temporary folder with ``git archive``) in turn
with the working tree, each repeat in a fresh child process, so both are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COMMIT_EVERY = 200


class _Msg:
    """The parts of a consumed Kafka message the stage reads."""

    def __init__(self, topic: str, value: bytes, key: bytes, offset: int, ts: int) -> None:
        self._topic, self._value, self._key, self._offset, self._ts = topic, value, key, offset, ts

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return self._key

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)

    def error(self) -> None:
        return None


def measure(
    size: int, events: int, passes: int = 0, backend: str = "rocksdb", gc_mode: str = "frozen"
) -> dict[str, Any]:
    """One measurement in this process (the child's entry point). A tree older than the freezer is
    measured with the collector as it comes, and says so (``gc``)."""
    import gc
    import threading

    from prometheus_client import CollectorRegistry

    from sevisflow.core.observability import StageMetrics
    from sevisflow.core.serde import registry
    from sevisflow.core.state import open_committed
    from sevisflow.processors.batcher.stage import BatcherStage, BatcherStore
    from testkit.batcher import BASE_MS, ORG, event
    from testkit.settings import make_settings

    stop_freezing = threading.Event()
    if gc_mode == "frozen":
        try:
            from sevisflow.core.collector import keep_old_objects_frozen
        except ImportError:
            gc_mode = "default (no freezer in this tree)"
        else:
            keep_old_objects_frozen(stop_freezing)
    full_passes: list[float] = []
    began: list[float] = []

    def note_full_pass(phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            began.append(time.perf_counter())
        elif began:
            full_passes.append((time.perf_counter() - began.pop()) * 1000)

    state_dir = tempfile.mkdtemp(prefix="bench-batcher-state-")
    # a daily close at 23:59 that has not run yet: every timed tick checks the early close and closes nothing
    school = {"org_id": ORG, "dso_user_ids": ["DSOUSER001"], "close_at": "23:59", "close_dso": "DSOUSER001"}
    school["close_early_when_due"] = True
    settings = make_settings(None, unique="bench", school=school, state={"backend": backend, "dir": state_dir})
    stage, store = BatcherStage(settings), BatcherStore(open_committed(settings.state, "bench-batcher"))
    store.partitions.add(0)
    topic = settings.topics.events
    offset = 0

    def feed(student: str, n: int) -> None:
        nonlocal offset
        offset += 1
        ev = event(student, n=n, sevis_id=f"N{int(student[1:]):010d}")
        stage.handle(
            _Msg(topic, registry().encode("sevisflow.events.SevisEvent", ev), ORG.encode(), offset, BASE_MS), store
        )

    def commit() -> None:
        stage.view_outputs(store)
        store.commit()

    for i in range(size):
        feed(f"S{i:07d}", i)
        if i % 500 == 499:
            commit()
    commit()
    gc.callbacks.append(note_full_pass)
    c0, t0 = time.process_time(), time.perf_counter()
    for j in range(events):
        student = f"S{(j * 7919) % size:07d}" if j % 4 else f"S{size + j:07d}"
        feed(student, size + j)
        if j % COMMIT_EVERY == COMMIT_EVERY - 1:
            commit()
    commit()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    gc.callbacks.remove(note_full_pass)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    stage.metrics = StageMetrics("batcher", CollectorRegistry())

    def gauges() -> None:
        stage.update_gauges(store, force=True)

    def tick() -> None:
        stage._last_tick = 0.0  # due now: the scheduler's pass, as every TICK_EVERY_S in a running stage
        stage._tick(store)
        store.commit()  # as the loop's transaction would (before close_at a tick changes no state)

    timed: dict[str, float] = {}
    for name, fn in (("gauges", gauges), ("tick", tick)):
        fn()  # the first pass after the build works everything out in both versions: not counted
        runs = []
        for _ in range(passes):
            c = time.process_time()
            fn()
            runs.append((time.process_time() - c) * 1000)
        timed[f"{name}_ms"] = statistics.median(runs) if runs else 0.0
    store.close()
    shutil.rmtree(state_dir, ignore_errors=True)
    stop_freezing.set()
    return {
        "size": size,
        "events": events,
        "cpu_us_per_event": cpu / events * 1e6,
        "wall_s": wall,
        "max_rss_mib": rss_mib,
        "backend": backend,
        "gc": gc_mode,
        "gc_full_passes": len(full_passes),
        "gc_full_ms": sum(full_passes),
        **timed,
    }


def _child(tree: Path, size: int, events: int, passes: int, backend: str, gc_mode: str) -> dict[str, Any]:
    # imported here, not at the top: a child process runs measure() over an older tree's bench package
    from bench.common import run_in_tree

    return run_in_tree(tree, __file__, "measure", size, events, passes, backend, gc_mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,5000,20000")
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--passes", type=int, default=5, help="timed gauge and tick passes per child (median)")
    ap.add_argument("--backend", default="rocksdb", choices=("memory", "rocksdb"), help="[state] backend")
    ap.add_argument(
        "--gc",
        default="frozen",
        choices=("frozen", "default", "both"),
        help="frozen: the stage's freezer runs (core/collector.py); default: Python's collector as it comes",
    )
    ap.add_argument("--compare-with", default=None, help="git revision measured side by side with the working tree")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    modes = ["default", "frozen"] if args.gc == "both" else [args.gc]
    # version name → (source tree, collector mode)
    trees: dict[str, tuple[Path, str]] = {("now" if len(modes) == 1 else f"gc {mode}"): (REPO, mode) for mode in modes}
    tmp = None
    if args.compare_with:
        from bench.common import exported_tree

        tmp = exported_tree(args.compare_with, REPO)
        trees = {f"before ({args.compare_with})": (Path(tmp.name), modes[0]), **trees}
    rows: list[dict[str, Any]] = []
    for size in [int(s) for s in args.sizes.split(",")]:
        samples: dict[str, list[float]] = {name: [] for name in trees}
        rss: dict[str, list[float]] = {name: [] for name in trees}
        passes: dict[str, dict[str, list[float]]] = {
            name: {"gauges_ms": [], "tick_ms": [], "gc_full_passes": [], "gc_full_ms": []} for name in trees
        }
        collector: dict[str, str] = {}
        for _ in range(args.repeat):
            for name, (tree, mode) in trees.items():  # interleaved: both see the same neighbours
                got = _child(tree, size, args.events, args.passes, args.backend, mode)
                collector[name] = got.get("gc", "default (no freezer in this tree)")
                samples[name].append(got["cpu_us_per_event"])
                rss[name].append(got["max_rss_mib"])
                for key, values in passes[name].items():
                    values.append(got[key])
        row: dict[str, Any] = {"size": size, "events": args.events, "repeat": args.repeat, "backend": args.backend}
        for name, values in samples.items():
            row[name] = {
                "median_us": statistics.median(values),
                "samples": values,
                "max_rss_mib": max(rss[name]),
                "gc": collector[name],
                **{f"{k}_median": statistics.median(v) for k, v in passes[name].items()},
                **{f"{k}_samples": v for k, v in passes[name].items()},
            }
        rows.append(row)
        print(
            f"open batch {size:>6}: "
            + "; ".join(
                f"{name} {statistics.median(v):,.0f} µs/event, gauges "
                f"{statistics.median(passes[name]['gauges_ms']):,.1f} ms, tick {statistics.median(passes[name]['tick_ms']):,.1f} ms"
                f", {statistics.median(passes[name]['gc_full_passes']):.0f} full collector passes"
                f" ({statistics.median(passes[name]['gc_full_ms']):,.0f} ms) (peak RSS {max(rss[name]):,.0f} MiB)"
                for name, v in samples.items()
            ),
            flush=True,
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": rows, "load_avg": os.getloadavg()}, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
