"""Golden tests of the DSO's screens: `batch show|close|list|status`, as a terminal of 80 and of 200
columns shows them, as plain lines in a pipe, and as --json.

The views are built by the real state machine (sevisflow.processors.batcher.core) from fixed inputs, so the
files in tests/golden/ pin both the batcher's records and the CLI's rendering. The labels of CIP
codes come from the SEVIS XSDs of the test settings (tests/helpers.py XSD_DIR), as at run time.

Regenerate after an intended change with
``SEVISFLOW_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_batch_cli_golden.py``
and review the diff (``git diff tests/golden``); then copy them into the captures of docs/DSO-GUIDE.md with
``.venv/bin/python tests/golden/refresh_dso_guide.py`` (a test checks the guide shows the real output).
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import orjson
import pytest

from sevisflow.app.cli import batch as cli
from sevisflow.app.cli import review
from sevisflow.app.labels import Labels
from sevisflow.core.worklist.deadlines import Deadlines
from sevisflow.processors.batcher.core import CommandIn, EventIn, Publish, School, apply
from sevisflow.processors.batcher.view import build_view
from testkit.batcher import BASE_MS, ORG, command, event, result
from tests.helpers import XSD_DIR

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
TZ = "America/Chicago"
DSO = "JSMITH0001"
LABELS = Labels(XSD_DIR)

US_OLD = {"line1": "12 Elm St", "city": "Springfield", "state": "IL", "postal_code": "62701"}
US_NEW = {"line1": "400 N Oak Ave", "line2": "Apt 2", "city": "Chicago", "state": "IL", "postal_code": "60601"}
CREATE_PAYLOAD = {
    "@printForm": "true",
    "IssueReason": "I",
    "PersonalInfo": {
        "FullName": {"LastName": "Garcia", "FirstName": "Lucia"},
        "BirthDate": "2001-03-02",
        "Gender": "F",
        "BirthCountryCode": "MX",
        "CitizenshipCountryCode": "MX",
        "VisaType": "01",
    },
    "ForeignAddress": {"Address1": "Calle 5 #10", "City": "Puebla", "CountryCode": "MX"},
    "EducationalInfo": {
        "EduLevel": {"Level": "05"},
        "MajorCode1": "11.0701",
        "IssDate": "2025-06-15",
        "PrgStartDate": "2025-08-20",
        "PrgEndDate": "2027-05-15",
        "EngProficiency": {"EngRequired": "false"},
    },
    "FinancialInfo": {
        "AcademicTerm": "09",
        "Expense": {"Tuition": "30000", "LivingExpense": "15000"},
        "Funding": {"Personal": "45000"},
    },
}


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("SEVISFLOW_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with SEVISFLOW_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden file (see the module docstring to regenerate)"


def as_json(value) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


def scenario():
    """Open batch: a new student, an e-mail changed twice, an address move, an extension, a major change,
    a registration with credit hours stored as 1E+1, a new dependant, a held student with a problem,
    and a name carrying a terminal escape sequence."""
    s = School(ORG)
    published = []

    def feed(inp):
        nonlocal s
        s, outs = apply(s, inp)
        published.extend(o.event for o in outs if isinstance(o, Publish))
        return outs

    feed(
        EventIn(
            event(
                "S1001",
                n=1,
                display_name="Chen, Wei",
                table="public.person",
                before={"email": "wei@old.example", "first_name": "Wei"},
                after={"email": "wei@new.example", "first_name": "Wei"},
            ),
            BASE_MS,
        )
    )
    feed(
        EventIn(
            event(
                "S1001",
                n=2,
                display_name="Chen, Wei",
                table="public.person",
                before={"email": "wei@new.example"},
                after={"email": "wei.chen@example.edu"},
            ),
            BASE_MS,
        )
    )
    feed(
        EventIn(
            event(
                "S1005",
                n=3,
                display_name="Haddad, Omar",
                before={"address.us_physical": US_OLD},
                after={"address.us_physical": US_NEW},
            ),
            BASE_MS,
        )
    )
    feed(
        EventIn(
            event(
                "S1002",
                "Program.Extension",
                n=4,
                coalesce_key="Program.EndDate",
                table="public.program",
                display_name="Okafor, Ada",
                before={"end_date": "2026-05-15"},
                after={"end_date": "2026-12-18"},
                payload={"@printForm": "true", "NewPrgEndDate": "2026-12-18", "Explanation": "Thesis"},
            ),
            BASE_MS,
        )
    )
    feed(
        EventIn(
            event(
                "S1002",
                "Program.Edit",
                n=5,
                table="public.program",
                display_name="Okafor, Ada",
                before={"major_cip": "52.0301"},
                after={"major_cip": "26.0101"},
                payload={"@printForm": "true", "MajorCode1": "26.0101"},
            ),
            BASE_MS,
        )
    )
    feed(
        EventIn(
            event(
                "S1003",
                "Create",
                n=6,
                table="public.person",
                display_name="Garcia, Lucia",
                payload=CREATE_PAYLOAD,
                after={"student": "new record"},
            ),
            BASE_MS,
        )
    )
    feed(
        EventIn(
            event(
                "S1003",
                "Registration",
                n=7,
                sevis_id=None,
                table="public.enrollment",
                display_name="Garcia, Lucia",
                before={"registration": None},
                after={
                    "registration": {
                        "status": "enrolled",
                        "full_time": True,
                        "credit_hours": "1E+1",
                        "session_start": "2025-08-20",
                        "session_end": "2025-12-12",
                        "confirmed_at": "2025-08-25T14:30:00Z",
                    }
                },
            ),
            BASE_MS,
        )
    )
    feed(
        EventIn(
            event(
                "S1006",
                "Dependent.Add",
                n=8,
                table="public.dependent",
                display_name="Silva, Ana",
                before=None,
                after={
                    "first_name": "Rui",
                    "last_name": "Silva",
                    "birth_date": "2019-04-01",
                    "birth_country": "BR",
                    "citizenship_country": "BR",
                    "relationship": "02",
                    "visa_type": "04",
                    "status": "active",
                },
            ),
            BASE_MS,
        )
    )
    feed(
        EventIn(
            event(
                "S1004",
                n=9,
                display_name="Novak, Petr\x1b[2J",
                table="public.person",
                problems=["US address has no ZIP code"],
                before={"birth_country": "CN", "commuter": False},
                after={"birth_country": "CH", "commuter": True},
            ),
            BASE_MS,
        )
    )
    feed(CommandIn(command("hold", "h-1", student_key="S1004", dso_user_id=DSO, reason="call student")))
    feed(
        CommandIn(
            command(
                "hold",
                "h-2",
                student_key="S1099",
                dso_user_id=DSO,
                reason="documents pending",
                at_ms=BASE_MS + 3_700_000,
            )
        )
    )
    return s, published, feed


GOLDEN_TODAY = date(2025, 6, 30)  # 15 days after the scenario's changes: legal due days are near


def views():
    _, published, feed = scenario()
    view = build_view(ORG, published)
    review.annotate_due(view, Deadlines(timezone=TZ), GOLDEN_TODAY)
    return view, published, feed


@pytest.mark.parametrize("width", [80, 200])
def test_batch_show_terminal_golden(width):
    view, _, _ = views()
    check(f"batch_show_{width}.txt", cli.render_show(view, TZ, LABELS, width=width))


def test_batch_show_pipe_and_json_golden():
    view, _, _ = views()
    check("batch_show_pipe.txt", "\n".join(review.show_lines(view, TZ, LABELS)) + "\n")
    check("batch_show.json", as_json(cli.show_json(view, TZ, LABELS)))


def test_batch_show_one_student_golden():
    view, _, _ = views()
    flt = review.Filter(student="S1003")
    check("batch_show_student.txt", "\n".join(review.show_lines(view, TZ, LABELS, flt)) + "\n")
    check("batch_show_student_80.txt", cli.render_show(view, TZ, LABELS, width=80, flt=flt))


def test_terminal_lines_fit_the_width():
    view, _, _ = views()
    for width in (80, 200):
        text = cli.render_show(view, TZ, LABELS, width=width)
        assert max(len(line) for line in text.splitlines()) <= width


def test_batch_show_empty_golden():
    check("batch_show_empty.txt", cli.render_show(build_view(ORG, []), TZ, LABELS, width=80))


def test_batch_close_list_status_golden():
    view, published, feed = views()
    ready = [r["record_id"] for r in view.open_records() if r["status"] == "open"]
    at = BASE_MS + 7_200_000
    outs = feed(
        CommandIn(
            command("close", "close-1", dso_user_id=DSO, record_ids=ready, reviewed_revision=view.revision, at_ms=at)
        )
    )
    events = [o.event for o in outs if isinstance(o, Publish)]
    published = published + events
    res = cli.close_json(events, "close-1")
    check("batch_close.txt", cli.render_close(res, TZ) + "\n")
    check("batch_close.json", as_json(res))
    closed = next(e for e in events if e["type"] == "closed")
    recs = orjson.loads(closed["records_json"])
    create = next(r for r in recs if r["kind"] == "Create")
    ext = next(r for r in recs if r["kind"] == "Program.Extension")
    results = [
        result(closed["batch_id"], create["request_id"], sevis_id="N0009876543"),
        result(closed["batch_id"], ext["request_id"], status="failure", error_code="S1110"),
    ]
    view = build_view(ORG, published, results)
    check("batch_list.txt", cli.render_list(view, TZ, 20, width=80))
    check("batch_list.json", as_json(cli.list_json(view, 20)))
    check("batch_status.txt", cli.render_status(view, closed["batch_id"], TZ, width=80))
    check("batch_status_pipe.txt", "\n".join(review.batch_lines(view, view.batches[closed["batch_id"]], TZ)) + "\n")
    check("batch_status.json", as_json(cli.status_json(view, closed["batch_id"], TZ)))
    # `sevisflow results`: the same words and names as `batch status`
    from sevisflow.app.cli.results import result_lines, result_table

    b = view.batches[closed["batch_id"]]
    names = {
        r["request_id"]: (r.get("display_name") or "", f"{review.title(r)} ({review.element(r)})") for r in b.records
    }
    check("results_80.txt", review.render_text(result_table(b.batch_id, results, names), 80))
    check("results_pipe.txt", "\n".join(result_lines(b.batch_id, results, names)) + "\n")


def test_status_of_unknown_batch_is_a_clear_error():
    with pytest.raises(cli.SevisflowError, match="no closed batch"):
        cli.render_status(build_view(ORG, []), "S0000000000000", TZ)


ISSUES = [
    {
        "at_ms": BASE_MS + 60_000,
        "stage": "normalize",
        "code": "bad_code",
        "student_key": "S1007",
        "field": "student.birth_country",
        "reason": "value 'XX' is not in [values.country]",
        "source_topic": "sis.public.person",
        "source_partition": 0,
        "source_offset": 812,
    },
    {
        "at_ms": BASE_MS + 120_000,
        "stage": "sevis_events",
        "code": "incomplete_record",
        "student_key": "S1008",
        "field": "finance.tuition",
        "reason": "CreateStudent waits for: finance.tuition",
        "source_topic": "sevisflow.students",
        "source_partition": 1,
        "source_offset": 55,
    },
]


def test_issues_golden():
    from sevisflow.app.cli.issues_cmd import issue_lines, issue_table

    check("issues_80.txt", review.render_text(issue_table(ISSUES, TZ, 80), 80))
    check("issues_pipe.txt", "\n".join(issue_lines(ISSUES, TZ)) + "\n")


def test_the_dso_guide_shows_the_real_output():
    """The captures in docs/DSO-GUIDE.md are these golden files (or excerpts of them): after an intended
    change, regenerate the golden files and copy the new text into the guide."""
    guide = (GOLDEN.parent.parent / "docs" / "DSO-GUIDE.md").read_text()
    for name in ("batch_list.txt", "batch_status.txt", "results_80.txt", "issues_80.txt", "issues_pipe.txt"):
        assert (GOLDEN / name).read_text().rstrip() in guide, name
    show = (GOLDEN / "batch_show_80.txt").read_text().split("\n")
    assert "\n".join(show[:30]) in guide and "\n".join(show[-14:]).rstrip() in guide


def todo_items():
    """The DSO's worklist on GOLDEN_TODAY: the scenario's open batch, a batch of which SEVIS rejected the
    extension, a student not registered for a session that started, a data problem and an operator one."""
    from sevisflow.core.worklist.items import worklist

    view, published, feed = views()
    sent = [r["record_id"] for r in view.open_records() if r["kind"] in ("Create", "Program.Extension")]
    outs = feed(CommandIn(command("close", "close-1", dso_user_id=DSO, record_ids=sent, at_ms=BASE_MS + 7_200_000)))
    published = published + [o.event for o in outs if isinstance(o, Publish)]
    closed = next(o.event for o in outs if isinstance(o, Publish) and o.event["type"] == "closed")
    recs = {r["kind"]: r for r in orjson.loads(closed["records_json"])}
    results = [
        result(closed["batch_id"], recs["Create"]["request_id"], sevis_id="N0009876543"),
        dict(
            result(closed["batch_id"], recs["Program.Extension"]["request_id"], status="failure", error_code="S1003"),
            error_message="SEVIS ID not found",
        ),
    ]
    view = build_view(ORG, published, results)
    students = [
        {
            "student_key": "S1010",
            "student": {"first_name": "Ji-woo", "last_name": "Kim"},
            "program": {"status": "initial"},
            "registration": {"SU25": {"status": "not_enrolled", "session_start": "2025-06-02"}},
        }
    ]
    return worklist(
        view.open_records(), view.batches.values(), students, ISSUES, {}, Deadlines(timezone=TZ), GOLDEN_TODAY
    )


def test_todo_golden():
    from sevisflow.app.cli.todo import todo_lines

    check("todo_80.txt", "\n".join(todo_lines(todo_items(), GOLDEN_TODAY)) + "\n")


def test_the_dso_guide_shows_the_worklist_and_every_deadline_rule():
    """The guide's `todo` capture is the golden file, and its rule table is the code's rule table."""
    import re

    from sevisflow.core.worklist.deadlines import RULES

    guide = (GOLDEN.parent.parent / "docs" / "DSO-GUIDE.md").read_text()
    assert (GOLDEN / "todo_80.txt").read_text().rstrip() in guide
    section = guide.split("Which rule gives each due date", 1)[1]
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \| (\d+) days \| (.+?) \| (.+?) \|$", section, flags=re.M)
    clocks = {"change": "the SIS change (first change of the record)", "session_start": "the session's start date"}
    assert [(r.name, ", ".join(f"`{k}`" for k in r.kinds), r.days, clocks[r.clock], r.source) for r in RULES] == [
        (n, kinds, int(d), clock, src) for n, kinds, d, clock, src in rows
    ]
