"""The canonical student model: its sections, fields, field types and value conversion.

The model is SIS-independent. Every mapping file maps SIS columns onto these fields; every value
is converted here, once, into one canonical form:

* ``date``: ISO ``YYYY-MM-DD`` (accepts ISO strings, ISO timestamps, Debezium's int days since epoch);
  years outside 1900–2100 are rejected as out of range.
* ``timestamp``: ISO 8601 UTC (accepts ISO strings, Debezium's int microseconds since epoch).
* ``int``: a whole number (accepts ints, decimal strings, doubles, Debezium's base64 NUMERIC bytes);
  money with cents is rounded half-up to whole dollars, because SEVIS amounts are whole dollars.
* ``decimal``: a decimal string.
* ``bool``: true/false (accepts booleans, 0/1, t/f, y/n, yes/no, true/false).
* ``enum``: translated through a ``[values.<name>]`` table of the mapping file. A table entry may be a
  string or a table ``{ value = "terminated", reason = "23" }``: the extra keys become sibling fields
  ``<field>_<key>`` (e.g. ``status_reason``).
* ``str``: trimmed; empty strings become null.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

EPOCH = date(1970, 1, 1)
EPOCH_DT = datetime(1970, 1, 1, tzinfo=UTC)
MIN_YEAR, MAX_YEAR = 1900, 2100


class ValueProblem(Exception):
    """A SIS value that cannot become a canonical value: ``code`` is the dead letter's code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class FieldType:
    kind: str  # str | date | timestamp | int | decimal | bool | enum
    values: str | None = None  # enum: the value table's name
    builtin_default: str | None = None  # enum: builtin used when the mapping has no such table


@dataclass(frozen=True)
class Section:
    name: str
    fields: dict[str, FieldType]
    keyed: bool = False  # one entry per slot (address kind, term, dependent)
    slot_name: str = ""
    slots: tuple[str, ...] | None = None  # allowed slots (None: any value)


S = FieldType("str")
D = FieldType("date")
I = FieldType("int")  # noqa: E741 - S, D, I, B: one-letter field types, so SECTIONS below reads as a table
B = FieldType("bool")
COUNTRY = FieldType("enum", "country", "iso2_to_sevis")
GENDER = FieldType("enum", "gender")

SECTIONS: dict[str, Section] = {
    s.name: s
    for s in [
        Section(
            "student",
            {
                "first_name": S,
                "middle_name": S,
                "last_name": S,
                "preferred_name": S,
                "birth_date": D,
                "gender": GENDER,
                "birth_city": S,
                "birth_country": COUNTRY,
                "citizenship_country": COUNTRY,
                "email": S,
                "phone": S,
                "phone_country_code": S,
                "commuter": B,
                "visa_type": FieldType("enum", "visa_type"),
                "sevis_id": S,
                "sevis_status": S,
                "issue_reason": S,
                "i20_issue_date": D,
                "school_code": S,  # member school of a multi-school deployment; null = the main school
            },
        ),
        Section(
            "address",
            {
                "line1": S,
                "line2": S,
                "city": S,
                "state": S,
                "postal_code": S,
                "country": COUNTRY,
            },
            keyed=True,
            slot_name="address kind",
            slots=("us_physical", "us_mailing", "foreign"),
        ),
        Section(
            "program",
            {
                "degree_level": FieldType("enum", "edu_level"),
                "major_cip": S,
                "second_major_cip": S,
                "minor_cip": S,
                "start_date": D,
                "end_date": D,
                "status": FieldType("enum", "program_status"),
                "english_required": B,
                "english_met": B,
                "english_not_required_reason": S,
                "extension_reason": S,
            },
        ),
        Section(
            "finance",
            {
                "academic_term_months": I,
                "tuition": I,
                "living_expenses": I,
                "dependent_expenses": I,
                "other_costs": I,
                "other_costs_remarks": S,
                "personal_funds": I,
                "school_funds": I,
                "school_funds_remarks": S,
                "other_funds": I,
                "other_funds_source": S,
                "employment_funds": I,
            },
        ),
        Section(
            "registration",
            {
                "status": FieldType("enum", "enrollment_status"),
                "full_time": B,
                "credit_hours": FieldType("decimal"),
                "confirmed_at": FieldType("timestamp"),
                "session_start": D,
                "session_end": D,
                "next_session_start": D,
                "last_session": B,
            },
            keyed=True,
            slot_name="term",
        ),
        Section(
            "dependent",
            {
                "first_name": S,
                "last_name": S,
                "birth_date": D,
                "gender": GENDER,
                "birth_city": S,
                "birth_country": COUNTRY,
                "citizenship_country": COUNTRY,
                "relationship": FieldType("enum", "relationship"),
                "visa_type": FieldType("enum", "dependent_visa"),
                "status": FieldType("enum", "dependent_status"),
                "dependent_sevis_id": S,
            },
            keyed=True,
            slot_name="dependent",
        ),
        Section(
            "authorization",
            {
                "kind": FieldType("enum", "authorization_kind"),
                "status": FieldType("enum", "authorization_status"),
                "start_date": D,
                "end_date": D,
                "time_basis": FieldType("enum", "employment_time"),
                "employer_name": S,
                "employer_line1": S,
                "employer_line2": S,
                "employer_city": S,
                "employer_state": FieldType("enum", "us_state", "us_state_names"),
                "employer_postal_code": S,
                "course_relevance": S,
                "rcl_reason": FieldType("enum", "rcl_reason"),
                "academic_year_met": B,
                "remarks": S,
            },
            keyed=True,
            slot_name="authorization",
        ),
        # J-1 exchange visitors: the sponsor's records (docs/MAPPING.md, "Exchange visitors")
        Section(
            "exchange",
            {
                "sis_program": S,
                "category": FieldType("enum", "ev_category"),
                "position": FieldType("enum", "ev_position"),
                "subject_cip": S,
                "subject_remarks": S,
                "residence_country": COUNTRY,
                "start_date": D,
                "end_date": D,
                "status": FieldType("enum", "ev_status"),
                "end_reason": FieldType("enum", "ev_end_reason"),
                "end_remarks": S,
                "termination_reason": FieldType("enum", "ev_termination_reason"),
                "termination_date": D,
                "change_remarks": S,
            },
        ),
        Section(
            "ev_funding",
            {
                "us_govt_funds": B,
                "sponsor_funds": I,
                "us_agency": S,
                "us_agency_funds": I,
                "intl_org": S,
                "intl_org_funds": I,
                "home_govt_funds": I,
                "binational_funds": I,
                "other_org": S,
                "other_org_funds": I,
                "personal_funds": I,
            },
        ),
        Section(
            "ev_site",
            {
                "name": S,
                "line1": S,
                "line2": S,
                "city": S,
                "state": FieldType("enum", "us_state", "us_state_names"),
                "postal_code": S,
                "primary": B,
                "active": B,
                "site_sevis_id": S,
            },
            keyed=True,
            slot_name="site of activity",
        ),
        Section(
            "ev_dependent",
            {
                "first_name": S,
                "last_name": S,
                "birth_date": D,
                "gender": GENDER,
                "birth_city": S,
                "birth_country": COUNTRY,
                "citizenship_country": COUNTRY,
                "residence_country": COUNTRY,
                "relationship": FieldType("enum", "relationship"),
                "status": FieldType("enum", "ev_dependent_status"),
                "end_reason": FieldType("enum", "ev_dependent_end_reason"),
                "end_date": D,
                "accompanying": B,
                "dependent_sevis_id": S,
            },
            keyed=True,
            slot_name="J-2 dependent",
        ),
    ]
}

#: canonical exchange-visitor statuses the events stage understands
EV_STATUSES = ("initial", "active", "completed", "no_show", "invalid", "terminated")
EV_DEPENDENT_STATUSES = ("active", "ended", "terminated", "deleted")

#: canonical authorisation kinds and statuses the events stage understands
AUTHORIZATION_KINDS = ("rcl", "cpt", "opt", "opt_stem")
AUTHORIZATION_STATUSES = ("approved", "withdrawn")

#: canonical program statuses the events stage understands
PROGRAM_STATUSES = ("initial", "active", "completed", "terminated", "canceled", "deferred")
ENROLLMENT_STATUSES = ("registered", "enrolled", "withdrawn")


def _decimal(raw: Any, scale: int | None) -> Decimal:
    if isinstance(raw, bool):
        raise ValueProblem("bad_number", "a boolean where a number was expected")
    if isinstance(raw, (int, Decimal)):
        return Decimal(raw)
    if isinstance(raw, float):
        return Decimal(repr(raw))
    if isinstance(raw, dict) and "value" in raw:  # Debezium VariableScaleDecimal without schema
        return _from_b64(raw["value"], int(raw.get("scale", 0)))
    if isinstance(raw, str):
        s = raw.strip()
        try:
            return Decimal(s)
        except InvalidOperation:
            pass
        if scale is not None:
            return _from_b64(s, scale)
        raise ValueProblem(
            "bad_number",
            "not a number (a Debezium NUMERIC in base64 needs decimal.handling.mode="
            "string, the schema wrapper, or 'scale' in the mapping)",
        )
    raise ValueProblem("bad_number", f"a {type(raw).__name__} where a number was expected")


def _from_b64(text: str, scale: int) -> Decimal:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueProblem("bad_number", "not a number and not base64 NUMERIC bytes") from exc
    return Decimal(int.from_bytes(data, "big", signed=True)).scaleb(-scale)


def to_date(raw: Any) -> str:
    if isinstance(raw, bool):
        raise ValueProblem("bad_date", "a boolean where a date was expected")
    if isinstance(raw, int):
        if abs(raw) > 200_000:
            raise ValueProblem("date_out_of_range", "an int date outside ±200000 days of 1970 (not Debezium days?)")
        d = EPOCH + timedelta(days=raw)
    elif isinstance(raw, str):
        s = raw.strip()
        try:
            d = date.fromisoformat(s[:10])
        except ValueError as exc:
            raise ValueProblem("bad_date", "not an ISO date (YYYY-MM-DD)") from exc
    elif isinstance(raw, date):
        d = raw if not isinstance(raw, datetime) else raw.date()
    else:
        raise ValueProblem("bad_date", f"a {type(raw).__name__} where a date was expected")
    if not MIN_YEAR <= d.year <= MAX_YEAR:
        raise ValueProblem("date_out_of_range", f"year {d.year} outside {MIN_YEAR}-{MAX_YEAR}")
    return d.isoformat()


def to_timestamp(raw: Any) -> str:
    if isinstance(raw, bool):
        raise ValueProblem("bad_timestamp", "a boolean where a timestamp was expected")
    if isinstance(raw, int):
        try:
            dt = EPOCH_DT + timedelta(microseconds=raw)
        except OverflowError as exc:
            raise ValueProblem("date_out_of_range", "timestamp out of range") from exc
    elif isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.strip().replace(" ", "T", 1))
        except ValueError as exc:
            raise ValueProblem("bad_timestamp", "not an ISO timestamp") from exc
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
    else:
        raise ValueProblem("bad_timestamp", f"a {type(raw).__name__} where a timestamp was expected")
    if not MIN_YEAR <= dt.year <= MAX_YEAR:
        raise ValueProblem("date_out_of_range", f"year {dt.year} outside {MIN_YEAR}-{MAX_YEAR}")
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


_TRUE = {"true", "t", "y", "yes", "1"}
_FALSE = {"false", "f", "n", "no", "0"}


def to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise ValueProblem("bad_boolean", "not a yes/no value")


def rounds(ft: FieldType, raw: Any, scale: int | None = None) -> bool:
    """Whether :func:`convert` rounds this value (a whole-number field given a fraction, e.g. $30,000.50):
    SEVIS takes whole dollars, so the value is rounded — and the DSO is told, never silently."""
    if ft.kind != "int" or raw is None:
        return False
    try:
        d = _decimal(raw, scale)
    except ValueProblem:
        return False
    return d.is_finite() and d != d.to_integral_value()


def convert(ft: FieldType, raw: Any, scale: int | None = None) -> Any:
    """Convert a non-null SIS value to the canonical form of a non-enum field type."""
    k = ft.kind
    if k == "str":
        if isinstance(raw, (dict, list)):
            raise ValueProblem("bad_text", "a structure where text was expected")
        s = str(raw).strip()
        return s or None
    if k == "date":
        return to_date(raw)
    if k == "timestamp":
        return to_timestamp(raw)
    if k == "bool":
        return to_bool(raw)
    if k == "int":
        d = _decimal(raw, scale)
        if not d.is_finite():
            raise ValueProblem("bad_number", "not a finite number")
        n = int(d.to_integral_value(rounding=ROUND_HALF_UP))
        if abs(n) > 10**15:
            raise ValueProblem("number_out_of_range", "number too large")
        return n
    if k == "decimal":
        d = _decimal(raw, scale)
        if not d.is_finite():
            raise ValueProblem("bad_number", "not a finite number")
        return str(d.normalize()) if d != 0 else "0"
    raise AssertionError(f"unknown field kind {k}")


@dataclass
class EmptyView:
    """Helper namespace: the shape of a fresh view (see :func:`new_view`)."""

    sections: list[str] = field(default_factory=lambda: list(SECTIONS))


def new_view(student_key: str, link: str | None) -> dict[str, Any]:
    """A view with nothing in it yet: the starting point for a new student key."""
    return {
        "student_key": student_key,
        "link": link,
        "exists": False,
        "international": False,
        "student": {},
        "address": {},
        "program": {},
        "finance": {},
        "registration": {},
        "dependent": {},
        "authorization": {},
        "src": {},
    }
