"""The synthetic audit scenario (testkit/audit_scenario.py) in per-test topics of a real Kafka.

Shared by the replay, audit and verify CLI integration tests. A plain module (not a test module),
so importing it pulls in no other module's tests.
"""

from __future__ import annotations

from pathlib import Path

from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_producer
from testkit.audit_scenario import scenario_records
from tests.helpers import make_settings


def scenario_config(tmp_path: Path, bootstrap: str, unique: str) -> Path:
    """A sevisflow.toml whose topics are the per-test ones `load_scenario` fills."""
    cfg = tmp_path / "sevisflow.toml"
    cfg.write_text(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
[connector]
topic_prefix = "sis{unique}"
[topics]
events = "sevis.events.{unique}"
batches = "sevis.batches.{unique}"
commands = "sevis.batch.commands.{unique}"
results = "sevis.results.{unique}"
ledger = "sevis.audit.ledger.{unique}"
[sevis]
outbox_dir = "{tmp_path / "outbox"}"
quarantine_dir = "{tmp_path / "quarantine"}"
""")
    return cfg


def load_scenario(kafka_stack, unique: str) -> dict[str, str]:
    """Produce the synthetic audit scenario into per-test topics (1 partition each, as in its lineage)."""
    settings = make_settings(kafka_stack, unique=unique)
    t = settings.topics
    names = {
        "prefix": f"sis{unique}",
        "events": t.events,
        "batches": t.batches,
        "commands": t.commands,
        "results": t.results,
    }
    recs = scenario_records(**names)
    ensure_topics(settings.kafka, [TopicSpec(n, 1, 1) for n in sorted({r[0] for r in recs})])
    producer = make_producer(settings.kafka)
    for topic, key, value, ts in recs:
        producer.produce(topic, key=key, value=value, timestamp=ts, partition=0)
    assert producer.flush(30) == 0
    return names
