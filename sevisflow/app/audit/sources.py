"""The thin reader behind ``sevisflow audit`` and ``verify``: Kafka topics and the outbox → decoded inputs.

Read-only: topics through :func:`sevisflow.app.audit.replay.read_all` and
:func:`sevisflow.core.kafka_io.read_topic` (manual assignment, no commits), the outbox through
:class:`sevisflow.sinks.outbox.Outbox` lookups (no moves, no writes).
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from confluent_kafka import KafkaException

from sevisflow.app.audit.decode import Decoded, RawRecord, raw_message
from sevisflow.app.audit.replay import Bound, is_change_topic, plan_replay, read_all, read_plan
from sevisflow.app.audit.timeline import StudentRecords, student_records
from sevisflow.core.config import Settings
from sevisflow.core.errors import UnreachableError
from sevisflow.core.kafka_io import make_consumer, read_topic
from sevisflow.core.ledger import Ledger


@dataclass
class AuditInputs:
    changes: list[Decoded] = field(default_factory=list)
    transactions: list[Decoded] = field(default_factory=list)
    """``<prefix>.transaction`` (BEGIN/END markers): normalize orders transactions by them"""
    events: list[Decoded] = field(default_factory=list)
    batches: list[Decoded] = field(default_factory=list)
    results: list[Decoded] = field(default_factory=list)
    commands: list[Decoded] = field(default_factory=list)


def list_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    consumer = make_consumer(settings.kafka, group_id=f"sevisflow-audit-{uuid.uuid4().hex[:12]}")
    try:
        md = consumer.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise UnreachableError(f"Kafka at {settings.kafka.bootstrap_servers} is not reachable: {exc}") from exc
    finally:
        consumer.close()
    return sorted(md.topics)


def change_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """The connector's change topics ``<prefix>.<schema>.<table>`` that exist now."""
    prefix = settings.connector.topic_prefix
    return [t for t in list_topics(settings, timeout_s) if is_change_topic(t, prefix)]


def load_inputs(
    settings: Settings,
    *,
    with_changes: bool = True,
    timeout_s: float = 30.0,
    since_ms: int | None = None,
    until_ms: int | None = None,
    start_offsets: Mapping[str, Mapping[int, int]] | None = None,
) -> AuditInputs:
    """Every record of the SEVIS-side topics (and, optionally, the change topics and the transaction
    topic), decoded, in log order. ``since_ms`` / ``until_ms`` (epoch ms) keep, per partition, only the
    records from the first one written at or after ``since_ms`` and before the first one written at or
    after ``until_ms`` (Kafka's time index: the rest of the log is not read). ``start_offsets``: per topic
    and partition, the first offset to read (a verify checkpoint's; partitions not named: from the start)."""
    t = settings.topics
    existing = set(list_topics(settings, timeout_s))
    frm = Bound("beginning") if since_ms is None else Bound("time", time_ms=since_ms)
    to = Bound("end") if until_ms is None else Bound("time", time_ms=until_ms)
    starts = start_offsets or {}

    def read(name: str) -> list[Decoded]:
        if name not in existing:
            return []
        if since_ms is None and until_ms is None and name not in starts:
            return read_all(settings.kafka, name, timeout_s)
        plan = plan_replay(settings.kafka, name, frm, to, timeout_s)
        if name in starts:
            first = starts[name]
            ranges = {p: (max(s, first.get(p, s)), e) for p, (s, e) in plan.ranges.items()}
            plan = replace(plan, ranges={p: r for p, r in ranges.items() if r[1] > r[0]})
        return list(read_plan(settings.kafka, plan, timeout_s))

    inputs = AuditInputs(
        events=read(t.events), batches=read(t.batches), results=read(t.results), commands=read(t.commands)
    )
    if with_changes:
        prefix = settings.connector.topic_prefix
        for topic in sorted(x for x in existing if is_change_topic(x, prefix)):
            inputs.changes += read(topic)
        inputs.transactions = read(f"{prefix}.transaction")
    for lst in (inputs.events, inputs.batches, inputs.results, inputs.commands, inputs.changes, inputs.transactions):
        lst.sort(key=lambda d: (d.topic, d.partition, d.offset))
    return inputs


# ----------------------------------------------------------------------------- one student: what to decode


@dataclass
class StudentRead:
    """What ``audit student`` read to build one student's timeline (printed with it, so an auditor knows)."""

    sevis_topics: list[str]
    change_topics: list[str]
    records: StudentRecords
    changes_read: int = 0

    def to_json(self) -> dict[str, Any]:
        r = self.records
        return {
            "sevis_topics": self.sevis_topics,
            "change_topics": self.change_topics,
            "sevis_records_read": r.read,
            "sevis_records_decoded": r.decoded,
            "byte_test": r.byte_test,
            "change_records_read": self.changes_read,
        }

    def describe(self) -> str:
        """One line per kind of topic: what was read whole, why, and how much of it was decoded."""
        r = self.records
        how = (
            f"decoded {r.decoded:,} of {r.read:,} records (those holding the student key or one of its BatchIDs)"
            if r.byte_test
            else f"decoded all {r.read:,} records (the key has characters JSON may escape)"
        )
        lines = [f"read whole: {', '.join(self.sevis_topics)} (keyed by OrgID, not by student); {how}"]
        if self.change_topics:
            lines.append(
                f"read whole: {', '.join(self.change_topics)} (keyed by the row's primary key); "
                f"decoded all {self.changes_read:,} records"
            )
        return "\n".join(lines)


def _read_raw(settings: Settings, topics: Sequence[str], timeout_s: float) -> list[list[RawRecord]]:
    """Every record of each topic, undecoded, in offset order per partition; the topics are read at once
    (one consumer each, in threads: librdkafka waits without the GIL, so the end-of-topic waits overlap)."""

    def one(topic: str) -> list[RawRecord]:
        return [raw_message(m) for m in read_topic(settings.kafka, topic, timeout_s=timeout_s)]

    if not topics:
        return []
    with ThreadPoolExecutor(max_workers=len(topics)) as pool:
        return list(pool.map(one, topics))


def load_student_inputs(
    settings: Settings, student: str, *, with_changes: bool = True, timeout_s: float = 30.0
) -> tuple[AuditInputs, StudentRead]:
    """What one student's timeline needs: the SEVIS-side topics read whole but only the records that can
    concern the student decoded (:func:`~sevisflow.app.audit.timeline.student_records`), and, optionally,
    the change topics read and decoded whole (the student matcher learns the SIS ids from them in log
    order). None of these topics is keyed by student: events, commands, batches and results are keyed by
    OrgID, change topics by the row's primary key, so no partition can be left out."""
    t = settings.topics
    existing = set(list_topics(settings, timeout_s))
    sevis = [n for n in (t.events, t.batches, t.commands, t.results) if n in existing]
    changes = sorted(x for x in existing if is_change_topic(x, settings.connector.topic_prefix)) if with_changes else []
    raw = dict(zip([*sevis, *changes], _read_raw(settings, [*sevis, *changes], timeout_s), strict=True))
    for lst in raw.values():
        lst.sort(key=lambda r: (r.partition, r.offset))
    recs = student_records(
        student,
        events=raw.get(t.events, []),
        batches=raw.get(t.batches, []),
        commands=raw.get(t.commands, []),
        results=raw.get(t.results, []),
    )
    inputs = AuditInputs(events=recs.events, batches=recs.batches, results=recs.results, commands=recs.commands)
    for topic in changes:
        inputs.changes += [r.decode() for r in raw[topic]]
    read = StudentRead(sevis, changes, recs, changes_read=len(inputs.changes))
    return inputs, read


def outbox_info(settings: Settings, batch_id: str) -> dict[str, Any] | None:
    """Where the batch's archived document is and what its folder says (None when not in the outbox)."""
    try:
        from sevisflow.sinks.outbox import Outbox
    except ImportError:  # pragma: no cover - the sink is not installed
        return None
    ob = Outbox(settings.sevis.outbox_dir, settings.sevis.quarantine_dir, settings.school.timezone)
    bd = ob.find(batch_id)
    if bd is None:
        q = ob.find_quarantined(batch_id)
        return {"state": "quarantined", "path": str(q)} if q is not None else None
    info: dict[str, Any] = {"state": bd.state, "day": bd.day, "path": str(bd.path)}
    try:
        m = bd.manifest()
        info["sha256"] = m.get("sha256")
        info["file"] = m.get("file")
    except (OSError, ValueError):
        info["manifest_error"] = "manifest.json missing or unreadable"
    try:
        st = bd.state_data()
        info["history"] = st.get("history") or []
        for k in ("upload_tries", "last_upload_code", "accepted_at"):
            if k in st:
                info[k] = st[k]
    except (OSError, ValueError):
        info["state_error"] = "state.json unreadable"
    return info


# ----------------------------------------------------------------------------- one batch: how far to read

SCOPE_SKEW_MS = 60_000
"""Clock tolerance around a batch's close: the stages' clocks differ a little, and the batcher applies
inputs written just before the close command slightly after it."""


def closed_at_from_archive(settings: Settings, batch_id: str) -> int | None:
    """When the batch was closed, as the archive says: its manifest (outbox or quarantine), else the ledger
    line that sealed it; None when neither names a time. Only a hint where to look in the log: the closed
    event found there is what verify checks (a wrong hint only makes it read more)."""
    from sevisflow.sinks.outbox import Outbox

    ob = Outbox(settings.sevis.outbox_dir, settings.sevis.quarantine_dir, settings.school.timezone)
    bd = ob.find(batch_id)
    paths = [bd.path / "manifest.json"] if bd is not None else []
    q = ob.find_quarantined(batch_id)
    if q is not None:
        paths.append(q / "manifest.json")
    for p in paths:
        try:
            at = orjson.loads(p.read_bytes()).get("closed_at_ms")
        except (OSError, ValueError):
            continue
        if isinstance(at, int):
            return at
    try:
        entries = Ledger(settings.sevis.outbox_dir).entries()
    except (OSError, ValueError):
        entries = []  # an unreadable ledger is verify --all's finding; here it only gives no hint
    for e in reversed(entries):
        if e.get("batch_id") == batch_id and isinstance(e.get("closed_at_ms"), int):
            return int(e["closed_at_ms"])
    return None


def find_closed_event(settings: Settings, batch_id: str, closed_at_ms: int, timeout_s: float = 30.0) -> Decoded | None:
    """The batch's ``closed`` event on the batches topic, looked up by time (Kafka's time index) from
    ``closed_at_ms`` minus the clock tolerance, read forward until found (None when it is not there)."""
    plan = plan_replay(
        settings.kafka,
        settings.topics.batches,
        Bound("time", time_ms=closed_at_ms - SCOPE_SKEW_MS),
        Bound("end"),
        timeout_s,
    )
    records = read_plan(settings.kafka, plan, timeout_s)
    try:
        for d in records:
            v = d.value
            if isinstance(v, dict) and v.get("type") == "closed" and v.get("batch_id") == batch_id:
                return d
    finally:
        if isinstance(records, Generator):
            records.close()  # stop reading here: the reader's consumer is closed at once
    return None


def batch_close(settings: Settings, batch_id: str, timeout_s: float = 30.0) -> Decoded | None:
    """The batch's ``closed`` event, found from the close time the archive names (None: the archive names
    no close time, or the closed event is not where it says)."""
    at = closed_at_from_archive(settings, batch_id)
    if at is None or settings.topics.batches not in set(list_topics(settings, timeout_s)):
        return None
    return find_closed_event(settings, batch_id, at, timeout_s)


def batch_read_limit(settings: Settings, batch_id: str, timeout_s: float = 30.0) -> int | None:
    """How far ``verify <BatchID>`` reads every topic (epoch ms, exclusive): the closed event's log time plus
    the clock tolerance. Nothing written after the close can have gone into the batch. None = read to the
    end (the archive names no close time, or the closed event is not where it says)."""
    closed = batch_close(settings, batch_id, timeout_s)
    return read_limit_of(closed)


def read_limit_of(closed: Decoded | None) -> int | None:
    """:func:`batch_read_limit` for a closed event already found."""
    if closed is None or closed.timestamp_ms is None:
        return None
    return closed.timestamp_ms + SCOPE_SKEW_MS
