"""Dead letters: bad input becomes data on ``sevisflow.dlq``, never a crash or a silent drop.

Every stage builds its dead letters with :func:`dead_letter` so they all carry
the same fields: the stage, a machine-readable code, a reason that names the
record and the fix (no personal data), and the source position.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Message

from sevisflow.core.kafka_io import Output
from sevisflow.core.serde import registry

SCHEMA = "sevisflow.dlq.DeadLetter"


def dead_letter_record(
    stage: str,
    code: str,
    reason: str,
    at_ms: int,
    *,
    msg: Message | None = None,
    student_key: str | None = None,
    field: str | None = None,
    source_key: bytes | None = None,
    source_value: bytes | None = None,
) -> dict[str, Any]:
    """The DeadLetter record (plain dict) for one bad input."""
    return {
        "stage": stage,
        "code": code,
        "reason": reason,
        "student_key": student_key,
        "field": field,
        "source_topic": msg.topic() if msg is not None else None,
        "source_partition": msg.partition() if msg is not None else None,
        "source_offset": msg.offset() if msg is not None else None,
        "source_key": msg.key() if msg is not None else source_key,
        "source_value": msg.value() if msg is not None else source_value,
        "at_ms": at_ms,
    }


def dead_letter(
    dlq_topic: str,
    stage: str,
    code: str,
    reason: str,
    at_ms: int,
    *,
    msg: Message | None = None,
    student_key: str | None = None,
    field: str | None = None,
    source_key: bytes | None = None,
    source_value: bytes | None = None,
) -> Output:
    """An :class:`~sevisflow.core.kafka_io.Output` for the DLQ, to produce in the stage's own transaction."""
    record = dead_letter_record(
        stage,
        code,
        reason,
        at_ms,
        msg=msg,
        student_key=student_key,
        field=field,
        source_key=source_key,
        source_value=source_value,
    )
    key = (student_key.encode() if student_key else None) or (msg.key() if msg is not None else source_key)
    return Output(dlq_topic, key, registry().encode(SCHEMA, record))
