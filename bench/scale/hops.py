"""Where the steady-state latency goes: per record, the time spent at each hop of the pipeline.

A record in the open batch carries its SIS commit time (``at_ms``); so do the events (their lineage's
``commit_ts_ms``), the student views (``commit_ts_ms``) and the connector's transaction END markers
(``ts_ms``). Joining them by (student key, commit time) gives, for one SIS commit, when each stage
*produced* its output (the record's Kafka CreateTime, stamped by the stage's producer at ``produce()``)
and when it became *visible* downstream (when the bench's read_committed reader received it, i.e. after
the stage's transaction committed). Hence per stage:

* ``wait``: from its input being visible (connector: produced) to the stage producing its output —
  queueing behind earlier batches, the poll's batch timeout, the processing of the record;
* ``commit``: from producing the output to its transaction being visible — the rest of the batch,
  the state changelog, flush, send_offsets and commit_transaction (plus the reader's own poll delay).

All clocks are the same box's wall clock. Why per record rather than the groups' committed offsets: the
hops add up to the bench's own latency record by record, and each splits into wait and commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from confluent_kafka import TopicPartition

from bench.common import TopicFollower
from sevisflow.core.config import Settings
from sevisflow.core.kafka_io import topic_partitions, watermarks

STAGES = ("normalize", "events", "batcher")
"""The transactional stages, in pipeline order; each one's output topic is read by the bench's Tail."""


@dataclass
class HopLog:
    """The times of the steady phase's records at each topic (ms since the epoch). ``source``: SIS commit
    time -> the latest time the connector produced a record of a transaction committed then; per stage:
    (student key, SIS commit time) -> (produced, seen by the bench) of its first output for that commit."""

    since_ms: int
    source: dict[int, int] = field(default_factory=dict)
    stages: dict[str, dict[tuple[str, int], tuple[int, int]]] = field(default_factory=lambda: {s: {} for s in STAGES})
    bookkeeping_s: float = 0.0
    """CPU seconds the bench spent on these notes (decoding the views, parsing, storing): the sampler's cost."""

    def note(self, stage: str, student_key: str, commit_ms: int | None, produced_ms: int, seen_ms: int) -> None:
        if commit_ms is None or commit_ms < self.since_ms:
            return
        self.stages[stage].setdefault((student_key, commit_ms), (produced_ms, seen_ms))

    def note_source(self, commit_ms: int | None, produced_ms: int) -> None:
        if commit_ms is None or commit_ms < self.since_ms:
            return
        if produced_ms > self.source.get(commit_ms, 0):
            self.source[commit_ms] = produced_ms


def lineage_commit_ms(lineage: list[dict[str, Any]] | None) -> int | None:
    """An event's SIS commit time as the batcher takes it: the latest ``commit_ts_ms`` of its lineage."""
    return max((p.get("commit_ts_ms") or 0 for p in lineage or []), default=0) or None


def connector_commit_ms(value: bytes | None) -> int | None:
    """The SIS commit time of a connector record: a transaction END marker's ``ts_ms`` or a change's
    ``source.ts_ms`` (with or without the JsonConverter schema envelope); None for BEGIN and anything else."""
    if not value:
        return None
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if isinstance(raw, dict) and set(raw) == {"schema", "payload"}:
        raw = raw["payload"]
    if not isinstance(raw, dict):
        return None
    if raw.get("status") == "END":
        ts = raw.get("ts_ms")
    elif isinstance(raw.get("source"), dict) and "op" in raw:
        ts = raw["source"].get("ts_ms")
    else:
        return None
    return int(ts) if isinstance(ts, int) else None


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return round(ordered[min(n - 1, int(q * n))], 3)

    return {"p50_s": at(0.50), "p99_s": at(0.99), "max_s": round(ordered[-1], 3)} if n else {}


def hop_breakdown(log: HopLog) -> dict[str, Any]:
    """Per hop p50/p99/max seconds over the records seen at every hop (SIS commit → connector → each
    stage's output produced → visible): ``hops`` (per stage, its total, wait and commit), ``total``
    (commit → open batch, the same span as the bench's latency), and how many records joined."""
    rows: list[dict[str, float]] = []
    normalize, events, batcher = (log.stages[s] for s in STAGES)
    for (key, commit), (b_prod, b_seen) in list(batcher.items()):
        src = log.source.get(commit)
        st = normalize.get((key, commit))
        ev = events.get((key, commit))
        if src is None or st is None or ev is None:
            continue
        rows.append(
            {
                "connector": src - commit,
                "normalize.wait": st[0] - src,
                "normalize.commit": st[1] - st[0],
                "events.wait": ev[0] - st[1],
                "events.commit": ev[1] - ev[0],
                "batcher.wait": b_prod - ev[1],
                "batcher.commit": b_seen - b_prod,
                "normalize": st[1] - src,
                "events": ev[1] - st[1],
                "batcher": b_seen - ev[1],
                "total": b_seen - commit,
            }
        )
    names = list(rows[0]) if rows else []
    return {
        "joined_records": len(rows),
        "open_batch_records": len(batcher),
        "source_commits": len(log.source),
        "hops": {name: _summary([r[name] / 1000 for r in rows]) for name in names if name != "total"},
        "total": _summary([r["total"] / 1000 for r in rows]),
        "bookkeeping_cpu_s": round(log.bookkeeping_s, 2),
    }


@dataclass
class SourceTimes(TopicFollower):
    """Reads what the connector produces from now on (the transaction topic's END markers, or without
    transaction metadata every change topic) and notes, per SIS commit time, when the connector produced
    it. :meth:`start` returns once the reader is at the topics' current ends: the load may begin."""

    settings: Settings
    log: HopLog

    name: ClassVar[str] = "bench-scale-hops-source"

    def assignment(self, consumer: Any) -> list[TopicPartition]:
        kafka = self.settings.kafka
        assign = []
        for topic in self._topics(consumer):
            parts = topic_partitions(consumer, kafka, topic, 30.0) or []
            for p, (_, high) in watermarks(consumer, topic, parts, 30.0).items():
                assign.append(TopicPartition(topic, p, high))
        return assign

    def take(self, msg: Any) -> None:
        self.log.note_source(connector_commit_ms(msg.value()), int(msg.timestamp()[1]))

    def _topics(self, consumer: Any) -> list[str]:
        c = self.settings.connector
        tx = f"{c.topic_prefix}.transaction"
        if c.provide_transaction_metadata:
            return [tx]
        md = consumer.list_topics(timeout=30)
        return sorted(t for t in md.topics if t.startswith(c.topic_prefix + ".") and t != tx)
