"""Replay any topic read-only: positions → records, student filter, JSON-lines export.

Read-only by construction: the reader (:func:`sevisflow.core.kafka_io.read_topic` plus one
metadata consumer for watermarks and ``offsets_for_times``) uses manual partition
assignment and never commits, so no consumer group is joined, created or moved.
``tests/integration/test_replay_readonly.py`` proves the pipeline's committed offsets
stay where they were.

Bounds (``--from`` inclusive, ``--to`` exclusive), see :func:`parse_bound`:

* ``beginning`` / ``end``;
* an ISO-8601 time (``2024-06-19``, ``2024-06-19T10:00``, ``…+02:00``, ``…Z``; without a
  zone it is UTC): per partition, the first record whose timestamp is at or after it
  (Kafka's time index, ``offsets_for_times``);
* an offset ``N`` (every partition) or per partition ``0:120,2:45`` (partitions not
  listed are skipped for ``--from`` and read to the end for ``--to``).

``--student`` (:class:`StudentMatcher`) matches, per kind of topic:

* SEVIS-side Avro topics (events, batches, results, commands, dead letters, the student
  view): the record's ``student_key`` (batch events: the record's, or any record of a
  closed batch, which is then *narrowed* to that student's records), or a record key equal
  to the student key (``sevisflow.students``);
* change topics ``<prefix>.<schema>.<table>``: a row (after, else before) whose student-key
  column (``school_id`` in the reference SIS, from the mapping file) equals it, or whose
  student link column (``person_id``) holds one of the student's SIS ids. The SIS ids are
  looked up first in the student table's change topic (``<prefix>.public.person``); a
  purely numeric ``--student`` is taken as the SIS id itself.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import TopicPartition

from sevisflow.app.audit.decode import Decoded, decode_message, iso_ms
from sevisflow.core.config import KafkaSettings, Settings
from sevisflow.core.errors import SevisflowError
from sevisflow.core.kafka_io import make_consumer, position, read_topic, topic_partitions, watermarks

_NEVER = 2**62
_PER_PARTITION = re.compile(r"^\d+:\d+(,\d+:\d+)*$")


# ----------------------------------------------------------------------------- bounds


@dataclass(frozen=True)
class Bound:
    """A replay position: ``beginning``, ``end``, a time, an offset, or offsets per partition."""

    kind: str  # beginning | end | time | offset | partitions
    time_ms: int | None = None
    offset: int | None = None
    partitions: Mapping[int, int] | None = None

    def describe(self) -> str:
        if self.kind == "time":
            return iso_ms(self.time_ms) or "?"
        if self.kind == "offset":
            return f"offset {self.offset}"
        if self.kind == "partitions":
            return "offsets " + ",".join(f"{p}:{o}" for p, o in sorted((self.partitions or {}).items()))
        return self.kind


def parse_time(text: str) -> int:
    """ISO-8601 date or time → epoch ms (UTC when no zone is given)."""
    t = text.strip()
    try:
        dt = datetime.fromisoformat(t[:-1] + "+00:00" if t.endswith(("Z", "z")) else t)
    except ValueError:
        raise SevisflowError(f"{text!r} is not a time: use ISO-8601 like 2024-06-19 or 2024-06-19T10:00:00Z") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def parse_bound(text: str | None, default: str) -> Bound:
    """Parse ``--from`` / ``--to``; None gives ``default`` (``beginning`` or ``end``)."""
    t = (text if text is not None else default).strip()
    low = t.lower()
    if low in ("beginning", "earliest", "start"):
        return Bound("beginning")
    if low in ("end", "latest", "now"):
        return Bound("end")
    if t.isdigit():
        return Bound("offset", offset=int(t))
    if _PER_PARTITION.match(t):
        return Bound("partitions", partitions={int(p): int(o) for p, o in (x.split(":") for x in t.split(","))})
    return Bound("time", time_ms=parse_time(t))


def resolve_range(
    partitions: Sequence[int],
    watermarks: Mapping[int, tuple[int, int]],
    frm: Bound,
    to: Bound,
    offset_for_time: Callable[[int, int], int],
) -> dict[int, tuple[int, int]]:
    """``{partition: (start, end)}`` (end exclusive) of the partitions that have records in range.

    ``offset_for_time(partition, ms)`` is Kafka's ``offsets_for_times`` for one partition
    (the first offset whose timestamp ≥ ms, or the high watermark when none). Pure.
    """

    def pos(b: Bound, p: int, is_start: bool) -> int:
        low, high = watermarks[p]
        if b.kind == "beginning":
            return low
        if b.kind == "end":
            return high
        if b.kind == "offset":
            return int(b.offset or 0)
        if b.kind == "partitions":
            given = (b.partitions or {}).get(p)
            return given if given is not None else high  # --from: skipped; --to: to the end
        return offset_for_time(p, int(b.time_ms or 0))

    out: dict[int, tuple[int, int]] = {}
    for p in partitions:
        low, high = watermarks[p]
        start = min(max(pos(frm, p, True), low), high)
        end = min(max(pos(to, p, False), low), high)
        if end > start:
            out[p] = (start, end)
    return out


# ----------------------------------------------------------------------------- student filter


@dataclass(frozen=True)
class StudentLayout:
    """Where a change topic says which student a row belongs to (from the mapping file)."""

    student_table: str = "public.person"
    key_column: str = "school_id"
    id_column: str = "person_id"
    link_columns: frozenset[str] = frozenset({"person_id"})


def layout_from_settings(settings: Settings) -> StudentLayout:
    """The mapping's student table/columns; the reference SIS's when the mapping cannot be read."""
    try:
        from sevisflow.processors.normalize.mapping import load_mapping

        m = load_mapping(settings.school.mapping_file)
        links = {f.link for t in m.tables() for f in m.feeds_of(t) if f.link} | {m.student_id}
        return StudentLayout(m.student_table, m.student_key, m.student_id, frozenset(links))
    except Exception:  # noqa: BLE001 - no mapping (yet): the reference SIS layout
        return StudentLayout()


def row_of(value: Any) -> dict[str, Any] | None:
    """The row of a Debezium change: ``after``, else ``before``."""
    if not isinstance(value, dict):
        return None
    row = value.get("after") or value.get("before")
    return row if isinstance(row, dict) else None


def table_of(d: Decoded) -> str | None:
    """``schema.table`` of a change event (from ``source``, else from the topic name)."""
    if d.format != "debezium" or not isinstance(d.value, dict):
        return None
    src = d.value.get("source") or {}
    if src.get("schema") and src.get("table"):
        return f"{src['schema']}.{src['table']}"
    parts = d.topic.split(".")
    return ".".join(parts[-2:]) if len(parts) >= 3 else None


@dataclass
class StudentMatcher:
    """Does a decoded record concern one student? (See the module docstring for the rules.)"""

    student: str
    layout: StudentLayout = field(default_factory=StudentLayout)
    sis_ids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.student.isdigit():
            self.sis_ids.add(self.student)

    def learn(self, d: Decoded) -> None:
        """Remember the student's SIS id(s) from a row of the student table."""
        row = row_of(d.value)
        if row is not None and str(row.get(self.layout.key_column)) == self.student:
            sid = row.get(self.layout.id_column)
            if sid is not None:
                self.sis_ids.add(str(sid))

    def matches(self, d: Decoded) -> bool:
        v = d.value
        if d.format == "debezium":
            row = row_of(v)
            if row is None:
                return False
            if str(row.get(self.layout.key_column)) == self.student:
                return True
            return any(str(row.get(c)) in self.sis_ids for c in self.layout.link_columns if row.get(c) is not None)
        if d.format == "tombstone":
            return isinstance(d.key, dict) and any(
                str(d.key.get(c)) in self.sis_ids for c in self.layout.link_columns if d.key.get(c) is not None
            )
        if d.format == "avro" and isinstance(v, dict):
            if v.get("student_key") == self.student:
                return True
            rec = v.get("record")
            if isinstance(rec, dict) and rec.get("student_key") == self.student:
                return True
            recs = v.get("records")
            if isinstance(recs, list) and any(
                isinstance(r, dict) and r.get("student_key") == self.student for r in recs
            ):
                return True
        return d.key == self.student

    def narrow(self, d: Decoded) -> Decoded:
        """A closed batch narrowed to this student's records (other students' data left out)."""
        v = d.value
        if d.format == "avro" and isinstance(v, dict) and isinstance(v.get("records"), list):
            mine = [r for r in v["records"] if isinstance(r, dict) and r.get("student_key") == self.student]
            if len(mine) != len(v["records"]):
                nv = dict(v, records=mine, narrowed_to_student={"kept": len(mine), "of": len(v["records"])})
                return replace(d, value=nv)
        return d


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ReplayPlan:
    topic: str
    ranges: dict[int, tuple[int, int]]
    partitions: tuple[int, ...] = ()

    @property
    def total(self) -> int:
        return sum(e - s for s, e in self.ranges.values())


def plan_replay(kafka: KafkaSettings, topic: str, frm: Bound, to: Bound, timeout_s: float = 30.0) -> ReplayPlan:
    """Resolve the bounds of ``topic`` to offsets with a metadata-only consumer (never subscribes or commits)."""
    consumer = make_consumer(kafka, group_id=f"sevisflow-audit-{uuid.uuid4().hex[:12]}")
    try:
        parts = topic_partitions(consumer, kafka, topic, timeout_s)
        if parts is None:
            raise SevisflowError(f"topic {topic!r} does not exist (list them with `sevisflow topics list`)")
        marks = watermarks(consumer, topic, parts, timeout_s)
        cache: dict[tuple[int, int], int] = {}

        def for_time(p: int, ms: int) -> int:
            if (p, ms) not in cache:
                got = consumer.offsets_for_times([TopicPartition(topic, p, ms)], timeout=timeout_s)[0]
                cache[(p, ms)] = got.offset if got.offset >= 0 else marks[p][1]
            return cache[(p, ms)]

        return ReplayPlan(topic, resolve_range(parts, marks, frm, to, for_time), tuple(parts))
    finally:
        consumer.close()


def read_plan(kafka: KafkaSettings, plan: ReplayPlan, timeout_s: float = 30.0) -> Iterator[Decoded]:
    """The records of ``plan``, decoded, in the order Kafka delivers them (per partition in offset order)."""
    if not plan.ranges:
        return
    # partitions without records in range start past any end, so read_topic does not assign them
    start = dict.fromkeys(plan.partitions, _NEVER)
    start.update({p: s for p, (s, _) in plan.ranges.items()})
    left = set(plan.ranges)
    stream = read_topic(kafka, plan.topic, timeout_s=timeout_s, start=start)
    try:
        for msg in stream:
            _, p, offset = position(msg)
            if p not in plan.ranges:
                continue
            s, e = plan.ranges[p]
            if offset >= e:
                left.discard(p)
                if not left:
                    return
                continue
            if offset >= s:
                yield decode_message(msg)
            if offset + 1 >= e:
                left.discard(p)
                if not left:
                    return
    finally:
        stream.close()


def read_all(kafka: KafkaSettings, topic: str, timeout_s: float = 30.0) -> list[Decoded]:
    """Every record of a topic, decoded (empty when the topic does not exist)."""
    return [decode_message(m) for m in read_topic(kafka, topic, timeout_s=timeout_s)]


def is_change_topic(topic: str, prefix: str) -> bool:
    return topic.startswith(prefix + ".") and topic != f"{prefix}.transaction" and topic.count(".") >= 2


def student_matcher_for(settings: Settings, topic: str, student: str, timeout_s: float = 30.0) -> StudentMatcher:
    """A matcher; for a change topic it first learns the student's SIS ids from the student table's topic."""
    layout = layout_from_settings(settings)
    matcher = StudentMatcher(student, layout)
    prefix = settings.connector.topic_prefix
    if is_change_topic(topic, prefix) and not student.isdigit():
        for m in read_topic(settings.kafka, f"{prefix}.{layout.student_table}", timeout_s=timeout_s):
            matcher.learn(decode_message(m))
    return matcher


def replay(
    settings: Settings, topic: str, frm: Bound, to: Bound, student: str | None = None, timeout_s: float = 30.0
) -> Iterator[Decoded]:
    """The decoded records of ``topic`` between the bounds, only ``student``'s when given."""
    plan = plan_replay(settings.kafka, topic, frm, to, timeout_s)
    matcher = student_matcher_for(settings, topic, student, timeout_s) if student else None
    for d in read_plan(settings.kafka, plan, timeout_s):
        if matcher is None:
            yield d
        elif matcher.matches(d):
            yield matcher.narrow(d)


# ----------------------------------------------------------------------------- output


def jsonl_line(d: Decoded) -> bytes:
    return orjson.dumps(d.to_json(), default=_bytes_default) + b"\n"


def _bytes_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray)):
        import base64

        return base64.b64encode(bytes(obj)).decode()
    raise TypeError


def open_private(path: str | os.PathLike[str]) -> Any:
    """Open ``path`` for writing as a 0600 file (it may hold student data), replacing it."""
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def summary(d: Decoded) -> tuple[str, str]:
    """(what, student) for the table format: no names or other row values."""
    v = d.value if isinstance(d.value, dict) else {}
    if d.format == "debezium":
        row = row_of(v) or {}
        return f"{v.get('op')} {table_of(d) or ''}".strip(), str(row.get("school_id") or row.get("person_id") or "")
    if d.format == "avro":
        short = (d.schema or "").rsplit(".", 1)[-1]
        what = v.get("type") or v.get("kind") or v.get("status") or v.get("code") or ""
        extra = v.get("batch_id") or ""
        student = (
            v.get("student_key")
            or ((v.get("record") or {}).get("student_key") if isinstance(v.get("record"), dict) else "")
            or ""
        )
        if isinstance(v.get("records"), list):
            extra = f"{extra} ({len(v['records'])} records)".strip()
        return f"{short} {what} {extra}".strip(), str(student)
    if d.format == "tombstone":
        return "tombstone", ""
    return d.format, ""


def table_rows(records: Iterable[Decoded]) -> list[list[Any]]:
    rows = []
    for d in records:
        what, student = summary(d)
        key = d.key if isinstance(d.key, str) else orjson.dumps(d.key).decode() if d.key is not None else ""
        rows.append([d.partition, d.offset, iso_ms(d.timestamp_ms) or "", key[:40], what, student])
    return rows


TABLE_HEADERS = ["PARTITION", "OFFSET", "TIMESTAMP", "KEY", "WHAT", "STUDENT"]
