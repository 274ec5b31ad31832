"""DSO-reported events (`sevisflow student report`): validation, the batcher's `report` command, XML, verify."""

from __future__ import annotations

import orjson
import pytest

from sevisflow.app.cli.student import report_event
from sevisflow.core.errors import SevisflowError
from sevisflow.processors.batcher.core import CommandIn, EventIn, Publish, School, apply
from sevisflow.sinks.xml.render import ClosedBatch, check_batch
from testkit.batcher import BASE_MS, ORG, command, event
from testkit.xml_samples import DSO as SAMPLE_DSO
from testkit.xml_samples import ORG_ID, REPORT_KINDS, update_record
from tests.helpers import XSD_DIR, make_settings

DSO = "DSOUSER001"


@pytest.fixture(scope="module")
def settings():
    return make_settings()  # no Kafka: only sevis.xsd_dir (the reason codes) is used


@pytest.fixture(scope="module")
def schema():
    from sevisflow.sinks.xml.xsd import load_schema

    return load_schema(XSD_DIR)


# ----------------------------------------------------------------------------- validation (CLI, pure)


def test_reprint_payload_and_reason_codes_from_the_xsd(settings):
    kind, payload, after = report_event("reprint", settings, reason="02", remarks=" travel ", print_form="true")
    assert kind == "Reprint" and payload == {"Reason": "02", "Remarks": "travel", "@printForm": "true"}
    assert after == {"reprint_reason": "02"}
    with pytest.raises(SevisflowError, match=r"not a SEVIS reprint reason code.*01, 02, 03, 04, 50, 53"):
        report_event("reprint", settings, reason="99")


def test_verify_and_disciplinary_payloads(settings):
    assert report_event("verify", settings)[:2] == ("Status.Verify", {})
    kind, payload, _ = report_event("disciplinary", settings, explanation="Suspended after a hearing")
    assert kind == "DisciplinaryAction" and payload == {"Explanation": "Suspended after a hearing"}


@pytest.mark.parametrize(
    "text,message",
    [
        ("x" * 501, "501 characters long; SEVIS allows at most 500"),
        ("   ", "is empty"),
        ("bad\x07bell", "control character \\(U\\+0007 at position 4\\)"),
    ],
)
def test_explanation_too_long_empty_or_with_control_characters(settings, text, message):
    with pytest.raises(SevisflowError, match=message):
        report_event("disciplinary", settings, explanation=text)


def test_explanation_of_500_characters_with_newlines_is_accepted(settings):
    text = ("line one\nline two\t" * 30)[:500]
    assert report_event("disciplinary", settings, explanation=text)[1]["Explanation"] == text.strip()


# ----------------------------------------------------------------------------- batcher core


def report(
    cid: str,
    kind: str,
    payload: dict,
    *,
    student: str = "S1",
    sevis_id: str | None = "N0000000001",
    dso: str | None = DSO,
    at_ms: int = BASE_MS + 5_000,
) -> CommandIn:
    body = {"kind": kind, "payload": payload, "sevis_id": sevis_id, "after": {"x": 1}, "display_name": "Doe, J"}
    return CommandIn(
        command(
            "report", cid, dso_user_id=dso, student_key=student, at_ms=at_ms, payload_json=orjson.dumps(body).decode()
        )
    )


def run(state, *inputs):
    outs = []
    for inp in inputs:
        state, o = apply(state, inp)
        outs += [x.event for x in o if isinstance(x, Publish)]
    return state, outs


def test_report_becomes_a_dso_record_with_the_command_as_lineage():
    s, outs = run(School(ORG), report("rep-1", "Reprint", {"Reason": "02"}))
    assert [o["type"] for o in outs] == ["opened", "record_added"]
    assert all(o["command_id"] == "rep-1" for o in outs)
    rec = s.records["S1:Reprint"]
    assert rec["origin"] == "dso" and rec["status"] == "open" and rec["sevis_id"] == "N0000000001"
    assert rec["lineage"] == [{"command_id": "rep-1", "dso_user_id": DSO, "requested_at_ms": BASE_MS + 5_000}]
    assert rec["event_ids"] == ["rep-1"] and rec["at_ms"] == BASE_MS + 5_000 and rec["display_name"] == "Doe, J"
    assert s.commands["rep-1"]["kind"] == "report"
    # the same command again (a redelivery) changes nothing
    s2, outs2 = run(s, report("rep-1", "Reprint", {"Reason": "02"}))
    assert outs2 == [] and s2.records == s.records


def test_a_later_report_replaces_the_earlier_one_and_holds_apply():
    s, _ = run(School(ORG), report("rep-1", "Reprint", {"Reason": "02"}))
    s, outs = run(s, report("rep-2", "Reprint", {"Reason": "03"}, at_ms=BASE_MS + 9_000))
    assert [o["type"] for o in outs] == ["record_replaced"] and "DSO DSOUSER001 (command rep-2)" in outs[0]["reason"]
    rec = s.records["S1:Reprint"]
    assert rec["payload"] == {"Reason": "03"} and rec["event_ids"] == ["rep-1", "rep-2"]
    s, _ = run(s, CommandIn(command("hold", "h1", student_key="S1", dso_user_id=DSO, reason="call the student")))
    s, outs = run(s, report("rep-3", "DisciplinaryAction", {"Explanation": "x"}))
    assert [o["type"] for o in outs] == ["record_held"] and s.records["S1:DisciplinaryAction"]["status"] == "held"


def test_report_uses_the_sevis_id_the_batcher_knows():
    s, _ = run(School(ORG), EventIn(event("S1", n=1, sevis_id="N0000000042"), BASE_MS))
    s, outs = run(s, report("rep-1", "Status.Verify", {}, sevis_id=None))
    assert outs[-1]["type"] == "record_added" and s.records["S1:Status.Verify"]["sevis_id"] == "N0000000042"


@pytest.mark.parametrize(
    "kwargs,kind,payload,why",
    [
        ({"dso": "short"}, "Reprint", {"Reason": "02"}, "exactly 10"),
        ({"dso": None}, "Reprint", {"Reason": "02"}, "user id is required"),
        ({"sevis_id": None}, "Reprint", {"Reason": "02"}, "no SEVIS ID is known for student S1"),
        ({}, "Status.Complete", {}, "cannot be reported by a DSO"),
        ({}, "Reprint", {}, "Reprint needs Reason"),
        ({}, "DisciplinaryAction", {"Explanation": ""}, "DisciplinaryAction needs Explanation"),
    ],
)
def test_bad_reports_are_rejected_with_the_reason(kwargs, kind, payload, why):
    s, outs = run(School(ORG), report("rep-x", kind, payload, **kwargs))
    assert [o["type"] for o in outs] == ["command_rejected"] and why in outs[0]["reason"]
    if "dso" in kwargs:  # a malformed command (no valid SEVIS user id): dead-lettered, not kept in the state
        assert not s.records and "rep-x" not in s.commands
    else:
        assert not s.records and "rejected" in s.commands["rep-x"]


def test_reported_record_is_closed_like_any_other():
    s, _ = run(School(ORG), EventIn(event("S2", n=1), BASE_MS), report("rep-1", "Reprint", {"Reason": "02"}))
    s, outs = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    closed = [o for o in outs if o["type"] == "closed"]
    recs = orjson.loads(closed[0]["records_json"])
    assert {r["kind"] for r in recs} == {"PersonalInfo", "Reprint"} and not s.records
    rep = next(r for r in recs if r["kind"] == "Reprint")
    assert rep["origin"] == "dso" and rep["lineage"][0]["command_id"] == "rep-1" and "status" not in rep


# ----------------------------------------------------------------------------- XML (render + XSD)


@pytest.mark.parametrize(
    "kind,path",
    [
        ("Reprint", "Reprint/Reason"),
        ("Status.Verify", "Status/Verify"),
        ("DisciplinaryAction", "DisciplinaryAction/Explanation"),
    ],
)
def test_each_reported_event_renders_and_validates(schema, kind, path):
    from lxml import etree

    assert kind in REPORT_KINDS
    checked = check_batch(ClosedBatch(ORG_ID, "SFTEST00000021", SAMPLE_DSO, 0, (update_record(1, kind),)), schema)
    assert checked.problems == []
    student = etree.fromstring(checked.xml).find("UpdateStudent/Student")
    assert student.find(path) is not None
    if kind == "Reprint":  # XSD order: Reason before Remarks although the sample dict has them reversed
        assert [c.tag for c in student.find("Reprint")] == ["Reason", "Remarks"]
        assert student.find("Reprint").get("printForm") == "true"
    if kind == "Status.Verify":
        assert len(student.find("Status/Verify")) == 0 and not (student.find("Status/Verify").text or "").strip()


def test_too_long_explanation_fails_the_xsd_for_that_record(schema):
    rec = update_record(1, "DisciplinaryAction", payload={"Explanation": "x" * 501})
    checked = check_batch(ClosedBatch(ORG_ID, "SFTEST00000022", SAMPLE_DSO, 0, (rec,)), schema)
    assert [p.record_id for p in checked.problems] == ["S00000001:DisciplinaryAction"]


# ----------------------------------------------------------------------------- verify


def test_batch_with_a_reported_record_verifies_identical(tmp_path, schema):
    """Events + a report command + close → sink → verify: archive, render, batching and sources all ok."""
    from sevisflow.app.audit.decode import decode_record
    from sevisflow.app.audit.verify import VerifyContext, verify_batch
    from sevisflow.core.serde import registry
    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.stage import sink_closed_batch

    org = ORG_ID
    ev = event("S2", n=1, org=org, origin="dso", payload={"@printForm": "false", "Email": "s@example.edu"})
    body = {
        "kind": "Reprint",
        "payload": {"Reason": "02", "@printForm": "true"},
        "sevis_id": "N0000000007",
        "after": {"reprint_reason": "02"},
        "display_name": None,
    }
    rep = command(
        "report",
        "report-abc",
        org=org,
        dso_user_id=DSO,
        student_key="S1",
        at_ms=BASE_MS + 2_000,
        payload_json=orjson.dumps(body).decode(),
    )
    close = command("close", "close-1", org=org, dso_user_id=DSO, at_ms=BASE_MS + 60_000)
    state, batches = School(org), []
    for inp in (EventIn(ev, BASE_MS + 1_000), CommandIn(rep), CommandIn(close)):
        state, outs = apply(state, inp)
        batches += [o.event for o in outs if isinstance(o, Publish)]
    enc = registry().encode
    events = [
        decode_record("sevis.events", 0, 0, org.encode(), enc("sevisflow.events.SevisEvent", ev), (1, BASE_MS + 1_000))
    ]
    commands = [
        decode_record(
            "sevis.batch.commands",
            0,
            i,
            org.encode(),
            enc("sevisflow.commands.BatchCommand", c),
            (1, c["requested_at_ms"]),
        )
        for i, c in enumerate((rep, close))
    ]
    dec_batches = [
        decode_record("sevis.batches", 0, i, org.encode(), enc("sevisflow.batches.BatchEvent", b), (1, b["at_ms"]))
        for i, b in enumerate(batches)
    ]
    closed = next(b for b in batches if b["type"] == "closed")
    outbox = Outbox(tmp_path / "outbox", tmp_path / "q", "America/Chicago")
    res = sink_closed_batch(ClosedBatch.from_event(closed, orjson.loads(closed["records_json"])), schema, outbox)
    assert res.status == "written"
    # a change topic is retained (any record): the sources check then runs and finds the report command
    ctx = VerifyContext(
        batches=dec_batches,
        events=events,
        commands=commands,
        results=[],
        changes=[events[0]],
        outbox=outbox,
        schema=schema,
    )
    v = verify_batch(closed["batch_id"], ctx)
    status = {c.name: c.status for c in v.checks}
    assert status["archive"] == status["render"] == status["batching"] == status["sources"] == "ok", v.to_json()
    # without the retained report command the batch no longer verifies
    ctx2 = VerifyContext(
        batches=dec_batches,
        events=events,
        commands=commands[1:],
        results=[],
        changes=[events[0]],
        outbox=outbox,
        schema=schema,
    )
    v2 = verify_batch(closed["batch_id"], ctx2)
    bad = {c.name: c.message for c in v2.checks if c.status == "failed"}
    assert "batching" in bad and "command report-abc" in bad["sources"]
