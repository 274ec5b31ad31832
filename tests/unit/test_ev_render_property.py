"""Property: generated exchange visitors always render to XSD-valid SEVISBatchCreateUpdateEV documents.

A seeded generator builds 1,000 exchange visitors — each a create (0–3 J-2 dependents, 1–3 sites
of activity of either type, random codes taken from the schema's own code lists) plus 1–4 update
events of every kind — and the sink's renderer must turn every document of ≤250 + ≤250 records
into one the official EV XSD accepts, with nothing refused. Hypothesis then varies single
visitors further (shrinking finds the smallest failing one).
"""

from __future__ import annotations

import random
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from sevisflow.sinks.xml.render import MAX_RECORDS_PER_SECTION
from sevisflow.sinks.xml.render_ev import check_ev_batch
from sevisflow.sinks.xml.xsd_ev import load_ev_schema
from tests.ev_support import batch_of
from tests.helpers import XSD_DIR

pytestmark = pytest.mark.skipif(
    not (XSD_DIR / "Create-UpdateExchangeVisitor.xsd").is_file(), reason="needs the EV XSD in SEVISFLOW_TEST_XSD_DIR"
)
XS = "{http://www.w3.org/2001/XMLSchema}"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@cache
def codes(type_name: str) -> tuple[str, ...]:
    """The enumeration of a SEVISTable.xsd simple type (so the test follows the schema set in use)."""
    table = etree.parse(str(XSD_DIR / "SEVISTable.xsd")).getroot()
    node = table.find(f"{XS}simpleType[@name='{type_name}']")
    assert node is not None, type_name
    return tuple(e.get("value") for e in node.iter(f"{XS}enumeration"))


class Gen:
    """Random but reproducible exchange visitors (fictional: made-up letters, example.org)."""

    def __init__(self, rng: random.Random) -> None:
        self.r = rng

    def pick(self, type_name: str) -> str:
        return self.r.choice(codes(type_name))

    def word(self, lo: int = 2, hi: int = 12) -> str:
        return self.r.choice(LETTERS) + "".join(self.r.choice(LETTERS.lower()) for _ in range(self.r.randint(lo, hi)))

    def date(self, lo: int = 1950, hi: int = 2030) -> str:
        return f"{self.r.randint(lo, hi)}-{self.r.randint(1, 12):02d}-{self.r.randint(1, 28):02d}"

    def bio(self, email: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "FullName": {
                "LastName": f"{self.word()} {self.word()}" if self.r.random() < 0.2 else self.word(),
                "FirstName": self.word(),
            },
            "BirthDate": self.date(1950, 2024),
            "Gender": self.pick("EVGenderCodeType"),
            "BirthCity": self.word(),
            "BirthCountryCode": self.pick("BirthCntryCodeType"),
            "CitizenshipCountryCode": self.pick("CntryCodeWithoutType"),
            "PermanentResidenceCountryCode": self.pick("CntryCodeWithoutType"),
        }
        if out["BirthCountryCode"] == "US":
            out["BirthCountryReason"] = self.pick("USBornReasonType")
        if email and self.r.random() < 0.7:
            out["EmailAddress"] = f"{self.word().lower()}.{self.r.randint(1, 999)}@example.org"
        return self.shuffled(out)

    def address(self) -> dict[str, Any]:
        out = {
            "Address1": f"{self.r.randint(1, 9999)} {self.word()} Street",
            "City": self.word(),
            "State": self.pick("StateCodeType"),
            "PostalCode": f"{self.r.randint(0, 99999):05d}",
        }
        if self.r.random() < 0.3:
            out["Address2"] = f"Apt {self.r.randint(1, 99)}"
        return self.shuffled(out)

    def site(self, key: str, primary: bool, add: bool = False) -> dict[str, Any]:
        if self.r.random() < 0.15:
            return {"@xsi:type": "AddEXEMPT" if add else "EXEMPT", "@sisKey": key, "Remarks": "Remote research"}
        out = {
            "@xsi:type": "AddSOA" if add else "SOA",
            "@sisKey": key,
            **self.address(),
            "SiteName": f"{self.word()} Hall {self.r.randint(1, 99)}",
            "PrimarySite": "true" if primary else "false",
        }
        return self.shuffled(out)

    def dependent(self, key: str, i: int) -> dict[str, Any]:
        return self.shuffled({"@sisKey": key, **self.bio(email=False), "Relationship": "01" if i == 0 else "02"})

    def funds(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ReceivedUSGovtFunds": self.r.choice(["true", "false"]),
            "ProgramSponsorFunds": str(self.r.randint(1, 99999)),
        }
        if self.r.random() < 0.5:
            out["OtherFunds"] = {
                "USGovt": {"Org1": self.pick("GovAgencyCodeType"), "Amount1": str(self.r.randint(1, 50000))},
                "Personal": str(self.r.randint(1, 9999)),
            }
        return self.shuffled(out)

    def create(self, n: int) -> dict[str, Any]:
        key = f"J{n:07d}"
        payload: dict[str, Any] = {
            "@printForm": self.r.choice(["true", "false"]),
            "Biographical": self.bio(),
            "PositionCode": self.pick("EVPositionCodeType"),
            "PrgStartDate": self.date(2024, 2027),
            "PrgEndDate": self.date(2027, 2030),
            "CategoryCode": self.pick("EVCategoryCodeType"),
            "SubjectField": {"SubjectFieldCode": self.pick("ProgSubjectCodeType"), "Remarks": self.word(3, 30)},
            "FinancialInfo": self.funds(),
            "AddSiteOfActivity": {
                "SiteOfActivity": [self.site(f"{key}S{i}", i == 0) for i in range(self.r.randint(1, 3))]
            },
        }
        deps = self.r.randint(0, 3)
        if deps:
            payload["CreateDependent"] = {"Dependent": [self.dependent(f"{key}D{i}", i) for i in range(deps)]}
        if self.r.random() < 0.5:
            payload["USAddress"] = self.address()
        if self.r.random() < 0.3:
            payload["OccupationCategoryCode"] = self.pick("EVOccupationCategoryCodeType")
        return {
            "record_id": f"{key}:EV.Create",
            "request_id": f"C{n:07d}",
            "section": "create",
            "student_key": key,
            "sevis_id": None,
            "kind": "EV.Create",
            "payload": self.shuffled(payload),
            "user_defined_a": key,
            "user_defined_b": None,
        }

    def update(self, n: int, j: int) -> dict[str, Any]:
        kind, payload = self.event(f"J{n:07d}")
        key = f"J{n:07d}"
        return {
            "record_id": f"{key}:{kind}",
            "request_id": f"U{n:07d}-{j}",
            "section": "update",
            "student_key": key,
            "sevis_id": f"N{n:010d}",
            "kind": kind,
            "payload": self.shuffled(payload),
            "user_defined_a": key,
            "user_defined_b": None,
        }

    def event(self, key: str) -> tuple[str, dict[str, Any]]:
        r, pf = self.r, {"@printForm": self.r.choice(["true", "false"])}
        dep = {"@dependentSevisID": f"N{r.randint(0, 10**10 - 1):010d}", "@sisKey": f"{key}D0"}
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "EV.Validate",
                {
                    "USAddress": self.address(),
                    "EmailAddress": "ev@example.org",
                    "PhoneNumber": f"{r.randint(200, 999)}{r.randint(0, 9999999):07d}",
                },
            ),
            ("EV.Biographical", {**pf, **self.bio(), "USAddress": self.address()}),
            ("EV.Program.Amend", {**pf, "PrgStartDate": self.date(2025, 2026), "PrgEndDate": self.date(2027, 2029)}),
            (
                "EV.Program.EditSubject",
                {
                    **pf,
                    "SubjectFieldCode": self.pick("ProgSubjectCodeType"),
                    "SubjectFieldRemarks": self.word(),
                    "Remarks": self.word(),
                },
            ),
            ("EV.Program.Extension", {**pf, "NewPrgEndDate": self.date(2027, 2030)}),
            (
                "EV.Program.Matriculate",
                {**pf, "NewPrgEndDate": self.date(2027, 2030), "MatriculationCode": self.pick("MatriculationType")},
            ),
            (
                "EV.Program.Shorten",
                {
                    **pf,
                    "NewPrgEndDate": self.date(2025, 2027),
                    "ShortenReason": self.pick("EVCompletionCodeType"),
                    "Remarks": self.word(),
                },
            ),
            ("EV.SiteOfActivity.Add", {**pf, **self.site(f"{key}S9", False, add=True)}),
            (
                "EV.SiteOfActivity.Edit",
                {
                    **pf,
                    "@sisKey": f"{key}S0",
                    **self.address(),
                    "SiteName": self.word(),
                    **({"SiteId": str(r.randint(1, 999999))} if r.random() < 0.7 else {}),
                },
            ),
            ("EV.SiteOfActivity.Delete", {"@sisKey": f"{key}S1", "SiteId": str(r.randint(1, 999999))}),
            ("EV.FinancialInfo", {**pf, **self.funds()}),
            (
                "EV.Dependent.Add",
                {
                    **pf,
                    "@sisKey": f"{key}D5",
                    **self.bio(email=False),
                    "Relationship": "02",
                    "FormPurpose": self.pick("EVPrintReasonType"),
                },
            ),
            ("EV.Dependent.Edit", {**pf, **dep, **self.bio(email=False), "Relationship": "02"}),
            ("EV.Dependent.Delete", dict(dep)),
            ("EV.Dependent.EndStatus", {**dep, "Reason": self.pick("DependentCompletionType")}),
            (
                "EV.Dependent.Terminate",
                {**dep, "Reason": self.pick("EVDepTerminationReasonType"), "EffectiveDate": self.date(2025, 2027)},
            ),
            ("EV.Dependent.Reprint", {**dep, "Reason": self.pick("EVReprintRequestReasonType")}),
            (
                "EV.Status.Terminate",
                {
                    "Reason": self.pick("EVTerminationReasonType"),
                    "EffectiveDate": self.date(2025, 2027),
                    "OtherRemarks": self.word(),
                },
            ),
            ("EV.Status.NoShow", {}),
            ("EV.Status.Invalid", {"Remarks": self.word()}),
            ("EV.Status.CorrectInfraction", {"InfractionType": self.pick("EVInfractionCodeType")}),
            ("EV.Reprint", {"Reason": self.pick("EVReprintRequestReasonType")}),
        ]
        return r.choice(events)

    def shuffled(self, d: dict[str, Any]) -> dict[str, Any]:
        items = list(d.items())
        self.r.shuffle(items)
        return dict(items)


def visitors(seed: int, count: int, start: int = 1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    g = Gen(random.Random(seed))
    creates, updates = [], []
    for n in range(start, start + count):
        creates.append(g.create(n))
        updates.extend(g.update(n, j) for j in range(g.r.randint(1, 4)))
    return creates, updates


def _assert_valid(records: list[dict[str, Any]], batch_id: str) -> int:
    checked = check_ev_batch(batch_of(records, batch_id), load_ev_schema(XSD_DIR))
    assert checked.ok, [p.as_dict() for p in checked.problems][:5]
    return len(checked.rendered)


def test_1000_generated_exchange_visitors_render_to_xsd_valid_documents() -> None:
    creates, updates = visitors(seed=20261204, count=1000)
    assert len(creates) == 1000
    kinds = {r["kind"] for r in updates}
    assert len(kinds) >= 20, kinds  # every update event kind was generated
    rendered, documents = 0, 0
    per = MAX_RECORDS_PER_SECTION
    for i in range(0, max(len(creates), len(updates)), per):
        rendered += _assert_valid(creates[i : i + per] + updates[i : i + per], f"EVPROP{i // per:08d}")
        documents += 1
    assert rendered == len(creates) + len(updates)
    assert documents >= 4


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), count=st.integers(min_value=1, max_value=6))
def test_any_generated_exchange_visitor_renders_valid(seed: int, count: int) -> None:
    creates, updates = visitors(seed, count)
    assert _assert_valid(creates + updates, "EVHYPO00000001") == len(creates) + len(updates)
