"""Nothing silent: every way the events stage alters, withholds or cannot send what the SIS says reaches the DSO.

Two guards:

* a table, one row per such path: (previous view, new view) → the issue code and field the DSO's worklist shows
  (``sevisflow todo`` lists these dead letters), checked through :func:`derive` and the worklist's own grouping;
* a walk over ``processors/sevis_events/derive.py``: every ``return``/``continue`` of a derivation function that
  does not follow an event or an issue must say on its line why nothing is told (``# reported: <how>`` or
  ``# not-reportable: <why>``), so a new silent branch fails this suite until someone decides about it.
"""

from __future__ import annotations

import ast
import copy
from datetime import date
from typing import Any

import orjson
import pytest

from sevisflow.core.worklist.deadlines import Deadlines
from sevisflow.core.worklist.items import worklist
from sevisflow.processors.sevis_events import derive as derive_mod
from sevisflow.processors.sevis_events.derive import SPELLING, Context, derive
from tests.helpers import source_of
from tests.scenarios import School

CTX = Context("ZZZ214F99999000", "u1", [{"topic": "sis.public.person", "partition": 0, "offset": 1}], 1_780_000_000_000)
BASE: dict[str, Any] = School().pipe.last_view["S00000007"]  # F-1, SEVIS ID, active, "O'Brien-Müller", "Zoë"


def view(**changes: Any) -> dict[str, Any]:
    """BASE with ``section__field=value`` changes (``student__last_name="X"``; ``program=None`` drops a section;
    ``address__us_physical__city="…"`` for nested ones)."""
    v = copy.deepcopy(BASE)
    for path, value in changes.items():
        *head, last = path.split("__")
        node = v
        for step in head:
            node = node.setdefault(step, {})
        if value is None and not head:
            node.pop(last, None)
        else:
            node[last] = value
    return v


def new_admit(**changes: Any) -> dict[str, Any]:
    return view(student__sevis_id=None, program__status="initial", **changes)


def j1(**changes: Any) -> dict[str, Any]:
    v = view(**changes)
    v.update(international=False, not_reported_visa="J-1")
    v["student"]["visa_type"] = "J-1"
    return v


def dep(**kw: Any) -> dict[str, Any]:
    d = {
        "first_name": "Jonas",
        "last_name": "Muller",
        "birth_date": "2000-01-02",
        "gender": "M",
        "birth_city": None,
        "birth_country": "GM",
        "citizenship_country": "GM",
        "relationship": "01",
        "visa_type": "04",
        "status": "active",
        "dependent_sevis_id": "N0001234568",
    }
    d.update(kw)
    return d


# (name, previous view or None, new view, snapshot?, expected (code, field), event kinds that still go out)
Row = tuple[str, "dict[str, Any] | None", dict[str, Any], bool, tuple[str, str], list[str]]
ROWS: list[Row] = [
    # -- names altered for SEVIS: the event goes out, the DSO is told which field and how
    (
        "last name: accents, apostrophe, hyphen",
        view(student__last_name="O'Brien"),
        BASE,
        False,
        ("name_altered", "student.last_name"),
        ["PersonalInfo"],
    ),
    (
        "first name: accents removed",
        view(student__first_name="Zoe"),
        BASE,
        False,
        ("name_altered", "student.first_name"),
        ["PersonalInfo"],
    ),
    (
        "middle name: period dropped",
        BASE,
        view(student__middle_name="J."),
        False,
        ("name_altered", "student.middle_name"),
        ["PersonalInfo"],
    ),
    ("new admit's name in the Create", None, new_admit(), False, ("name_altered", "student.last_name"), ["Create"]),
    (
        "dependent's name: special letter spelled out",
        BASE,
        view(dependent={"1": dep(last_name="Strauß")}),
        False,
        ("name_altered", "dependent[1].last_name"),
        ["Dependent.Add"],
    ),
    # -- values SEVIS cannot carry: refused with the field, never cut
    (
        "500-character city",
        BASE,
        view(address__us_physical__city="C" * 500),
        False,
        ("too_long", "address.us_physical.city"),
        [],
    ),
    (
        "phone with an extension",
        BASE,
        view(student__phone="217 555 0199 ext 12"),
        False,
        ("bad_phone", "student.phone"),
        [],
    ),
    # -- required data missing for a Create or an update
    (
        "F-1 admit without a programme row",
        None,
        new_admit(program=None),
        False,
        ("incomplete_record", "program.status"),
        [],
    ),
    (
        "F-1 admit without funding, in the snapshot",
        None,
        new_admit(finance=None),
        True,
        ("incomplete_record", "finance.tuition"),
        [],
    ),
    (
        "F-1 admit without a foreign address",
        None,
        new_admit(address__foreign=None),
        False,
        ("incomplete_record", "address.foreign"),
        [],
    ),
    ("finance record removed", BASE, view(finance=None), False, ("missing_field", "finance"), []),
    (
        "finance removed after the Create went out, before the SEVIS ID",
        new_admit(),
        new_admit(finance=None),
        False,
        ("missing_field", "finance"),
        [],
    ),
    (
        "tuition emptied",
        BASE,
        view(finance__tuition=None),
        False,
        ("missing_field", "finance.tuition"),
        ["FinancialInfo"],
    ),
    ("programme record removed", BASE, view(program=None), False, ("missing_field", "program.status"), []),
    (
        "finance record with no usable value",
        BASE,
        view(finance={"tuition": None, "personal_funds": None}),
        False,
        ("missing_field", "finance"),
        [],
    ),
    ("phone of punctuation only", BASE, view(student__phone="--"), False, ("bad_phone", "student.phone"), []),
    (
        "dependant's birth date removed",
        view(dependent={"1": dep()}),
        view(dependent={"1": dep(birth_date=None)}),
        False,
        ("missing_field", "dependent[1].birth_date"),
        [],
    ),
    (
        "dependant's visa no longer F-2",
        view(dependent={"1": dep()}),
        view(dependent={"1": dep(visa_type="H-4")}),
        False,
        ("needs_dso", "dependent[1].visa_type"),
        [],
    ),
    ("phone removed", BASE, view(student__phone=None), False, ("missing_field", "student.phone"), []),
    (
        "birth city removed",
        view(student__birth_city="Bonn"),
        view(student__birth_city=None),
        False,
        ("missing_field", "student.birth_city"),
        [],
    ),
    (
        "mailing address removed",
        view(
            address__us_mailing={
                "line1": "PO Box 1",
                "city": "Urbana",
                "state": "IL",
                "postal_code": "61803",
                "country": "US",
            }
        ),
        BASE,
        False,
        ("missing_field", "address.us_mailing"),
        [],
    ),
    ("end date removed", BASE, view(program__end_date=None), False, ("missing_field", "program.end_date"), []),
    (
        "degree level removed",
        BASE,
        view(program__degree_level=None),
        False,
        ("missing_field", "program.degree_level"),
        [],
    ),
    (
        "new level without a major",
        BASE,
        view(program__degree_level="06", program__major_cip=None),
        False,
        ("missing_field", "program.major_cip"),
        [],
    ),
    (
        "English proficiency changed without english_required",
        BASE,
        view(program__english_required=None, program__english_met=False),
        False,
        ("missing_field", "program.english_required"),
        [],
    ),
    # -- changes a batch cannot make: the DSO acts in SEVIS
    (
        "start date of an active record",
        BASE,
        view(program__start_date="2025-09-01"),
        False,
        ("needs_dso", "program.start_date"),
        [],
    ),
    (
        "end date of a deferred admission",
        view(program__status="deferred"),
        view(program__status="deferred", program__end_date="2027-12-15"),
        False,
        ("needs_dso", "program.end_date"),
        [],
    ),
    (
        "degree level changed while deferred",
        view(program__status="deferred"),
        view(program__status="deferred", program__degree_level="06"),
        False,
        ("needs_dso", "program.degree_level"),
        [],
    ),
    (
        "active record back to initial",
        BASE,
        view(program__status="initial"),
        False,
        ("needs_dso", "program.status"),
        [],
    ),
    (
        "deferred without a new start date",
        view(program__status="initial"),
        view(program__status="deferred"),
        False,
        ("needs_dso", "program.start_date"),
        [],
    ),
    ("completed record reopened", view(program__status="completed"), BASE, False, ("needs_dso", "program.status"), []),
    (
        "completed record now terminated",
        view(program__status="completed"),
        view(program__status="terminated", program__status_reason="23"),
        False,
        ("needs_dso", "program.status"),
        [],
    ),
    # -- a student SEVIS holds as active stops being F/M/J, or leaves the SIS
    (
        "visa changed to H-1B",
        BASE,
        {**view(student__visa_type="H-1B"), "international": False},
        False,
        ("status_left_fmj", "student.visa_type"),
        [],
    ),
    (
        "visa removed",
        BASE,
        {**view(student__visa_type=None), "international": False},
        False,
        ("status_left_fmj", "student.visa_type"),
        [],
    ),
    ("F-1 becomes J-1", BASE, j1(), False, ("status_left_fmj", "student.visa_type"), []),
    (
        "student row deleted",
        BASE,
        {**view(), "international": False, "exists": False},
        False,
        ("student_removed", "student"),
        [],
    ),
    # -- J-1: every update SEVIS needs is told, naming the fields that changed (no values)
    (
        "J-1 e-mail change",
        j1(),
        j1(student__email="new@example.org"),
        False,
        ("not_reported_visa", "student.visa_type"),
        [],
    ),
    (
        "domestic student becomes a J-1 admit",
        {**view(student__visa_type="US", student__sevis_id=None), "international": False},
        j1(student__sevis_id=None, program__status="initial"),
        False,
        ("not_reported_visa", "student.visa_type"),
        [],
    ),
]


def _issues(prev: dict[str, Any] | None, new: dict[str, Any], snapshot: bool) -> tuple[list[Any], list[str]]:
    ctx = Context(CTX.org_id, CTX.unit_id, CTX.lineage, CTX.commit_ts_ms, snapshot)
    out = derive(copy.deepcopy(prev), copy.deepcopy(new), ctx)
    return out.issues, [e["kind"] for e in out.events]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_each_path_reaches_the_dso_worklist(row: Row) -> None:
    name, prev, new, snapshot, (code, fld), kinds = row
    issues, got_kinds = _issues(prev, new, snapshot)
    assert any(i.code == code and (i.field == fld or fld in (i.field or "").split(",")) for i in issues), (
        name,
        [(i.code, i.field) for i in issues],
    )
    assert got_kinds == kinds, (name, got_kinds)
    # as the DSO sees it: a dead letter of stage sevis_events becomes a worklist item with the reason and an action
    letters = [
        {
            "stage": "sevis_events",
            "code": i.code,
            "reason": i.reason,
            "field": i.field,
            "student_key": "S00000007",
            "at_ms": 1_780_000_000_000 + n,
        }
        for n, i in enumerate(issues)
    ]
    items = [
        i
        for i in worklist([], [], [], letters, {}, Deadlines(), date(2026, 10, 20))
        if code in i.title.replace(" ", "_")
    ]
    assert len(items) == 1 and items[0].student_key == "S00000007" and items[0].action, items
    if code == "status_left_fmj":
        assert "terminate the record in SEVIS RTI" in items[0].action
    assert any(i.reason in items[0].detail for i in issues if i.code == code)


PERSONAL = [BASE["student"][f] for f in ("first_name", "last_name", "birth_city", "email", "phone")]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_reasons_carry_no_personal_data(row: Row) -> None:
    """Dead letters are logged and kept: a reason names fields and the fix, never the SIS value."""
    _, prev, new, snapshot, _, _ = row
    issues, _ = _issues(prev, new, snapshot)
    values = PERSONAL + ["O'Brien", "Strauß", "Smith", "new@example.org", "217 555 0199 ext 12"]
    for i in issues:
        assert not any(v and v in i.reason for v in values), i.reason


def test_altered_name_is_shown_side_by_side_in_the_record_and_batch_show() -> None:
    out = derive(copy.deepcopy(view(student__last_name="Smith")), copy.deepcopy(BASE), CTX)
    [event] = out.events
    notes = [p for p in event["problems"] if p.startswith(SPELLING)]
    assert any('SIS "O\'Brien-Müller" → sent "OBrien Muller"' in n for n in notes), notes
    assert any('SIS "Zoë" → sent "Zoe"' in n for n in notes), notes
    [reason] = {i.reason for i in out.issues if i.field == "student.last_name"}
    assert "accents removed" in reason and "hyphen made a space" in reason and "apostrophe dropped" in reason
    # batch show renders the record's problems: both spellings, next to each other
    from sevisflow.app.cli.review import record_lines
    from sevisflow.app.labels import Labels

    rec = {
        "record_id": "S00000007:PersonalInfo",
        "request_id": "1.S00000007",
        "kind": "PersonalInfo",
        "student_key": "S00000007",
        "payload": orjson.loads(event["payload_json"]),
        "before": orjson.loads(event["before_json"]),
        "after": orjson.loads(event["after_json"]),
        "problems": event["problems"],
        "lineage": event["lineage"],
        "event_ids": [event["event_id"]],
        "status": "open",
        "origin": "sis",
        "at_ms": 1_780_000_000_000,
    }
    lines = record_lines(rec, Labels(None), "UTC")
    assert any("O'Brien-Müller" in x and "OBrien Muller" in x for x in lines), lines


def test_todo_shows_both_spellings_under_the_student() -> None:
    """The worklist (``sevisflow todo``): the open record shows the spellings, the dead letter says why."""
    from sevisflow.app.cli.todo import todo_lines

    out = derive(copy.deepcopy(view(student__last_name="Smith")), copy.deepcopy(BASE), CTX)
    [event] = out.events
    rec = {
        "record_id": "S00000007:PersonalInfo",
        "request_id": "1.S00000007",
        "student_key": "S00000007",
        "kind": "PersonalInfo",
        "status": "open",
        "at_ms": 1_780_000_000_000,
        "display_name": event["display_name"],
        "replaced": [],
        "problems": event["problems"],
        "payload": {},
    }
    letters = [
        {
            "stage": "sevis_events",
            "code": i.code,
            "reason": i.reason,
            "field": i.field,
            "student_key": "S00000007",
            "at_ms": 1_780_000_000_000,
        }
        for i in out.issues
    ]
    items = worklist([rec], [], [], letters, {}, Deadlines(), date(2026, 10, 20))
    text = "\n".join(todo_lines(items, date(2026, 10, 20)))
    assert 'SIS "O\'Brien-Müller" → sent "OBrien Muller"' in text, text
    assert "name altered (student." in text
    assert (
        "to do: compare the spelling sent to SEVIS with the passport (`sevisflow batch show --student S00000007`"
        in text
    )
    assert (
        "the SIS spelling of student.last_name was changed for SEVIS (accents removed, hyphen made a space, "
        "apostrophe dropped)" in text
    )


def test_a_later_event_of_the_record_keeps_the_spelling_note() -> None:
    """The batcher replaces a record's problems with the latest event's: an e-mail change still carries the note."""
    out = derive(copy.deepcopy(BASE), view(student__email="z@example.org"), CTX)
    [event] = out.events
    assert any(p.startswith(SPELLING) for p in event["problems"])
    assert not [i for i in out.issues if i.code == "name_altered"]  # told once, when the name is sent


def test_j1_items_are_one_per_student_and_name_the_changed_fields() -> None:
    prev = j1()
    issues = []
    for email in ("a@example.org", "b@example.org"):
        new = j1(student__email=email)
        issues += derive(copy.deepcopy(prev), copy.deepcopy(new), CTX).issues
        prev = new
    issues += derive(
        copy.deepcopy(prev), j1(student__email="b@example.org", address__us_physical__city="Champaign"), CTX
    ).issues
    assert {i.code for i in issues} == {"not_reported_visa"} and len(issues) == 3
    assert all("changed in the SIS: email" in i.reason for i in issues[:2])
    assert "address.us_physical" in issues[2].reason and "Champaign" not in issues[2].reason
    letters = [
        {
            "stage": "sevis_events",
            "code": i.code,
            "reason": i.reason,
            "field": i.field,
            "student_key": "S00000007",
            "at_ms": n,
        }
        for n, i in enumerate(issues)
    ]
    [item] = worklist([], [], [], letters, {}, Deadlines(), date(2026, 10, 20))
    assert len(item.detail) == 3


def test_no_event_no_issue_only_where_nothing_changed_for_sevis() -> None:
    """The quiet cases stay quiet: the same view again, a domestic student, a snapshot of a SEVIS record."""
    dom = {**view(student__visa_type="US"), "international": False}
    assert _issues(BASE, copy.deepcopy(BASE), False) == ([], [])
    assert _issues(
        dom, view(student__visa_type="US", student__email="x@example.org") | {"international": False}, False
    ) == ([], [])
    assert _issues(None, BASE, True) == ([], [])


# ----------------------------------------------------------------------------- the walk over derive.py


DERIVE = source_of(derive_mod.__name__)
MARKS = ("# reported:", "# not-reportable:")
BUILDER_TELLS = {"issue", "event", "problem"}  # b.issue(…), b.event(…), self.problem(…)
FUNCTION_TELLS = {"_create", "_auth_add", "_auth_cancel"}  # each emits an event or an issue on every path


def _told(stmt: ast.stmt) -> bool:
    """Whether ``stmt`` is a call that emits an event or an issue: ``b.issue(…)``, ``b.event(…)``, ``_create(b)``,
    ``out.issues.append(…)``."""
    if not isinstance(stmt, ast.Expr) or not isinstance(stmt.value, ast.Call):
        return False
    f = stmt.value.func
    if isinstance(f, ast.Name):
        return f.id in FUNCTION_TELLS
    if not isinstance(f, ast.Attribute):
        return False
    owner = ast.unparse(f.value)
    if f.attr in BUILDER_TELLS:
        return owner in ("b", "self")
    return f.attr in ("append", "extend") and owner.endswith(".issues")


def _derivation_functions(tree: ast.Module) -> list[ast.FunctionDef]:
    """derive, _not_reported, the _Builder's event, and every function that takes the builder ``b``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            args = [a.arg for a in node.args.args]
            if node.name in ("derive", "_not_reported", "_closed_status", "_spelling", "event") or "b" in args:
                out.append(node)
    return out


def unannotated_exits(source: str) -> list[tuple[int, str]]:
    """(line, function) of each return/continue that needs a ``# reported:``/``# not-reportable:`` note and has none.

    Exempt: the last statement of a function (its natural end) and an exit right after a statement that emits an
    event or an issue. A note counts on the statement's lines or on the line just above it."""
    lines = source.splitlines()
    tree = ast.parse(source)
    missing = []
    for fn in _derivation_functions(tree):
        blocks: list[list[ast.stmt]] = []
        for node in ast.walk(fn):
            for attr in ("body", "orelse", "finalbody"):
                block = getattr(node, attr, None)
                if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                    blocks.append(block)
            if isinstance(node, ast.Try):
                blocks += [h.body for h in node.handlers]
        for block in blocks:
            for i, stmt in enumerate(block):
                if not isinstance(stmt, (ast.Return, ast.Continue)):
                    continue
                if block is fn.body and i == len(block) - 1:
                    continue
                if i > 0 and _told(block[i - 1]):
                    continue
                text = lines[stmt.lineno - 2 : (stmt.end_lineno or stmt.lineno)]
                notes = [t.split("#", 1)[1] for t in text if any(m in t for m in MARKS)]
                if not any(n.split(":", 1)[1].strip() for n in notes):
                    missing.append((stmt.lineno, fn.name))
    return sorted(set(missing))


def test_every_quiet_exit_of_derive_says_why() -> None:
    source = DERIVE.read_text()
    walked = {fn.name for fn in _derivation_functions(ast.parse(source))}
    assert {
        "derive",
        "_not_reported",
        "_create",
        "_personal_info",
        "_registration",
        "_level_change",
        "_program_dates",
        "_program_edit",
        "_financial",
        "_status_events",
        "_dependents",
        "_authorizations",
        "_auth_add",
        "event",
    } <= walked, walked  # the walk still sees the derivation
    assert sum(m in line for line in source.splitlines() for m in MARKS) >= 25
    missing = unannotated_exits(source)
    assert not missing, (
        "these returns/continues of processors/sevis_events/derive.py leave a change without an "
        "event or an issue and do not say why: report it (b.issue) or annotate the line with "
        "'# reported: <how>' / '# not-reportable: <why>'",
        missing,
    )


@pytest.mark.parametrize(
    "src, flagged",
    [
        ("def _x(b):\n    if b:\n        return\n    b.event()\n", [(3, "_x")]),
        ("def _x(b):\n    if b:\n        return  # not-reportable: nothing changed\n    b.event()\n", []),
        ("def _x(b):\n    if b:\n        b.issue('c', 'r')\n        return\n    b.event()\n", []),
        ("def _x(b):\n    for s in b:\n        if s:\n            continue\n        b.event()\n", [(4, "_x")]),
        ("def _x(b):\n    if b:\n        return  # reported:\n    b.event()\n", [(3, "_x")]),  # a note needs a reason
        ("def helper(v):\n    if v:\n        return None\n    return 1\n", []),  # not a derivation
        ("def _x(b):\n    for s in b:\n        seen.append(s)\n        continue\n    b.event()\n", [(4, "_x")]),
        ("def _x(b, out):\n    if b:\n        out.issues.append(1)\n        return out\n    b.event()\n", []),
    ],
)
def test_the_walk_flags_a_new_silent_exit(src: str, flagged: list[tuple[int, str]]) -> None:
    assert unannotated_exits(src) == flagged
