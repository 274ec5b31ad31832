"""Small pieces both processor stages share: dead-letter outputs, the mapping file, record times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sevisflow.core import PACKAGE_ROOT
from sevisflow.core.config import Settings
from sevisflow.core.dlq import SCHEMA as DLQ_SCHEMA
from sevisflow.core.dlq import dead_letter_record
from sevisflow.core.kafka_io import Output
from sevisflow.core.serde import registry


def dlq_output(
    settings: Settings,
    stage: str,
    code: str,
    reason: str,
    *,
    at_ms: int,
    student_key: str | None,
    field: str | None,
    topic: str | None,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    value: bytes | None,
) -> Output:
    """A dead letter whose source position may be an earlier record than the one being handled."""
    rec = dead_letter_record(
        stage, code, reason, at_ms, student_key=student_key, field=field, source_key=key, source_value=value
    )
    rec.update({"source_topic": topic, "source_partition": partition, "source_offset": offset})
    out_key = student_key.encode() if student_key else key
    return Output(settings.topics.dlq, out_key, registry().encode(DLQ_SCHEMA, rec))


def mapping_path(settings: Settings) -> Path:
    """``school.mapping_file``, relative to the working directory or else to the sevisflow package."""
    p = Path(settings.school.mapping_file)
    if p.is_absolute() or p.exists():
        return p
    return PACKAGE_ROOT / p


def msg_time(msg: Any) -> int:
    """The record's own timestamp (ms): the only time a dead letter may carry (no wall clock)."""
    return int(msg.timestamp()[1])
