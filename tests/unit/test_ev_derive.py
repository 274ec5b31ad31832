"""J-1 exchange visitors: each EV element from the source change that causes it (pure derivation, no Kafka).

The table in docs/MAPPING.md ("Exchange visitors: what is reported") is this file: one test per row. Views are
the canonical views normalize makes of the reference SIS's exchange_* tables (docs/MAPPING.md), written out
here so every field the derivation reads is visible; all people are fictional.
"""

from __future__ import annotations

import ast
import copy
from typing import Any

import orjson
import pytest

from sevisflow.processors.sevis_events import ev_derive
from sevisflow.processors.sevis_events.derive import Context, derive
from tests.helpers import source_of
from tests.unit.test_nothing_silent import unannotated_exits

PROGRAM = "P-1-12345"
SCHOOL = "ZZZ214F99999000"
CTX = Context(
    SCHOOL,
    "u1",
    [{"topic": "sis.public.exchange_visitor", "partition": 0, "offset": 1}],
    1_791_000_000_000,
    ev_programs={"RSCH": PROGRAM},
)  # commit on 2026-10-03

BASE: dict[str, Any] = {
    "student_key": "S00800001",
    "link": "800001",
    "exists": True,
    "international": False,
    "not_reported_visa": "J-1",
    "src": {},
    "student": {
        "first_name": "Ilse",
        "middle_name": None,
        "last_name": "Vantorra",
        "preferred_name": None,
        "birth_date": "1988-05-02",
        "gender": "F",
        "birth_city": "Graz",
        "birth_country": "AU",
        "citizenship_country": "AU",
        "email": "ilse.vantorra@example.org",
        "phone": "2175550142",
        "phone_country_code": "1",
        "visa_type": "J-1",
        "sevis_id": "N0000000002",
        "sevis_status": "ACTIVE",
    },
    "address": {
        "foreign": {"line1": "1 Fiktivgasse", "city": "Graz", "country": "AU"},
        "us_physical": {
            "line1": "12 Sample Street",
            "line2": "Apt 3",
            "city": "Urbana",
            "state": "IL",
            "postal_code": "61801",
            "country": "US",
        },
    },
    "program": {},
    "finance": {},
    "registration": {},
    "dependent": {},
    "authorization": {},
    "exchange": {
        "sis_program": "RSCH",
        "category": "08",
        "position": "213",
        "subject_cip": "40.0801",
        "subject_remarks": "Research in Physics",
        "residence_country": "AU",
        "start_date": "2026-03-01",
        "end_date": "2027-02-28",
        "status": "active",
        "end_reason": None,
        "end_remarks": None,
        "termination_reason": None,
        "termination_date": None,
        "change_remarks": None,
    },
    "ev_funding": {
        "us_govt_funds": False,
        "sponsor_funds": 52000,
        "us_agency": None,
        "us_agency_funds": 0,
        "intl_org": None,
        "intl_org_funds": 0,
        "home_govt_funds": 0,
        "binational_funds": 0,
        "other_org": None,
        "other_org_funds": 0,
        "personal_funds": 3000,
    },
    "ev_site": {
        "21": {
            "name": "Fictional Physics Building",
            "line1": "100 Example Science Way",
            "line2": None,
            "city": "Urbana",
            "state": "IL",
            "postal_code": "61801",
            "primary": True,
            "active": True,
            "site_sevis_id": None,
        }
    },
    "ev_dependent": {
        "7": {
            "first_name": "Jonas",
            "last_name": "Vantorra",
            "birth_date": "1987-11-20",
            "gender": "M",
            "birth_city": "Linz",
            "birth_country": "AU",
            "citizenship_country": "AU",
            "residence_country": "AU",
            "relationship": "01",
            "status": "active",
            "end_reason": None,
            "end_date": None,
            "accompanying": True,
            "dependent_sevis_id": "N0000000201",
        }
    },
}


def view(**changes: Any) -> dict[str, Any]:
    """BASE with ``section__field=value`` changes (``exchange__status="initial"``; ``ev_site__22={...}`` adds)."""
    v = copy.deepcopy(BASE)
    for path, value in changes.items():
        *head, last = path.split("__")
        node = v
        for step in head:
            node = node.setdefault(step, {})
        if value is None and len(head) <= 1 and head and head[0] in ("ev_site", "ev_dependent", "address"):
            node.pop(last, None)
        else:
            node[last] = value
    return v


def run(prev: dict[str, Any] | None, new: dict[str, Any], ctx: Context = CTX) -> tuple[list[dict[str, Any]], list[Any]]:
    d = derive(prev, new, ctx)
    return d.events, d.issues


def only(prev: dict[str, Any], new: dict[str, Any], kind: str) -> dict[str, Any]:
    """The one event of ``kind`` (and no other event, no issue) the change gives; its payload."""
    events, issues = run(prev, new)
    assert [e["kind"] for e in events] == [kind], ([e["kind"] for e in events], [(i.code, i.reason) for i in issues])
    assert not issues, [(i.code, i.reason) for i in issues]
    e = events[0]
    assert e["org_id"] == PROGRAM and e["student_key"] == "S00800001"
    return dict(orjson.loads(e["payload_json"]))


# ---------------------------------------------------------------------------- Create


def new_ds2019(**changes: Any) -> dict[str, Any]:
    base = {
        "student__sevis_id": None,
        "student__sevis_status": None,
        "exchange__status": "initial",
        "address__us_physical": None,
        "ev_dependent__7__dependent_sevis_id": None,
    }
    return view(**{**base, **changes})


def test_a_new_appointment_is_one_create_ev_with_its_dependents_and_sites() -> None:
    payload = only(None, new_ds2019(), "EV.Create")
    assert payload["Biographical"]["FullName"] == {"LastName": "Vantorra", "FirstName": "Ilse"}
    assert payload["Biographical"]["PermanentResidenceCountryCode"] == "AU"
    assert payload["Biographical"]["PhoneNumber"] == "2175550142"
    assert (payload["PositionCode"], payload["CategoryCode"]) == ("213", "08")
    assert (payload["PrgStartDate"], payload["PrgEndDate"]) == ("2026-03-01", "2027-02-28")
    assert payload["SubjectField"] == {"SubjectFieldCode": "40.0801", "Remarks": "Research in Physics"}
    assert payload["FinancialInfo"] == {
        "ReceivedUSGovtFunds": "false",
        "ProgramSponsorFunds": "52000",
        "OtherFunds": {"Personal": "3000"},
    }
    [dep] = payload["CreateDependent"]["Dependent"]
    assert dep["@sisKey"] == "7" and dep["Relationship"] == "01" and dep["BirthCity"] == "Linz"
    [site] = payload["AddSiteOfActivity"]["SiteOfActivity"]
    assert site["@xsi:type"] == "SOA" and site["@sisKey"] == "21" and site["PrimarySite"] == "true"
    assert site["SiteName"] == "Fictional Physics Building" and site["PostalCode"] == "61801"
    assert "USAddress" not in payload  # not arrived yet: the residence comes with Validate


def test_a_create_waits_for_what_sevis_requires_and_says_what() -> None:
    incomplete = new_ds2019(student__birth_city=None, ev_site__21=None)
    events, issues = run(None, incomplete)
    assert not events
    assert [(i.code, i.field) for i in issues] == [("incomplete_record", "ev_site,student.birth_city")]
    assert run(incomplete, copy.deepcopy(incomplete))[1] == []  # told once, not on every change
    assert [e["kind"] for e in run(incomplete, new_ds2019())[0]] == ["EV.Create"]  # goes out once complete


def test_a_create_is_not_sent_twice_and_a_later_change_is_an_update_held_for_the_id() -> None:
    first = new_ds2019()
    later = new_ds2019(exchange__end_date="2027-05-31")
    events, issues = run(first, later)
    assert [e["kind"] for e in events] == ["EV.Program.Amend"] and not issues
    assert events[0]["sevis_id"] is None  # the batcher holds it until SEVIS returns the EV's SEVIS ID


def test_a_new_appointment_already_checked_in_is_created_then_validated() -> None:
    events, _ = run(None, new_ds2019(exchange__status="active", address__us_physical=BASE["address"]["us_physical"]))
    assert [e["kind"] for e in events] == ["EV.Create", "EV.Validate"]


# ---------------------------------------------------------------------------- Validate, Biographical


def test_check_in_validates_with_the_us_residence_email_and_phone() -> None:
    before = view(
        exchange__status="initial",
        address__us_physical=None,
        student__phone="+43 316 555 0101",
        student__phone_country_code="43",
    )
    payload = only(before, view(), "EV.Validate")
    assert payload == {
        "USAddress": {
            "Address1": "12 Sample Street",
            "Address2": "Apt 3",
            "City": "Urbana",
            "State": "IL",
            "PostalCode": "61801",
        },
        "EmailAddress": "ilse.vantorra@example.org",
        "PhoneNumber": "2175550142",
    }
    assert "@printForm" not in payload  # the XSD refuses printForm on Validate


def test_check_in_without_a_us_address_waits_and_goes_out_when_it_comes() -> None:
    before = view(exchange__status="initial", address__us_physical=None)
    checked_in = view(address__us_physical=None)
    events, issues = run(before, checked_in)
    assert not events and [(i.code, i.field) for i in issues] == [("incomplete_record", "address.us_physical")]
    assert [e["kind"] for e in run(checked_in, view())[0]] == ["EV.Validate"]


def test_check_in_more_than_30_days_before_the_begin_date_is_sent_with_a_hold_note() -> None:
    before = view(exchange__status="initial", exchange__start_date="2026-12-01", exchange__end_date="2027-11-30")
    events, issues = run(before, view(exchange__start_date="2026-12-01", exchange__end_date="2027-11-30"))
    assert [e["kind"] for e in events] == ["EV.Validate"] and not issues
    assert any("S2284" in p and "2026-12-01" in p for p in events[0]["problems"])
    on_time, _ = run(view(exchange__status="initial"), view())
    assert on_time[0]["problems"] == []


def test_an_address_move_is_biographical_with_the_whole_block() -> None:
    moved = view(address__us_physical__line1="48 Placeholder Avenue", address__us_physical__line2=None)
    payload = only(view(), moved, "EV.Biographical")
    assert payload["@printForm"] == "false"
    assert payload["USAddress"]["Address1"] == "48 Placeholder Avenue"
    assert payload["FullName"]["LastName"] == "Vantorra" and payload["PositionCode"] == "213"
    assert payload["BirthCountryReason"] == ""  # born abroad: the empty tag SEVIS wants (S2104)
    assert payload["PermanentResidenceCountryCode"] == "AU"


@pytest.mark.parametrize(
    "change, print_form",
    [
        ({"student__email": "ilse@example.net"}, "false"),
        ({"student__phone": "2175550199"}, "false"),
        (
            {
                "address__us_mailing": {
                    "line1": "PO Box 77",
                    "city": "Urbana",
                    "state": "IL",
                    "postal_code": "61803",
                    "country": "US",
                }
            },
            "false",
        ),
        ({"student__last_name": "Vantorra Berg"}, "true"),
        ({"exchange__residence_country": "GM"}, "true"),
        ({"exchange__position": "214"}, "true"),
    ],
)
def test_biographical_changes_and_whether_a_new_ds2019_is_printed(change: dict[str, Any], print_form: str) -> None:
    assert only(view(), view(**change), "EV.Biographical")["@printForm"] == print_form


def test_a_removed_email_cannot_be_sent_and_is_told() -> None:
    _, issues = run(view(), view(student__email=None))
    assert ("missing_field", "student.email") in [(i.code, i.field) for i in issues]


# ---------------------------------------------------------------------------- Program


def test_new_dates_before_arrival_amend_the_program() -> None:
    initial = view(exchange__status="initial")
    payload = only(
        initial,
        view(
            exchange__status="initial",
            exchange__start_date="2026-04-01",
            exchange__end_date="2027-03-31",
            exchange__change_remarks="Visa delayed",
        ),
        "EV.Program.Amend",
    )
    assert payload == {
        "@printForm": "true",
        "PrgStartDate": "2026-04-01",
        "PrgEndDate": "2027-03-31",
        "Remarks": "Visa delayed",
    }


def test_a_later_end_date_extends_and_an_earlier_one_shortens_with_the_reason() -> None:
    assert only(view(), view(exchange__end_date="2027-08-31"), "EV.Program.Extension") == {
        "@printForm": "true",
        "NewPrgEndDate": "2027-08-31",
    }
    payload = only(
        view(),
        view(
            exchange__end_date="2026-11-15",
            exchange__end_reason="WFP",
            exchange__end_remarks="Accepted a position at home",
        ),
        "EV.Program.Shorten",
    )
    assert payload == {
        "@printForm": "true",
        "NewPrgEndDate": "2026-11-15",
        "ShortenReason": "WFP",
        "Remarks": "Accepted a position at home",
    }


def test_an_earlier_end_date_without_a_reason_is_not_sent() -> None:
    events, issues = run(view(), view(exchange__end_date="2026-11-15"))
    assert not events and [(i.code, i.field) for i in issues] == [("missing_field", "exchange.end_reason")]


def test_a_j1_student_moving_to_a_higher_degree_matriculates() -> None:
    student = view(exchange__category="1D", exchange__position="214")
    payload = only(
        student,
        view(exchange__category="1E", exchange__position="214", exchange__end_date="2030-05-31"),
        "EV.Program.Matriculate",
    )
    assert payload == {"@printForm": "true", "NewPrgEndDate": "2030-05-31", "MatriculationCode": "D"}


def test_another_category_change_is_for_the_ro() -> None:
    events, issues = run(view(), view(exchange__category="04"))
    assert not events and [(i.code, i.field) for i in issues] == [("needs_dso", "exchange.category")]


def test_a_new_subject_field_is_edit_subject() -> None:
    payload = only(
        view(),
        view(
            exchange__subject_cip="26.0202",
            exchange__subject_remarks="Protein structure",
            exchange__change_remarks="Moved to the structural biology lab",
        ),
        "EV.Program.EditSubject",
    )
    assert payload == {
        "@printForm": "true",
        "SubjectFieldCode": "26.0202",
        "SubjectFieldRemarks": "Protein structure",
        "Remarks": "Moved to the structural biology lab",
    }


# ---------------------------------------------------------------------------- FinancialInfo


def test_a_funding_change_is_financial_info_with_the_whole_funding() -> None:
    payload = only(
        view(),
        view(
            ev_funding__us_govt_funds=True,
            ev_funding__us_agency="NSF",
            ev_funding__us_agency_funds=15000,
            ev_funding__sponsor_funds=40000,
        ),
        "EV.FinancialInfo",
    )
    assert payload == {
        "@printForm": "true",
        "ReceivedUSGovtFunds": "true",
        "ProgramSponsorFunds": "40000",
        "OtherFunds": {"USGovt": {"Org1": "NSF", "Amount1": "15000"}, "Personal": "3000"},
    }


def test_funding_of_zero_dollars_is_refused() -> None:
    events, issues = run(view(), view(ev_funding__sponsor_funds=0, ev_funding__personal_funds=0))
    assert not events and [(i.code, i.field) for i in issues] == [("bad_amount", "ev_funding")]


# ---------------------------------------------------------------------------- sites of activity

LAB = {
    "name": "Fictional National Lab Annex",
    "line1": "9 Demo Research Park",
    "line2": None,
    "city": "Lemont",
    "state": "IL",
    "postal_code": "60439",
    "primary": False,
    "active": True,
    "site_sevis_id": None,
}


def test_a_new_site_is_added_with_its_sis_key() -> None:
    payload = only(view(), view(ev_site__22=LAB), "EV.SiteOfActivity.Add")
    assert payload == {
        "@xsi:type": "AddSOA",
        "@printForm": "false",
        "@sisKey": "22",
        "Address1": "9 Demo Research Park",
        "City": "Lemont",
        "State": "IL",
        "PostalCode": "60439",
        "SiteName": "Fictional National Lab Annex",
        "PrimarySite": "false",
    }


def test_a_moved_or_renamed_site_is_edited_by_its_site_id_once_known() -> None:
    with_id = view(ev_site__22={**LAB, "site_sevis_id": "900001"})
    payload = only(
        with_id,
        view(ev_site__22={**LAB, "site_sevis_id": "900001", "line1": "200 Example Way", "name": "Fictional Lab West"}),
        "EV.SiteOfActivity.Edit",
    )
    assert payload["SiteId"] == "900001" and payload["SiteName"] == "Fictional National Lab Annex"
    assert payload["NewSiteName"] == "Fictional Lab West" and payload["Address1"] == "200 Example Way"
    assert payload["@sisKey"] == "22"


def test_a_closed_site_is_deleted_but_never_the_primary_one() -> None:
    payload = only(view(ev_site__22=LAB), view(ev_site__22={**LAB, "active": False}), "EV.SiteOfActivity.Delete")
    assert payload == {"@sisKey": "22", "SiteName": "Fictional National Lab Annex"}
    events, issues = run(view(ev_site__22=LAB), view(ev_site__21=None, ev_site__22=LAB))
    assert not events and [(i.code, i.field) for i in issues] == [("needs_dso", "ev_site[21]")]


def test_the_site_id_arriving_from_sevis_is_no_change() -> None:
    assert run(view(), view(ev_site__21__site_sevis_id="900007")) == ([], [])


# ---------------------------------------------------------------------------- J-2 dependents

CHILD = {
    "first_name": "Ada",
    "last_name": "Vantorra",
    "birth_date": "2019-02-11",
    "gender": "F",
    "birth_city": "Graz",
    "birth_country": "AU",
    "citizenship_country": "AU",
    "residence_country": "AU",
    "relationship": "02",
    "status": "active",
    "end_reason": None,
    "end_date": None,
    "accompanying": False,
    "dependent_sevis_id": None,
}


def test_a_new_dependent_is_added_with_its_form_purpose() -> None:
    payload = only(view(), view(ev_dependent__8=CHILD), "EV.Dependent.Add")
    assert payload["@sisKey"] == "8" and payload["Relationship"] == "02" and payload["FormPurpose"] == "08"
    assert payload["FullName"] == {"LastName": "Vantorra", "FirstName": "Ada"} and payload["@printForm"] == "true"


def test_a_corrected_dependent_is_edited_with_the_whole_biography() -> None:
    payload = only(view(), view(ev_dependent__7__birth_city="Wels"), "EV.Dependent.Edit")
    assert payload["@dependentSevisID"] == "N0000000201" and payload["BirthCity"] == "Wels"
    assert payload["FullName"]["FirstName"] == "Jonas" and payload["PermanentResidenceCountryCode"] == "AU"


def test_a_dependent_without_a_sevis_id_yet_carries_the_sis_key_and_a_note() -> None:
    events, _ = run(view(ev_dependent__8=CHILD), view(ev_dependent__8={**CHILD, "birth_city": "Wels"}))
    [e] = events
    assert orjson.loads(e["payload_json"])["@sisKey"] == "8" and e["problems"]


@pytest.mark.parametrize(
    "change, kind, payload",
    [
        (
            {"status": "ended", "end_reason": "04"},
            "EV.Dependent.EndStatus",
            {"@dependentSevisID": "N0000000201", "@sisKey": "7", "Reason": "04"},
        ),
        (
            {"status": "terminated", "end_reason": "05", "end_date": "2026-11-02"},
            "EV.Dependent.Terminate",
            {"@dependentSevisID": "N0000000201", "@sisKey": "7", "Reason": "05", "EffectiveDate": "2026-11-02"},
        ),
        ({"status": "deleted"}, "EV.Dependent.Delete", {"@dependentSevisID": "N0000000201", "@sisKey": "7"}),
    ],
)
def test_a_dependent_leaving_ends_terminates_or_deletes(
    change: dict[str, Any], kind: str, payload: dict[str, Any]
) -> None:
    dep = {**BASE["ev_dependent"]["7"], **change}
    assert only(view(), view(ev_dependent__7=dep), kind) == payload


def test_a_dependent_row_deleted_in_the_sis_is_a_delete() -> None:
    assert only(view(), view(ev_dependent__7=None), "EV.Dependent.Delete")["@dependentSevisID"] == "N0000000201"


def test_a_dependent_ended_with_a_reason_sevis_does_not_take_is_for_the_ro() -> None:
    dep = {**BASE["ev_dependent"]["7"], "status": "ended", "end_reason": "05"}  # 05 is a termination reason
    events, issues = run(view(), view(ev_dependent__7=dep))
    assert not events and [(i.code, i.field) for i in issues] == [("needs_dso", "ev_dependent[7].end_reason")]


# ---------------------------------------------------------------------------- Status


def test_termination_for_cause_is_status_terminate_with_reason_and_date() -> None:
    payload = only(
        view(),
        view(
            exchange__status="terminated",
            exchange__termination_reason="OTHER",
            exchange__termination_date="2026-11-05",
            exchange__end_remarks="Left without notice",
        ),
        "EV.Status.Terminate",
    )
    assert payload == {"Reason": "OTHER", "EffectiveDate": "2026-11-05", "OtherRemarks": "Left without notice"}


def test_never_arrived_is_no_show_and_cancelled_is_invalid_for_initial_records_only() -> None:
    initial = view(exchange__status="initial", address__us_physical=None)
    assert only(initial, view(exchange__status="no_show", address__us_physical=None), "EV.Status.NoShow") == {}
    assert only(
        initial,
        view(exchange__status="invalid", address__us_physical=None, exchange__end_remarks="Visit cancelled"),
        "EV.Status.Invalid",
    ) == {"Remarks": "Visit cancelled"}
    events, issues = run(view(), view(exchange__status="no_show"))
    assert not events and [(i.code, i.field) for i in issues] == [("bad_transition", "exchange.status")]


def test_the_normal_end_needs_no_event_and_a_closed_record_takes_no_update() -> None:
    done = view(exchange__status="completed")
    assert run(view(), done) == ([], [])
    assert run(done, view(exchange__status="completed", student__email="x@example.org")) == ([], [])
    events, issues = run(done, view())
    assert not events and [(i.code, i.field) for i in issues] == [("needs_dso", "exchange.status")]


def test_the_registrars_programme_ending_tells_the_ro_to_update_the_sponsors_record() -> None:
    events, issues = run(view(program={"status": "active"}), view(program={"status": "terminated"}))
    assert not events and [(i.code, i.field) for i in issues] == [("needs_dso", "exchange.status")]


# ---------------------------------------------------------------------------- programs and the F/M rules


def test_every_ev_event_goes_to_the_program_number_never_the_school_code() -> None:
    events, _ = run(view(), view(exchange__end_date="2027-08-31", ev_site__22=LAB, student__email="a@example.org"))
    assert {e["org_id"] for e in events} == {PROGRAM} and len(events) == 3


def test_an_unconfigured_program_keeps_the_cannot_send_item_naming_the_program() -> None:
    ctx = Context(SCHOOL, "u1", [], 1_791_000_000_000, ev_programs={})
    events, issues = run(view(), view(exchange__end_date="2027-08-31"), ctx)
    assert not events
    [i] = issues
    assert i.code == "not_reported_visa" and "EV.Program.Extension" in i.reason and "RSCH" in i.reason


def test_a_j1_view_without_a_sponsor_record_keeps_the_f_m_rules_cannot_send_path() -> None:
    plain = view()
    plain.pop("exchange")
    assert not ev_derive.is_exchange(plain)
    changed = copy.deepcopy(plain)
    changed["student"]["email"] = "other@example.org"
    events, issues = run(plain, changed)
    assert not events and {i.code for i in issues} == {"not_reported_visa"}


def test_a_snapshot_is_the_baseline() -> None:
    ctx = Context(SCHOOL, "u1", [], 1_791_000_000_000, snapshot=True, ev_programs={"RSCH": PROGRAM})
    assert run(None, view(), ctx) == ([], [])


def test_event_ids_are_deterministic_and_differ_per_program_and_kind() -> None:
    a = run(view(), view(exchange__end_date="2027-08-31"))[0][0]["event_id"]
    b = run(view(), view(exchange__end_date="2027-08-31"))[0][0]["event_id"]
    other = Context(SCHOOL, "u1", CTX.lineage, CTX.commit_ts_ms, ev_programs={"RSCH": "G-7-00001"})
    assert a == b != run(view(), view(exchange__end_date="2027-08-31"), other)[0][0]["event_id"]


def test_every_quiet_exit_of_ev_derive_says_why() -> None:
    source = source_of(ev_derive.__name__).read_text()
    tree = ast.parse(source)
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert {"_create", "_validate", "_biographical", "_program", "_sites", "_dependents", "_status_events"} <= names
    assert unannotated_exits(source) == []


def test_a_dependent_or_site_entered_in_error_before_the_batch_closed_is_never_sent() -> None:
    """Add then Delete of the same J-2 or site, both still in the open batch: the batcher drops the record."""
    from sevisflow.processors.batcher.core import EventIn, School, apply

    state = School(org_id=PROGRAM)
    events = (
        run(view(), view(ev_dependent__8=CHILD))[0]
        + run(view(ev_dependent__8=CHILD), view(ev_dependent__8={**CHILD, "status": "deleted"}))[0]
        + run(view(), view(ev_site__22=LAB))[0]
        + run(view(ev_site__22=LAB), view())[0]
    )
    assert [e["kind"] for e in events] == [
        "EV.Dependent.Add",
        "EV.Dependent.Delete",
        "EV.SiteOfActivity.Add",
        "EV.SiteOfActivity.Delete",
    ]
    for i, e in enumerate(events):
        state, _ = apply(state, EventIn(e, at_ms=1_791_000_000_000 + i))
        if i % 2 == 0:
            assert state.records, e["kind"]  # the Add is an open record ...
    assert state.records == {}  # ... and its Delete undoes it
