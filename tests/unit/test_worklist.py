"""Legal due days and the DSO's worklist, from plain data (no services)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from sevisflow.core.worklist.deadlines import Deadlines
from sevisflow.core.worklist.items import band_counts, worklist
from sevisflow.processors.batcher.view import ClosedBatch

TZ = "America/Chicago"
TODAY = date(2026, 10, 20)


def ms(day: str, hh: int = 12) -> int:
    return int(datetime.fromisoformat(f"{day}T{hh:02d}:00").replace(tzinfo=ZoneInfo(TZ)).timestamp() * 1000)


def record(rid: str, kind: str, at: int, status: str = "open", replaced: tuple[int, ...] = (), **payload):
    student = rid.split(":")[0]
    return {
        "record_id": rid,
        "request_id": f"r.{rid}",
        "student_key": student,
        "kind": kind,
        "status": status,
        "section": "create" if kind == "Create" else "update",
        "at_ms": at,
        "display_name": f"Name {student}",
        "replaced": [{"at_ms": t} for t in replaced],
        "payload": payload,
    }


@pytest.mark.parametrize(
    "kind, rule, days",
    [
        ("PersonalInfo", "name_address", 21),
        ("Program.Extension", "program_change", 21),
        ("EducationLevel.Change", "program_change", 21),
        ("Dependent.Add", "dependents", 21),
        ("Status.Terminate", "status_end", 21),
        ("Registration", "registration", 30),
    ],
)
def test_each_reportable_kind_has_its_legal_rule(kind, rule, days):
    due = Deadlines(timezone=TZ).due(kind, ms("2026-10-01"), "2026-09-01")
    assert due is not None and due.rule.name == rule and due.rule.days == days and due.rule.source


@pytest.mark.parametrize("kind", ["Create", "FinancialInfo", "Reprint", "Dependent.Terminate", "Program.Shorten"])
def test_kinds_without_a_legal_limit_have_no_due_day(kind):
    assert Deadlines(timezone=TZ).due(kind, ms("2026-10-01")) is None


def test_the_clock_is_the_school_local_day_of_the_first_change():
    d = Deadlines(timezone=TZ)
    # 00:30 UTC on Oct 2 is still Oct 1 in Chicago: 21 days from Oct 1
    late_evening = int(datetime(2026, 10, 2, 0, 30, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)
    assert d.due("PersonalInfo", late_evening).due_on == date(2026, 10, 22)  # type: ignore[union-attr]
    assert d.due("Registration", 0, "2026-08-24").due_on == date(2026, 9, 23)  # type: ignore[union-attr]


def test_a_school_can_set_stricter_limits_and_bands():
    d = Deadlines.configured({"name_address": 10}, soon_days=5, urgent_days=1, tz=TZ)
    assert d.due("PersonalInfo", ms("2026-10-01")).due_on == date(2026, 10, 11)  # type: ignore[union-attr]
    assert [d.band(date(2026, 10, x), TODAY) for x in (19, 20, 21, 25, 26)] == [
        "overdue",
        "urgent",
        "urgent",
        "soon",
        "ok",
    ]
    with pytest.raises(ValueError, match="unknown rule 'names'"):
        Deadlines.configured({"names": 3}, 7, 2, TZ)


def test_a_replaced_record_keeps_the_clock_of_its_first_change():
    rec = record("S1:PersonalInfo", "PersonalInfo", ms("2026-10-15"), replaced=(ms("2026-09-20"),))
    [item] = worklist([rec], [], [], [], {}, Deadlines(timezone=TZ), TODAY)
    assert item.due_on == date(2026, 10, 11) and item.band == "overdue"


def test_rejections_stay_until_a_later_batch_is_accepted_and_keep_their_clock():
    rec = record("S2:PersonalInfo", "PersonalInfo", ms("2026-10-05"))
    rejected = ClosedBatch("S1760000000000", "DSO0000001", ms("2026-10-06"), "c1", None, [rec])
    rejected.results[rec["request_id"]] = {"status": "failure", "error_code": "S1003", "error_message": "bad id"}
    items = worklist([], [rejected], [], [], {}, Deadlines(timezone=TZ), TODAY)
    [item] = [i for i in items if i.what == "rejected"]
    assert item.due_on == date(2026, 10, 26) and item.band == "soon"
    assert "S1003" in item.detail[0] and "does not know the SEVIS ID" in item.detail[1]
    assert "sevisflow batch resend S1760000000000" in item.action
    again = dict(rec, request_id="r.2")
    accepted = ClosedBatch("S1760000000001", "DSO0000001", ms("2026-10-08"), "c2", None, [again])
    accepted.results["r.2"] = {"status": "success", "sevis_id": "N0000000001"}
    assert not [
        i for i in worklist([], [rejected, accepted], [], [], {}, Deadlines(timezone=TZ), TODAY) if i.what == "rejected"
    ]


def test_an_unregistered_initial_student_is_a_no_show_risk_with_a_register_by_day():
    view = {
        "student_key": "S3",
        "student": {"first_name": "Mei", "last_name": "Lin"},
        "program": {"status": "initial"},
        "registration": {"F26": {"status": "not_enrolled", "session_start": "2026-09-01"}},
    }
    registered = {
        **view,
        "student_key": "S4",
        "registration": {"F26": {"status": "enrolled", "session_start": "2026-09-01"}},
    }
    [item] = worklist([], [], [view, registered], [], {}, Deadlines(timezone=TZ), TODAY)
    assert item.what == "register" and item.name == "Mei Lin" and "No-Show risk" in item.title
    assert item.due_on == date(2026, 10, 1) and item.band == "overdue"


def test_repeated_dead_letters_of_one_student_are_one_item_and_operator_ones_are_left_out():
    letters = [
        {
            "stage": "sevis_events",
            "code": "missing_field",
            "student_key": "S5",
            "field": "address.city",
            "reason": f"change {n}: address city missing",
            "at_ms": ms("2026-10-1" + str(n)),
        }
        for n in range(3)
    ]
    letters.append({"stage": "normalize", "code": "bad_json", "student_key": None, "reason": "x", "at_ms": 1})
    [item] = worklist([], [], [], letters, {}, Deadlines(timezone=TZ), TODAY)
    assert item.student_key == "S5" and len(item.detail) == 3 and item.what == "fix data"


def test_items_are_grouped_per_student_most_urgent_first_and_done_items_hidden():
    recs = [
        record("S6:Create", "Create", ms("2026-10-01")),
        record("S7:PersonalInfo", "PersonalInfo", ms("2026-10-10")),
        record("S8:PersonalInfo", "PersonalInfo", ms("2026-09-25")),
        record("S7:Status", "Status.Terminate", ms("2026-10-12")),
    ]
    d = Deadlines(timezone=TZ)
    items = worklist(recs, [], [], [], {}, d, TODAY)
    assert [i.student_key for i in items] == ["S8", "S7", "S7", "S6"]
    assert band_counts(items) == {"overdue": 1, "urgent": 0, "soon": 0, "ok": 2, "none": 1}
    done = {items[0].item_id: {"by": "DSO0000001", "note": "reported in RTI", "at_ms": 1}}
    assert [i.student_key for i in worklist(recs, [], [], [], done, d, TODAY)] == ["S7", "S7", "S6"]
    shown = worklist(recs, [], [], [], done, d, TODAY, include_done=True)
    assert shown[0].done == {"by": "DSO0000001", "note": "reported in RTI", "at_ms": 1}


def test_batch_show_puts_the_most_urgent_record_first_and_says_when_it_is_due():
    from sevisflow.app.cli import review
    from sevisflow.app.labels import Labels
    from sevisflow.processors.batcher.view import BatchView

    view = BatchView("ABC214F12345000", revision=3)
    for i, (kind, day) in enumerate(
        [("Create", "2026-10-01"), ("PersonalInfo", "2026-10-15"), ("Status.Terminate", "2026-09-25")]
    ):
        rec = record(f"S{i}:{kind}", kind, ms(day))
        view.records[rec["record_id"]] = {
            **rec,
            "seq": i,
            "rev": 1,
            "event_ids": ["e"],
            "lineage": [],
            "sevis_id": "N0000000001",
            "before": {},
            "after": {},
        }
    review.annotate_due(view, Deadlines(timezone=TZ), TODAY)
    shown = review.selected(view, review.Filter())
    assert [r["kind"] for r in shown] == ["Status.Terminate", "PersonalInfo", "Create"]
    lines = "\n".join(review.show_lines(view, TZ, Labels(None)))
    assert "OVERDUE: was due Oct 16, 2026 (4 days ago): 21-day limit from the SIS change" in lines
    assert "due Nov 5, 2026 (in 16 days)" in lines


def test_a_dso_item_says_what_changed_in_the_sis_so_the_dso_can_act_in_rti():
    from sevisflow.processors.sevis_events.stage import view_changes

    prev = {
        "student_key": "S9",
        "src": {"x": 1},
        "student": {"email": "a@x.edu", "visa_type": "J1"},
        "address": {"us_physical": {"city": "Urbana", "line1": "1 A St"}},
    }
    new = {
        "student_key": "S9",
        "src": {"x": 2},
        "student": {"email": "b@x.edu", "visa_type": "J1"},
        "address": {"us_physical": {"city": "Champaign", "line1": "1 A St"}},
    }
    assert view_changes(prev, new) == {
        "address.us_physical.city": ["Urbana", "Champaign"],
        "student.email": ["a@x.edu", "b@x.edu"],
    }
    assert view_changes(prev, new, "address.us_physical.city") == {"address.us_physical.city": ["Urbana", "Champaign"]}
    letters = [
        {
            "stage": "sevis_events",
            "code": "not_reported_visa",
            "student_key": "S9",
            "reason": "J-1: changed",
            "at_ms": n,
            "changes": {"student.email": [f"e{n}", f"e{n + 1}"]},
        }
        for n in (1, 2)
    ]
    [item] = worklist([], [], [], letters, {}, Deadlines(timezone=TZ), TODAY)
    assert "in the SIS: student.email: e1 → e3" in item.detail  # first before, last after
