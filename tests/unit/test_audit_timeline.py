"""The pure audit views: a student replaced, held, released, rejected by SEVIS and resent; a batch report."""

from __future__ import annotations

from sevisflow.app.audit.timeline import batch_report, format_batch_records, format_timeline, student_timeline
from testkit.audit_scenario import BATCH_1, BATCH_2, DSO, OTHER, STUDENT, decoded_scenario


def _inputs():
    recs = decoded_scenario()
    changes = recs["sis.public.person"] + recs["sis.public.address"] + recs["sis.public.enrollment"]
    return {
        "changes": changes,
        "events": recs["sevis.events"],
        "batches": recs["sevis.batches"],
        "results": recs["sevis.results"],
        "commands": recs["sevis.batch.commands"],
    }


def test_student_timeline_shows_every_step_in_order():
    tl = student_timeline(STUDENT, **_inputs())
    whats = [s.what for s in tl.steps]
    stages = [s.stage for s in tl.steps]
    # every stage is there
    assert set(stages) == {"sis", "event", "batch", "command", "result"}
    assert tl.batches == [BATCH_1, BATCH_2]

    # the story, in order
    def idx(prefix: str) -> int:
        return next(i for i, w in enumerate(whats) if w.startswith(prefix))

    order = [
        idx("SIS change u public.person → event(s) e-208"),
        idx("SEVIS event PersonalInfo"),
        idx("record added: S00000042:PersonalInfo"),
        idx("SIS change u public.address → event(s) e-308"),
        idx("record replaced: S00000042:PersonalInfo"),
        idx("DSO command hold"),
        idx("record held"),
        idx("DSO command release"),
        idx("record released"),
        idx(f"DSO command close of batch {BATCH_1} by {DSO}"),
        idx(f"closed into batch {BATCH_1} by {DSO}: PersonalInfo request 2.{STUDENT}"),
        idx(f"SEVIS result for {BATCH_1} request 2.{STUDENT}: failure S1056"),
        idx("SIS change u public.person → event(s) e-408"),
        idx(f"closed into batch {BATCH_2}"),
        idx(f"SEVIS result for {BATCH_2} request 4.{STUDENT}: success"),
    ]
    assert order == sorted(order)
    # the snapshot row is the student's but produced no SEVIS event
    assert tl.unreported_changes == 1
    assert any(w.startswith("SIS change r public.person") and w.endswith("(no SEVIS event)") for w in whats)
    # nothing of the other student
    assert not any(OTHER in w for w in whats)
    replaced = next(s for s in tl.steps if s.what.startswith("record replaced"))
    assert replaced.details["event_ids"] == ["e-208", "e-308"]
    assert "replaces event e-208" in replaced.details["reason"]


def test_timeline_lineage_links_sis_change_to_event_to_batch():
    tl = student_timeline(STUDENT, **_inputs())
    closed = next(s for s in tl.steps if s.what.startswith(f"closed into batch {BATCH_1}"))
    assert closed.details["lineage"] == ["sis.public.person[0]@2", "sis.public.address[0]@0"]
    refs = {s.ref for s in tl.steps if s.stage == "sis"}
    assert set(closed.details["lineage"]) <= refs


def test_timeline_without_change_topics_still_has_events_and_results():
    inputs = _inputs()
    inputs["changes"] = []
    tl = student_timeline(STUDENT, **inputs)
    assert "sis" not in {s.stage for s in tl.steps}
    assert sum(1 for s in tl.steps if s.stage == "result") == 2


def test_timeline_json_and_table_carry_no_names():
    tl = student_timeline(STUDENT, **_inputs())
    text = repr(tl.to_json()) + repr(format_timeline(tl))
    for name in ("Ana", "Exampel", "Example-Fixed", "Main St"):
        assert name not in text


def test_upload_steps_from_outbox_state():
    inputs = _inputs()
    uploads = {
        BATCH_1: {
            "state": "processed",
            "day": "2024-06-19",
            "history": [{"at": 1718781000.5, "what": "upload", "code": "S0000"}],
        }
    }
    tl = student_timeline(STUDENT, uploads=uploads, **inputs)
    up = [s for s in tl.steps if s.stage == "upload"]
    assert len(up) == 1 and up[0].what == f"upload of batch {BATCH_1} S0000" and up[0].at_ms == 1718781000500


def test_batch_report_who_when_what_and_answers():
    inputs = _inputs()
    r = batch_report(BATCH_1, batches=inputs["batches"], results=inputs["results"], commands=inputs["commands"])
    assert r.found
    assert r.closed["closed_by"] == DSO and r.closed["command_id"] == "c-close-1"
    assert r.close_command["dso_user_id"] == DSO and r.close_command["reviewed_revision"] == 7
    assert [x["request_id"] for x in r.records] == [f"2.{STUDENT}", f"3.{OTHER}"]
    assert r.records[0]["result"]["status"] == "failure" and r.records[0]["result"]["error_code"] == "S1056"
    assert r.records[1]["result"]["status"] == "success"
    assert r.records[0]["lineage"] == ["sis.public.person[0]@2", "sis.public.address[0]@0"]
    assert r.counts() == {"records": 2, "creates": 0, "updates": 2, "success": 1, "failure": 1, "pending": 0}
    rows = format_batch_records(r)
    assert rows[0][-1] == "failure S1056"


def test_batch_report_unknown_batch_and_pending_and_unmatched():
    inputs = _inputs()
    assert not batch_report("S0000000000000", batches=inputs["batches"]).found
    r = batch_report(BATCH_2, batches=inputs["batches"], results=[], commands=inputs["commands"])
    assert r.counts()["pending"] == 1
    r = batch_report(BATCH_1, batches=inputs["batches"], results=inputs["results"][:1] + inputs["results"][2:])
    assert r.unmatched_results == []
    from dataclasses import replace

    bogus = replace(inputs["results"][0], value=dict(inputs["results"][0].value, request_id="zz.S9"))
    r = batch_report(BATCH_1, batches=inputs["batches"], results=[bogus])
    assert [u["request_id"] for u in r.unmatched_results] == ["zz.S9"]
