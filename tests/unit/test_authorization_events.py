"""Authorisations → SEVIS events (DOMAIN.md §3/§4): reduced course load, CPT, OPT, STEM OPT extension.

Table-driven like tests/unit/test_events_scenarios.py: one F-1 student with a SEVIS ID (unless the case
says otherwise), optional ``pre`` transactions committed first (e.g. an approval), then the case's
transaction; the derived kinds, issues and payloads are compared. A second part renders every derived
payload into a batch document and validates it against the official XSD.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest

from sevisflow.processors.batcher.core import EventIn, Publish, apply
from sevisflow.processors.batcher.core import School as BatchSchool
from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline
from sevisflow.sinks.xml.render import ClosedBatch, check_batch
from sevisflow.sinks.xml.xsd import load_schema
from testkit.xml_samples import AUTHORIZATION_KINDS, DSO, ORG_ID, update_record
from tests.helpers import XSD_DIR
from tests.scenarios import MAPPING, PKS, TABLES, Case, School, base_rows, payload

EMPLOYER_ADDR = {"Address1": "200 Industry Way", "City": "Champaign", "State": "IL", "PostalCode": "61820"}


def auth(kind: str, **kw: Any) -> dict[str, Any]:
    """A student_authorization row of the reference SIS, complete for its kind."""
    row: dict[str, Any] = {
        "authorization_id": 90,
        "person_id": 7,
        "kind": kind,
        "status": "APPROVED",
        "start_date": date(2026, 8, 24),
        "end_date": date(2026, 12, 18),
        "time_basis": None,
        "employer_name": None,
        "employer_line1": None,
        "employer_line2": None,
        "employer_city": None,
        "employer_state": None,
        "employer_postal_code": None,
        "course_relevance": None,
        "rcl_reason": None,
        "academic_year_met": None,
        "remarks": None,
    }
    if kind == "RCL":
        row.update(rcl_reason="MEDICAL")
    if kind in ("CPT", "STEM_OPT"):
        row.update(
            time_basis="PART_TIME" if kind == "CPT" else "FULL_TIME",
            employer_name="Fictional Widgets Inc",
            employer_line1="200 Industry Way",
            employer_city="Champaign",
            employer_state="Illinois",
            employer_postal_code="61820",
        )
    if kind == "CPT":
        row.update(start_date=date(2026, 6, 1), end_date=date(2026, 8, 14))
    if kind == "OPT":
        row.update(
            time_basis="FULL_TIME", academic_year_met=True, start_date=date(2027, 6, 1), end_date=date(2028, 5, 31)
        )
    if kind == "STEM_OPT":
        row.update(
            course_relevance="Data engineering in the field of the degree",
            start_date=date(2028, 6, 1),
            end_date=date(2030, 5, 31),
        )
    row.update(kw)
    return row


def _eq(kind: str, want: dict[str, Any]) -> Callable[[PureOutput], None]:
    def check(o: PureOutput) -> None:
        assert payload(o, kind) == want, payload(o, kind)

    return check


APPROVE = {k: [[("c", "auth", auth(k))]] for k in ("RCL", "CPT", "OPT", "STEM_OPT")}
WITHDRAW = [("u", "auth", {"status": "WITHDRAWN"})]

CASES = [
    # ---- add (approved)
    Case(
        "RCL approved → AuthDropBelowFC/Add",
        [("c", "auth", auth("RCL", remarks="Doctor's note on file"))],
        ["AuthDropBelowFC.Add"],
        _eq(
            "AuthDropBelowFC.Add",
            {
                "@printForm": "true",
                "Reason": "05",
                "StartDate": "2026-08-24",
                "EndDate": "2026-12-18",
                "Remarks": "Doctor's note on file",
            },
        ),
    ),
    Case(
        "CPT approved → CPTEmployment/Add with employer address",
        [("c", "auth", auth("CPT"))],
        ["CPTEmployment.Add"],
        _eq(
            "CPTEmployment.Add",
            {
                "@printForm": "true",
                "StartDate": "2026-06-01",
                "EndDate": "2026-08-14",
                "FullPartTimeIndicator": "02",
                "EmployerName": "Fictional Widgets Inc",
                "EmployerAddress": EMPLOYER_ADDR,
            },
        ),
    ),
    Case(
        "OPT recommended → OPTEmployment/Add",
        [("c", "auth", auth("OPT"))],
        ["OPTEmployment.Add"],
        _eq(
            "OPTEmployment.Add",
            {
                "@printForm": "true",
                "StartDate": "2027-06-01",
                "EndDate": "2028-05-31",
                "FullPartTimeIndicator": "01",
                "AcademicYearMet": "true",
            },
        ),
    ),
    Case(
        "STEM extension → OPTEmployment/Extend with one Employer",
        [("c", "auth", auth("STEM_OPT"))],
        ["OPTEmployment.Extend"],
        _eq(
            "OPTEmployment.Extend",
            {
                "@printForm": "true",
                "StartDate": "2028-06-01",
                "EndDate": "2030-05-31",
                "FullPartTimeIndicator": "01",
                "Employer": [
                    {
                        "EmployerName": "Fictional Widgets Inc",
                        "EmployerAddress": EMPLOYER_ADDR,
                        "CourseRelevance": "Data engineering in the field of the degree",
                        "FullPartTimeIndicator": "01",
                        "StartDate": "2028-06-01",
                        "EndDate": "2030-05-31",
                    }
                ],
            },
        ),
    ),
    Case(
        "OPT recommended after completion → OPTEmployment/Add",
        [("c", "auth", auth("OPT"))],
        ["OPTEmployment.Add"],
        pre=[[("u", "program", {"status": "COMPLETED"})]],
    ),
    # ---- cancel (withdrawn or deleted)
    Case(
        "RCL withdrawn → AuthDropBelowFC/Cancel",
        WITHDRAW,
        ["AuthDropBelowFC.Cancel"],
        _eq(
            "AuthDropBelowFC.Cancel",
            {"@printForm": "false", "Reason": "05", "StartDate": "2026-08-24", "EndDate": "2026-12-18"},
        ),
        pre=APPROVE["RCL"],
    ),
    Case(
        "CPT withdrawn → CPTEmployment/Cancel",
        WITHDRAW,
        ["CPTEmployment.Cancel"],
        _eq(
            "CPTEmployment.Cancel",
            {
                "@printForm": "false",
                "StartDate": "2026-06-01",
                "EndDate": "2026-08-14",
                "FullPartTimeIndicator": "02",
                "EmployerName": "Fictional Widgets Inc",
            },
        ),
        pre=APPROVE["CPT"],
    ),
    Case("CPT row deleted → CPTEmployment/Cancel", [("d", "auth", {})], ["CPTEmployment.Cancel"], pre=APPROVE["CPT"]),
    Case(
        "OPT withdrawn → OPTEmployment/Cancel",
        WITHDRAW,
        ["OPTEmployment.Cancel"],
        _eq(
            "OPTEmployment.Cancel",
            {"@printForm": "false", "StartDate": "2027-06-01", "EndDate": "2028-05-31", "FullPartTimeIndicator": "01"},
        ),
        pre=APPROVE["OPT"],
    ),
    Case(
        "STEM extension withdrawn → OPTEmployment/Cancel of its dates",
        WITHDRAW,
        ["OPTEmployment.Cancel"],
        lambda o: payload(o, "OPTEmployment.Cancel")["StartDate"] == "2028-06-01" or pytest.fail(),
        pre=APPROVE["STEM_OPT"],
    ),
    Case(
        "re-approved after a withdrawal → Add again",
        [("u", "auth", {"status": "APPROVED"})],
        ["CPTEmployment.Add"],
        pre=[*APPROVE["CPT"], WITHDRAW],
    ),
    # ---- no-op
    Case("approved row, nothing SEVIS holds changed → nothing", [("u", "auth", {})], [], pre=APPROVE["CPT"]),
    Case(
        "withdrawn row stays withdrawn → nothing",
        [("u", "auth", {"remarks": "closed"})],
        [],
        pre=[*APPROVE["OPT"], WITHDRAW],
    ),
    Case("entered already withdrawn → nothing", [("c", "auth", auth("RCL", status="WITHDRAWN"))], []),
    Case(
        "approved CPT changed → needs_dso (no edit derived)",
        [("u", "auth", {"end_date": date(2026, 8, 21)})],
        [],
        issues=["needs_dso"],
        pre=APPROVE["CPT"],
    ),
    # ---- domestic and other visas
    Case(
        "domestic student's authorisation → nothing",
        [("c", "auth", auth("CPT"))],
        [],
        school={"visa": "H-1B", "sevis_id": None},
    ),
    Case("domestic withdrawal → nothing", WITHDRAW, [], pre=APPROVE["RCL"], school={"visa": "H-1B", "sevis_id": None}),
    Case(
        "J-1 student's reduced course load → not_reported_visa issue",
        [("c", "auth", auth("RCL"))],
        [],
        issues=["not_reported_visa"],
        school={"visa": "J-1"},
    ),
    # ---- incomplete or not allowed
    Case(
        "CPT without employer city → incomplete, no event",
        [("c", "auth", auth("CPT", employer_city=None))],
        [],
        issues=["missing_field"],
    ),
    Case(
        "RCL without reason → incomplete_record",
        [("c", "auth", auth("RCL", rcl_reason=None))],
        [],
        issues=["incomplete_record"],
    ),
    Case(
        "incomplete CPT completed later → CPTEmployment/Add",
        [("u", "auth", {"employer_city": "Champaign"})],
        ["CPTEmployment.Add"],
        pre=[[("c", "auth", auth("CPT", employer_city=None))]],
    ),
    Case(
        "incomplete CPT withdrawn → nothing to cancel",
        WITHDRAW,
        [],
        pre=[[("c", "auth", auth("CPT", employer_city=None))]],
    ),
    Case(
        "OPT without academic-year answer → incomplete_record",
        [("c", "auth", auth("OPT", academic_year_met=None))],
        [],
        issues=["incomplete_record"],
    ),
    Case(
        "RCL for an initial record → bad_transition",
        [("c", "auth", auth("RCL"))],
        [],
        issues=["bad_transition"],
        school={"status": "ADMITTED"},
    ),
    Case(
        "CPT for an M-1 student → bad_transition",
        [("c", "auth", auth("CPT"))],
        [],
        issues=["bad_transition"],
        school={"visa": "M-1"},
    ),
    Case(
        "unknown RCL reason → dead letter",
        [("c", "auth", auth("RCL", rcl_reason="BORED"))],
        [],
        issues=["dlq:bad_code"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_authorization_scenario(case: Case) -> None:
    s = School(**case.school)
    for ops in case.pre:
        s.tx(*copy.deepcopy(ops))
    out = s.tx(*copy.deepcopy(case.ops))
    assert sorted(out.kinds()) == sorted(case.kinds), (out.kinds(), out.issues, out.dead)
    got_issues = sorted([i.code for _, i in out.issues] + [f"dlq:{d.code}" for d in out.dead])
    assert got_issues == sorted(case.issues), (out.issues, out.dead)
    if case.check:
        case.check(out)
    for e in out.events:
        assert e["coalesce_key"] == "Authorization:90" and e["sevis_id"] == "N0001234567"


def test_snapshot_with_an_approved_authorisation_is_a_baseline() -> None:
    feed, pipe = SisFeed(primary_keys=PKS), PurePipeline(MAPPING)
    rows = {**base_rows(), "auth": auth("CPT")}
    for n, r in rows.items():
        feed.tx(("r", TABLES[n], None, r), snapshot=True)
    out = pipe.feed(feed)
    assert out.kinds() == [] and out.issues == [] and out.dead == []
    assert out.views[-1].view["authorization"]["90"]["kind"] == "cpt"


def test_add_then_withdraw_is_an_undo_for_the_batcher() -> None:
    """Add and Cancel share a coalesce key and differ only in 'approved': the batcher (the real state machine)
    replaces the Add by the Cancel, sees the record back at what SEVIS has, and drops it."""
    s = School()
    add = s.tx(("c", "auth", auth("RCL"))).events[0]
    cancel = s.tx(*WITHDRAW).events[0]
    state, outs = apply(BatchSchool(ORG_ID), EventIn(add, 1_767_225_600_000))
    assert [o.event["type"] for o in outs if isinstance(o, Publish)][-1] == "record_added"
    state, outs = apply(state, EventIn(cancel, 1_767_225_601_000))
    assert [o.event["type"] for o in outs if isinstance(o, Publish)] == ["record_removed"]
    assert not state.records


def test_withdrawal_of_a_sent_authorisation_stays_a_cancel_record() -> None:
    """Without the Add in the open batch (SEVIS has it), the Cancel is a record of its own."""
    s = School()
    s.tx(("c", "auth", auth("CPT")))
    cancel = s.tx(*WITHDRAW).events[0]
    state, _outs = apply(BatchSchool(ORG_ID), EventIn(cancel, 1_767_225_601_000))
    (rec,) = state.records.values()
    assert rec["kind"] == "CPTEmployment.Cancel" and rec["record_id"] == "S00000007:Authorization:90"


# ---------------------------------------------------------------------------- render + XSD


@pytest.fixture(scope="module")
def schema():
    return load_schema(XSD_DIR)


def _derived_payloads() -> dict[str, dict[str, Any]]:
    """One derived payload per event kind, from the scenarios above."""
    out: dict[str, dict[str, Any]] = {}
    for case in CASES:
        if len(case.kinds) != 1 or case.school:
            continue
        s = School()
        for ops in case.pre:
            s.tx(*copy.deepcopy(ops))
        res = s.tx(*copy.deepcopy(case.ops))
        out.setdefault(case.kinds[0], payload(res, case.kinds[0]))
    return out


DERIVED_KINDS = (
    "AuthDropBelowFC.Add",
    "AuthDropBelowFC.Cancel",
    "CPTEmployment.Add",
    "CPTEmployment.Cancel",
    "OPTEmployment.Add",
    "OPTEmployment.Cancel",
    "OPTEmployment.Extend",
)


@pytest.mark.parametrize("kind", DERIVED_KINDS)
def test_derived_payload_renders_and_validates(schema, kind: str) -> None:
    derived = _derived_payloads()
    rec = update_record(300, kind, derived[kind])
    checked = check_batch(ClosedBatch(ORG_ID, "SFTEST00000003", DSO, 1, (rec,)), schema)
    assert checked.ok, [p.as_dict() for p in checked.problems]
    group, sub = kind.split(".")
    assert f"<{group}>" in checked.xml.decode() and f"<{sub} printForm=" in checked.xml.decode()


def test_sample_payloads_render_in_xsd_order(schema) -> None:
    recs = tuple(update_record(400 + i, k) for i, k in enumerate(AUTHORIZATION_KINDS))
    checked = check_batch(ClosedBatch(ORG_ID, "SFTEST00000004", DSO, 1, recs), schema)
    assert checked.ok, [p.as_dict() for p in checked.problems]
    xml = checked.xml.decode()
    # sample payloads are built in reverse order: the XSD order must win
    cpt = xml[xml.index("<CPTEmployment>") : xml.index("</CPTEmployment>")]
    assert (
        cpt.index("<StartDate>")
        < cpt.index("<EmployerName>")
        < cpt.index("<EmployerAddress>")
        < cpt.index("<CourseRelevance>")
    )
    ext = xml[xml.index("<Extend") : xml.index("</Extend>")]
    assert ext.index("<FullPartTimeIndicator>") < ext.index("<Employer>")
    employer = ext[ext.index("<Employer>") :]
    assert (
        employer.index("<EmployerName>")
        < employer.index("<EmployerAddress>")
        < employer.index("<CourseRelevance>")
        < employer.index("<StartDate>")
    )


def test_bad_rcl_reason_is_refused_by_the_xsd(schema) -> None:
    rec = update_record(
        500,
        "AuthDropBelowFC.Add",
        {"@printForm": "true", "Reason": "99", "StartDate": "2026-08-24", "EndDate": "2026-12-18"},
    )
    checked = check_batch(ClosedBatch(ORG_ID, "SFTEST00000005", DSO, 1, (rec,)), schema)
    assert not checked.ok and checked.bad_request_ids() == {rec["request_id"]}
