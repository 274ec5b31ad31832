"""Load the audit example (docs/AUDIT.md) into a Kafka: the synthetic scenario plus 3 batches made by
the real batcher and written to an outbox by the real XML sink.

    .venv/bin/python -m bench.audit.load_example --bootstrap 127.0.0.1:9092 --outbox /tmp/auditdoc/outbox
"""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from sevisflow.core.config import KafkaSettings
from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_producer
from sevisflow.core.ledger import Ledger, LedgerWriter
from sevisflow.core.serde import registry
from testkit.audit_scenario import batcher_run, scenario_records
from testkit.settings import XSD_DIR


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--outbox", required=True)
    a = ap.parse_args()
    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.render import ClosedBatch
    from sevisflow.sinks.xml.stage import sink_closed_batch
    from sevisflow.sinks.xml.xsd import load_schema

    kafka = KafkaSettings(bootstrap_servers=a.bootstrap)
    recs = scenario_records()
    run = batcher_run(updates=12, creates=3, batches=3, org="ABC214F12345000", base_ms=1718900000000, student_base=1000)
    # the batcher's batches go to topics of their own (suffix .v): the hand-written scenario above is
    # not an execution of the real batcher, so verify would (rightly) refuse it
    names = {"events": "sevis.events.v", "commands": "sevis.batch.commands.v", "batches": "sevis.batches.v"}
    for k, lst in run.items():
        recs += [(names[k], key, value, ts) for key, value, ts in lst]
    ensure_topics(
        kafka, [TopicSpec(n, 1, 1) for n in sorted({r[0] for r in recs} | {"sevis.results", "sevis.results.v"})]
    )
    producer = make_producer(kafka)
    for topic, key, value, ts in recs:
        producer.produce(topic, key=key, value=value, timestamp=ts)
    assert producer.flush(30) == 0
    root = Path(a.outbox)
    outbox = Outbox(root, root.parent / "quarantine", "America/Chicago")
    schema = load_schema(XSD_DIR)
    # sealed and anchored as the XML sink does it (the anchor on sevis.audit.ledger.v, see docs/AUDIT.md)
    writer = LedgerWriter(Ledger(root), "sink-xml", "ABC214F12345000")
    ensure_topics(kafka, [TopicSpec("sevis.audit.ledger.v", 1, 1, {"cleanup.policy": "compact"})])
    for _, value, _ in run["batches"]:
        ev = registry().decode(value)
        if ev["type"] == "closed":
            sink_closed_batch(ClosedBatch.from_event(ev, orjson.loads(ev["records_json"])), schema, outbox)
            key, head = writer.seal_archive(outbox.find(ev["batch_id"]), ev["batch_id"])
            producer.produce("sevis.audit.ledger.v", key=key, value=head)
    assert producer.flush(30) == 0
    print(f"{len(recs)} records produced; outbox {root}")


if __name__ == "__main__":
    main()
