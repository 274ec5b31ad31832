"""EV batches through the SEVIS sink against the simulator over real TLS (publisher faked; Kafka elsewhere).

Upload → SEVIS's EV answers (new SEVIS ID, dependent SEVIS IDs, SiteIds, S2xxx codes, DS-2019s) →
download → results with the SIS key of every new id → the batcher puts the ids into the records that
wait for them; a second batch uses them and SEVIS accepts it.
"""

from __future__ import annotations

import time

import orjson
import pytest
from lxml import etree

from sevisflow.processors.batcher.core import EventIn, ResultIn, School, apply
from sevisflow.sinks.sevis.client import SevisClient
from sevisflow.sinks.sevis.uploader import SevisSink
from sevisflow.sinks.xml.document import check_document
from sevisflow.sinks.xml.render import ClosedBatch
from sevisflow.sinks.xml.stage import sink_closed_batch
from sevisflow.sinks.xml.xsd import load_schema, load_translog_schema
from testkit.batcher import BASE_MS, event
from testkit.xml_samples import DSO, ORG_ID, sample_batch
from tests.ev_support import PROGRAM, RO_USER, UPDATE_PAYLOADS, batch_of, create_record, update_record
from tests.helpers import XSD_DIR
from tests.upload_support import FakePublisher, outbox_of, settings_for, states

pytestmark = pytest.mark.integration


def drive(sink: SevisSink, done, steps: int = 80) -> None:
    for _ in range(steps):
        sink.step()
        if done():
            return
        time.sleep(0.02)
    raise AssertionError(f"did not get there: {sink.outbox.root}")


def put(settings, batch: ClosedBatch) -> None:
    assert sink_closed_batch(batch, load_schema(XSD_DIR), outbox_of(settings)).status == "written"


def upload_and_download(sim, settings, batch: ClosedBatch, pub: FakePublisher) -> list[dict]:
    put(settings, batch)
    before = len(pub.published)
    drive(
        SevisSink(settings, outbox_of(settings), pub), lambda: batch.batch_id in states(settings).get("processed", [])
    )
    return pub.published[before:]


def test_ev_batch_round_trip_new_ids_and_s2_codes(sim, tmp_path) -> None:
    settings = settings_for(sim, tmp_path)
    known = "N0000000002"  # the simulator's conftest knows this SEVIS ID
    batch = batch_of(
        [
            create_record(1, dependents=2, sites=2),
            update_record(2, "EV.Validate", UPDATE_PAYLOADS["EV.Validate"], known),
            update_record(3, "EV.Dependent.Edit", UPDATE_PAYLOADS["EV.Dependent.Edit"], known),
            update_record(4, "EV.SiteOfActivity.Edit", UPDATE_PAYLOADS["EV.SiteOfActivity.Edit"], known),
            update_record(5, "EV.Program.Extension", UPDATE_PAYLOADS["EV.Program.Extension"], "N0000009999"),
        ],
        batch_id="EVUPLD00000001",
    )
    pub = FakePublisher()
    results = upload_and_download(sim, settings, batch, pub)
    by = {r["request_id"]: r for r in results}
    create = by["C00000001"]
    assert create["status"] == "success" and create["kind"] == "EV.Create" and create["student_key"] == "J0000001"
    ev_id = create["sevis_id"]
    assert ev_id and ev_id.startswith("N") and len(ev_id) == 11
    deps = orjson.loads(create["dependents_json"])
    assert sorted(d["sis_key"] for d in deps) == ["D1-0", "D1-1"]
    assert all(d["dependent_sevis_id"].startswith("N") for d in deps)
    sites = orjson.loads(create["sites_json"])
    assert [(s["sis_key"], s["site_name"]) for s in sites] == [
        ("ST1-0", "Fictional Lab 0"),
        ("ST1-1", "Fictional Lab 1"),
    ]
    assert all(s["site_id"].isdigit() for s in sites)
    assert by["U00000002"]["status"] == "success"
    # an EV SEVIS had before the simulator: its dependents and sites are not the simulator's to know
    assert by["U00000003"]["status"] == by["U00000004"]["status"] == "success"
    assert (by["U00000005"]["status"], by["U00000005"]["error_code"]) == ("failure", "S2001")
    assert {r["process_code"] for r in results} == {"S0020"}
    folder = next(outbox_of(settings).batches("processed")).path
    log = (folder / "results" / "sevis_transaction_log.xml").read_bytes()
    assert load_translog_schema(XSD_DIR).validate(etree.fromstring(log))
    pdfs = sorted(p.name for p in (folder / "results").glob("*.pdf"))
    assert pdfs == sorted([f"{ev_id}_DS2019.pdf", *(f"{d['dependent_sevis_id']}_DS2019.pdf" for d in deps)])
    assert sim.upload_count("EVUPLD00000001", "S0000") == 1


def test_the_returned_ids_reach_the_waiting_records_and_the_next_batch_is_accepted(sim, tmp_path) -> None:
    settings = settings_for(sim, tmp_path)
    pub = FakePublisher()
    first = upload_and_download(
        sim, settings, batch_of([create_record(1, dependents=1, sites=2)], batch_id="EVUPLD00000002"), pub
    )
    create = first[0]
    ev_id = create["sevis_id"]
    # the batcher holds the exchange visitor's later events: a dependent edit waits for the dependent SEVIS ID
    student = "J0000001"
    dep_edit = {**UPDATE_PAYLOADS["EV.Dependent.Edit"], "@sisKey": "D1-0"}
    dep_edit.pop("@dependentSevisID")
    site_delete = {"@sisKey": "ST1-1", "SiteName": "Fictional Lab 1"}
    state = School(org_id=PROGRAM)
    for n, (kind, payload) in enumerate(
        (("EV.Dependent.Edit", dep_edit), ("EV.SiteOfActivity.Delete", site_delete)), start=1
    ):
        ev = event(student, kind, n=n, org=PROGRAM, payload=payload, sevis_id=None, coalesce_key=kind)
        state, _ = apply(state, EventIn(ev, at_ms=BASE_MS + n))
    assert {r["status"] for r in state.records.values()} == {"waiting"}
    for res in first:  # what the SEVIS sink published on sevis.results
        state, _ = apply(state, ResultIn(res, at_ms=BASE_MS + 100))
    recs = {r["kind"]: r for r in state.records.values()}
    assert {r["status"] for r in recs.values()} == {"open"}
    dep_id = orjson.loads(create["dependents_json"])[0]["dependent_sevis_id"]
    site_id = next(s["site_id"] for s in orjson.loads(create["sites_json"]) if s["sis_key"] == "ST1-1")
    assert recs["EV.Dependent.Edit"]["payload"]["@dependentSevisID"] == dep_id
    assert recs["EV.SiteOfActivity.Delete"]["payload"]["SiteId"] == site_id
    assert {r["sevis_id"] for r in recs.values()} == {ev_id}
    # the next batch carries them, plus a new dependent and a new site: SEVIS accepts all and answers their ids
    second = batch_of(
        [
            dict(r, request_id=f"U{i:08d}", user_defined_a=student)
            for i, r in enumerate(sorted(recs.values(), key=lambda r: r["kind"]), start=1)
        ]
        + [
            update_record(1, "EV.Dependent.Add", UPDATE_PAYLOADS["EV.Dependent.Add"], ev_id)
            | {"request_id": "U00000010"},
            update_record(1, "EV.SiteOfActivity.Add", UPDATE_PAYLOADS["EV.SiteOfActivity.Add"], ev_id)
            | {"request_id": "U00000011"},
        ],
        batch_id="EVUPLD00000003",
    )
    results = {r["request_id"]: r for r in upload_and_download(sim, settings, second, pub)}
    assert {r["status"] for r in results.values()} == {"success"}, results
    assert [(d["sis_key"]) for d in orjson.loads(results["U00000010"]["dependents_json"])] == ["D9"]
    assert [(s["sis_key"]) for s in orjson.loads(results["U00000011"]["sites_json"])] == ["ST9"]
    # ids this EV does not have: the deleted site, the deleted-site's id again, a dependent SEVIS never gave it
    third = batch_of(
        [
            update_record(1, "EV.SiteOfActivity.Delete", {"SiteId": site_id}, ev_id),
            update_record(2, "EV.Dependent.Edit", UPDATE_PAYLOADS["EV.Dependent.Edit"], ev_id),
            update_record(3, "EV.SiteOfActivity.Edit", UPDATE_PAYLOADS["EV.SiteOfActivity.Edit"], ev_id),
        ],
        batch_id="EVUPLD00000008",
    )
    results = {r["request_id"]: r for r in upload_and_download(sim, settings, third, pub)}
    assert [(results[f"U0000000{i}"]["status"], results[f"U0000000{i}"]["error_code"]) for i in (1, 2, 3)] == [
        ("failure", "S2129"),
        ("failure", "S2232"),
        ("failure", "S2129"),
    ]


def test_the_simulator_refuses_mixed_up_documents(sim, tmp_path) -> None:
    settings = settings_for(sim, tmp_path)
    client = SevisClient(settings.sevis)
    ev_xml, _ = check_document(batch_of([create_record(1)], batch_id="EVUPLD00000004"), load_schema(XSD_DIR))
    assert client.upload(PROGRAM, RO_USER, "EVUPLD00000004", "a.xml", ev_xml.xml).code == "S0000"
    under_school = ev_xml.xml.replace(PROGRAM.encode(), ORG_ID.encode()).replace(b"EVUPLD00000004", b"EVUPLD00000005")
    assert client.upload(ORG_ID, RO_USER, "EVUPLD00000005", "a.xml", under_school).code == "S0002"
    student, _ = check_document(sample_batch(1, 1, batch_id="EVUPLD00000006", org_id=PROGRAM), load_schema(XSD_DIR))
    assert client.upload(PROGRAM, DSO, "EVUPLD00000006", "a.xml", student.xml).code == "S0002"
    invalid = ev_xml.xml.replace(b"EVUPLD00000004", b"EVUPLD00000007").replace(b"<CategoryCode>08", b"<CategoryCode>99")
    assert client.upload(PROGRAM, RO_USER, "EVUPLD00000007", "a.xml", invalid).code == "S0013"


def test_on_kafka_the_ids_sevis_returns_reach_the_waiting_ev_record(kafka_stack, unique, tmp_path) -> None:
    """Real Kafka and HTTPS: a closed EV batch → XML sink → SEVIS sink → sevis.results → the batcher puts the new
    dependent SEVIS ID into the exchange visitor's waiting Dependent.Edit and releases it; a batch mixing F/M and
    EV records is dead-lettered with the fix and never written."""
    import threading

    from sevisflow.core.kafka_io import ensure_topics, read_topic
    from sevisflow.core.serde import registry
    from sevisflow.core.topics import pipeline_topics
    from sevisflow.processors.batcher import batcher_topics
    from sevisflow.processors.batcher import run as run_batcher
    from sevisflow.sinks.sevis import run as run_sevis
    from sevisflow.sinks.xml import run as run_xml
    from testkit.xml_samples import create_record as fm_create
    from tests.batcher_support import send, send_events
    from tests.helpers import make_settings
    from tests.upload_support import sim_sevis

    settings = make_settings(
        kafka_stack,
        unique=unique,
        school={"timezone": "America/Chicago"},
        sevis=sim_sevis(
            sim_for_kafka := _sim(tmp_path), tmp_path, poll_interval_s=0.2, retry_base_s=0.1, retry_max_s=0.5
        ),
    ).replace(exchange_programs=[{"program_number": PROGRAM, "sis_program": "RSCH", "ro_user_id": RO_USER}])
    try:
        ensure_topics(settings.kafka, pipeline_topics(settings) + batcher_topics(settings))
        student = "J0000001"
        dep_edit = {k: v for k, v in UPDATE_PAYLOADS["EV.Dependent.Edit"].items() if k != "@dependentSevisID"}
        send_events(
            settings,
            [
                event(
                    student,
                    "EV.Dependent.Edit",
                    n=1,
                    org=PROGRAM,
                    sevis_id=None,
                    payload={**dep_edit, "@sisKey": "D1-0"},
                    coalesce_key="EV.Dependent:D1-0",
                )
            ],
        )
        batch = batch_of([create_record(1, dependents=1, sites=1)], batch_id=f"EK{unique[-12:]:0>12}")
        mixed = batch_of([create_record(2), fm_create(3)], batch_id=f"EM{unique[-12:]:0>12}")
        send(settings, settings.topics.batches, "sevisflow.batches.BatchEvent", [_closed(b) for b in (batch, mixed)])
        stop = threading.Event()

        def dependent_edit(type_: str) -> dict | None:
            for m in read_topic(settings.kafka, settings.topics.batches):
                ev = registry().decode(m.value(), "sevisflow.batches.BatchEvent") if m.value() else {}
                rec = orjson.loads(ev.get("record_json") or "null") or {}
                if ev.get("type") == type_ and rec.get("kind") == "EV.Dependent.Edit":
                    return rec
            return None

        def released() -> dict | None:
            return dependent_edit("record_released")

        # the batcher holds the edit (record_waiting: no dependent id yet) before SEVIS's answer exists: were the
        # answer applied first, the edit would come in already filled, as record_added, and nothing be released
        threads = [threading.Thread(target=run_batcher, args=(settings, stop), daemon=True)]
        threads[0].start()
        deadline = time.monotonic() + 60
        while (waiting := dependent_edit("record_waiting")) is None and time.monotonic() < deadline:
            time.sleep(0.3)
        assert waiting is not None and waiting["status"] == "waiting", waiting
        threads += [threading.Thread(target=f, args=(settings, stop), daemon=True) for f in (run_xml, run_sevis)]
        for t in threads[1:]:
            t.start()

        try:
            deadline = time.monotonic() + 120
            while released() is None and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        rec = released()
        assert rec is not None, "the waiting Dependent.Edit was never released"
        results = [
            registry().decode(m.value(), "sevisflow.results.SevisResult")
            for m in read_topic(settings.kafka, settings.topics.results)
            if m.value()
        ]
        create = next(r for r in results if r["kind"] == "EV.Create")
        dep = orjson.loads(create["dependents_json"])[0]
        assert dep["sis_key"] == "D1-0" and orjson.loads(create["sites_json"])[0]["sis_key"] == "ST1-0"
        assert rec["sevis_id"] == create["sevis_id"] and rec["status"] == "open"
        assert rec["payload"]["@dependentSevisID"] == dep["dependent_sevis_id"]
        dead = [
            registry().decode(m.value(), "sevisflow.dlq.DeadLetter")
            for m in read_topic(settings.kafka, settings.topics.dlq)
            if m.value()
        ]
        assert any(d["code"] == "mixed_batch" and "[[exchange_programs]]" in d["reason"] for d in dead)
        assert (
            sim_for_kafka.post_count(mixed.batch_id) == 0 and sim_for_kafka.upload_count(batch.batch_id, "S0000") == 1
        )
    finally:
        sim_for_kafka.stop()


def _sim(tmp_path):
    from sevisflow.sinks.sevis_sim import SevisSimulator

    s = SevisSimulator(tmp_path / "kcerts", XSD_DIR)
    s.start()
    return s


def _closed(batch: ClosedBatch) -> dict:
    return {
        "org_id": batch.org_id,
        "batch_id": batch.batch_id,
        "type": "closed",
        "revision": 1,
        "at_ms": batch.at_ms,
        "records_json": orjson.dumps(list(batch.records)).decode(),
        "closed_by": batch.closed_by,
        "command_id": f"close-{batch.batch_id}",
    }
