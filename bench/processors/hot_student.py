"""normalize with one student given thousands of enrollment rows: the largest state value and CPU per record.

``python -m bench.processors.hot_student [--rows 5000] [--repeat 3] [--compare-with REV] [--json-out FILE]``

One student (the reference SIS's ``base_rows``), then ``--rows`` SIS transactions that each add a term and
an enrollment row of that student in it, through ``NormalizeStage.handle`` (memory store, no Kafka),
committed every 300 records as the stage's loop does. Per fifth of the run: CPU microseconds per record,
the largest state value or output written (one changelog record each; the limit is 8 MiB), and the dead
letters so far. With ``--compare-with REV`` the code of git revision REV is measured in turn with the working
tree, each repeat in a fresh child process (medians of ``--repeat``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COMMIT_EVERY = 300
PARTS = 5


class _Msg:
    """The parts of a consumed Kafka message the stage reads."""

    def __init__(self, topic: str, key: bytes | None, value: bytes | None, offset: int) -> None:
        self._topic, self._key, self._value, self._offset = topic, key, value, offset

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)

    def error(self) -> None:
        return None


def measure(rows: int) -> dict[str, Any]:
    """One run in this process (the child's entry point)."""
    from sevisflow.core.state import open_committed
    from sevisflow.processors.normalize.debezium import SisFeed
    from sevisflow.processors.normalize.mapping import load_mapping
    from sevisflow.processors.normalize.stage import NormalizeStage, NormalizeStore, cache_bound
    from testkit.school import ORG, PKS, TABLES, base_rows
    from testkit.settings import make_settings

    settings = make_settings(
        school={"org_id": ORG}, state={"backend": "memory", "dir": tempfile.mkdtemp(prefix="bench-hot-student-")}
    )
    feed = SisFeed(prefix=settings.connector.topic_prefix, primary_keys=PKS)
    base = base_rows()
    feed.tx(*[("c", TABLES[n], None, r) for n, r in base.items()])
    for i in range(rows):
        term = {**base["term"], "term_id": f"T{i:06d}"}
        enrollment = {**base["enrollment"], "enrollment_id": 100_000 + i, "term_id": term["term_id"]}
        feed.tx(("c", "public.term", None, term), ("c", "public.enrollment", None, enrollment))
    store = NormalizeStore(open_committed(settings.state, "bench-hot-student"), cache_bound(settings.state))
    stage = NormalizeStage(settings, load_mapping(Path.cwd() / "deploy/sis/mapping.toml"), store)
    stage._reached = lambda marks, idle: True  # type: ignore[method-assign]  # no Kafka: the snapshot question is settled
    offsets: dict[str, int] = {}
    msgs = []
    for r in feed.records:
        offsets[r.topic] = offsets.get(r.topic, -1) + 1
        msgs.append(_Msg(r.topic, r.key, r.value, offsets[r.topic]))
    part = max(len(msgs) // PARTS, 1)
    parts: list[dict[str, float]] = []
    biggest = dead = 0
    started = time.process_time()
    for i, m in enumerate(msgs):
        outs = stage.handle(m, store)
        if i % COMMIT_EVERY == COMMIT_EVERY - 1 or i == len(msgs) - 1:
            outs += stage.before_commit(store)
            staged = store.staged()
            biggest = max([biggest, *(len(v) for kv in staged.values() for v in kv.values() if v)])
            store.commit()
            while stage.normalizer.releasing():
                stage.on_idle(store)
                store.staged()
                store.commit()
        dead += sum(1 for o in outs if o.topic == settings.topics.dlq)
        biggest = max([biggest, *(len(o.value or b"") for o in outs)])
        if (i + 1) % part == 0 and len(parts) < PARTS:
            now = time.process_time()
            parts.append(
                {
                    "after_records": i + 1,
                    "cpu_us_per_record": (now - started) / part * 1e6,
                    "largest_value_kib": biggest / 1024,
                    "dead_letters": dead,
                }
            )
            started, biggest = now, 0
    return {"rows": rows, "records": len(msgs), "parts": parts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.processors.hot_student")
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compare-with", default=None, help="git revision measured side by side with the working tree")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    # imported here, not at the top: a child process runs measure() over an older tree's bench package
    from bench.common import exported_tree, run_in_tree

    trees = {"now": REPO}
    tmp = None
    if args.compare_with:
        tmp = exported_tree(args.compare_with, REPO)
        trees = {f"before ({args.compare_with})": Path(tmp.name), **trees}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    try:
        for _ in range(args.repeat):
            for name, tree in trees.items():  # interleaved: both see the same neighbours
                runs[name].append(run_in_tree(tree, __file__, "measure", args.rows))
    finally:
        if tmp is not None:
            tmp.cleanup()
    result: dict[str, Any] = {"rows": args.rows, "repeat": args.repeat, "load_avg": os.getloadavg()}
    for name, got in runs.items():
        rows = []
        for k in range(len(got[0]["parts"])):
            at = [g["parts"][k] for g in got]
            rows.append({key: statistics.median(p[key] for p in at) for key in at[0]})
        result[name] = {"parts": rows, "runs": got}
        print(f"{name}:")
        for r in rows:
            print(
                f"  after {r['after_records']:>7,.0f} records: {r['cpu_us_per_record']:>7,.0f} µs/record, largest "
                f"value {r['largest_value_kib']:>6,.0f} KiB, {r['dead_letters']:,.0f} dead letters"
            )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
