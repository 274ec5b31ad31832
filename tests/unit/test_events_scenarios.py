"""Table-driven scenarios: given SIS changes (reference schema) → expected SEVIS events (DOMAIN.md §4).

Each scenario starts from one student whose rows were committed earlier (an F-1 student with a SEVIS
ID unless the scenario says otherwise), applies the scenario's transaction(s), and compares the
derived event kinds, issues and selected payload fields.
"""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.sevis_events.pure import PurePipeline
from tests.scenarios import MAPPING, PKS, TABLES, Case, School, base_rows, payload


def _dep(**kw: Any) -> dict[str, Any]:
    row = {
        "dependent_id": 80,
        "person_id": 7,
        "first_name": "Jonas",
        "last_name": "Müller",
        "birth_date": date(2000, 1, 2),
        "gender": "M",
        "birth_country": "DE",
        "citizenship_country": "DE",
        "relationship": "SPOUSE",
        "visa_type": "F-2",
        "status": "ACTIVE",
    }
    row.update(kw)
    return row


CASES = [
    Case(
        "legal name change → PersonalInfo/FullName",
        [("u", "person", {"last_name": "Schäfer"})],
        ["PersonalInfo"],
        lambda o: (
            (payload(o, "PersonalInfo")["FullName"] == {"LastName": "Schafer", "FirstName": "Zoe"})
            or pytest.fail(str(payload(o, "PersonalInfo")))
        ),
        issues=["name_altered", "name_altered"],
    ),
    Case(
        "birth date correction → PersonalInfo/BirthDate",
        [("u", "person", {"birth_date": date(2002, 3, 2)})],
        ["PersonalInfo"],
        lambda o: payload(o, "PersonalInfo")["BirthDate"] == "2002-03-02" or pytest.fail(),
    ),
    Case(
        "citizenship correction → ISO→SEVIS code",
        [("u", "person", {"citizenship_country": "CH"})],
        ["PersonalInfo"],
        lambda o: payload(o, "PersonalInfo")["CitizenshipCountryCode"] == "SZ" or pytest.fail(),
    ),
    Case(
        "email change → PersonalInfo/Email",
        [("u", "person", {"email": "z.obrien@example.org"})],
        ["PersonalInfo"],
        lambda o: payload(o, "PersonalInfo")["Email"] == "z.obrien@example.org" or pytest.fail(),
    ),
    Case(
        "phone change → PersonalInfo/Telephone",
        [("u", "person", {"phone": "2175550199"})],
        ["PersonalInfo"],
        lambda o: (
            payload(o, "PersonalInfo")["Telephone"] == {"TelephoneExemptInd": "N", "Phone": {"USNumber": "2175550199"}}
            or pytest.fail()
        ),
    ),
    Case(
        "US address move → PersonalInfo/USAddress, state name → code",
        [("u", "us", {"line1": "9 Elm St", "city": "Chicago", "postal_code": "60601"})],
        ["PersonalInfo"],
        lambda o: (
            payload(o, "PersonalInfo")["USAddress"]
            == {"Address1": "9 Elm St", "City": "Chicago", "State": "IL", "PostalCode": "60601"}
            or pytest.fail()
        ),
    ),
    Case(
        "mailing address added → PersonalInfo/MailingAddress",
        [
            (
                "c",
                "mail",
                {
                    "address_id": 75,
                    "person_id": 7,
                    "kind": "US_MAILING",
                    "line1": "PO Box 1",
                    "line2": None,
                    "city": "Urbana",
                    "state": "IL",
                    "postal_code": "61803",
                    "country": "US",
                },
            )
        ],
        ["PersonalInfo"],
        lambda o: "MailingAddress" in payload(o, "PersonalInfo") or pytest.fail(),
    ),
    Case(
        "foreign address change → PersonalInfo/ForeignAddress",
        [("u", "foreign", {"line1": "Ringstraße 1"})],
        ["PersonalInfo"],
        lambda o: payload(o, "PersonalInfo")["ForeignAddress"]["CountryCode"] == "GM" or pytest.fail(),
    ),
    Case(
        "enrolled for the term → Registration",
        [("u", "enrollment", {"status": "ENROLLED", "confirmed_at": datetime(2026, 8, 25, 15)})],
        ["Registration"],
        lambda o: (
            payload(o, "Registration")
            == {
                "@printForm": "false",
                "LastSession": "false",
                "CurrentSessionStartDate": "2026-08-24",
                "CurrentSessionEndDate": "2026-12-18",
                "NextSessionStartDate": "2027-01-19",
                "USAddress": {"Address1": "100 Green St", "City": "Urbana", "State": "IL", "PostalCode": "61801"},
            }
            or pytest.fail(str(payload(o, "Registration")))
        ),
    ),
    Case("registered (not yet confirmed) → nothing", [("u", "enrollment", {"credit_hours": Decimal("9.0")})], []),
    Case(
        "major change → Program/Edit",
        [("u", "program", {"major_cip": "52.0201", "minor_cip": "27.0101"})],
        ["Program.Edit"],
        lambda o: (
            payload(o, "Program.Edit") == {"@printForm": "true", "MajorCode1": "52.0201", "Minor": "27.0101"}
            or pytest.fail()
        ),
    ),
    Case(
        "degree level change → EducationLevel/Change (no Program/Edit)",
        [
            (
                "u",
                "program",
                {"degree_level": "DOCTORATE", "major_cip": "11.0101", "expected_end_date": date(2031, 5, 15)},
            )
        ],
        ["EducationLevel.Change"],
        lambda o: (
            payload(o, "EducationLevel.Change")["EducationalInfo"]["EduLevel"] == {"Level": "06"} or pytest.fail()
        ),
    ),
    Case(
        "end date later → Program/Extension",
        [("u", "program", {"expected_end_date": date(2027, 12, 15)})],
        ["Program.Extension"],
        lambda o: payload(o, "Program.Extension")["NewPrgEndDate"] == "2027-12-15" or pytest.fail(),
    ),
    Case(
        "end date earlier → Program/Shorten",
        [("u", "program", {"expected_end_date": date(2026, 12, 18)})],
        ["Program.Shorten"],
        lambda o: (
            payload(o, "Program.Shorten") == {"@printForm": "true", "NewPrgEndDate": "2026-12-18"} or pytest.fail()
        ),
    ),
    Case(
        "deferred start of an initial student → Program/ManageSessionDates",
        [("u", "program", {"start_date": date(2026, 1, 12), "expected_end_date": date(2027, 12, 15)})],
        ["Program.ManageSessionDates"],
        school={"status": "ADMITTED"},
    ),
    Case("degree conferred → Status/Complete", [("u", "program", {"status": "COMPLETED"})], ["Status.Complete"]),
    Case(
        "withdrawal (+ enrollment ended, one commit) → Status/Terminate 23",
        [("u", "program", {"status": "WITHDRAWN"}), ("u", "enrollment", {"status": "WITHDRAWN"})],
        ["Status.Terminate"],
        lambda o: payload(o, "Status.Terminate") == {"Reason": "23"} or pytest.fail(),
    ),
    Case(
        "dismissal → Status/Terminate 08",
        [("u", "program", {"status": "DISMISSED"})],
        ["Status.Terminate"],
        lambda o: payload(o, "Status.Terminate") == {"Reason": "08"} or pytest.fail(),
    ),
    Case(
        "admit declines → Status/Cancel 01",
        [("u", "program", {"status": "DECLINED"})],
        ["Status.Cancel"],
        school={"status": "ADMITTED"},
    ),
    Case(
        "active record 'declined' → issue, no Cancel",
        [("u", "program", {"status": "DECLINED"})],
        [],
        issues=["bad_transition"],
    ),
    Case(
        "tuition raise → FinancialInfo",
        [("u", "finance", {"tuition": 31000, "personal_funds": 51000})],
        ["FinancialInfo"],
        lambda o: payload(o, "FinancialInfo")["Expense"]["Tuition"] == "31000" or pytest.fail(),
    ),
    Case(
        "spouse added (+ finance, one commit) → Dependent/Add + FinancialInfo",
        [("c", "dependent", _dep()), ("u", "finance", {"dependent_expenses": 6000, "personal_funds": 56000})],
        ["Dependent.Add", "FinancialInfo"],
        lambda o: (
            (payload(o, "Dependent.Add")["VisaType"], payload(o, "Dependent.Add")["Relationship"]) == ("04", "01")
            or pytest.fail()
        ),
        issues=["name_altered"],
    ),
    Case(
        "domestic student change → nothing",
        [("u", "person", {"last_name": "Smith"})],
        [],
        school={"visa": "H-1B", "sevis_id": None},
    ),
    Case(
        "field SEVIS does not hold (updated_at) → nothing",
        [("u", "person", {"updated_at": datetime(2026, 2, 1, tzinfo=UTC)})],
        [],
    ),
    Case("no-op update → nothing", [("u", "person", {})], []),
    Case(
        "stops being international → no event, status_left_fmj for the DSO",
        [("u", "immigration", {"visa_type": "H-1B"}), ("u", "person", {"last_name": "Smith"})],
        [],
        issues=["status_left_fmj"],
    ),
    Case(
        "name with digits → name_rejected issue, no event",
        [("u", "person", {"last_name": "Sm1th"})],
        [],
        issues=["name_rejected"],
    ),
    Case(
        "name in another script → name_rejected", [("u", "person", {"first_name": "王"})], [], issues=["name_rejected"]
    ),
    Case(
        "unknown country code → dead letter, view unchanged",
        [("u", "person", {"citizenship_country": "ZZ"})],
        [],
        issues=["dlq:bad_code"],
    ),
    # data hygiene at the door: the value never reaches an event, the DSO gets an issue naming the field
    Case(
        "control character in the US address → issue, no event",
        [("u", "us", {"line1": "9 Elm\x01St"})],
        [],
        issues=["invalid_character"],
    ),
    Case(
        "control character in the address, e-mail changed too → PersonalInfo without the address",
        [("u", "us", {"line1": "9 Elm\x1fSt"}), ("u", "person", {"email": "z@example.org"})],
        ["PersonalInfo"],
        lambda o: (
            (
                "USAddress" not in payload(o, "PersonalInfo")
                and [i.field for _, i in o.issues] == ["address.us_physical.line1"]
            )
            or pytest.fail(str(o.issues))
        ),
        issues=["invalid_character"],
    ),
    Case(
        "foreign address line over 60 characters → too_long, never cut",
        [("u", "foreign", {"line1": "Weg " * 16})],
        [],
        issues=["too_long"],
    ),
    Case(
        "negative tuition → bad_amount, FinancialInfo without it",
        [("u", "finance", {"tuition": -31000})],
        ["FinancialInfo"],
        lambda o: "Tuition" not in payload(o, "FinancialInfo")["Expense"] or pytest.fail(),
        issues=["bad_amount"],
    ),
    Case(
        "tuition beyond the XSD's 8 digits → bad_amount",
        [("u", "finance", {"tuition": 100_000_000})],
        ["FinancialInfo"],
        issues=["bad_amount"],
    ),
    Case(
        "programme end moved before its start → date_order, no Shorten",
        [("u", "program", {"expected_end_date": date(2025, 1, 15)})],
        [],
        issues=["date_order"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_scenario(case: Case) -> None:
    s = School(**case.school)
    assert not s.seed_out.events or case.school.get("sevis_id", "x") is None or s.seed_out.kinds() == []
    out = s.tx(*copy.deepcopy(case.ops))
    assert sorted(out.kinds()) == sorted(case.kinds), (out.kinds(), out.issues, out.dead)
    got_issues = sorted([i.code for _, i in out.issues] + [f"dlq:{d.code}" for d in out.dead])
    assert got_issues == sorted(case.issues)
    if case.check:
        case.check(out)
    for e in out.events:
        assert e["lineage"] and e["lineage"][0]["topic"].startswith("sis.public.")
        assert e["org_id"] == "ZZZ214F99999000" and e["student_key"] == "S00000007"


def test_create_for_new_admit_and_incomplete_issue_first() -> None:
    s = School.__new__(School)
    s.rows = base_rows(sevis_id=None, status="ADMITTED")
    s.feed, s.pipe = SisFeed(primary_keys=PKS), PurePipeline(MAPPING)
    rows = s.rows
    # the admit arrives without finance: an incomplete-record issue listing what is missing, no Create
    s.feed.tx(*[("c", TABLES[n], None, rows[n]) for n in ("term", "person", "immigration", "us", "foreign", "program")])
    out = s.pipe.feed(s.feed)
    s.feed.records.clear()
    assert out.kinds() == []
    assert [i.code for _, i in out.issues] == ["incomplete_record"]
    assert "finance.tuition" in out.issues[0][1].reason
    # the finance row completes it: Create, once
    s.feed.tx(("c", "public.finance", None, rows["finance"]))
    out = s.pipe.feed(s.feed)
    s.feed.records.clear()
    assert out.kinds() == ["Create"]
    p = payload(out, "Create")
    assert p["PersonalInfo"]["FullName"] == {"LastName": "OBrien Muller", "FirstName": "Zoe"}
    assert p["PersonalInfo"]["VisaType"] == "01" and p["IssueReason"] == "I"
    assert p["ForeignAddress"]["CountryCode"] == "GM" and p["EducationalInfo"]["EduLevel"] == {"Level": "05"}
    # later changes before SEVIS answered: updates with sevis_id null (the batcher holds them)
    s.feed.tx(("u", "public.person", rows["person"], {**rows["person"], "email": "new@example.com"}))
    out = s.pipe.feed(s.feed)
    assert out.kinds() == ["PersonalInfo"] and out.events[0]["sevis_id"] is None


def test_same_source_change_same_event_id() -> None:
    ids = []
    for _ in range(2):
        s = School()
        out = s.tx(("u", "program", {"expected_end_date": date(2027, 12, 15)}))
        ids.append([e["event_id"] for e in out.events])
    assert ids[0] == ids[1] and len(ids[0]) == 1


def test_snapshot_sets_baseline_without_events() -> None:
    feed = SisFeed(primary_keys=PKS)
    pipe = PurePipeline(MAPPING)
    rows = base_rows()
    for n, r in rows.items():
        feed.tx(("r", TABLES[n], None, r), snapshot=True)
    out = pipe.feed(feed)
    assert out.kinds() == [] and out.issues == [] and out.dead == []
    assert out.views[-1].view["international"] is True
