"""Fictional exchange-visitor (J-1) batch records for the EV tests (no real person anywhere).

Records are built the way the batcher closes them (docs/CONTRACTS.md) from SevisEvents of the
EV contract: ``kind`` ``EV.`` + element path, payload keyed by EV XSD element names
(attributes with ``@``), ``@sisKey`` on dependents and sites SEVIS knows by its own ids.
Payload dicts are built in *reverse* XSD order, so a correct rendering proves the order comes
from the XSD.
"""

from __future__ import annotations

from typing import Any

from sevisflow.sinks.xml.render import ClosedBatch

PROGRAM = "P-1-99999"
RO_USER = "roaro00001"


def _rev(d: dict[str, Any]) -> dict[str, Any]:
    return dict(reversed(list(d.items())))


def bio(
    last: str = "Vantorra",
    first: str = "Ilse",
    birth: str = "1988-05-02",
    gender: str = "F",
    country: str = "AU",
    city: str = "Graz",
    email: str | None = "scholar@example.org",
) -> dict[str, Any]:
    out = {
        "FullName": _rev({"LastName": last, "FirstName": first}),
        "BirthDate": birth,
        "Gender": gender,
        "BirthCity": city,
        "BirthCountryCode": country,
        "CitizenshipCountryCode": country,
        "PermanentResidenceCountryCode": country,
    }
    if email:
        out["EmailAddress"] = email
    return _rev(out)


def us_address(
    line1: str = "12 Sample Street", city: str = "Springfield", state: str = "IL", zip5: str = "62704"
) -> dict[str, Any]:
    return _rev({"Address1": line1, "City": city, "State": state, "PostalCode": zip5})


def soa_site(
    sis_key: str, name: str = "Fictional University Physics Building", primary: bool = True, xsi_type: str = "SOA"
) -> dict[str, Any]:
    site = {
        "@xsi:type": xsi_type,
        "@sisKey": sis_key,
        **us_address("100 Example Science Way", zip5="62701"),
        "SiteName": name,
        "PrimarySite": "true" if primary else "false",
    }
    return _rev(site)


def dependent(
    sis_key: str, relationship: str = "01", first: str = "Jonas", birth: str = "1987-11-20", gender: str = "M"
) -> dict[str, Any]:
    return _rev(
        {"@sisKey": sis_key, **bio(first=first, birth=birth, gender=gender, email=None), "Relationship": relationship}
    )


def create_payload(n: int = 1, dependents: int = 1, sites: int = 1) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "@printForm": "true",
        "Biographical": bio(),
        "PositionCode": "213",
        "PrgStartDate": "2026-03-01",
        "PrgEndDate": "2027-02-28",
        "CategoryCode": "08",
        "SubjectField": _rev({"SubjectFieldCode": "40.0801", "Remarks": "Condensed matter physics research"}),
        "FinancialInfo": _rev(
            {"ReceivedUSGovtFunds": "false", "ProgramSponsorFunds": "52000", "OtherFunds": {"Personal": "3000"}}
        ),
        "AddSiteOfActivity": {
            "SiteOfActivity": [soa_site(f"ST{n}-{i}", name=f"Fictional Lab {i}", primary=i == 0) for i in range(sites)]
        },
    }
    if dependents:
        payload["CreateDependent"] = {
            "Dependent": [
                dependent(f"D{n}-{i}", "01" if i == 0 else "02", birth="1987-11-20" if i == 0 else "2019-02-11")
                for i in range(dependents)
            ]
        }
    return _rev(payload)


def create_record(n: int, **kw: Any) -> dict[str, Any]:
    key = f"J{n:07d}"
    return {
        "record_id": f"{key}:EV.Create",
        "request_id": f"C{n:08d}",
        "section": "create",
        "student_key": key,
        "sevis_id": None,
        "kind": "EV.Create",
        "payload": create_payload(n, **kw),
        "user_defined_a": key,
        "user_defined_b": None,
        "event_ids": [f"e{n}"],
        "lineage": [],
    }


def update_record(n: int, kind: str, payload: dict[str, Any], sevis_id: str = "N0000000101") -> dict[str, Any]:
    key = f"J{n:07d}"
    return {
        "record_id": f"{key}:{kind}",
        "request_id": f"U{n:08d}",
        "section": "update",
        "student_key": key,
        "sevis_id": sevis_id,
        "kind": kind,
        "payload": _rev(payload),
        "user_defined_a": key,
        "user_defined_b": None,
        "event_ids": [f"u{n}"],
        "lineage": [],
    }


# one payload per UpdateEV event the EV contract names (the example document's events and the rest)
UPDATE_PAYLOADS: dict[str, dict[str, Any]] = {
    "EV.Validate": {"USAddress": us_address(), "EmailAddress": "scholar@example.org", "PhoneNumber": "2175550142"},
    "EV.Biographical": {
        "@printForm": "false",
        **bio(),
        "BirthCountryReason": "",
        "PhoneNumber": "2175550177",
        "PositionCode": "213",
        "USAddress": us_address("48 Placeholder Avenue", zip5="62702"),
    },
    "EV.Program.Amend": {
        "@printForm": "true",
        "PrgStartDate": "2026-04-01",
        "PrgEndDate": "2027-03-31",
        "Remarks": "Visa appointment delayed arrival",
    },
    "EV.Program.EditSubject": {
        "@printForm": "true",
        "SubjectFieldCode": "26.0202",
        "SubjectFieldRemarks": "Protein structure biochemistry",
        "Remarks": "Moved to the structural biology lab",
    },
    "EV.Program.Extension": {
        "@printForm": "true",
        "NewPrgEndDate": "2027-08-31",
        "Remarks": "Research appointment renewed",
    },
    "EV.Program.Shorten": {
        "@printForm": "false",
        "NewPrgEndDate": "2026-06-30",
        "ShortenReason": "WFP",
        "Remarks": "Accepted a position at the home institution",
    },
    "EV.SiteOfActivity.Add": {
        "@xsi:type": "AddSOA",
        "@printForm": "false",
        "@sisKey": "ST9",
        **us_address("9 Demo Research Park", "Urbana", zip5="61801"),
        "SiteName": "Fictional National Lab Annex",
        "PrimarySite": "false",
    },
    "EV.SiteOfActivity.Edit": {
        "@printForm": "false",
        "@sisKey": "ST1",
        **us_address("200 Example Science Way", zip5="62701"),
        "SiteId": "900001",
        "SiteName": "Fictional University Physics Building",
    },
    "EV.SiteOfActivity.Delete": {"@sisKey": "ST2", "SiteId": "900002"},
    "EV.FinancialInfo": {
        "@printForm": "false",
        "ReceivedUSGovtFunds": "true",
        "ProgramSponsorFunds": "40000",
        "OtherFunds": {"USGovt": _rev({"Org1": "NSF", "Amount1": "15000"})},
    },
    "EV.Dependent.Add": {
        "@printForm": "true",
        "@sisKey": "D9",
        **bio(first="Ada", birth="2019-02-11", email=None),
        "Relationship": "02",
        "FormPurpose": "08",
    },
    "EV.Dependent.Edit": {
        "@printForm": "false",
        "@dependentSevisID": "N0000000201",
        "@sisKey": "D1",
        **bio(first="Jonas", birth="1987-11-20", gender="M", email=None),
        "Relationship": "01",
    },
    "EV.Dependent.Delete": {"@dependentSevisID": "N0000000201", "@sisKey": "D1"},
    "EV.Dependent.EndStatus": {"@dependentSevisID": "N0000000201", "Reason": "04"},
    "EV.Dependent.Terminate": {
        "@dependentSevisID": "N0000000201",
        "Reason": "09",
        "EffectiveDate": "2026-05-15",
        "OtherRemarks": "Other reason",
    },
    "EV.Dependent.Reprint": {"@dependentSevisID": "N0000000201", "Reason": "05"},
    "EV.Status.Terminate": {
        "Reason": "OTHER",
        "EffectiveDate": "2026-05-15",
        "OtherRemarks": "Left the program site without notice",
    },
    "EV.Status.NoShow": {},
    "EV.Status.Invalid": {"Remarks": "Program will not take place"},
    "EV.Status.CorrectInfraction": {"InfractionType": "EXT", "NewEndDate": "2027-08-31", "Remarks": "Late extension"},
    "EV.Program.Matriculate": {"@printForm": "true", "NewPrgEndDate": "2029-05-31", "MatriculationCode": "M"},
    "EV.Reprint7002": {"@print7002": "true", "SiteId": "900001"},
    "EV.Reprint": {"@printForm": "true", "Reason": "05"},
}


def batch_of(records: list[dict[str, Any]], batch_id: str = "EVTEST00000001", org: str = PROGRAM) -> ClosedBatch:
    return ClosedBatch(org, batch_id, RO_USER, 1748921400000, tuple(records))


def sample_ev_batch(batch_id: str = "EVTEST00000001") -> ClosedBatch:
    """One create (spouse, one site) and one record of every update event above."""
    records = [create_record(1)]
    for i, (kind, payload) in enumerate(sorted(UPDATE_PAYLOADS.items()), start=2):
        records.append(update_record(i, kind, payload, sevis_id=f"N{100 + i:010d}"))
    return batch_of(records, batch_id)
