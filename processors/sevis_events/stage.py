"""The sevis_events stage on Kafka: ``sevisflow.students`` → ``sevis.events`` (key OrgID) + dead letters.

Runs :func:`~sevisflow.processors.sevis_events.derive.derive` in :class:`~sevisflow.core.kafka_io.TransactionalLoop`.
State (changelog ``sevisflow.events.state``, compacted, partition = input partition): per student
key, the last view this stage derived from — the "previous view" of the next version. Events,
dead letters, the new previous-view and the input offset commit in one transaction, so a crash
between any two steps replays the student version and derives the same events with the same ids,
and read_committed consumers see them once. Scales out: one instance per students partition.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import orjson
from confluent_kafka import Message

from sevisflow.core.config import Settings
from sevisflow.core.kafka_io import Output, StateStore, TopicSpec, TransactionalLoop, ensure_topics, position
from sevisflow.core.log import get_logger
from sevisflow.core.serde import SerializationError, registry
from sevisflow.core.state import open_committed
from sevisflow.core.topics import pipeline_topics, stage_group, state_topic, state_topic_spec
from sevisflow.processors.normalize.common import dlq_output, msg_time
from sevisflow.processors.sevis_events.derive import Context, derive

log = get_logger(__name__)

STUDENT_SCHEMA = "sevisflow.students.StudentView"
EVENT_SCHEMA = "sevisflow.events.SevisEvent"


def events_topics(settings: Settings) -> list[TopicSpec]:
    return [state_topic_spec(settings, "events")]


MAX_CHANGES = 40
_NOT_DATA = ("src", "student_key", "link", "exists", "international", "rekeyed_to", "rekeyed_from")


def view_changes(prev: dict[str, Any] | None, new: dict[str, Any], field: str | None = None) -> dict[str, list[Any]]:
    """``path → [before, after]`` of the student view's values that changed, within the issue's section when
    it names one (``address.us_physical.city`` → the ``address`` section), at most :data:`MAX_CHANGES`."""
    out: dict[str, list[Any]] = {}

    def walk(a: Any, b: Any, path: str) -> None:
        if len(out) >= MAX_CHANGES or a == b:
            return
        if isinstance(a, dict) or isinstance(b, dict):
            a, b = a if isinstance(a, dict) else {}, b if isinstance(b, dict) else {}
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
            return
        out[path] = [a, b]

    section = (field or "").split(".")[0].split("[")[0]
    prev = prev or {}
    for top in sorted(set(prev) | set(new)):
        if top in _NOT_DATA or (section and section in new and top != section):
            continue
        walk(prev.get(top), new.get(top), top)
    return out


class EventsStage:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.org_id = settings.school.require_org_id()
        # J-1 sponsor programs: their exchange visitors' events go to the program number's EV batch stream
        self.ev_programs = {p.sis_program: p.program_number for p in settings.exchange_programs}
        # member schools ([[schools]]): an F/M student's events go under the OrgID of student.school_code
        self.schools = settings.school_codes()

    def handle(self, msg: Message, state: StateStore) -> list[Output]:
        key, value = msg.key(), msg.value()
        if value is None or key is None:
            return []
        partition = position(msg)[1]
        try:
            rec = registry().decode(value, STUDENT_SCHEMA)
            view = orjson.loads(rec["view_json"])
        except (SerializationError, orjson.JSONDecodeError) as exc:
            return [
                dlq_output(
                    self.settings,
                    "sevis_events",
                    "bad_student_record",
                    str(exc),
                    at_ms=msg_time(msg),
                    student_key=None,
                    field=None,
                    topic=msg.topic(),
                    partition=msg.partition(),
                    offset=msg.offset(),
                    key=key,
                    value=msg.value(),
                )
            ]
        raw_prev = state.get(partition, key)
        prev = orjson.loads(raw_prev) if raw_prev else None
        lineage = list(rec.get("lineage") or [])
        ctx = Context(
            self.org_id,
            rec["unit_id"],
            lineage,
            rec.get("commit_ts_ms"),
            bool(rec.get("snapshot")),
            self.settings.school.timezone,
            self.ev_programs,
            self.schools,
        )
        out = derive(prev, view, ctx)
        state.put(partition, key, rec["view_json"].encode())
        outs: list[Output] = []
        for e in out.events:  # keyed by the event's OrgID: the student's school's code, or an EV program number
            outs.append(Output(self.settings.topics.events, e["org_id"].encode(), registry().encode(EVENT_SCHEMA, e)))
        first: dict[str, Any] = lineage[0] if lineage else {}
        for i in out.issues:
            log.info("sevis_events.issue", code=i.code, student=rec["student_key"], field=i.field)
            # the dead letter keeps what changed in the SIS (before → after) so the DSO can act in SEVIS RTI
            # without opening the SIS; its reason stays free of values, since reasons are logged
            changed = view_changes(prev, view, i.field)
            outs.append(
                dlq_output(
                    self.settings,
                    "sevis_events",
                    i.code,
                    i.reason,
                    at_ms=rec.get("commit_ts_ms") or msg_time(msg),
                    student_key=rec["student_key"],
                    field=i.field,
                    topic=first.get("topic", msg.topic()),
                    partition=first.get("partition", msg.partition()),
                    offset=first.get("offset", msg.offset()),
                    key=key,
                    value=orjson.dumps({"changes": changed}) if changed else None,
                )
            )
        return outs


def build_loop(
    settings: Settings, instance: str | None = None, batch_size: int = 2000
) -> tuple[TransactionalLoop, EventsStage]:
    group = stage_group(settings, "events")
    instance = instance or os.environ.get("SEVISFLOW_INSTANCE") or socket.gethostname()
    stage = EventsStage(settings)
    loop = TransactionalLoop(
        settings.kafka,
        group,
        [settings.topics.students],
        stage.handle,
        transactional_id=f"{group}-{instance}",
        state_topic=state_topic(settings, "events"),
        batch_size=batch_size,
        stall_after_s=settings.metrics.stall_after_s,
        dlq_topic=settings.topics.dlq,
        stage="events",
        state=StateStore(open_committed(settings.state, f"{group}-{instance}", "events")),
    )
    return loop, stage


def ensure_stage_topics(settings: Settings) -> None:
    ensure_topics(settings.kafka, pipeline_topics(settings) + events_topics(settings))


def run(settings: Settings, stop_event: threading.Event, instance: str | None = None) -> None:
    """Run sevis_events until ``stop_event`` is set (the all-in-one runner and ``sevisflow process events``)."""
    ensure_stage_topics(settings)
    loop, _ = build_loop(settings, instance)
    loop.stop_when(stop_event, "sevis_events")
    log.info("sevis_events.start", group=loop.group_id)
    loop.run()
    log.info("sevis_events.stop", processed=loop.processed, aborts=loop.aborts)
