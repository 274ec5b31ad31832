"""The pipeline's topics as code: names, partitions, cleanup and retention.

Audit topics keep their history for ``AUDIT_RETENTION_MS``: SEVIS records must be
kept for the student's whole stay plus the record-keeping period, so we default
to 7 years and let operators extend it (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from sevisflow.config import Settings
from sevisflow.kafka_io import TopicSpec

AUDIT_RETENTION_MS = str(7 * 365 * 24 * 3600 * 1000)
DLQ_RETENTION_MS = str(90 * 24 * 3600 * 1000)


def pipeline_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic between the stages (the change topics are created by the connector)."""
    k, t = settings.kafka, settings.topics
    audit = {"cleanup.policy": "delete", "retention.ms": AUDIT_RETENTION_MS,
             "min.insync.replicas": str(k.min_insync_replicas)}
    compact = {"cleanup.policy": "compact", "min.insync.replicas": str(k.min_insync_replicas)}
    return [
        TopicSpec(t.students, k.partitions, k.replication_factor, compact),
        TopicSpec(t.events, k.partitions, k.replication_factor, audit),
        TopicSpec(t.commands, k.partitions, k.replication_factor, audit),
        TopicSpec(t.batches, k.partitions, k.replication_factor, audit),
        TopicSpec(t.results, k.partitions, k.replication_factor, audit),
        TopicSpec(t.dlq, k.partitions, k.replication_factor,
                  {"cleanup.policy": "delete", "retention.ms": DLQ_RETENTION_MS,
                   "min.insync.replicas": str(k.min_insync_replicas)}),
    ]
