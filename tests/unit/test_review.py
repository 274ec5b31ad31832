"""The DSO's review screens in words: values, hidden unchanged fields, filters, holds, escaping."""

from __future__ import annotations

from sevisflow.app.cli import review
from sevisflow.app.cli.common import clean, format_table
from sevisflow.app.labels import Labels
from sevisflow.processors.batcher.core import CommandIn, EventIn, Publish, School, apply
from sevisflow.processors.batcher.view import build_view
from testkit.batcher import BASE_MS, ORG, command, event
from tests.helpers import XSD_DIR

TZ = "America/Chicago"
LAB = Labels(XSD_DIR)


def view_of(*inputs):
    s, published = School(ORG), []
    for inp in inputs:
        s, outs = apply(s, inp)
        published.extend(o.event for o in outs if isinstance(o, Publish))
    return build_view(ORG, published)


def rec(kind="PersonalInfo", before=None, after=None, payload=None, **kw):
    return {"kind": kind, "before": before, "after": after, "payload": payload or {}, "lineage": [], **kw}


def test_values_in_words():
    assert review.number("1E+1") == "10" and review.number("12.50") == "12.5" and review.number("0") == "0"
    assert review.money(30000) == "$30,000"
    assert review.day("2026-12-18") == "Dec 18, 2026"
    assert review.when(BASE_MS, TZ) == "Jun 15, 2025 10:06 CDT"  # the school's zone, not UTC
    assert review.when(BASE_MS, "Pacific/Pago_Pago") == "Jun 15, 2025 04:06 SST"
    assert review.value_lines("registration.confirmed_at", "2025-08-25T14:30:00Z", LAB, TZ) == [
        "Aug 25, 2025 09:30 CDT"
    ]
    assert review.value_lines("commuter", False, LAB, TZ) == ["no"]
    assert review.value_lines("registration.credit_hours", "1E+1", LAB, TZ) == ["10"]
    assert review.value_lines("citizenship_country", "CH", LAB, TZ) == ["China (CH)"]
    assert review.value_lines("address.foreign", {"line1": "Calle 5", "city": "Puebla", "country": "MX"}, LAB, TZ) == [
        "Calle 5",
        "Puebla",
        "Mexico (MX)",
    ]


def test_only_changed_fields_are_shown():
    r = rec(
        before={"first_name": "Shuang", "last_name": "Li", "email": "a@x.example"},
        after={"first_name": "Shuang", "last_name": "Lee", "email": "a@x.example"},
    )
    chs = review.changes(r, LAB, TZ)
    assert [(c.label, c.before, c.after) for c in chs] == [("last name", ["Li"], ["Lee"])]


def test_a_new_object_has_no_before_column():
    r = rec("Dependent.Add", before=None, after={"first_name": "Rui", "relationship": "02", "visa_type": "04"})
    chs = review.changes(r, LAB, TZ)
    assert [(c.label, c.before, c.after) for c in chs] == [
        ("first name", None, ["Rui"]),
        ("relationship", None, ["child (02)"]),
        ("visa type", None, ["F-2 (04)"]),
    ]
    lines = review.record_lines(
        rec(
            "Dependent.Add",
            before=None,
            after={"first_name": "Rui"},
            status="open",
            record_id="r",
            request_id="q",
            student_key="S1",
        ),
        LAB,
        TZ,
    )
    assert lines[0] == "first name: Rui" and lines[-1].startswith("dependant added in the SIS on")


def test_payload_reasons_are_labelled():
    r = rec("Status.Terminate", before={"status": "active"}, after={"status": "terminated"}, payload={"Reason": "23"})
    assert "reason: authorized early withdrawal (23)" in review.record_lines(r, LAB, TZ)
    r = rec(
        "Reprint",
        after={"reprint_reason": "02"},
        payload={"Reason": "02"},
        origin="dso",
        lineage=[{"command_id": "c1", "dso_user_id": "JSMITH0001"}],
        at_ms=BASE_MS,
    )
    lines = review.record_lines(r, LAB, TZ)
    assert lines[0] == "reprint reason: 02 (no label source)"
    assert lines[-1] == "reported by DSO JSMITH0001 with `sevisflow student report` on Jun 15, 2025 10:06 CDT"


def test_control_characters_of_data_are_escaped_everywhere():
    assert clean("Novak\x1b[2J\r\n\u202e") == "Novak\\x1b[2J\\x0d\\x0a\\u202e"
    assert "\x1b" not in format_table(["h"], [["a\x1bb"]])
    v = view_of(
        EventIn(
            event("S1\x07", n=1, display_name="Evil\x1b]0;x\x07", before={"email": "a\x1b"}, after={"email": "b"}),
            BASE_MS,
        )
    )
    for text in (
        "\n".join(review.show_lines(v, TZ, LAB)),
        review.render_text(review.show_table(v, TZ, LAB, width=80), 80),
    ):
        assert "\x1b" not in text and "\x07" not in text and "Evil\\x1b]0;x\\" in text


def test_filters():
    v = view_of(
        EventIn(event("S1", n=1, display_name="Chen, Wei", before={"email": "a"}, after={"email": "b"}), BASE_MS),
        EventIn(
            event(
                "S2",
                "Program.Extension",
                n=2,
                display_name="Okafor, Ada",
                before={"end_date": "2026-01-01"},
                after={"end_date": "2026-06-01"},
            ),
            BASE_MS,
        ),
        EventIn(event("S3", "Create", n=3, display_name="Garcia, Lucia", payload={"IssueReason": "I"}), BASE_MS),
        EventIn(event("S3", "Registration", n=4, sevis_id=None, display_name="Garcia, Lucia"), BASE_MS),
        CommandIn(command("hold", "h1", student_key="S2", dso_user_id="JSMITH0001", reason="wait")),
    )

    def keys(**kw):
        return [(r["student_key"], r["kind"]) for r in review.selected(v, review.Filter(**kw))]

    assert keys(student="S3") == [("S3", "Create"), ("S3", "Registration")]
    assert keys(name="okafor") == [("S2", "Program.Extension")]
    assert keys(status="held") == [("S2", "Program.Extension")]
    assert keys(status="waiting") == [("S3", "Registration")]
    assert keys(status="ready") == [("S3", "Create"), ("S1", "PersonalInfo")]
    assert keys(element="Program") == [("S2", "Program.Extension")]
    assert keys(element="program/extension") == [("S2", "Program.Extension")]
    assert keys(element="CreateStudent") == [("S3", "Create")]
    assert keys(name="nobody") == []
    out = "\n".join(review.show_lines(v, TZ, LAB, review.Filter(name="nobody")))
    assert "Showing 0 of 4 (name contains 'nobody')" in out and "No record matches." in out
    assert "not only the ones shown here" in out


def test_holds_show_who_when_why_and_students_without_records():
    v = view_of(
        EventIn(event("S1", n=1, display_name="Chen, Wei", before={"email": "a"}, after={"email": "b"}), BASE_MS),
        CommandIn(command("hold", "h1", student_key="S1", dso_user_id="JSMITH0001", reason="call student")),
        CommandIn(command("hold", "h2", student_key="S9", dso_user_id="JSMITH0001", reason="no I-20 yet")),
    )
    out = "\n".join(review.show_lines(v, TZ, LAB))
    assert (
        "S1 Chen, Wei: held since Jun 15, 2025 11:06 CDT by JSMITH0001; reason: call student; 1 record kept back" in out
    )
    assert "S9: held since" in out and "reason: no I-20 yet; no record in the batch yet" in out
    # a view written before holds carried by/why: the text "held by X: why" is split, not shown twice
    v.held["S1"] = {"at_ms": BASE_MS, "reason": "held by JSMITH0001: call student"}
    assert "by JSMITH0001; reason: call student;" in "\n".join(review.show_lines(v, TZ, LAB))


def test_show_json_keeps_raw_values_and_sis_tables():
    v = view_of(
        EventIn(
            event(
                "S1",
                n=1,
                table="public.person",
                before={"commuter": False, "email": "a"},
                after={"commuter": True, "email": "a"},
            ),
            BASE_MS,
        )
    )
    (r,) = review.show_json(v, TZ, LAB)["records"]
    assert r["changes"] == [{"field": "commuter", "before": False, "after": True}]
    assert r["changes_words"] == [
        {"field": "commuter", "label": "commuter student", "before": ["no"], "after": ["yes"]}
    ]
    assert r["source"]["tables"] == ["public.person"] and r["source"]["words"].startswith("commuter student changed")


def test_issues_show_school_time_and_escaped_text():
    from sevisflow.app.cli.issues_cmd import issue_lines, issue_rows

    item = {
        "at_ms": BASE_MS,
        "stage": "normalize",
        "code": "bad_code",
        "student_key": "S1\x1b[31m",
        "field": "student.birth_country",
        "reason": "not a SEVIS country code\x07",
        "source_topic": "sis.public.person",
        "source_partition": 0,
        "source_offset": 7,
    }
    (row,) = issue_rows([item], TZ)
    assert row[0] == "Jun 15, 2025 10:06 CDT"  # was UTC
    assert row[3] == "S1\\x1b[31m" and row[5] == "not a SEVIS country code\\x07"
    lines = list(issue_lines([item], TZ))
    assert lines[0].startswith("Jun 15, 2025 10:06 CDT  normalize  bad_code") and lines[-1] == "1 issue(s)"


def test_results_use_the_words_and_names_of_batch_status():
    from sevisflow.app.cli.results import result_lines, result_rows

    rows = [
        {
            "request_id": "4.S1",
            "student_key": "S1",
            "kind": "Create",
            "status": "success",
            "sevis_id": "N0009876543",
            "error_code": None,
            "error_message": None,
            "process_code": "S0000",
        },
        {
            "request_id": "5.S2",
            "student_key": "S2",
            "kind": "Program.Extension",
            "status": "failure",
            "sevis_id": None,
            "error_code": "S1110",
            "error_message": "extension already pending",
            "process_code": "S0000",
        },
    ]
    names = {"4.S1": ("Garcia, Lucia", "New student record (CreateStudent)")}
    assert result_rows(rows, names) == [
        (
            "4.S1",
            "S1",
            "Garcia, Lucia",
            "New student record (CreateStudent)",
            "accepted by SEVIS",
            "SEVIS ID N0009876543",
        ),
        ("5.S2", "S2", "", "Program/Extension", "rejected by SEVIS", "S1110 extension already pending"),
    ]
    text = "\n".join(result_lines("S1750007200000", rows, names))
    assert "1 accepted by SEVIS, 1 rejected by SEVIS" in text and "Garcia, Lucia" in text


def test_an_authorization_says_what_was_approved():
    r = rec(
        "CPTEmployment.Add",
        before={"approved": False, "kind": "cpt", "start_date": "2026-01-05"},
        after={"approved": True, "kind": "cpt", "start_date": "2026-01-05"},
        payload={
            "StartDate": "2026-01-05",
            "EndDate": "2026-05-01",
            "FullPartTimeIndicator": "02",
            "EmployerName": "Acme Labs",
        },
    )
    lines = review.record_lines(r, LAB, TZ)
    assert lines[:4] == [
        "approved: no → yes",
        "dates: Jan 5, 2026 to May 1, 2026",
        "employer: Acme Labs",
        "full/part time: part time (02)",
    ]


def test_derived_events_of_the_reference_sis_render_in_words():
    """Events as the real sevis_events stage derives them (the scenario school), through the real batcher:
    no raw JSON, no Python booleans, no exponent notation reaches the screen."""
    from sevisflow.processors.normalize.debezium import SisFeed
    from sevisflow.processors.sevis_events.pure import PurePipeline
    from tests.scenarios import MAPPING, PKS, school_history
    from tests.scenarios import School as SisSchool
    from tests.unit.test_events_scenarios import CASES

    feed = SisFeed(primary_keys=PKS)
    school_history(feed, 2)
    events = list(PurePipeline(MAPPING).feed(feed).events)
    for case in CASES:
        sis = SisSchool(**case.school)
        for pre in case.pre:
            sis.tx(*pre)
        events += list(sis.tx(*case.ops).events)
    org = events[0]["org_id"]
    inputs = [
        EventIn(
            dict(e, org_id=org, event_id=f"{e['event_id']}-{i}", student_key=f"{e['student_key']}-{i}"), BASE_MS + i
        )
        for i, e in enumerate(events)
    ]
    s, published = School(org), []
    for inp in inputs:
        s, outs = apply(s, inp)
        published.extend(o.event for o in outs if isinstance(o, Publish))
    v = build_view(org, published)
    assert len(v.records) > 20
    text = "\n".join(review.show_lines(v, TZ, LAB))
    for bad in ("{", "E+", "True", "False", "None"):
        assert bad not in text, bad
    assert "reason: authorized early withdrawal (23)" in text and "relationship: spouse (01)" in text
    assert "education level: master's (05) → doctorate (06)" in text
