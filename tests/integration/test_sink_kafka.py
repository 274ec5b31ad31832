"""On real Kafka: closed BatchEvent in → XML in the outbox → upload to the simulator → sevis.results out."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest

from sevisflow.app.cli import main as cli_main
from sevisflow.core.kafka_io import ensure_topics, flush_or_raise, make_producer, produce, read_topic
from sevisflow.core.serde import registry
from sevisflow.core.topics import pipeline_topics
from sevisflow.sinks.sevis_sim import SevisSimulator
from sevisflow.sinks.xml.render import ClosedBatch
from testkit.xml_samples import DSO, ORG_ID, create_record, update_record
from tests.helpers import XSD_DIR, make_settings
from tests.upload_support import sim_sevis

pytestmark = pytest.mark.integration


def closed_event(batch: ClosedBatch) -> bytes:
    return registry().encode(
        "sevisflow.batches.BatchEvent",
        {
            "org_id": batch.org_id,
            "batch_id": batch.batch_id,
            "type": "closed",
            "revision": 7,
            "at_ms": batch.at_ms,
            "records_json": orjson.dumps(list(batch.records)).decode(),
            "closed_by": batch.closed_by,
            "command_id": "close-1",
        },
    )


def wait_for(cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def read_all(settings, topic, schema):
    return [registry().decode(m.value(), schema) for m in read_topic(settings.kafka, topic) if m.value()]


def test_closed_batch_to_results(kafka_stack, unique, tmp_path: Path, capsys):
    sim = SevisSimulator(tmp_path / "certs", XSD_DIR, known_sevis_ids=["N0000000002"])
    sim.start()
    try:
        settings = make_settings(
            kafka_stack,
            unique=unique,
            sevis=sim_sevis(sim, tmp_path, poll_interval_s=0.2, retry_base_s=0.1, retry_max_s=0.5),
        )
        ensure_topics(settings.kafka, pipeline_topics(settings))
        good = ClosedBatch(
            ORG_ID,
            f"KT{unique:0>12}",
            DSO,
            1748921400000,
            (
                create_record(1),
                update_record(2, "Status.Complete", sevis_id="N0000000002"),
                update_record(3, "Status.Complete", sevis_id="N0000000003"),
            ),
        )
        bad = ClosedBatch(
            ORG_ID,
            f"KB{unique:0>12}",
            DSO,
            1748921400000,
            (create_record(4, last="N4me"), update_record(5, "Status.Complete")),
        )
        producer = make_producer(settings.kafka)
        errors: list = []
        for b in (good, bad, good):  # the good batch delivered twice
            produce(producer, settings.topics.batches, ORG_ID.encode(), closed_event(b))
        flush_or_raise(producer, errors)

        from sevisflow.sinks.sevis import run as run_sevis
        from sevisflow.sinks.xml import run as run_xml

        stop = threading.Event()
        threads = [
            threading.Thread(target=run_xml, args=(settings, stop), daemon=True),
            threading.Thread(target=run_sevis, args=(settings, stop), daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(read_all(settings, settings.topics.results, "sevisflow.results.SevisResult")) >= 3)
            wait_for(
                lambda: any(
                    c["kind"] == "requeue"
                    for c in read_all(settings, settings.topics.commands, "sevisflow.commands.BatchCommand")
                )
            )
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        results = read_all(settings, settings.topics.results, "sevisflow.results.SevisResult")
        assert [(r["request_id"], r["status"], r["error_code"]) for r in results] == [
            (good.records[0]["request_id"], "success", None),
            (good.records[1]["request_id"], "success", None),
            (good.records[2]["request_id"], "failure", "S1003"),
        ]
        assert results[0]["sevis_id"].startswith("N") and results[0]["student_key"] == "S00000001"
        assert sim.upload_count(good.batch_id) == 1 and sim.upload_count(bad.batch_id) == 0
        assert len(list((tmp_path / "outbox").rglob(f"{good.batch_id}.xml"))) == 1
        assert not list((tmp_path / "outbox").rglob(f"{bad.batch_id}*"))
        assert len(list((tmp_path / "quarantine").rglob("*.xml"))) == 1
        dead = read_all(settings, settings.topics.dlq, "sevisflow.dlq.DeadLetter")
        assert [(d["stage"], d["student_key"], d["field"]) for d in dead] == [
            ("sink_xml", "S00000004", "PersonalInfo/FullName/LastName")
        ]
        cmds = read_all(settings, settings.topics.commands, "sevisflow.commands.BatchCommand")
        assert [(c["kind"], c["batch_id"], c["record_ids"]) for c in cmds] == [
            ("requeue", bad.batch_id, [bad.records[1]["record_id"]])
        ]

        # the CLI shows them
        import os

        env = {f"SEVISFLOW_TOPICS_{k.upper()}": v for k, v in (("results", settings.topics.results),)}
        env["SEVISFLOW_KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka.bootstrap_servers
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            capsys.readouterr()
            assert cli_main(["results", good.batch_id]) == 0
            out = capsys.readouterr().out
            assert "S1003" in out and "1 rejected" in out
            assert cli_main(["results", good.batch_id, "--json"]) == 0
            assert len(orjson.loads(capsys.readouterr().out)) == 3
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        sim.stop()
