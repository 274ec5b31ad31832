"""On real Kafka: a closed batch with 1 record the XSD refuses + N good ones → the N good ones reach ``ready/``
in a new document without another DSO close; the bad one is a dead letter for the DSO; the batcher's history on
sevis.batches is reproduced by the pure batcher (what ``sevisflow verify`` checks) and the new document renders
byte for byte from its closed event."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sevisflow.app.audit.decode import decode_message
from sevisflow.app.audit.verify import guided_batcher_replay
from sevisflow.core.kafka_io import read_topic
from sevisflow.core.serde import registry
from sevisflow.sinks.xml.render import ClosedBatch, check_batch
from sevisflow.sinks.xml.xsd import load_schema
from testkit.batcher import ORG, command, event
from tests.batcher_support import DSO, Batcher, closed_of, records_of, send_command, send_events, setup_topics, wait_for
from tests.helpers import XSD_DIR, make_settings

pytestmark = pytest.mark.integration

GOOD = 4


def _decoded(settings, topic):
    return [decode_message(m) for m in read_topic(settings.kafka, topic)]


def test_one_bad_record_quarantined_the_good_ones_go_out_without_another_close(kafka_stack, unique, tmp_path: Path):
    settings = make_settings(
        kafka_stack,
        unique=unique,
        school={"org_id": ORG, "timezone": "America/Chicago"},
        sevis={"outbox_dir": str(tmp_path / "outbox"), "quarantine_dir": str(tmp_path / "quarantine")},
    )
    setup_topics(settings)
    # the bad one comes straight onto sevis.events (an older processor, or a forged producer): the events stage
    # would have refused it, so the sink's validation is the last line here
    bad = event("S0009", n=9, payload={"@printForm": "false", "Email": "not an e-mail"})
    send_events(settings, [event(f"S000{i}", n=i) for i in range(1, GOOD + 1)] + [bad])

    from sevisflow.sinks.xml import run as run_xml

    batcher = Batcher(settings)
    stop = threading.Event()
    xml = threading.Thread(target=run_xml, args=(settings, stop), daemon=True)
    xml.start()
    try:
        wait_for(settings, lambda evs: sum(e["type"] == "record_added" for e in evs) == GOOD + 1, timeout=90)
        send_command(settings, command("close", "close-dso-1", dso_user_id=DSO, at_ms=int(time.time() * 1000)))
        evs = wait_for(settings, lambda evs: len(closed_of(evs)) == 2, timeout=120)
        first, second = closed_of(evs)
        deadline = time.monotonic() + 60
        while not list((tmp_path / "outbox").rglob(f"ready/{second['batch_id']}/*.xml")):
            assert time.monotonic() < deadline, "the re-sent batch never reached ready/"
            time.sleep(0.3)
    finally:
        stop.set()
        xml.join(30)
        batcher.stop()

    # exactly one DSO close; the second document was closed by the sink's requeue, at once, same DSO and time
    cmds = [
        registry().decode(m.value(), "sevisflow.commands.BatchCommand")
        for m in read_topic(settings.kafka, settings.topics.commands)
        if m.value()
    ]
    assert [(c["kind"], c["command_id"]) for c in cmds] == [
        ("close", "close-dso-1"),
        ("requeue", f"requeue-{first['batch_id']}-xsd"),
    ]
    assert second["command_id"] == f"requeue-{first['batch_id']}-xsd"
    assert (second["closed_by"], second["at_ms"]) == (first["closed_by"], first["at_ms"])
    assert len(records_of(first)) == GOOD + 1
    assert sorted(r["student_key"] for r in records_of(second)) == [f"S000{i}" for i in range(1, GOOD + 1)]
    # the first document sits in the quarantine only; the second is ready, valid and what its closed event renders
    assert list((tmp_path / "quarantine").rglob(f"{first['batch_id']}.xml"))
    assert not list((tmp_path / "outbox").rglob(f"{first['batch_id']}*"))
    (ready,) = list((tmp_path / "outbox").rglob(f"ready/{second['batch_id']}/{second['batch_id']}.xml"))
    rendered = check_batch(ClosedBatch.from_event(second, records_of(second)), load_schema(XSD_DIR))
    assert rendered.ok and ready.read_bytes() == rendered.xml
    # the bad record went to the DSO, naming the field, without the value
    dead = [
        registry().decode(m.value(), "sevisflow.dlq.DeadLetter")
        for m in read_topic(settings.kafka, settings.topics.dlq)
        if m.value()
    ]
    assert [(d["stage"], d["student_key"]) for d in dead] == [("sink_xml", "S0009")]
    assert "Email" in (dead[0]["field"] or "") and "not an e-mail" not in dead[0]["reason"]
    # verify's batching check: the pure batcher over the retained inputs reproduces every batch event, both closes
    rep = guided_batcher_replay(
        ORG,
        _decoded(settings, settings.topics.events),
        _decoded(settings, settings.topics.commands),
        _decoded(settings, settings.topics.results),
        _decoded(settings, settings.topics.batches),
    )
    assert rep.divergence is None and rep.reproduced == rep.recorded
    assert rep.closed[second["batch_id"]] == second and rep.closed[first["batch_id"]] == first
