"""Data hygiene where the data enters: refuse what a SEVIS batch cannot carry before an event exists.

Pure functions, no clock, no I/O. The events stage (:mod:`sevisflow.processors.sevis_events.derive`, in
``_Builder.event``) and ``sevisflow student add-info`` run :func:`check_event` on every payload
they are about to emit; a finding refuses *that* event (the student's record) with an issue for the
DSO, and nothing else: other events of the same student that are clean, and other students, flow.
The XML sink's XSD validation stays as the last line behind this.

Rules (each finding names the field, never the value — it may be personal data):

* ``invalid_character`` — characters XML 1.0 cannot carry (C0 controls, surrogates, U+FFFE/U+FFFF),
  plus DEL, the C1 controls and the bidirectional overrides/isolates (they reorder what a DSO reads).
  TAB, LF and CR are allowed only in free-text remarks (``whiteSpace="preserve"`` types);
* ``too_long`` — longer than the XSD's ``maxLength`` for that element (:data:`MAX_LENGTH`, a static
  table derived from Create-UpdateStudent.xsd/Common.xsd and checked against those files by
  ``tests/unit/test_hygiene.py``); values are never cut;
* ``too_many`` — more repetitions than the XSD's ``maxOccurs`` (dependents of a Create);
* ``bad_amount`` — a dollar amount that is not a whole number from 0 to 99,999,999 (the XSD's
  ``nonNegativeInteger`` with ``maxInclusive`` 99999999): negative, fractional, overflowing, not a number;
* ``bad_date`` — not a calendar date ``YYYY-MM-DD``, or a birth date after the change that records it;
* ``date_order`` — an end date before its start date (programme, session, authorisation, employer),
  a next session that starts before the current one ends, a new programme end before the start.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_AMOUNT = 99_999_999
"""XSD: FinancialInfo amounts are xs:nonNegativeInteger with maxInclusive 99999999."""

# Characters refused everywhere: C0 except TAB/LF/CR, DEL + C1, surrogates, the two BMP non-characters XML 1.0
# excludes, and bidi embedding/override/isolate controls.
# (the surrogates by chr(): mypyc, which compiles this module, refuses them in a literal)
_REFUSED = re.compile(
    f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{chr(0xD800)}-{chr(0xDFFF)}\ufffe\uffff\u202a-\u202e\u2066-\u2069]"
)
_LINE_CONTROLS = re.compile("[\t\n\r]")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# --------------------------------------------------------------------------- the XSD-derived table
# Keys: "<kind path>/<element path>", kind path = "Create" or the UpdateStudent event ("Program/Extension").
# Values: the element's xs:maxLength. Checked against the XSD files by tests/unit/test_hygiene.py.

_NAMES = {"FullName/LastName": 80, "FullName/FirstName": 80, "FullName/PassportName": 39, "FullName/PreferredName": 180}
_US_ADDR = {"Address1": 64, "Address2": 64, "City": 60}  # common:USAddrDoctorType
_US_ADDR_STRICT = {"Address1": 60, "Address2": 60, "City": 60}  # common:USAddressType (CPT employer)
_FOREIGN_ADDR = {"Address1": 60, "Address2": 60, "City": 60, "Province": 30, "PostalCode": 20}
_PHONE = {"Telephone/Phone/Foreign/CountryNumber": 4, "Telephone/Phone/Foreign/PhoneNumber": 20}
_PERSONAL = {**_NAMES, "BirthCity": 100, "Email": 255, **_PHONE}
_EDU = {"EduLevel/OtherRemarks": 500, "EngProficiency/NotRequiredReason": 500}
_FIN = {"Expense/Other/Remarks": 500, "Funding/School/Remarks": 500, "Funding/Other/Remarks": 500}
_DEPENDENT = {**_NAMES, "BirthCity": 100, "Email": 255}


def _under(prefix: str, table: Mapping[str, int]) -> dict[str, int]:
    return {f"{prefix}/{k}": v for k, v in table.items()}


MAX_LENGTH: dict[str, int] = {
    **_under("Create/PersonalInfo", _PERSONAL),
    **_under("Create/USAddress", _US_ADDR),
    **_under("Create/MailingAddress", _US_ADDR),
    **_under("Create/ForeignAddress", _FOREIGN_ADDR),
    **_under("Create/EducationalInfo", _EDU),
    **_under("Create/FinancialInfo", _FIN),
    **_under("Create/CreateDependent/Dependent", _DEPENDENT),
    "Create/Remarks": 500,
    **_under("PersonalInfo", _PERSONAL),
    **_under("PersonalInfo/USAddress", _US_ADDR),
    **_under("PersonalInfo/MailingAddress", _US_ADDR),
    **_under("PersonalInfo/ForeignAddress", _FOREIGN_ADDR),
    **_under("Registration/USAddress", _US_ADDR),
    "Program/Extension/Explanation": 500,
    "Program/Extension/Remarks": 500,
    **_under("Program/Edit", {"EngProficiency/NotRequiredReason": 500}),
    **_under("EducationLevel/Change/EducationalInfo", _EDU),
    **_under("EducationLevel/Change/FinancialInfo", _FIN),
    "EducationLevel/Change/Remarks": 500,
    **_under("FinancialInfo", _FIN),
    "Status/Terminate/OtherRemarks": 500,
    **_under("Dependent/Add", _DEPENDENT),
    **_under("Dependent/Edit", _DEPENDENT),
    "AuthDropBelowFC/Add/Remarks": 500,
    "CPTEmployment/Add/EmployerName": 100,
    **_under("CPTEmployment/Add/EmployerAddress", _US_ADDR_STRICT),
    "CPTEmployment/Add/CourseRelevance": 250,
    "CPTEmployment/Add/EmploymentRemarks": 250,
    "CPTEmployment/Cancel/EmployerName": 100,
    "OPTEmployment/Add/Remarks": 250,
    "OPTEmployment/Extend/Employer/EmployerName": 121,
    "OPTEmployment/Extend/Employer/CourseRelevance": 1000,
    **_under("OPTEmployment/Extend/Employer/EmployerAddress", _US_ADDR),
    "Reprint/Remarks": 500,
    "DisciplinaryAction/Explanation": 500,
}

MAX_OCCURS: dict[str, int] = {"Create/CreateDependent/Dependent": 25}
"""Repeated elements the events stage emits, with the XSD's maxOccurs."""

_FIN_REQUIRED = (
    "FinancialInfo/AcademicTerm",
    "FinancialInfo/Expense/Tuition",
    "FinancialInfo/Expense/LivingExpense",
    "FinancialInfo/Funding/Personal",
)
REQUIRED_ELEMENTS: dict[str, tuple[str, ...]] = {"Create": _FIN_REQUIRED, "EducationLevel/Change": _FIN_REQUIRED}
"""Elements the XSD requires (FinancialType) that derive leaves out when the SIS value was refused (a negative
tuition): the event is refused too, rather than sent incomplete."""

REQUIRED_TEXT = frozenset({"CPTEmployment/Add/EmployerName", "CPTEmployment/Cancel/EmployerName"})
"""Required elements a formatter may leave empty (a value of spaces only): present but empty is refused."""

FREE_TEXT = frozenset(
    {"Remarks", "OtherRemarks", "Explanation", "NotRequiredReason", "CourseRelevance", "EmploymentRemarks"}
)
"""Elements of remarks types (``whiteSpace="preserve"``): TAB/LF/CR are allowed there, nowhere else."""

AMOUNTS = frozenset({"Tuition", "LivingExpense", "DependentExp", "Amount", "Personal", "Employment"})
"""FinancialInfo leaves that are dollar amounts (inside ``FinancialInfo`` only)."""

DATE_PAIRS = (
    ("PrgStartDate", "PrgEndDate"),
    ("NewPrgStartDate", "NewPrgEndDate"),
    ("StartDate", "EndDate"),
    ("CurrentSessionStartDate", "CurrentSessionEndDate"),
    ("CurrentSessionEndDate", "NextSessionStartDate"),
)
"""(earlier, later) siblings in one element: the later may not come before the earlier."""


@dataclass(frozen=True)
class Finding:
    """Why a value cannot go to SEVIS: ``code`` for the DSO's worklist, ``field`` names the place, ``reason``
    says what is wrong and the fix — never the value."""

    code: str
    field: str
    reason: str


# --------------------------------------------------------------------------- single values


def text_problem(value: str, field: str, max_len: int | None = None, free_text: bool = False) -> Finding | None:
    """Characters a batch cannot carry, or more than ``max_len`` characters."""
    bad = _REFUSED.search(value) or (None if free_text else _LINE_CONTROLS.search(value))
    if bad:
        return Finding(
            "invalid_character",
            field,
            f"{field} contains a control or XML-invalid character (U+{ord(bad.group()):04X} at position "
            f"{bad.start() + 1}) that a SEVIS batch cannot carry: remove it in the SIS",
        )
    if max_len is not None and len(value) > max_len:
        return Finding(
            "too_long",
            field,
            f"{field} is {len(value)} characters long; SEVIS allows at most {max_len}: "
            "shorten it in the SIS (sevisflow never cuts values)",
        )
    return None


def whole_amount(value: Any) -> int | None:
    """``value`` as a whole number of dollars in 0..99,999,999, or None (bool, fraction, negative, overflow,
    not a number). Accepts int, integral float/Decimal and their decimal strings."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        n = value
    else:
        try:
            d = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
        except (InvalidOperation, ValueError):
            return None
        if not d.is_finite() or d != d.to_integral_value() or abs(d.adjusted()) > 20:
            return None
        n = int(d)
    return n if 0 <= n <= MAX_AMOUNT else None


def amount_problem(value: Any, field: str) -> Finding | None:
    if whole_amount(value) is None or (isinstance(value, str) and not re.fullmatch(r"\d{1,8}", value)):
        return Finding(
            "bad_amount",
            field,
            f"{field} must be a whole number of dollars from 0 to {MAX_AMOUNT:,}: correct the amount in the SIS",
        )
    return None


def parse_date(value: Any) -> date | None:
    if not isinstance(value, str) or not _DATE.match(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def date_problem(value: Any, field: str) -> Finding | None:
    if parse_date(value) is None:
        return Finding("bad_date", field, f"{field} is not a calendar date (YYYY-MM-DD): correct it in the SIS")
    return None


def order_problem(earlier: Any, later: Any, earlier_field: str, later_field: str) -> Finding | None:
    a, b = parse_date(earlier), parse_date(later)
    if a is not None and b is not None and b < a:
        return Finding(
            "date_order", later_field, f"{later_field} is before {earlier_field}: correct the dates in the SIS"
        )
    return None


# --------------------------------------------------------------------------- a whole event


def kind_path(kind: str) -> str:
    """``Create`` → ``Create``; ``Program.Extension`` → ``Program/Extension`` (the table's key prefix)."""
    return kind.replace(".", "/")


@dataclass(frozen=True, slots=True)
class _LeafRules:
    """What :func:`check_event` checks at one leaf path of one kind, worked out once per (kind, path)."""

    field: str  # "<kind>:<path>", the finding's field
    required: bool  # REQUIRED_TEXT
    max_len: int | None  # MAX_LENGTH
    free_text: bool  # FREE_TEXT: line breaks allowed
    amount_leaf: bool  # the leaf is an AMOUNTS name (a non-finite float is a bad amount, else a bad value)
    amount: bool  # checked as a whole-dollar amount (an AMOUNTS leaf of a financial element)
    date: bool  # checked as a calendar date
    birth: bool  # BirthDate: also not after the change


_RULES: dict[tuple[str, str], _LeafRules] = {}
_RULES_MAX = 20_000  # kinds × element paths are a few hundred; the bound only guards against the unforeseen


def _rules(kind: str, path: str) -> _LeafRules:
    key = (kind, path)
    r = _RULES.get(key)
    if r is None:
        kp, leaf = kind_path(kind), path.rsplit("/", 1)[-1]
        amount_leaf = leaf in AMOUNTS
        r = _LeafRules(
            field=f"{kind}:{path}",
            required=f"{kp}/{path}" in REQUIRED_TEXT,
            max_len=MAX_LENGTH.get(f"{kp}/{path}"),
            free_text=leaf in FREE_TEXT,
            amount_leaf=amount_leaf,
            amount=amount_leaf and ("FinancialInfo" in path or kind == "FinancialInfo"),
            date=leaf.endswith("Date") and not leaf.startswith("@"),
            birth=leaf == "BirthDate",
        )
        if len(_RULES) >= _RULES_MAX:
            _RULES.clear()
        _RULES[key] = r
    return r


def _walk(value: Any, path: str, leaves: list[tuple[str, Any]], objects: list[tuple[str, Mapping[str, Any]]]) -> None:
    """Every leaf (path, value) and every object (path, object) under ``value``, in document order; list
    items share their element's path."""
    if type(value) is dict or isinstance(value, Mapping):
        objects.append((path, value))
        for k, v in value.items():
            sub = f"{path}/{k}" if path else str(k)
            kind = type(v)
            if kind is dict or kind is list:
                _walk(v, sub, leaves, objects)
            elif kind is str or kind is int or v is None or not isinstance(v, (Mapping, list, tuple)):  # no ABC check
                leaves.append((sub, v))
            else:
                _walk(v, sub, leaves, objects)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _walk(item, path, leaves, objects)


def check_event(
    kind: str, payload: Mapping[str, Any], view: Mapping[str, Any] | None = None, as_of: date | None = None
) -> list[Finding]:
    """Every finding for one event payload (empty = clean). ``view`` (the student view the event comes from)
    adds cross-checks the payload alone cannot make (a new programme end against the start date); ``as_of``
    (the change's commit date) refuses birth dates after it. Field names are ``<kind>:<element path>``."""
    kp = kind_path(kind)
    out: list[Finding] = []
    seen: set[tuple[str, str]] = set()

    def add(f: Finding | None) -> None:
        if f is not None and (f.code, f.field) not in seen:
            seen.add((f.code, f.field))
            out.append(f)

    leaves: list[tuple[str, Any]] = []
    objects: list[tuple[str, Mapping[str, Any]]] = []
    _walk(payload, "", leaves, objects)
    for path, value in leaves:
        r = _RULES.get((kind, path)) or _rules(kind, path)
        field = r.field
        if r.required and (value is None or (isinstance(value, str) and not value.strip())):
            add(Finding("missing_field", field, f"{field} is empty (SEVIS requires it): fill it in the SIS"))
        if isinstance(value, str):
            # every character the two patterns refuse is a control or format character, which str.isprintable()
            # also refuses: a printable value can only be too long
            if not value.isprintable() or (r.max_len is not None and len(value) > r.max_len):
                add(text_problem(value, field, r.max_len, r.free_text))
        elif isinstance(value, float) and not math.isfinite(value):
            add(Finding("bad_amount" if r.amount_leaf else "bad_value", field, f"{field} is not a number"))
        if r.amount:
            add(amount_problem(value, field))
        elif r.date and value is not None:
            bad = date_problem(value, field)
            add(bad)
            born = parse_date(value) if bad is None and r.birth else None
            if born is not None and as_of is not None and born > as_of + timedelta(days=1):
                add(Finding("bad_date", field, f"{field} is after the change that records it: correct it in the SIS"))
    for path, obj in objects:
        for a, b in DATE_PAIRS:
            if a in obj and b in obj:
                prefix = f"{kind}:{path}/" if path else f"{kind}:"
                add(order_problem(obj[a], obj[b], prefix + a, prefix + b))
    for rel, limit in MAX_OCCURS.items():
        head, _, rest = rel.partition("/")
        if head != kp:
            continue
        node: Any = payload
        for step in rest.split("/"):
            node = node.get(step) if isinstance(node, Mapping) else None
        if isinstance(node, (list, tuple)) and len(node) > limit:
            add(
                Finding(
                    "too_many",
                    f"{kind}:{rest}",
                    f"{kind}:{rest} has {len(node)} entries; SEVIS takes at most "
                    f"{limit} in one record: add the others with a later update",
                )
            )
    for rel in REQUIRED_ELEMENTS.get(kp, ()):
        node = payload
        for step in rel.split("/"):
            node = node.get(step) if isinstance(node, Mapping) else None
        if node is None:
            add(
                Finding(
                    "missing_field",
                    f"{kind}:{rel}",
                    f"{kind}:{rel} is required by SEVIS but has no usable value (see the issue on that "
                    "finance field): correct it in the SIS",
                )
            )
    if view is not None and kind in ("Program.Extension", "Program.Shorten"):
        start = ((view.get("program") or {}) if isinstance(view, Mapping) else {}).get("start_date")
        add(order_problem(start, payload.get("NewPrgEndDate"), "program.start_date", f"{kind}:NewPrgEndDate"))
    return out


def refusal_reason(kind: str, findings: list[Finding]) -> str:
    """One line for the DSO: which event was not sent and why (no values)."""
    return f"{kind} not sent: " + "; ".join(f.reason for f in findings)


# --------------------------------------------------------------------------- the DSO's own values (CLI)

_ADD_INFO_OPTION = {
    "FullName/PassportName": "--passport",
    "FullName/LastName": "last=",
    "FullName/FirstName": "first=",
    "BirthCity": "birth-city=",
    "Email": "email=",
    "BirthDate": "birth-date=",
}


def add_info_findings(
    passport: str | None, last_name: str | None, dependents: Iterable[Mapping[str, Any]]
) -> list[str]:
    """``sevisflow student add-info``: the same checks on what the DSO typed, as messages naming the option."""
    out: list[str] = []
    if passport is not None or last_name is not None:
        full = {k: v for k, v in (("PassportName", passport), ("LastName", last_name)) if v is not None}
        for f in check_event("PersonalInfo", {"FullName": full}):
            opt = "--last-name" if f.field.endswith("LastName") else "--passport"
            out.append(f"{opt}: {f.reason}".replace(" in the SIS", f" in {opt} and run the command again"))
    for n, dep in enumerate(dependents, 1):
        for f in check_event("Dependent.Add", dep):
            path = f.field.split(":", 1)[1]
            opt = f"--dependent {n} ({_ADD_INFO_OPTION.get(path, path)})"
            out.append(f"{opt}: {f.reason}".replace(" in the SIS", " and run the command again"))
    return out


def require_clean_add_info(
    passport: str | None, last_name: str | None, dependents: Iterable[Mapping[str, Any]]
) -> None:
    """Raise :class:`~sevisflow.core.errors.SevisflowError` (exit 1) listing every refused value; nothing is sent."""
    from sevisflow.core.errors import SevisflowError

    problems = add_info_findings(passport, last_name, list(dependents))
    if problems:
        raise SevisflowError("nothing was added: " + "; ".join(problems))


# --------------------------------------------------------------------------- an authorisation, before its Add

_AUTH_TEXT: dict[str, tuple[tuple[str, int | None, bool], ...]] = {
    # canonical field → (XSD maxLength of the element it becomes, free text?)
    "rcl": (("remarks", 500, True),),
    "cpt": (("employer_name", None, False), ("course_relevance", 250, True), ("remarks", 250, True)),
    "opt": (("remarks", 250, True),),
    "opt_stem": (("employer_name", None, False), ("course_relevance", 1000, True)),
}
"""What each authorisation kind sends as text (the employer name's length is checked on the folded value, in the
event; its address by the address formatter)."""


def authorization_problem(kind: str, a: Mapping[str, Any], where: str) -> Finding | None:
    """The first reason SEVIS could not take this approved authorisation's Add, from its canonical values (named
    ``authorization[<slot>].<field>``), or None. derive uses it to decide whether an Add went out, so an Add
    refused for a bad value is sent once the SIS fixes it."""
    for f in ("start_date", "end_date"):
        if a.get(f) is not None:
            p = date_problem(a[f], f"{where}.{f}")
            if p is not None:
                return p
    p = order_problem(a.get("start_date"), a.get("end_date"), f"{where}.start_date", f"{where}.end_date")
    if p is not None:
        return p
    for f, limit, free in _AUTH_TEXT.get(kind, ()):
        v = a.get(f)
        if isinstance(v, str) and v:
            p = text_problem(v, f"{where}.{f}", limit, free)
            if p is not None:
                return p
    return None
