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

import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COMMIT_EVERY = 300
PARTS = 5


def measure(rows: int) -> dict[str, Any]:
    """One run in this process (the child's entry point)."""
    from bench.batcher.big_open_batch import _Msg
    from sevisflow.core.state import open_committed
    from sevisflow.processors.normalize.debezium import SisFeed
    from sevisflow.processors.normalize.mapping import load_mapping
    from sevisflow.processors.normalize.stage import NormalizeStage, NormalizeStore, cache_bound
    from testkit.school import ORG, PKS, TABLES, base_rows
    from testkit.settings import make_settings

    settings = make_settings(
        school={"org_id": ORG},
        state={"backend": "memory"},  # no folder: the memory store writes none
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
        msgs.append(_Msg(r.topic, r.value, r.key, offsets[r.topic], 0))
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
    # imported here, not at the top: a child process runs measure() over an older tree's bench package
    from bench.common import side_by_side_main

    return side_by_side_main(argv, "python -m bench.processors.hot_student", __file__, "rows", 5000, _line, REPO)


def _line(part: dict[str, Any]) -> str:
    return (
        f"after {part['after_records']:>7,.0f} records: {part['cpu_us_per_record']:>7,.0f} µs/record, largest "
        f"value {part['largest_value_kib']:>6,.0f} KiB, {part['dead_letters']:,.0f} dead letters"
    )


if __name__ == "__main__":
    raise SystemExit(main())
