"""The thin reader behind ``sevisflow audit`` and ``verify``: Kafka topics and the outbox → decoded inputs.

Read-only: topics through :func:`sevisflow.app.audit.replay.read_all` (manual assignment, no
commits), the outbox through :class:`sevisflow.sinks.outbox.Outbox` lookups (no moves, no writes).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException

from sevisflow.app.audit.decode import Decoded
from sevisflow.app.audit.replay import is_change_topic, read_all
from sevisflow.core.config import Settings
from sevisflow.core.errors import UnreachableError
from sevisflow.core.kafka_io import make_consumer


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


def load_inputs(settings: Settings, *, with_changes: bool = True, timeout_s: float = 30.0) -> AuditInputs:
    """Every record of the SEVIS-side topics (and, optionally, the change topics and the transaction
    topic), decoded, in log order."""
    t = settings.topics
    existing = set(list_topics(settings, timeout_s))

    def read(name: str) -> list[Decoded]:
        return read_all(settings.kafka, name, timeout_s) if name in existing else []

    inputs = AuditInputs(events=read(t.events), batches=read(t.batches), results=read(t.results),
                         commands=read(t.commands))
    if with_changes:
        prefix = settings.connector.topic_prefix
        for topic in sorted(x for x in existing if is_change_topic(x, prefix)):
            inputs.changes += read_all(settings.kafka, topic, timeout_s)
        inputs.transactions = read(f"{prefix}.transaction")
    for lst in (inputs.events, inputs.batches, inputs.results, inputs.commands, inputs.changes, inputs.transactions):
        lst.sort(key=lambda d: (d.topic, d.partition, d.offset))
    return inputs


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
