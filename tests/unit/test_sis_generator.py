"""Unit tests of the reference SIS generator and activity (no database)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevisflow.deploy.sis import refdata
from sevisflow.deploy.sis.activity import (
    CHANGE_KINDS,
    EXTRA_KINDS,
    Op,
    Transaction,
    World,
    activity_span,
    generate_activity,
)
from sevisflow.deploy.sis.generator import (
    INTERNATIONAL_VISAS,
    PRIMARY_KEYS,
    TABLE_ORDER,
    School,
    generate_school,
    generate_vendor,
)
from sevisflow.deploy.sis.load import column_runs

REPO = Path(__file__).resolve().parents[2]
TODAY = date(2026, 10, 5)

US_STATES = {
    "Alabama",
    "Alaska",
    "Arizona",
    "Arkansas",
    "California",
    "Colorado",
    "Connecticut",
    "Delaware",
    "District of Columbia",
    "Florida",
    "Georgia",
    "Hawaii",
    "Idaho",
    "Illinois",
    "Indiana",
    "Iowa",
    "Kansas",
    "Kentucky",
    "Louisiana",
    "Maine",
    "Maryland",
    "Massachusetts",
    "Michigan",
    "Minnesota",
    "Mississippi",
    "Missouri",
    "Montana",
    "Nebraska",
    "Nevada",
    "New Hampshire",
    "New Jersey",
    "New Mexico",
    "New York",
    "North Carolina",
    "North Dakota",
    "Ohio",
    "Oklahoma",
    "Oregon",
    "Pennsylvania",
    "Rhode Island",
    "South Carolina",
    "South Dakota",
    "Tennessee",
    "Texas",
    "Utah",
    "Vermont",
    "Virginia",
    "Washington",
    "West Virginia",
    "Wisconsin",
    "Wyoming",
}
CIP = re.compile(r"^\d{2}\.\d{4}$")
SEVIS_ID = re.compile(r"^N\d{10}$")


def _years(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def check_school(school: School, today: date, max_age: int = 45) -> None:
    """Assert what schema.sql enforces, plus the realism rules the generator promises."""
    assert set(school) == set(TABLE_ORDER)
    keys: dict[str, set[tuple[Any, ...]]] = {}
    for table in TABLE_ORDER:
        ks = [tuple(r[c] for c in PRIMARY_KEYS[table]) for r in school[table]]
        assert len(ks) == len(set(ks)), f"duplicate primary key in {table}"
        keys[table] = set(ks)
    persons = {r["person_id"]: r for r in school["person"]}
    for table in ("immigration", "address", "program", "enrollment", "finance", "dependent"):
        assert all(r["person_id"] in persons for r in school[table]), f"{table}.person_id dangles"
    assert all((r["term_id"],) in keys["term"] for r in school["enrollment"])

    school_ids = [p["school_id"] for p in persons.values()]
    assert len(school_ids) == len(set(school_ids))
    for p in persons.values():
        assert re.fullmatch(r"S\d{8}", p["school_id"])
        assert p["last_name"] and (p["first_name"] is None or p["first_name"])
        assert p["gender"] in ("M", "F", "X")
        assert 17 <= _years(p["birth_date"], today) <= max_age, p
        assert re.fullmatch(r"[A-Z]{2}", p["birth_country"]) and re.fullmatch(r"[A-Z]{2}", p["citizenship_country"])
        assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", p["email"])
        assert p["updated_at"].tzinfo is not None

    immigration = {r["person_id"]: r for r in school["immigration"]}
    sevis_ids = [r["sevis_id"] for r in immigration.values() if r["sevis_id"]]
    assert len(sevis_ids) == len(set(sevis_ids))
    for r in immigration.values():
        assert r["visa_type"] in (None, "F-1", "M-1", "J-1", "H-1B", "B-2")
        assert r["sevis_id"] is None or SEVIS_ID.match(r["sevis_id"])
        assert r["sevis_status"] is None or r["sevis_id"] is not None
        assert r["issue_reason"] in (None, "I", "S")
        if r["visa_type"] not in INTERNATIONAL_VISAS:
            assert r["sevis_id"] is None

    kinds = Counter((a["person_id"], a["kind"]) for a in school["address"])
    assert max(kinds.values(), default=1) == 1, "more than one address of a kind per person"
    for a in school["address"]:
        assert a["kind"] in ("US_PHYSICAL", "US_MAILING", "FOREIGN") and a["line1"]
        if a["kind"] == "FOREIGN":
            assert a["country"] != "US" and a["country"] in refdata.FOREIGN_PLACES
        else:
            assert a["country"] == "US" and re.fullmatch(r"\d{5}", a["postal_code"])
            assert a["state"] in US_STATES, a["state"]

    current = Counter(p["person_id"] for p in school["program"] if p["is_current"])
    assert max(current.values(), default=1) == 1, "more than one current programme"
    for p in school["program"]:
        assert CIP.match(p["major_cip"]) and p["major_cip"] != "00.0000"
        assert all(c is None or CIP.match(c) for c in (p["second_major_cip"], p["minor_cip"]))
        assert p["expected_end_date"] > p["start_date"]
        assert p["english_required"] is not False or p["english_not_required_reason"]

    for t in school["term"]:
        assert t["start_date"] < t["end_date"] < t["next_term_start"]
    pairs = Counter((e["person_id"], e["term_id"]) for e in school["enrollment"])
    assert max(pairs.values(), default=1) == 1
    for e in school["enrollment"]:
        assert e["status"] in ("REGISTERED", "ENROLLED", "WITHDRAWN", "DROPPED")
        assert e["status"] != "ENROLLED" or e["confirmed_at"] is not None
        assert isinstance(e["credit_hours"], Decimal) and e["credit_hours"] >= 0

    for f in school["finance"]:
        assert is_international(immigration.get(f["person_id"])), "finance row for a domestic student"
        assert 1 <= f["academic_term_months"] <= 12
        costs = f["tuition"] + f["living_expenses"] + f["dependent_expenses"] + f["other_costs"]
        funds = f["personal_funds"] + f["school_funds"] + f["other_funds"]
        assert funds >= costs, f
        assert f["school_funds"] == 0 or f["school_funds_remarks"]
        assert f["other_funds"] == 0 or f["other_funds_source"]
        assert f["other_costs"] == 0 or f["other_costs_remarks"]  # SEVIS takes other costs only with remarks

    spouses = Counter(
        d["person_id"] for d in school["dependent"] if d["relationship"] == "SPOUSE" and d["status"] == "ACTIVE"
    )
    assert max(spouses.values(), default=1) == 1
    for d in school["dependent"]:
        student_visa = immigration[d["person_id"]]["visa_type"]
        assert (student_visa, d["visa_type"]) in (("F-1", "F-2"), ("M-1", "M-2"))


def is_international(row: dict[str, Any] | None) -> bool:
    return row is not None and row["visa_type"] in INTERNATIONAL_VISAS


def international_ids(school: School) -> set[int]:
    return {r["person_id"] for r in school["immigration"] if is_international(r)}


def after(school: School, transactions: list[Transaction]) -> School:
    """The school with every transaction applied (in memory)."""
    world = World(school)
    for tx in transactions:
        for op in tx.ops:
            world.apply(op)
    return {t: list(world.rows[t].values()) for t in TABLE_ORDER}


@pytest.fixture(scope="module")
def school() -> School:
    return generate_school(600, 0.4, 11, TODAY)


@pytest.fixture(scope="module")
def activity(school: School) -> list[Transaction]:
    return generate_activity(school, 400, 11, TODAY)


# ---- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_identical_school_and_activity(school: School, activity: list[Transaction]) -> None:
    assert generate_school(600, 0.4, 11, TODAY) == school
    assert generate_activity(school, 400, 11, TODAY) == activity


def test_different_seed_gives_different_school() -> None:
    assert generate_school(50, 0.5, 1, TODAY) != generate_school(50, 0.5, 2, TODAY)


def test_activity_does_not_modify_the_school(school: School) -> None:
    before = orjson.dumps(school, default=str)
    generate_activity(school, 100, 3, TODAY)
    assert orjson.dumps(school, default=str) == before


_DIGEST = """
import hashlib, orjson
from datetime import date
from sevisflow.deploy.sis.generator import generate_school
from sevisflow.deploy.sis.activity import generate_activity
s = generate_school(300, 0.5, 5, date(2026, 1, 20))
a = generate_activity(s, 150, 5, date(2026, 1, 20))
print(hashlib.sha256(orjson.dumps([s, [t.statements() for t in a]], default=str)).hexdigest())
"""


def test_output_does_not_depend_on_hash_seed_or_process() -> None:
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST], cwd=REPO, env=env, check=True, capture_output=True, text=True
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1


# ---- no wall clock ----------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["generator", "builder", "model", "activity", "terms", "refdata"])
def test_modules_never_read_the_clock(module: str) -> None:
    tree = ast.parse((REPO / "deploy" / "sis" / f"{module}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in {"today", "now", "utcnow", "time", "monotonic", "perf_counter", "time_ns"}, (
                f"{module} reads the clock (line {node.lineno})"
            )
        if isinstance(node, ast.Import):
            assert all(a.name != "time" for a in node.names), f"{module} imports time"
        if isinstance(node, ast.ImportFrom):
            assert node.module not in ("random", "time"), f"{module} imports from {node.module}"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "random":
            assert node.attr == "Random", f"{module} uses the global random generator (line {node.lineno})"


def test_everything_is_relative_to_the_today_argument() -> None:
    """With `today` far in the past, nothing may leak today's real date."""
    today = date(2003, 3, 3)
    school = generate_school(300, 0.5, 9, today)
    check_school(school, today)
    limit = datetime(2003, 3, 3, tzinfo=UTC)
    assert all(p["updated_at"] < limit for p in school["person"])
    assert all(e["confirmed_at"] < limit for e in school["enrollment"] if e["confirmed_at"])
    assert all(i["i20_issue_date"] <= today for i in school["immigration"] if i["i20_issue_date"])
    assert all(p["start_date"] < date(2005, 1, 1) for p in school["program"])
    assert {t["term_id"][:4] for t in school["term"]} <= {str(y) for y in range(1995, 2005)}
    start, end = activity_span(today)
    transactions = generate_activity(school, 200, 9, today)
    assert all(start <= tx.at <= end for tx in transactions)
    assert end < datetime(2004, 1, 1, tzinfo=UTC)


# ---- the school -------------------------------------------------------------------------------


def test_school_satisfies_the_schema_rules(school: School) -> None:
    check_school(school, TODAY)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 80),
    share=st.floats(0, 1),
    seed=st.integers(0, 2**32),
    today=st.dates(date(2000, 1, 1), date(2040, 12, 31)),
)
def test_any_school_satisfies_the_rules_and_the_share(n: int, share: float, seed: int, today: date) -> None:
    school = generate_school(n, share, seed, today)
    check_school(school, today)
    assert len(school["person"]) == n
    assert len(international_ids(school)) == round(n * share)


@pytest.mark.parametrize("share", [0.0, 0.1, 0.3, 0.75, 1.0])
def test_international_share_is_exact(share: float) -> None:
    school = generate_school(200, share, 4, TODAY)
    intl = international_ids(school)
    assert len(intl) == round(200 * share)
    visas = Counter(r["visa_type"] for r in school["immigration"] if r["person_id"] in intl)
    if intl:
        assert visas["F-1"] > visas["M-1"] and visas["F-1"] > visas["J-1"]
    finance = {f["person_id"] for f in school["finance"]}
    assert finance == intl


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate_school(10, 1.5, 1, TODAY)
    with pytest.raises(ValueError):
        generate_school(-1, 0.5, 1, TODAY)


def test_names_are_realistically_awkward(school: School) -> None:
    names = [(p["first_name"] or "") + " " + p["last_name"] for p in school["person"]]
    text = " ".join(names)
    for needle in ("é", "ñ", "ü", "ø", "'", "-"):
        assert needle in text, f"no name contains {needle!r}"
    chinese = set(refdata.POOLS["chinese"].family)
    assert any(p["last_name"] in chinese for p in school["person"])
    assert any(p["first_name"] is None for p in generate_school(3000, 1.0, 2, TODAY)["person"]), "no mononymous person"


def test_sevis_id_is_missing_only_for_new_admits(school: School) -> None:
    programs = {p["person_id"]: p for p in school["program"] if p["is_current"]}
    intl = [r for r in school["immigration"] if is_international(r)]
    without = [r for r in intl if r["sevis_id"] is None]
    assert 0 < len(without) < len(intl) * 0.25
    assert all(programs[r["person_id"]]["status"] == "ADMITTED" for r in without)
    assert all(r["sevis_status"] is None and r["i20_issue_date"] is None for r in without)


def test_every_student_has_the_expected_addresses(school: School) -> None:
    by_person: dict[int, set[str]] = {}
    for a in school["address"]:
        by_person.setdefault(a["person_id"], set()).add(a["kind"])
    intl = international_ids(school)
    for p in school["person"]:
        kinds = by_person.get(p["person_id"], set())
        if p["person_id"] in intl:
            assert "FOREIGN" in kinds
        else:
            assert "US_PHYSICAL" in kinds and "FOREIGN" not in kinds


def test_enrollments_follow_the_calendar(school: School) -> None:
    terms = {t["term_id"]: t for t in school["term"]}
    limit = datetime.combine(TODAY, datetime.min.time(), UTC)
    for e in school["enrollment"]:
        t = terms[e["term_id"]]
        if e["confirmed_at"] is not None:
            assert e["confirmed_at"].date() >= t["start_date"] and e["confirmed_at"] < limit
        if e["status"] == "REGISTERED":
            assert t["end_date"] >= TODAY, "an old term was never confirmed"
    assert Counter(e["status"] for e in school["enrollment"])["ENROLLED"] > len(school["person"])


@pytest.mark.parametrize("today, term_id", [(date(2026, 8, 10), "2026FA"), (date(2027, 1, 25), "2027SP")])
def test_students_register_before_and_confirm_after_the_term_starts(today: date, term_id: str) -> None:
    school = generate_school(300, 0.5, 6, today)
    in_term = Counter(e["status"] for e in school["enrollment"] if e["term_id"] == term_id)
    assert in_term["REGISTERED"] > 0
    if today > date(2027, 1, 18):  # a week into the term: confirmations under way
        assert in_term["ENROLLED"] > 0
    else:
        assert in_term["ENROLLED"] == 0


def test_dependents_exist_and_match_the_student(school: School) -> None:
    assert school["dependent"], "no dependents at all"
    persons = {p["person_id"]: p for p in school["person"]}
    for d in school["dependent"]:
        student = persons[d["person_id"]]
        if d["relationship"] == "CHILD":
            assert d["birth_date"] > student["birth_date"] + timedelta(days=15 * 365)


# ---- activity ---------------------------------------------------------------------------------


def test_activity_has_every_change_kind(activity: list[Transaction]) -> None:
    assert len(activity) == 400
    kinds = Counter(tx.kind for tx in activity)
    assert set(CHANGE_KINDS) <= set(kinds), set(CHANGE_KINDS) - set(kinds)
    assert set(kinds) <= set(CHANGE_KINDS + EXTRA_KINDS)


def test_small_activities_still_cover_every_kind(school: School) -> None:
    for seed in range(5):
        transactions = generate_activity(school, len(CHANGE_KINDS), seed, TODAY)
        assert {tx.kind for tx in transactions} == set(CHANGE_KINDS)


def test_activity_is_in_commit_order_within_its_span(activity: list[Transaction]) -> None:
    start, end = activity_span(TODAY)
    times = [tx.at for tx in activity]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert start <= times[0] and times[-1] <= end


def test_activity_keeps_the_school_valid(school: School, activity: list[Transaction]) -> None:
    final = after(school, activity)
    last = max(tx.at for tx in activity).date()
    check_school(final, last, max_age=46)  # on the last day some 45-year-olds have had a birthday


def test_some_transactions_touch_several_tables(activity: list[Transaction]) -> None:
    multi = Counter(tx.kind for tx in activity if len(tx.tables) > 1)
    assert multi["new_admit"] > 0 and multi["withdrawal"] + multi["dependent_added"] > 0
    assert any(op.action == "delete" for tx in activity for op in tx.ops)


def test_new_admits_need_an_i20(school: School, activity: list[Transaction]) -> None:
    for tx in (t for t in activity if t.kind == "new_admit"):
        assert {"person", "immigration", "program", "finance", "address"} <= tx.tables
        assert all(op.action == "insert" for op in tx.ops)
        rows = {op.table: op.values for op in tx.ops}
        assert rows["immigration"]["sevis_id"] is None
        assert rows["immigration"]["visa_type"] in INTERNATIONAL_VISAS
        assert rows["program"]["status"] == "ADMITTED" and rows["program"]["start_date"] > tx.at.date()
        assert any(op.values.get("kind") == "FOREIGN" for op in tx.ops if op.table == "address")
        assert rows["person"]["updated_at"] == tx.at


def test_domestic_changes_concern_domestic_students_only(school: School, activity: list[Transaction]) -> None:
    intl = international_ids(school)
    domestic = [tx for tx in activity if tx.kind == "domestic_change"]
    assert domestic
    assert all(not tx.international and tx.person_id not in intl for tx in domestic)
    assert all(tx.international for tx in activity if tx.kind != "domestic_change")


def test_changes_do_what_their_kind_says(activity: list[Transaction]) -> None:
    def changed(kind: str) -> list[dict[str, Any]]:
        return [dict(op.values) for tx in activity if tx.kind == kind for op in tx.ops if op.action == "update"]

    assert all(set(v) <= {"status"} for v in changed("withdrawal") + changed("completion"))
    assert {"WITHDRAWN", "DISMISSED", "DROPPED"} >= {v["status"] for v in changed("withdrawal")}
    assert {v["status"] for v in changed("completion")} == {"COMPLETED"}
    assert all("expected_end_date" in v for v in changed("extension") + changed("shortening"))
    assert any("major_cip" in v for v in changed("major_change"))
    assert any({"last_name", "first_name", "middle_name"} & set(v) for v in changed("name_change"))
    regs = changed("term_registration")
    assert any(v.get("status") == "ENROLLED" and v["confirmed_at"] is not None for v in regs) or any(
        op.values.get("status") == "ENROLLED"
        for tx in activity
        if tx.kind == "term_registration"
        for op in tx.ops
        if op.action == "insert"
    )


# ---- many schools in one SIS (generate_vendor) -----------------------------------------------

VENDOR_SCHOOLS = [("NORTH", 120), ("SOUTH", 80), ("WEST", 0), ("EAST", 37)]


@pytest.fixture(scope="module")
def vendor() -> School:
    return generate_vendor(VENDOR_SCHOOLS, 0.4, 11, TODAY)


def _school_of(school: School) -> dict[int, str | None]:
    return {p["person_id"]: p["school_code"] for p in school["person"]}


def test_a_single_school_has_no_school_code(school: School) -> None:
    assert {p["school_code"] for p in school["person"]} == {None}
    assert generate_vendor([(None, 600)], 0.4, 11, TODAY) == school  # the same school, row for row


def test_vendor_ids_are_unique_across_schools(vendor: School) -> None:
    check_school(vendor, TODAY)  # primary keys, school ids and SEVIS ids unique; no dangling person_id
    assert len(vendor["person"]) == sum(n for _, n in VENDOR_SCHOOLS)
    assert len({t["term_id"] for t in vendor["term"]}) == len(vendor["term"])  # one calendar, not one per school


def test_every_person_row_of_a_school_carries_its_code(vendor: School) -> None:
    by_code = Counter(p["school_code"] for p in vendor["person"])
    assert by_code == Counter({code: n for code, n in VENDOR_SCHOOLS if n})
    # the rows of the other tables point at persons of one school each; dependants are rows of `dependent`
    code_of = _school_of(vendor)
    students_with_dependents = {d["person_id"] for d in vendor["dependent"]}
    assert students_with_dependents and {code_of[pid] for pid in students_with_dependents} <= {"NORTH", "SOUTH", "EAST"}


@pytest.mark.parametrize("share", [0.0, 0.25, 0.4, 1.0])
def test_each_school_has_the_international_share(share: float) -> None:
    vendor = generate_vendor(VENDOR_SCHOOLS, share, 5, TODAY)
    code_of = _school_of(vendor)
    intl = Counter(code_of[pid] for pid in international_ids(vendor))
    for code, n in VENDOR_SCHOOLS:
        assert sum(1 for c in code_of.values() if c == code) == n
        assert intl[code] == round(n * share), code
    assert {f["person_id"] for f in vendor["finance"]} == international_ids(vendor)


def test_vendor_is_deterministic_and_its_activity_keeps_it_valid(vendor: School) -> None:
    assert generate_vendor(VENDOR_SCHOOLS, 0.4, 11, TODAY) == vendor
    assert generate_vendor(VENDOR_SCHOOLS, 0.4, 12, TODAY) != vendor
    transactions = generate_activity(vendor, 200, 11, TODAY)
    last = max(tx.at for tx in transactions).date()
    check_school(after(vendor, transactions), last, max_age=46)  # as test_activity_keeps_the_school_valid
    admitted = [op.values for tx in transactions for op in tx.ops if op.table == "person" and op.action == "insert"]
    assert admitted and all(p["school_code"] is None for p in admitted)  # new admits join the main school


def test_vendor_rejects_bad_schools() -> None:
    with pytest.raises(ValueError, match="given twice"):
        generate_vendor([("NORTH", 3), ("NORTH", 4)], 0.5, 1, TODAY)
    for blank in ("", "  ", " NORTH"):
        with pytest.raises(ValueError, match="non-empty code"):
            generate_vendor([(blank, 3)], 0.5, 1, TODAY)
    with pytest.raises(ValueError, match=">= 0"):
        generate_vendor([("NORTH", -1)], 0.5, 1, TODAY)
    with pytest.raises(ValueError, match="between 0 and 1"):
        generate_vendor([("NORTH", 3)], 1.5, 1, TODAY)


def test_schema_has_the_school_code_column() -> None:
    schema = (REPO / "deploy" / "sis" / "schema.sql").read_text(encoding="utf-8")
    person = schema[schema.index("CREATE TABLE public.person (") :].split(");", 1)[0]
    assert re.search(r"^\s+school_code\s+text,", person, re.MULTILINE)


def test_load_cuts_rows_with_other_columns_into_separate_copies() -> None:
    old = {"person_id": 1, "school_id": "S00000001"}
    new = {"person_id": 2, "school_id": "S00000002", "school_code": "NORTH"}
    swapped = {"school_code": None, "person_id": 3, "school_id": "S00000003"}
    runs = column_runs([old, old, new, swapped, old])
    assert [(cols, [r["person_id"] for r in rows]) for cols, rows in runs] == [
        (("person_id", "school_id"), [1, 1]),
        (("person_id", "school_id", "school_code"), [2, 3]),
        (("person_id", "school_id"), [1]),
    ]
    assert column_runs([]) == []


# ---- SQL rendering ----------------------------------------------------------------------------


def test_ops_render_to_parameterised_sql() -> None:
    ins = Op("insert", "person", {}, {"person_id": 1, "last_name": "O'Brien"})
    assert ins.sql() == ('INSERT INTO public."person" ("person_id", "last_name") VALUES (%s, %s)', (1, "O'Brien"))
    upd = Op("update", "enrollment", {"enrollment_id": 7}, {"status": "ENROLLED", "credit_hours": Decimal("12.0")})
    assert upd.sql() == (
        'UPDATE public."enrollment" SET "status" = %s, "credit_hours" = %s WHERE "enrollment_id" = %s',
        ("ENROLLED", Decimal("12.0"), 7),
    )
    dele = Op("delete", "address", {"address_id": 3}, {})
    assert dele.sql() == ('DELETE FROM public."address" WHERE "address_id" = %s', (3,))
    with pytest.raises(ValueError):
        Op("update", "person; drop table x", {"person_id": 1}, {"a": 1}).sql()
    with pytest.raises(ValueError):
        Op("merge", "person", {"person_id": 1}, {}).sql()
