"""The reference SIS's J-1 sponsor records and their season of activity, end to end without Kafka.

generate_exchange (scholars and the J-1 students' sponsor records) + generate_exchange_activity, replayed as
Debezium records through the pure normalize + sevis_events with the sponsor programs configured: every kind of
sponsor-side change must give the EV element an RO/ARO would file, every event must render into an XSD-valid
SEVISBatchCreateUpdateEV, and the F/M school beside it must not change at all.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from sevisflow.deploy.sis.activity import generate_activity
from sevisflow.deploy.sis.exchange import (
    ADDRESS_BASE,
    EV_KINDS,
    PERSON_BASE,
    generate_exchange,
    generate_exchange_activity,
    with_exchange,
)
from sevisflow.deploy.sis.generator import TABLE_ORDER, generate_school
from sevisflow.deploy.sis.model import Transaction, World
from sevisflow.deploy.sis.replay import MAPPING, PKS, feed_ops
from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline
from sevisflow.sinks.xml.render_ev import check_ev_batch
from sevisflow.sinks.xml.xsd_ev import load_ev_schema
from tests.ev_support import batch_of
from tests.helpers import XSD_DIR

TODAY = date(2026, 10, 5)
MAPPING_DIR = Path(__file__).resolve().parents[2] / "deploy" / "sis"
PROGRAM = "P-1-12345"
PROGRAMS = {"RSCH": PROGRAM, "STUD": PROGRAM}

# sponsor-side change → (EV kinds it must give, kinds it may give besides)
EXPECTED: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "ev_new_appointment": (frozenset({"EV.Create"}), frozenset()),
    "ev_sevis_id_recorded": (frozenset(), frozenset()),  # SEVIS's answer entered: the baseline moves
    "ev_arrival": (frozenset({"EV.Validate"}), frozenset()),
    "ev_address_move": (frozenset({"EV.Biographical"}), frozenset()),
    "ev_site_added": (frozenset({"EV.SiteOfActivity.Add"}), frozenset()),
    "ev_site_moved": (frozenset({"EV.SiteOfActivity.Edit"}), frozenset()),
    "ev_site_closed": (frozenset({"EV.SiteOfActivity.Delete"}), frozenset()),
    "ev_extension": (frozenset({"EV.Program.Extension"}), frozenset()),
    "ev_early_end": (frozenset({"EV.Program.Shorten"}), frozenset()),
    "ev_termination": (frozenset({"EV.Status.Terminate"}), frozenset()),
    "ev_no_show": (frozenset({"EV.Status.NoShow"}), frozenset()),
    "ev_cancelled": (frozenset({"EV.Status.Invalid"}), frozenset()),
    "ev_amend": (frozenset({"EV.Program.Amend"}), frozenset()),
    "ev_subject_change": (frozenset({"EV.Program.EditSubject"}), frozenset()),
    "ev_funding_change": (frozenset({"EV.FinancialInfo"}), frozenset()),
    "ev_dependent_added": (frozenset({"EV.Dependent.Add"}), frozenset()),
    "ev_dependent_corrected": (frozenset({"EV.Dependent.Edit"}), frozenset()),
    "ev_dependent_departed": (frozenset({"EV.Dependent.EndStatus"}), frozenset()),
    "ev_dependent_error": (frozenset({"EV.Dependent.Delete"}), frozenset()),
}
TOLD = {"name_altered"}  # a name spelled for SEVIS is sent, and told: not a problem left


@cache
def base_school() -> dict[str, list[dict[str, Any]]]:
    return generate_school(300, 0.35, 7, TODAY)


@cache
def season() -> tuple[dict[str, list[dict[str, Any]]], tuple[Transaction, ...]]:
    school = with_exchange(base_school(), 7, TODAY, 20)
    return school, tuple(generate_exchange_activity(school, 7, TODAY, 40))


def replay(programs: dict[str, str]) -> tuple[PureOutput, list[tuple[Transaction, PureOutput]]]:
    school, activity = season()
    world, feed = World(school), SisFeed(primary_keys=PKS)
    pipe = PurePipeline(MAPPING, ev_programs=programs)
    for table in TABLE_ORDER:
        for row in school[table]:
            feed.tx(("r", f"public.{table}", None, row), snapshot=True)
    snapshot = pipe.feed(feed.records)
    feed.records.clear()
    out = []
    for tx in activity:
        feed.ts_ms = int(tx.at.timestamp() * 1000) - 1000
        feed.tx(*feed_ops(world, tx))
        out.append((tx, pipe.feed(feed.records)))
        feed.records.clear()
    return snapshot, out


@pytest.fixture(scope="module")
def configured() -> tuple[PureOutput, list[tuple[Transaction, PureOutput]]]:
    return replay(PROGRAMS)


# ---------------------------------------------------------------------------- the source data


def test_the_f_m_school_and_its_activity_are_the_same_with_or_without_a_j_program() -> None:
    school = base_school()
    before = orjson.dumps(school, default=str)
    fm_activity = generate_activity(school, 150, 7, TODAY)
    full = with_exchange(school, 7, TODAY, 20)
    assert orjson.dumps(school, default=str) == before  # not modified
    assert {t: full[t][: len(school[t])] for t in school} == school  # the school's rows come first, unchanged
    assert [(tx.kind, tx.person_id, tx.ops) for tx in generate_activity(school, 150, 7, TODAY)] == [
        (tx.kind, tx.person_id, tx.ops) for tx in fm_activity
    ]
    # the sponsor's rows never take an id the F/M activity will use
    new_people = {
        op.values["person_id"] for tx in fm_activity for op in tx.ops if op.table == "person" and op.action == "insert"
    }
    new_addresses = {
        op.values["address_id"]
        for tx in fm_activity
        for op in tx.ops
        if op.table == "address" and op.action == "insert"
    }
    extra = generate_exchange(school, 7, TODAY, 20)
    assert all(r["person_id"] >= PERSON_BASE for r in extra["person"]) and not new_people & {
        r["person_id"] for r in extra["person"]
    }
    assert all(r["address_id"] >= ADDRESS_BASE for r in extra["address"]) and not new_addresses & {
        r["address_id"] for r in extra["address"]
    }


def test_the_sponsor_records_are_deterministic_and_obey_the_schema_rules() -> None:
    school, activity = season()
    again = with_exchange(base_school(), 7, TODAY, 20)
    assert orjson.dumps(again, default=str) == orjson.dumps(school, default=str)
    assert [t.ops for t in generate_exchange_activity(again, 7, TODAY, 40)] == [t.ops for t in activity]
    visas = {r["person_id"]: r["visa_type"] for r in school["immigration"]}
    evs = school["exchange_visitor"]
    assert {r["person_id"] for r in evs} == {p for p, v in visas.items() if v == "J-1"}  # every J-1 has one
    assert {r["sponsor_program"] for r in evs} == {"RSCH", "STUD"}
    for r in evs:
        assert r["end_date"] > r["begin_date"]
        assert (r["status"] == "CHECKED_IN") <= (r["checked_in_on"] is not None)
        assert (r["status"] == "TERMINATED") <= bool(r["termination_reason"] and r["termination_date"])
    funded = {r["person_id"]: r for r in school["exchange_funding"]}
    amounts = (
        "sponsor_funds",
        "us_agency_funds",
        "intl_org_funds",
        "home_govt_funds",
        "binational_funds",
        "other_org_funds",
        "personal_funds",
    )
    assert set(funded) == {r["person_id"] for r in evs}
    assert all(
        sum(f[a] for a in amounts) >= 1 and (f["us_agency_funds"] == 0 or f["us_agency"]) for f in funded.values()
    )
    primaries = Counter(s["person_id"] for s in school["exchange_site"] if s["is_primary"] and s["is_active"])
    assert set(primaries) == set(funded) and set(primaries.values()) == {1}  # exactly one primary site each
    for d in school["exchange_dependent"]:
        assert d["person_id"] in funded and d["birth_date"] < TODAY and d["relationship"] in ("SPOUSE", "CHILD")


def test_a_season_has_every_kind_of_sponsor_change() -> None:
    _, activity = season()
    assert len(activity) == 40 and set(EV_KINDS) <= {tx.kind for tx in activity}
    assert all(tx.ops and tx.international for tx in activity)
    assert [tx.at for tx in activity] == sorted(tx.at for tx in activity)
    assert min(tx.at.date() for tx in activity) >= TODAY


# ---------------------------------------------------------------------------- what SEVIS hears


def test_each_sponsor_change_gives_the_ev_element_an_ro_would_file(configured) -> None:
    _, out = configured
    wrong = []
    for tx, o in out:
        must, may = EXPECTED[tx.kind]
        got = Counter(o.kinds())
        left = [(i.code, i.reason) for _, i in o.issues if i.code not in TOLD]
        if set(got) - must - may or not must <= set(got) or any(n > 1 for n in got.values()) or left or o.dead:
            wrong.append((tx.kind, tx.note, dict(got), left, [d.code for d in o.dead]))
    assert not wrong, wrong


def test_the_snapshot_creates_the_new_ds2019s_and_nothing_else(configured) -> None:
    snapshot, _ = configured
    school, _ = season()
    no_id = {f"S{r['person_id']:08d}" for r in school["immigration"] if r["visa_type"] == "J-1" and not r["sevis_id"]}
    ev_creates = {e["student_key"] for e in snapshot.events if e["kind"] == "EV.Create"}
    assert ev_creates and ev_creates <= no_id
    assert {e["kind"] for e in snapshot.events} <= {"EV.Create", "Create"}
    assert {i.code for _, i in snapshot.issues} <= TOLD | {"incomplete_record"}
    assert not any(i.code == "not_reported_visa" for _, i in snapshot.issues)


def test_no_cannot_send_item_for_a_configured_program_and_one_naming_it_otherwise(configured) -> None:
    _, out = configured
    assert not any(i.code == "not_reported_visa" for _, o in out for _, i in o.issues)
    assert all(e["org_id"] == PROGRAM for _, o in out for e in o.events)
    _, unconfigured = replay({})
    assert not any(o.events for _, o in unconfigured)
    told = [i for tx, o in unconfigured if EXPECTED[tx.kind][0] for _, i in o.issues if i.code == "not_reported_visa"]
    assert len(told) >= sum(1 for tx, _ in unconfigured if EXPECTED[tx.kind][0])
    assert all("is not configured" in i.reason for i in told)


@pytest.mark.skipif(
    not (XSD_DIR / "Create-UpdateExchangeVisitor.xsd").is_file(), reason="needs the EV XSD in SEVISFLOW_TEST_XSD_DIR"
)
def test_every_derived_event_renders_into_an_xsd_valid_ev_document(configured) -> None:
    """What SEVIS would get: the season's events as batch records (ids SEVIS returns filled in), XSD-valid."""
    snapshot, out = configured
    events = [e for e in snapshot.events if e["kind"].startswith("EV.")] + [e for _, o in out for e in o.events]
    records = []
    for n, e in enumerate(events, 1):
        payload = _with_sevis_ids(e["kind"], orjson.loads(e["payload_json"]), n)
        create = e["kind"] == "EV.Create"
        records.append(
            {
                "record_id": f"{e['student_key']}:{e['kind']}:{n}",
                "request_id": f"R{n:08d}",
                "section": "create" if create else "update",
                "student_key": e["student_key"],
                "sevis_id": None if create else (e["sevis_id"] or f"N{n:010d}"),
                "kind": e["kind"],
                "payload": payload,
                "user_defined_a": e["student_key"],
                "user_defined_b": None,
                "event_ids": [e["event_id"]],
                "lineage": [],
            }
        )
    assert len({r["kind"] for r in records}) >= 18
    checked = check_ev_batch(batch_of(records, org=PROGRAM), load_ev_schema(XSD_DIR))
    assert checked.ok, [(p.kind, p.field, p.message) for p in checked.problems][:10]


def _with_sevis_ids(kind: str, payload: dict[str, Any], n: int) -> dict[str, Any]:
    """A dependent's SEVIS ID as SEVIS's results would have filled it (the batcher's job, not derivation's)."""
    if kind.startswith("EV.Dependent.") and kind != "EV.Dependent.Add" and "@dependentSevisID" not in payload:
        payload["@dependentSevisID"] = f"N{900000 + n:010d}"
    return payload


def test_a_date_in_the_season_is_never_before_the_program_can_take_it(configured) -> None:
    """Validate only from 30 days before the begin date (S2284), Shorten never before the begin date."""
    school, _ = season()
    begin = {f"S{r['person_id']:08d}": r["begin_date"] for r in school["exchange_visitor"]}
    _, out = configured
    for tx, o in out:
        for e in o.events:
            if e["kind"] == "EV.Validate":
                assert tx.at.date() >= begin.get(e["student_key"], tx.at.date()) - timedelta(days=30)
            if e["kind"] == "EV.Program.Shorten":
                assert orjson.loads(e["payload_json"])["NewPrgEndDate"] > tx.at.date().isoformat()


def test_the_reference_mapping_translates_every_sponsor_code_the_schema_allows() -> None:
    """Each CHECK-listed code of the exchange tables has a [values.*] entry giving a canonical value derive knows."""
    import re

    from sevisflow.processors.normalize.canonical import EV_DEPENDENT_STATUSES, EV_STATUSES

    sql = (MAPPING_DIR / "schema.sql").read_text()
    sql = sql[sql.index("CREATE TABLE public.exchange_visitor") :]
    sql = sql[: sql.index(");\n")]

    def allowed(column: str) -> set[str]:
        m = re.search(column + r"\s+text[^\n]*?CHECK \(" + column + r" IN \(([^)]*)\)", sql, re.S)
        assert m, column
        return set(re.findall(r"'([A-Z_]+)'", m.group(1)))

    tables = {
        "status": ("ev_status", set(EV_STATUSES)),
        "category": ("ev_category", None),
        "position_title": ("ev_position", None),
        "end_reason": ("ev_end_reason", None),
        "termination_reason": ("ev_termination_reason", None),
    }
    for column, (table, canonical) in tables.items():
        values = MAPPING.values[table].values
        assert allowed(column) <= set(values), (column, allowed(column) - set(values))
        if canonical:
            assert set(values.values()) <= canonical
    assert set(MAPPING.values["ev_dependent_status"].values.values()) == set(EV_DEPENDENT_STATUSES)
