"""Memory and CPU of the batcher stage with many closed batches kept (no Kafka: the stage's own handle).

``python -m bench.batcher.closed_batches [--closes 60] [--per-close 500] [--repeat 3] [--backend rocksdb|memory]
[--compare-with REV] [--json-out FILE]``

One school closes ``--closes`` batches of ``--per-close`` records (one PersonalInfo update per new student,
SEVIS IDs known; 500 records make two documents of 250), each built through ``BatcherStage.handle`` and
committed, then closed by a DSO's command and committed — the batcher keeps the content of the last 60
closed batches for SEVIS's results, requeues and resends. Then SEVIS's answer to every kept record arrives
(one result per record, 1 in 50 a rejection), committed every 200 results, and the worklist gauges (which
count open rejections over every kept batch) are timed. Figures: the child's peak RSS; its RSS and Python heap
(``tracemalloc`` is not used: it would slow the build) after the closes; CPU per close and per result; the
gauge pass. ``--compare-with REV`` measures git revision REV's code (``git archive``) in turn with the working
tree, each repeat in a fresh child, so both are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS_PER_COMMIT = 200


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(closes: int, per_close: int, backend: str = "rocksdb") -> dict[str, Any]:
    """One measurement in this process (the child's entry point)."""
    import gc

    from prometheus_client import CollectorRegistry

    from bench.batcher.big_open_batch import _Msg
    from sevisflow.core.observability import StageMetrics
    from sevisflow.core.serde import registry
    from sevisflow.core.state import open_committed
    from sevisflow.processors.batcher.stage import BatcherStage, BatcherStore
    from testkit.batcher import BASE_MS, ORG, command, event, result
    from testkit.settings import make_settings

    state_dir = tempfile.mkdtemp(prefix="bench-batcher-closed-")
    school = {"org_id": ORG, "dso_user_ids": ["DSOUSER001"]}
    settings = make_settings(None, unique="bench", school=school, state={"backend": backend, "dir": state_dir})
    stage, store = BatcherStage(settings), BatcherStore(open_committed(settings.state, "bench-batcher-closed"))
    stage.metrics = StageMetrics("batcher", CollectorRegistry())
    store.partitions.add(0)
    t = settings.topics
    offset = 0

    def handle(topic: str, schema: str, value: dict[str, Any], ts: int) -> None:
        nonlocal offset
        offset += 1
        stage.handle(_Msg(topic, registry().encode(schema, value), ORG.encode(), offset, ts), store)

    def commit() -> None:
        stage.view_outputs(store)
        store.commit()

    close_cpu = 0.0
    for c in range(closes):
        for i in range(per_close):
            n = c * per_close + i
            ev = event(f"S{n:07d}", n=n, sevis_id=f"N{n:010d}")
            handle(t.events, "sevisflow.events.SevisEvent", ev, BASE_MS)
        commit()
        cmd = command("close", f"close-{c}", dso_user_id="DSOUSER001")
        c0 = time.process_time()
        handle(t.commands, "sevisflow.commands.BatchCommand", cmd, cmd["requested_at_ms"])
        commit()
        close_cpu += time.process_time() - c0
    gc.collect()
    rss_after_closes = _rss_mib()
    school_state = store.cache.get((0, ORG))
    kept = school_state.batches if school_state is not None else {}
    answers = []
    for bid in sorted(kept):
        for j, rec in enumerate(kept[bid]["records"]):
            status = "failure" if j % 50 == 49 else "success"
            answers.append(result(bid, rec["request_id"], student=rec["student_key"], kind=rec["kind"], status=status))
    c0 = time.process_time()
    for k, res in enumerate(answers):
        handle(t.results, "sevisflow.results.SevisResult", res, BASE_MS + 7_200_000)
        if k % RESULTS_PER_COMMIT == RESULTS_PER_COMMIT - 1:
            commit()
    commit()
    result_cpu = time.process_time() - c0
    runs = []
    for _ in range(5):
        c0 = time.process_time()
        stage.update_gauges(store, force=True)
        runs.append((time.process_time() - c0) * 1000)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    store.close()
    shutil.rmtree(state_dir, ignore_errors=True)
    return {
        "closes": closes,
        "per_close": per_close,
        "kept_batches": len(kept),
        "results": len(answers),
        "backend": backend,
        "max_rss_mib": peak,
        "rss_after_closes_mib": rss_after_closes,
        "cpu_ms_per_close": close_cpu / closes * 1000,
        "cpu_us_per_result": result_cpu / max(1, len(answers)) * 1e6,
        "gauges_ms": statistics.median(runs),
    }


def main() -> None:
    from bench.common import report_side_by_side, runs_side_by_side

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--closes", type=int, default=60)
    ap.add_argument("--per-close", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", default="rocksdb", choices=("memory", "rocksdb"), help="[state] backend")
    ap.add_argument(
        "--compare-with",
        default=None,
        help="a git revision (its compiled parts built), or `interpreted` (this tree without its compiled core), measured side by side with the working tree",
    )
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    measured = [args.closes, args.per_close, args.backend]
    runs = runs_side_by_side(__file__, measured, args.repeat, args.compare_with, REPO)
    figures = ("max_rss_mib", "rss_after_closes_mib", "cpu_ms_per_close", "cpu_us_per_result", "gauges_ms")
    report_side_by_side(
        runs,
        figures,
        args,
        lambda fig: (
            f"{args.closes} closes of {args.per_close}: peak RSS {fig['max_rss_mib']:,.0f} MiB, after the closes "
            f"{fig['rss_after_closes_mib']:,.0f} MiB; CPU per close {fig['cpu_ms_per_close']:,.1f} ms, per result "
            f"{fig['cpu_us_per_result']:,.0f} µs, gauges {fig['gauges_ms']:,.1f} ms"
        ),
    )


if __name__ == "__main__":
    main()
