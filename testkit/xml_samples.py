"""Fictional batch records for tests, the benchmark and dry runs (no real person anywhere).

Payload dicts are deliberately built in *reverse* XSD order, so anything that renders
them correctly proves the renderer orders children from the XSD.
"""

from __future__ import annotations

from typing import Any

from sevisflow.sinks.xml.render import ClosedBatch

ORG_ID = "ZZZ214F99999000"
DSO = "dsouser001"


def _rev(d: dict[str, Any]) -> dict[str, Any]:
    return dict(reversed(list(d.items())))


def create_payload(
    last: str = "Quellmar",
    first: str = "Ansel",
    birth: str = "2004-03-17",
    address1: str = "Rua Ficticia 100",
    start: str = "2025-08-25",
    end: str = "2029-05-15",
) -> dict[str, Any]:
    return _rev(
        {
            "@printForm": "true",
            "PersonalInfo": _rev(
                {
                    "FullName": _rev({"LastName": last, "FirstName": first}),
                    "BirthDate": birth,
                    "Gender": "F",
                    "BirthCountryCode": "BR",
                    "CitizenshipCountryCode": "BR",
                    "Email": "student@example.org",
                    "VisaType": "01",
                }
            ),
            "IssueReason": "I",
            "ForeignAddress": _rev(
                {"Address1": address1, "City": "Curitiba", "CountryCode": "BR", "PostalCode": "80000-000"}
            ),
            "EducationalInfo": _rev(
                {
                    "EduLevel": {"Level": "04"},
                    "MajorCode1": "11.0701",
                    "IssDate": "2025-05-01",
                    "PrgStartDate": start,
                    "PrgEndDate": end,
                    "EngProficiency": _rev({"EngRequired": "true", "RequirementsMet": "true"}),
                }
            ),
            "FinancialInfo": _rev(
                {
                    "AcademicTerm": "09",
                    "Expense": _rev({"Tuition": "32000", "LivingExpense": "15000"}),
                    "Funding": {"Personal": "47000"},
                }
            ),
        }
    )


def create_record(i: int, **payload: Any) -> dict[str, Any]:
    key = f"S{i:08d}"
    return {
        "record_id": f"{key}:Create",
        "request_id": f"C{i:08d}",
        "section": "create",
        "student_key": key,
        "sevis_id": None,
        "kind": "Create",
        "payload": create_payload(**payload),
        "user_defined_a": None,
        "user_defined_b": key,
        "event_ids": [f"e{i}"],
        "lineage": [],
    }


_EMPLOYER = {"Address1": "200 Industry Way", "City": "Champaign", "State": "IL", "PostalCode": "61820"}
# one payload per authorisation event sevis_events derives (RCL, CPT, OPT, STEM OPT extension)
AUTHORIZATION_PAYLOADS: dict[str, dict[str, Any]] = {
    "AuthDropBelowFC.Add": _rev(
        {
            "@printForm": "true",
            "Reason": "05",
            "StartDate": "2026-08-24",
            "EndDate": "2026-12-18",
            "Remarks": "Medical condition documented",
        }
    ),
    "AuthDropBelowFC.Cancel": _rev(
        {"@printForm": "false", "Reason": "05", "StartDate": "2026-08-24", "EndDate": "2026-12-18"}
    ),
    "CPTEmployment.Add": _rev(
        {
            "@printForm": "true",
            "StartDate": "2026-06-01",
            "EndDate": "2026-08-14",
            "FullPartTimeIndicator": "01",
            "EmployerName": "Fictional Widgets Inc",
            "EmployerAddress": _rev(_EMPLOYER),
            "CourseRelevance": "Required internship",
        }
    ),
    "CPTEmployment.Cancel": _rev(
        {
            "@printForm": "false",
            "StartDate": "2026-06-01",
            "EndDate": "2026-08-14",
            "FullPartTimeIndicator": "01",
            "EmployerName": "Fictional Widgets Inc",
        }
    ),
    "OPTEmployment.Add": _rev(
        {
            "@printForm": "true",
            "StartDate": "2027-06-01",
            "EndDate": "2028-05-31",
            "FullPartTimeIndicator": "01",
            "AcademicYearMet": "true",
        }
    ),
    "OPTEmployment.Cancel": _rev(
        {"@printForm": "false", "StartDate": "2027-06-01", "EndDate": "2028-05-31", "FullPartTimeIndicator": "01"}
    ),
    "OPTEmployment.Extend": _rev(
        {
            "@printForm": "true",
            "StartDate": "2028-06-01",
            "EndDate": "2030-05-31",
            "FullPartTimeIndicator": "01",
            "Employer": [
                _rev(
                    {
                        "EmployerName": "Fictional Widgets Inc",
                        "EmployerAddress": _rev(_EMPLOYER),
                        "CourseRelevance": "Data engineering in the field of the degree",
                        "FullPartTimeIndicator": "01",
                        "StartDate": "2028-06-01",
                        "EndDate": "2030-05-31",
                    }
                )
            ],
        }
    ),
}

# one payload per event a DSO reports with `sevisflow student report` (no SIS change triggers them)
REPORT_PAYLOADS: dict[str, dict[str, Any]] = {
    "Reprint": _rev({"@printForm": "true", "Reason": "02", "Remarks": "Travel signature needed"}),
    "Status.Verify": {},
    "DisciplinaryAction": {"Explanation": "Suspended for one term after a conduct hearing."},
}
REPORT_KINDS = tuple(REPORT_PAYLOADS)


def update_record(
    i: int, kind: str = "PersonalInfo", payload: dict[str, Any] | None = None, sevis_id: str | None = None
) -> dict[str, Any]:
    key = f"S{i:08d}"
    if payload is None:
        payload = {
            "PersonalInfo": _rev(
                {
                    "@printForm": "false",
                    "USAddress": _rev(
                        {"Address1": f"{i} College St", "City": "Springfield", "State": "IL", "PostalCode": "62704"}
                    ),
                    "Email": "student@example.org",
                }
            ),
            "Registration": _rev(
                {
                    "@printForm": "false",
                    "LastSession": "false",
                    "CurrentSessionStartDate": "2025-08-25",
                    "CurrentSessionEndDate": "2025-12-19",
                    "NextSessionStartDate": "2026-01-12",
                }
            ),
            "Program.Extension": _rev(
                {
                    "@printForm": "true",
                    "NewPrgEndDate": "2027-05-15",
                    "Explanation": "Research delayed; advisor approved one more term.",
                }
            ),
            "Program.Shorten": {"@printForm": "true", "NewPrgEndDate": "2026-12-18"},
            "Status.Complete": {},
            "Status.Terminate": {"Reason": "01", "Remarks": "Withdrew"},
            **AUTHORIZATION_PAYLOADS,
            **REPORT_PAYLOADS,
        }[kind]
    short = kind.replace(".", "")[:8]
    return {
        "record_id": f"{key}:{kind}",
        "request_id": f"U{i:08d}{short}"[:20],
        "section": "update",
        "student_key": key,
        "sevis_id": sevis_id or f"N{i:010d}",
        "kind": kind,
        "payload": payload,
        "user_defined_a": None,
        "user_defined_b": key,
        "event_ids": [f"u{i}"],
        "lineage": [],
    }


AUTHORIZATION_KINDS = tuple(AUTHORIZATION_PAYLOADS)
UPDATE_KINDS = (
    "PersonalInfo",
    "Registration",
    "Program.Extension",
    "Program.Shorten",
    "Status.Complete",
    "Status.Terminate",
)


def sample_batch(
    creates: int, updates: int, batch_id: str = "SFTEST00000001", at_ms: int = 1748900000000, org_id: str = ORG_ID
) -> ClosedBatch:
    """A closed batch with ``creates`` new students and ``updates`` update records (kinds rotate)."""
    recs = [create_record(i) for i in range(1, creates + 1)]
    recs += [update_record(100000 + i, UPDATE_KINDS[i % len(UPDATE_KINDS)]) for i in range(updates)]
    return ClosedBatch(org_id=org_id, batch_id=batch_id, closed_by=DSO, at_ms=at_ms, records=tuple(recs))
