"""normalize in the steady state of a loaded school: CPU and state traffic per SIS change (no Kafka).

``python -m bench.processors.steady [--students 10000] [--changes 10000] [--repeat 3] [--compare-with REV]
[--json-out FILE]``

A school of ``--students`` (``testkit.school.school_history``: admission, activation, registration and an
e-mail change per student, ~20 records each) goes through ``NormalizeStage.handle`` into a RocksDB store
(``[state]`` defaults: the decoded cache holds 10,000 values, far fewer than the school's keys, as at
100,000 students), committed every 2,000 records. Then ``--changes`` one-row SIS transactions — an e-mail
change of a random student, with its BEGIN and END — committed every 1,000 records, as the scale bench's
steady state mostly is. Per change: CPU microseconds, state reads that reached RocksDB, state values read
(decoded cache hits included) and state writes (changelog records). With ``--compare-with REV`` the code of
git revision REV is measured in turn with the working tree, each repeat in a fresh child process.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LOAD_COMMIT_EVERY = 2000
STEADY_COMMIT_EVERY = 1000


def measure(students: int, changes: int, seed: int = 7) -> dict[str, Any]:
    """One run in this process (the child's entry point)."""
    from bench.batcher.big_open_batch import _Msg
    from sevisflow.core.state import open_committed
    from sevisflow.processors.normalize.debezium import SisFeed
    from sevisflow.processors.normalize.mapping import load_mapping
    from sevisflow.processors.normalize.stage import NormalizeStage, NormalizeStore, cache_bound
    from testkit.school import ORG, PKS, base_rows, school_history
    from testkit.settings import make_settings

    state_dir = tempfile.mkdtemp(prefix="bench-normalize-steady-")
    settings = make_settings(school={"org_id": ORG}, state={"backend": "rocksdb", "dir": state_dir})
    feed = SisFeed(prefix=settings.connector.topic_prefix, primary_keys=PKS)
    school_history(feed, students)
    loaded = len(feed.records)
    rng = random.Random(seed)
    for j in range(changes):
        pid = 100 + rng.randrange(students)  # school_history's person ids
        person = {**base_rows(sevis_id=None, status="ADMITTED")["person"], "person_id": pid}
        person.update(school_id=f"S{pid:08d}", email=f"s{pid}@example.org")
        feed.tx(("u", "public.person", person, {**person, "email": f"s{pid}.{j}@example.org"}))
    store = NormalizeStore(open_committed(settings.state, "bench-normalize-steady"), cache_bound(settings.state))
    stage = NormalizeStage(settings, load_mapping(REPO / "deploy/sis/mapping.toml"), store)
    stage._reached = lambda marks, idle: True  # type: ignore[method-assign]  # no Kafka: the snapshot question is settled
    offsets: dict[str, int] = {}
    msgs = []  # as bench.processors.hot_student builds them: a helper new in bench/ would be missing from an older tree
    for r in feed.records:
        offsets[r.topic] = offsets.get(r.topic, -1) + 1
        msgs.append(_Msg(r.topic, r.value, r.key, offsets[r.topic], 0))
    counts = {"rocksdb_reads": 0, "state_writes": 0, "state_reads": 0}
    committed_get = store.get

    def counted_get(partition: int, key: bytes) -> bytes | None:
        counts["rocksdb_reads"] += 1
        return committed_get(partition, key)

    store.get = counted_get  # type: ignore[method-assign]
    kv_get = store.kv.get

    def counted_kv_get(key: str) -> Any:
        counts["state_reads"] += 1
        return kv_get(key)

    def run(batch: list[Any], commit_every: int) -> None:
        for i, m in enumerate(batch):
            stage.handle(m, store)
            if i % commit_every == commit_every - 1 or i == len(batch) - 1:
                stage.before_commit(store)
                counts["state_writes"] += sum(len(kv) for kv in store.staged().values())
                store.commit()
                while stage.normalizer.releasing():
                    stage.on_idle(store)
                    store.staged()
                    store.commit()

    run(msgs[:loaded], LOAD_COMMIT_EVERY)
    counts.update(dict.fromkeys(counts, 0))
    store.kv.get = counted_kv_get  # type: ignore[method-assign]
    c0 = time.process_time()
    run(msgs[loaded:], STEADY_COMMIT_EVERY)
    cpu = time.process_time() - c0
    store.close()
    shutil.rmtree(state_dir, ignore_errors=True)
    return {
        "students": students,
        "changes": changes,
        "cpu_us_per_change": cpu / changes * 1e6,
        **{f"{k}_per_change": v / changes for k, v in counts.items()},
    }


def main() -> None:
    from bench.common import report_side_by_side, runs_side_by_side

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=10000)
    ap.add_argument("--changes", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--compare-with",
        default=None,
        help="a git revision (its compiled parts built), or `interpreted` (this tree without its compiled core), measured side by side with the working tree",
    )
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    runs = runs_side_by_side(__file__, [args.students, args.changes], args.repeat, args.compare_with, REPO)
    figures = ("cpu_us_per_change", "rocksdb_reads_per_change", "state_reads_per_change", "state_writes_per_change")
    report_side_by_side(
        runs,
        figures,
        args,
        lambda fig: (
            f"{fig['cpu_us_per_change']:,.0f} µs CPU per change; per change {fig['rocksdb_reads_per_change']:.2f} "
            f"RocksDB reads, {fig['state_reads_per_change']:.1f} state reads, "
            f"{fig['state_writes_per_change']:.2f} state writes"
        ),
    )


if __name__ == "__main__":
    main()
