"""The DSO's review screens in plain language: the open batch, one student, a closed batch.

Pure functions of a :class:`~sevisflow.processors.batcher.view.BatchView` (plus the school's time zone and
:class:`~sevisflow.app.labels.Labels`), pinned by the golden tests in tests/golden/:

* :func:`show_table` — the open batch as a table that fits the terminal's width (rich wraps and
  styles every cell; the columns have fixed widths from the terminal's width, so the table comes
  in pieces of :data:`CHUNK` records that line up and the first screen shows at once): per
  record, what changes (only the fields that change, before → after, in words, with code labels),
  where it came from in the SIS, and its status.
* :func:`show_lines` — the same content as plain lines, one block per record, for a pipe or a
  file (no colours, no table borders, nothing wrapped), produced record by record.
* :func:`batch_table` / :func:`batch_lines` — a closed batch and SEVIS's result for each record,
  in the same vocabulary (``batch status`` and ``results``).

Every piece of data is passed through :func:`clean` first: a control character from the SIS (an
escape sequence in a name…) is shown escaped, never sent to the terminal.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from sevisflow.app.cli.common import clean, print_renderables
from sevisflow.app.labels import Labels
from sevisflow.core.worklist.deadlines import Deadlines, first_change_ms, session_start_of
from sevisflow.processors.batcher.view import BatchView, ClosedBatch

# ----------------------------------------------------------------------------- vocabulary

#: record status → words; the same words in `batch show`, `batch status`, `batch list` and `results`
STATUS_WORDS = {"open": "ready", "held": "held", "waiting": "waiting for SEVIS ID"}
RESULT_WORDS = {None: "no SEVIS result yet", "success": "accepted by SEVIS", "failure": "rejected by SEVIS"}

#: SEVIS element → what it means for the student
TITLES = {
    "Create": "New student record",
    "PersonalInfo": "Personal information",
    "Registration": "Term registration",
    "Program.ManageSessionDates": "Program dates",
    "Program.Extension": "Program extension",
    "Program.Shorten": "Program shortened",
    "Program.Edit": "Program change",
    "EducationLevel.Change": "Education level change",
    "FinancialInfo": "Financial information",
    "Status.Complete": "Program completed",
    "Status.Terminate": "Record terminated",
    "Status.Cancel": "Record cancelled",
    "Status.Verify": "Status verification",
    "Dependent.Add": "Dependant added",
    "Dependent.Edit": "Dependant changed",
    "Dependent.Terminate": "Dependant terminated",
    "AuthDropBelowFC.Add": "Reduced course load authorized",
    "AuthDropBelowFC.Cancel": "Reduced course load cancelled",
    "CPTEmployment.Add": "CPT authorized",
    "CPTEmployment.Cancel": "CPT cancelled",
    "OPTEmployment.Add": "OPT recommended",
    "OPTEmployment.Cancel": "OPT cancelled",
    "OPTEmployment.Extend": "STEM OPT extension recommended",
    "Reprint": "I-20 reprint",
    "DisciplinaryAction": "Disciplinary action",
    # J-1 exchange visitors (an exchange program's EV batch)
    "EV.Create": "New exchange visitor record (DS-2019)",
    "EV.Validate": "Arrival validated",
    "EV.Biographical": "Exchange visitor's information",
    "EV.FinancialInfo": "Program funding",
    "EV.Program.Amend": "Program dates amended",
    "EV.Program.EditSubject": "Subject/field change",
    "EV.Program.Extension": "Program extension",
    "EV.Program.Shorten": "Program shortened",
    "EV.Program.Matriculate": "Matriculation",
    "EV.SiteOfActivity.Add": "Site of activity added",
    "EV.SiteOfActivity.Edit": "Site of activity changed",
    "EV.SiteOfActivity.Delete": "Site of activity removed",
    "EV.Dependent.Add": "J-2 dependant added",
    "EV.Dependent.Edit": "J-2 dependant changed",
    "EV.Dependent.Delete": "J-2 dependant deleted",
    "EV.Dependent.EndStatus": "J-2 dependant's status ended",
    "EV.Dependent.Terminate": "J-2 dependant terminated",
    "EV.Status.Terminate": "Record terminated",
    "EV.Status.NoShow": "No-show",
    "EV.Status.Invalid": "Record invalidated",
    "EV.Status.CorrectInfraction": "Infraction corrected",
    "EV.Reprint": "DS-2019 reprint",
}

#: canonical section of the before/after fields of each SEVIS element
SECTION_OF = {
    "PersonalInfo": "student",
    "Registration": "registration",
    "Program": "program",
    "EducationLevel": "program",
    "FinancialInfo": "finance",
    "Status": "program",
    "Dependent": "dependent",
    "AuthDropBelowFC": "authorization",
    "CPTEmployment": "authorization",
    "OPTEmployment": "authorization",
}

FIELD_LABELS = {
    "first_name": "first name",
    "middle_name": "middle name",
    "last_name": "last name",
    "preferred_name": "preferred name",
    "birth_date": "birth date",
    "birth_city": "birth city",
    "birth_country": "birth country",
    "citizenship_country": "citizenship",
    "email": "e-mail",
    "phone": "phone",
    "phone_country_code": "phone country code",
    "commuter": "commuter student",
    "visa_type": "visa type",
    "issue_reason": "issue reason",
    "i20_issue_date": "I-20 issue date",
    "address.us_physical": "US address",
    "address.us_mailing": "US mailing address",
    "address.foreign": "foreign address",
    "program.degree_level": "education level",
    "program.major_cip": "major",
    "program.second_major_cip": "second major",
    "program.minor_cip": "minor",
    "program.start_date": "program start",
    "program.end_date": "program end",
    "program.status": "program status",
    "program.english_required": "English proficiency required",
    "program.english_met": "English requirement met",
    "program.english_not_required_reason": "why English is not required",
    "program.extension_reason": "reason for the extension",
    "finance.academic_term_months": "academic term",
    "finance.tuition": "tuition",
    "finance.living_expenses": "living expenses",
    "finance.dependent_expenses": "dependants' expenses",
    "finance.other_costs": "other costs",
    "finance.other_costs_remarks": "other costs (remarks)",
    "finance.personal_funds": "personal funds",
    "finance.school_funds": "school funds",
    "finance.school_funds_remarks": "school funds (remarks)",
    "finance.other_funds": "other funds",
    "finance.other_funds_source": "other funds (source)",
    "finance.employment_funds": "on-campus employment",
    "registration.status": "enrolment",
    "registration.full_time": "full time",
    "registration.credit_hours": "credit hours",
    "registration.confirmed_at": "attendance confirmed",
    "registration.session_start": "session start",
    "registration.session_end": "session end",
    "registration.next_session_start": "next session start",
    "registration.last_session": "last session",
    "dependent.relationship": "relationship",
    "dependent.visa_type": "visa type",
    "dependent.status": "status",
    "dependent.dependent_sevis_id": "dependant SEVIS ID",
    "authorization.approved": "approved",
    "authorization.kind": "authorization",
    "authorization.start_date": "start",
    "authorization.end_date": "end",
    "authorization.time_basis": "full/part time",
    "authorization.employer_name": "employer",
    "authorization.rcl_reason": "reason",
    "reprint_reason": "reprint reason",
    "disciplinary_action": "disciplinary action",
    "status": "status",
}

#: field → kind of SEVIS code (sevisflow.app.labels)
CODE_KIND = {
    "birth_country": "country",
    "citizenship_country": "country",
    "country": "country",
    "visa_type": "visa_type",
    "gender": "gender",
    "degree_level": "edu_level",
    "major_cip": "cip",
    "second_major_cip": "cip",
    "minor_cip": "cip",
    "relationship": "relationship",
    "time_basis": "employment_time",
    "rcl_reason": "rcl_reason",
    "reprint_reason": "reprint_reason",
    "issue_reason": "issue_reason",
}
DATE_FIELDS = {
    "birth_date",
    "i20_issue_date",
    "start_date",
    "end_date",
    "session_start",
    "session_end",
    "next_session_start",
}
BOOL_FIELDS = {
    "commuter",
    "english_required",
    "english_met",
    "full_time",
    "last_session",
    "approved",
    "academic_year_met",
}
MONEY_FIELDS = {
    "tuition",
    "living_expenses",
    "dependent_expenses",
    "other_costs",
    "personal_funds",
    "school_funds",
    "other_funds",
    "employment_funds",
}
AUTH_KINDS = {"rcl": "reduced course load", "cpt": "CPT", "opt": "OPT", "opt_stem": "STEM OPT extension"}
ADDRESS_KEYS = {"line1", "line2", "city", "state", "postal_code", "country"}


def _n(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


# ----------------------------------------------------------------------------- values in words


def when(ms: int | None, tz: str) -> str:
    """A moment in the school's time zone: ``Jun 15, 2025 10:06 CDT``."""
    if not ms:
        return ""
    t = datetime.fromtimestamp(ms / 1000, ZoneInfo(tz))
    return f"{t:%b} {t.day}, {t.year} {t:%H:%M %Z}"


def day(text: str) -> str:
    """An ISO date as ``Dec 18, 2026`` (anything else unchanged)."""
    try:
        d = date.fromisoformat(str(text)[:10])
    except ValueError:
        return clean(text)
    return f"{d:%b} {d.day}, {d.year}"


def _timestamp(text: str, tz: str) -> str:
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return clean(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return when(int(t.timestamp() * 1000), tz)


def number(value: Any) -> str:
    """A plain number: ``10`` (never ``1E+1``), ``12.5``."""
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return clean(value)
    if not d.is_finite():
        return clean(value)
    text = format(d.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def money(value: Any) -> str:
    try:
        n = int(Decimal(str(value)))
        return f"-${-n:,}" if n < 0 else f"${n:,}"
    except (InvalidOperation, ValueError):
        return clean(value)


def _is_address(v: Any) -> bool:
    return isinstance(v, Mapping) and bool(v) and set(v) <= ADDRESS_KEYS


def address_lines(a: Mapping[str, Any], labels: Labels) -> list[str]:
    """An address as it is written on an envelope (country by name)."""
    lines = [clean(a[k]) for k in ("line1", "line2") if a.get(k)]
    place = " ".join(
        x
        for x in (", ".join(clean(a[k]) for k in ("city", "state") if a.get(k)), clean(a.get("postal_code") or ""))
        if x
    )
    if place:
        lines.append(place)
    if a.get("country") and a["country"] != "US":  # a US address needs no country line
        lines.append(labels.describe("country", a["country"]))
    return lines or ["(empty)"]


def value_lines(field: str, value: Any, labels: Labels, tz: str) -> list[str]:
    """One value of a canonical field, in words (an address may take several lines)."""
    name = field.rsplit(".", 1)[-1]
    if value is None:
        return ["(none)"]
    if _is_address(value):
        return address_lines(value, labels)
    if isinstance(value, bool) or name in BOOL_FIELDS:
        return ["yes" if value in (True, "true", "Y", "yes") else "no"]
    if field in ("program.status_reason", "status_reason"):
        return [labels.describe("termination_reason", value)]
    if name in CODE_KIND:
        return [labels.describe(CODE_KIND[name], value)]
    if name == "kind" and value in AUTH_KINDS:
        return [AUTH_KINDS[value]]
    if name in DATE_FIELDS:
        return [day(value)]
    if name == "confirmed_at":
        return [_timestamp(value, tz)]
    if name in MONEY_FIELDS:
        return [money(value)]
    if name == "academic_term_months":
        return [f"{number(value)} months"]
    if name == "credit_hours" or isinstance(value, (int, float, Decimal)):
        return [number(value)]
    if isinstance(value, (dict, list)):
        import orjson

        return [clean(orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())]
    return [clean(value)]


# ----------------------------------------------------------------------------- what changes


@dataclass(frozen=True)
class Change:
    field: str  # canonical path, e.g. "email", "address.us_physical", "registration.credit_hours"
    label: str
    before: list[str] | None  # None: the record adds something new (no before at all)
    after: list[str]


def _new_word(org_id: str) -> str:
    """What a create brings: a new student, or in an exchange program's EV batch a new exchange visitor."""
    from sevisflow.processors.batcher.ids import is_program

    return "new exchange visitor" if is_program(org_id) else "new student"


def element(rec: Mapping[str, Any]) -> str:
    """The SEVIS element as SEVIS names it: ``CreateStudent``, ``Program/Extension``; for an exchange visitor
    (EV batch) ``CreateEV``, ``SiteOfActivity/Add``."""
    kind = rec["kind"]
    if kind in ("Create", "EV.Create"):
        return "CreateEV" if kind == "EV.Create" else "CreateStudent"
    return kind.removeprefix("EV.").replace(".", "/")


def title(rec: Mapping[str, Any]) -> str:
    return TITLES.get(rec["kind"], rec["kind"].replace(".", " "))


def _section(kind: str) -> str | None:
    return SECTION_OF.get(kind.split(".")[0])


def _flatten(before: Any, after: Any, prefix: str, adding: bool) -> Iterator[tuple[str, Any, Any, bool]]:
    """(path, before, after, added) of the leaves of two nested dicts; an address is one leaf.

    ``added``: the whole object is new (a new dependant, a first registration), so there is no
    "before" worth showing."""
    b = before if isinstance(before, Mapping) else {}
    a = after if isinstance(after, Mapping) else {}
    for k in list(dict.fromkeys([*a, *b])):
        bv, av = b.get(k), a.get(k)
        path = f"{prefix}.{k}" if prefix else str(k)
        if (
            (isinstance(bv, Mapping) or isinstance(av, Mapping))
            and not (_is_address(bv) or _is_address(av))
            and not str(k).startswith("address.")
        ):
            yield from _flatten(bv, av, path, adding or not bv)
        else:
            yield path, bv, av, adding


def _order() -> dict[str, int]:
    """Canonical field order (the order of processors/normalize/canonical.py), for a stable display."""
    from sevisflow.processors.normalize.canonical import SECTIONS

    out: dict[str, int] = {}
    for sname, sec in SECTIONS.items():
        for f in sec.fields:
            out.setdefault(f"{sname}.{f}", len(out))
            if sname == "student":
                out.setdefault(f, len(out))
        if sname == "address":
            for slot in sec.slots or ():
                out.setdefault(f"address.{slot}", len(out))
    return out


_ORDER = _order()


def _label(section: str | None, path: str) -> str:
    name = path.rsplit(".", 1)[-1]
    for key in (path, f"{section}.{name}" if section else None, name):
        if key and key in FIELD_LABELS:
            return FIELD_LABELS[key]
    return clean(name.replace("_", " "))


def changes(rec: Mapping[str, Any], labels: Labels, tz: str) -> list[Change]:
    """The fields this record changes, in words; unchanged fields are left out."""
    section = _section(rec["kind"])
    before, after = rec.get("before"), rec.get("after") or {}
    out = []
    for path, b, a, added in _flatten(before, after, "", not before):
        if b == a or (added and a is None):
            continue
        q = path if "." in path or section in (None, "student") else f"{section}.{path}"
        out.append(
            Change(
                q, _label(section, q), None if added else value_lines(q, b, labels, tz), value_lines(q, a, labels, tz)
            )
        )
    if section == "dependent":
        out = [
            Change(f"dependent.{c.field}" if "." not in c.field else c.field, c.label, c.before, c.after) for c in out
        ]
    return sorted(out, key=lambda c: _ORDER.get(c.field, len(_ORDER)))


def _payload_details(rec: Mapping[str, Any], labels: Labels) -> list[str]:
    """What the SEVIS payload says that before/after do not (reasons, explanations)."""
    p = rec.get("payload") or {}
    kind = rec["kind"]
    out = []
    if kind == "Status.Terminate" and p.get("Reason"):
        out.append("reason: " + labels.describe("termination_reason", p["Reason"]))
    elif kind == "Status.Cancel" and p.get("Reason"):
        out.append("reason: " + labels.describe("cancel_reason", p["Reason"]))
    elif kind == "Dependent.Terminate" and p.get("Reason"):
        out.append("reason: " + labels.describe("dependent_termination_reason", p["Reason"]))
    elif kind == "Program.Extension" and p.get("Explanation"):
        out.append("explanation to SEVIS: " + clean(p["Explanation"]))
    if kind.split(".")[0] in ("AuthDropBelowFC", "CPTEmployment", "OPTEmployment"):
        if p.get("StartDate") or p.get("EndDate"):
            out.append(f"dates: {day(p.get('StartDate') or '')} to {day(p.get('EndDate') or '')}")
        if p.get("EmployerName"):
            out.append("employer: " + clean(p["EmployerName"]))
        if p.get("FullPartTimeIndicator"):
            out.append("full/part time: " + labels.describe("employment_time", p["FullPartTimeIndicator"]))
        if kind.startswith("AuthDropBelowFC") and p.get("Reason"):
            out.append("reason: " + labels.describe("rcl_reason", p["Reason"]))
    if kind in ("Reprint", "DisciplinaryAction") and p.get("Remarks"):
        out.append("remarks: " + clean(p["Remarks"]))
    return out


def _full_name(fn: Mapping[str, Any] | None) -> str:
    fn = fn or {}
    given = " ".join(clean(fn[k]) for k in ("FirstName", "MiddleName") if fn.get(k))
    return ", ".join(x for x in (clean(fn.get("LastName") or ""), given) if x) or "(no name)"


def create_summary(rec: Mapping[str, Any], labels: Labels) -> list[str]:
    """A new student in a few lines: name, birth, visa, level, program, dates, funding."""
    p = rec.get("payload") or {}
    pi, edu, fin = p.get("PersonalInfo") or {}, p.get("EducationalInfo") or {}, p.get("FinancialInfo") or {}
    out = [f"name: {_full_name(pi.get('FullName'))}"]
    if pi.get("BirthDate") or pi.get("BirthCountryCode"):
        out.append(
            f"born: {day(pi['BirthDate']) if pi.get('BirthDate') else '(no date)'} in "
            f"{labels.describe('country', pi.get('BirthCountryCode'))}; "
            f"citizen of {labels.describe('country', pi.get('CitizenshipCountryCode'))}"
        )
    if pi.get("VisaType") or p.get("IssueReason"):
        out.append(
            f"visa: {labels.describe('visa_type', pi.get('VisaType'))}; "
            f"issue reason: {labels.describe('issue_reason', p.get('IssueReason'))}"
        )
    level = (edu.get("EduLevel") or {}).get("Level")
    if level:
        remarks = (edu.get("EduLevel") or {}).get("OtherRemarks")
        out.append("level: " + labels.describe("edu_level", level) + (f" ({clean(remarks)})" if remarks else ""))
    majors = [
        labels.describe("cip", edu[k]) for k in ("MajorCode1", "MajorCode2") if edu.get(k) and edu[k] != "00.0000"
    ]
    if majors:
        out.append("program: " + "; ".join(majors))
    if edu.get("PrgStartDate") or edu.get("PrgEndDate"):
        out.append(f"dates: {day(edu.get('PrgStartDate') or '')} to {day(edu.get('PrgEndDate') or '')}")
    costs = fin.get("Expense") or {}
    funds = fin.get("Funding") or {}

    def amounts(d: Mapping[str, Any], names: Sequence[tuple[str, str]]) -> str:
        parts = []
        for key, word in names:
            v = d.get(key)
            if isinstance(v, Mapping):
                v = v.get("Amount")
            if v not in (None, ""):
                parts.append(f"{word} {money(v)}")
        return ", ".join(parts)

    c = amounts(
        costs, (("Tuition", "tuition"), ("LivingExpense", "living"), ("DependentExp", "dependants"), ("Other", "other"))
    )
    f = amounts(
        funds, (("Personal", "personal"), ("School", "school"), ("Employment", "on-campus work"), ("Other", "other"))
    )
    if c or f:
        term = fin.get("AcademicTerm")
        out.append("costs" + (f" for {int(term)} months" if term and str(term).isdigit() else "") + f": {c or '-'}")
        out.append(f"funding: {f or '-'}")
    deps = (p.get("CreateDependent") or {}).get("Dependent") or []
    if deps:
        out.append(
            "dependants: "
            + "; ".join(
                f"{_full_name(d.get('FullName'))} ({labels.describe('relationship', d.get('Relationship'))})"
                for d in deps
            )
        )
    return out


# ----------------------------------------------------------------------------- where it came from


def _tables(rec: Mapping[str, Any]) -> list[str]:
    return list(dict.fromkeys(x["table"] for x in rec.get("lineage") or [] if x.get("table")))


def source_words(rec: Mapping[str, Any], tz: str, chs: Sequence[Change] = ()) -> str:
    """``e-mail changed in the SIS on Jun 15, 2025 10:06 CDT (2 SIS changes merged)``."""
    lineage = rec.get("lineage") or []
    last = lineage[-1] if lineage else {}
    at = when(last.get("commit_ts_ms") or rec.get("at_ms"), tz)
    if (rec.get("origin") or "sis") == "dso":
        if last.get("command_id"):
            who = clean(last.get("dso_user_id") or "a DSO")
            return f"reported by DSO {who} with `sevisflow student report` on {at}"
        return f"entered by a DSO with `sevisflow student add-info` on {at}"
    if rec["kind"] == "Create":
        what = "student record completed"
    elif rec["kind"] == "EV.Create":
        what = "exchange visitor's appointment entered"
    elif rec["kind"] == "Registration":
        what = "enrolment confirmed"
    elif chs and all(c.before is None for c in chs):
        what = title(rec).lower().replace("ds-2019", "DS-2019")
    elif chs:
        names = list(dict.fromkeys(c.label for c in chs))
        what = (", ".join(names[:2]) + (" and more" if len(names) > 2 else "")) + " changed"
    else:
        what = title(rec).lower().replace("ds-2019", "DS-2019") + " recorded"
    n = _history_count(rec, "event_ids")
    merged = f" ({n} SIS changes merged)" if n > 1 else ""
    return f"{what} in the SIS on {at}{merged}"


def _history_count(rec: Mapping[str, Any], key: str) -> int:
    """How many ``key`` entries (``event_ids``, ``replaced``) the record has had, those its bounded history
    no longer lists included (``history_trimmed``)."""
    return len(rec.get(key) or []) + int((rec.get("history_trimmed") or {}).get(key) or 0)


def status_words(rec: Mapping[str, Any]) -> str:
    return STATUS_WORDS.get(rec["status"], clean(rec["status"]))


# ----------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class Filter:
    """What the DSO asked to see: ``--student``, ``--name``, ``--status``, ``--element``."""

    student: str | None = None
    name: str | None = None
    status: str | None = None  # ready | held | waiting
    element: str | None = None  # CreateStudent, PersonalInfo, Program, Program/Extension … (case-insensitive)

    def active(self) -> bool:
        return any((self.student, self.name, self.status, self.element))

    def keep(self, rec: Mapping[str, Any]) -> bool:
        if self.student and rec["student_key"] != self.student:
            return False
        if self.name and self.name.casefold() not in (rec.get("display_name") or "").casefold():
            return False
        if self.status and STATUS_FOR_FILTER.get(self.status.casefold()) != rec["status"]:
            return False
        if self.element:
            want = self.element.casefold().replace(".", "/")
            el = element(rec).casefold()
            if el != want and not el.startswith(want + "/") and not (want == "create" and el == "createstudent"):
                return False
        return True

    def describe(self) -> str:
        parts = [
            f"student {self.student}" if self.student else "",
            f"name contains {self.name!r}" if self.name else "",
            f"status {self.status}" if self.status else "",
            f"element {self.element}" if self.element else "",
        ]
        return ", ".join(clean(p) for p in parts if p)


STATUS_FOR_FILTER = {"ready": "open", "open": "open", "held": "held", "waiting": "waiting"}


# ----------------------------------------------------------------------------- the open batch


def _header(view: BatchView, shown: list[dict[str, Any]], flt: Filter) -> list[str]:
    c = view.counts()
    lines = [f"Open batch of {clean(view.org_id)}, revision {view.revision}"]
    if not c["records"]:
        lines.append("The open batch is empty: nothing waits to be sent to SEVIS.")
        return lines
    lines.append(
        f"{_n(c['records'], 'record')}: {_n(c['creates'], _new_word(view.org_id))}, "
        f"{_n(c['updates'], 'update')}. "
        f"Ready to send: {c['ready']}; held: {c['held']}; waiting for a SEVIS ID: {c['waiting']}."
    )
    if flt.active():
        lines.append(f"Showing {len(shown)} of {c['records']} ({flt.describe()}).")
    return lines


HOLDS_TITLE = "Held students (their records stay out of every close until released):"


def _hold_parts(view: BatchView, tz: str, only: str | None = None) -> list[tuple[str, str, list[str]]]:
    """(student key, name, [held since … by …, reason: …, records kept back]) per held student
    (``only``: that one), including students on hold who have no record yet."""
    if not view.held or (only is not None and only not in view.held):
        return []
    names = {r["student_key"]: r.get("display_name") for r in view.records.values() if r.get("display_name")}
    counts: dict[str, int] = {}
    for r in view.records.values():
        counts[r["student_key"]] = counts.get(r["student_key"], 0) + 1
    out = []
    for key in sorted(view.held) if only is None else [only]:
        h = view.held[key] or {}
        who = h.get("by") or h.get("dso_user_id")
        why = h.get("why")
        text = h.get("reason") or ""
        if why is None and text.startswith("held by "):  # older holds: the batcher's "held by <who>: <why>"
            said_by, _, why = text[len("held by ") :].partition(": ")
            who = who or (said_by if said_by != "a DSO" else None)
        elif why is None:
            why = text or None
        since = f"held since {when(h.get('at_ms'), tz)}" if h.get("at_ms") else "held"
        parts = [since + (f" by {clean(who)}" if who else " (no DSO recorded)")]
        if why:
            parts.append(f"reason: {clean(why)}")
        parts.append(_n(counts[key], "record") + " kept back" if key in counts else "no record in the batch yet")
        out.append((clean(key), clean(names.get(key) or ""), parts))
    return out


def _holds(view: BatchView, tz: str, only: str | None = None) -> list[str]:
    """Held students as plain lines."""
    parts = _hold_parts(view, tz, only)
    if not parts:
        return []
    return [HOLDS_TITLE] + [f"  {key}" + (f" {name}" if name else "") + ": " + "; ".join(p) for key, name, p in parts]


def _holds_grid(view: BatchView, tz: str, only: str | None, width: int) -> list[Any]:
    """Held students for a terminal: the student in one column, who/when/why in the next."""
    from rich.console import Console
    from rich.text import Text

    parts = _hold_parts(view, tz, only)
    if not parts:
        return []
    con = Console(width=width, color_system=None, force_terminal=False, highlight=False)
    rows = [
        [[Text(key, style="bold")] + ([Text(name)] if name else []), [Text(x) for x in p]] for key, name, p in parts
    ]
    return [Text(HOLDS_TITLE, style="bold"), _grid_piece(con, (18, max(30, min(width, 120) - 20)), rows)]


def _footer(view: BatchView, flt: Filter) -> list[str]:
    c = view.counts()
    if not c["ready"]:
        return []
    out = [f"Close what you reviewed with: sevisflow batch close --revision {view.revision} --dso <your SEVIS user id>"]
    if flt.active():
        out.append(
            f"(a close takes all {_n(c['ready'], 'ready record')} of revision {view.revision}, "
            "not only the ones shown here)"
        )
    return out


def record_lines(rec: Mapping[str, Any], labels: Labels, tz: str, verbose: bool = False) -> list[str]:
    """The body of one record: what changes, in words, then where it came from."""
    out: list[str] = []
    chs = [] if rec["kind"] == "Create" else changes(rec, labels, tz)
    if rec["kind"] == "Create":
        out += create_summary(rec, labels)
    for c in chs:
        if c.before is None:
            out.append(f"{c.label}: " + " / ".join(c.after))
        elif len(c.before) == 1 and len(c.after) == 1:
            out.append(f"{c.label}: {c.before[0]} → {c.after[0]}")
        else:
            out.append(f"{c.label}:")
            out += [("  was: " if i == 0 else "       ") + x for i, x in enumerate(c.before)]
            out += [("  now: " if i == 0 else "       ") + x for i, x in enumerate(c.after)]
    out += _payload_details(rec, labels)
    if not chs and rec["kind"] != "Create" and not _payload_details(rec, labels):
        out.append("(no field change: SEVIS is told the event itself)")
    out.append(source_words(rec, tz, chs))
    due = due_line(rec)
    if due:
        out.append(due)
    for p in rec.get("problems") or []:
        out.append(f"! {clean(p)}")
    n = _history_count(rec, "replaced")
    if n and not verbose:
        out.append(f"replaces {_n(n, 'earlier change')} of the same kind (only the latest is sent)")
    if verbose:
        tables = _tables(rec)
        out.append("SIS tables: " + (", ".join(clean(t) for t in tables) if tables else "(none: entered by a DSO)"))
        out.append(
            f"record {clean(rec['record_id'])}, request {clean(rec['request_id'])}, "
            f"SEVIS ID {clean(rec.get('sevis_id') or '(none yet)')}, changed in revision {rec.get('rev')}"
        )
        trimmed = rec.get("history_trimmed") or {}
        if trimmed:
            out.append(
                f"history: the record lists its latest changes only; {_n(int(trimmed.get('event_ids') or 0), 'earlier event')}"
                f" and {_n(int(trimmed.get('replaced') or 0), 'earlier replacement')} are on sevis.batches "
                f"(`sevisflow audit student {clean(rec['student_key'])}`)"
            )
        out.append("events: " + ", ".join(clean(e) for e in rec.get("event_ids") or []))
        for x in rec.get("replaced") or []:
            out.append(
                f"replaced: the change of {when(x.get('at_ms'), tz)} (event {clean(x.get('event_id'))}) by "
                f"event {clean(x.get('by_event_id'))}"
                + (f", after batch {clean(x['requeued_from'])} was refused" if x.get("requeued_from") else "")
            )
    return out


def selected(view: BatchView, flt: Filter) -> list[dict[str, Any]]:
    """The records shown, most urgent first (by legal due day, when :func:`annotate_due` set one), then in
    the order they will be sent."""
    recs = [r for r in view.open_records() if flt.keep(r)]
    return sorted(recs, key=lambda r: r["due"]["on"] if r.get("due") else "9999-12-31")


def annotate_due(view: BatchView, deadlines: Deadlines, today: date) -> None:
    """Give each open record its legal due day (``rec["due"]``): the rule, the day, days left, the band."""
    for rid, r in list(view.records.items()):
        due = deadlines.due(r["kind"], first_change_ms(r), session_start_of(r))
        if due is None:
            continue
        view.records[rid] = {
            **r,
            "due": {
                "on": due.due_on.isoformat(),
                "days_left": (due.due_on - today).days,
                "band": deadlines.band(due.due_on, today),
                "rule": due.rule.name,
                "limit_days": due.rule.days,
                "clock": due.rule.clock,
                "clock_start": due.clock_start.isoformat(),
                "source": due.rule.source,
            },
        }


def due_line(rec: Mapping[str, Any]) -> str | None:
    """ "due Oct 11, 2026 (in 5 days)" with the rule, or None when no legal limit applies."""
    d = rec.get("due")
    if not d:
        return None
    left = d["days_left"]
    when_ = "today" if left == 0 else (f"in {_n(left, 'day')}" if left > 0 else f"{_n(-left, 'day')} ago")
    start = "the session start" if d["clock"] == "session_start" else "the SIS change"
    head = "OVERDUE: was due" if left < 0 else ("URGENT: due" if d["band"] == "urgent" else "due")
    return f"{head} {day(d['on'])} ({when_}): {d['limit_days']}-day limit from {start}"


def show_lines(
    view: BatchView, tz: str, labels: Labels, flt: Filter = Filter(), verbose: bool = False
) -> Iterator[str]:
    """The open batch as plain lines (a pipe, a file, an e-mail): one block per record."""
    recs = selected(view, flt)
    yield from _header(view, recs, flt)
    for i, r in enumerate(recs, 1):
        yield ""
        name = f"  {clean(r['display_name'])}" if r.get("display_name") else ""
        yield f"#{i}  {clean(r['student_key'])}{name}  [{status_words(r)}]"
        yield f"    {title(r)} ({element(r)})"
        for line in record_lines(r, labels, tz, verbose or bool(flt.student)):
            yield "    " + line
    if flt.active() and not recs and view.records:
        yield ""
        yield "No record matches."
    holds = _holds(view, tz, flt.student)
    if holds:
        yield ""
        yield from holds
    foot = _footer(view, flt)
    if foot:
        yield ""
        yield from foot


CHUNK = 20
"""Records per rendered table piece: the terminal shows (and the pager gets) the first screen while
the rest is still being rendered."""


def _widths(width: int, count: int) -> tuple[int, int, int, int]:
    """Fixed column widths (#, student, change, status) for a terminal of ``width`` columns: every
    piece of the table lines up, and rich does not measure 250 rows to find them."""
    num = max(2, len(str(max(count, 1))))
    student = 18 if width >= 90 else 14
    status = 20 if width >= 120 else 11
    change = max(24, min(100, width - num - student - status - 6))  # 2 spaces between the 4 columns
    return num, student, change, status


def _fit(console: Any, lines: Sequence[Any], width: int) -> list[Any]:
    """The lines (rich Text) of one cell wrapped to ``width`` by rich (display widths, styles);
    a line that fits as it is (most do) is not handed to the wrapper."""
    out: list[Any] = []
    for t in lines:
        plain = t.plain
        if len(plain) <= width and plain.isascii():
            out.append(t)
        else:
            out.extend(t.wrap(console, width, overflow="fold"))
    return out


def _grid_piece(console: Any, widths: Sequence[int], rows: Iterable[Sequence[Sequence[Any]]]) -> Any:
    """Rows of cells (each a list of rich Text lines) in fixed columns: rich wraps every cell
    (display widths of CJK and combining characters, styles); the wrapped lines are placed side
    by side, two spaces apart, and rows are separated by a blank line. Several times faster than
    rich's Table on a 250-record batch (bench/review), which keeps it within its time budget."""
    from rich.text import Text

    out: list[Any] = []
    for cells in rows:
        if out:
            out.append(Text())
        wrapped = [_fit(console, c, w) for c, w in zip(cells, widths)]
        for k in range(max(len(x) for x in wrapped)):
            line = Text()
            for j, (lines, w) in enumerate(zip(wrapped, widths)):
                pad = w
                if k < len(lines):
                    line.append_text(lines[k])
                    pad = w - lines[k].cell_len
                if j < len(widths) - 1:
                    line.append(" " * (pad + 2))
            line.rstrip()
            out.append(line)
    return _Lines(out)


class _Lines:
    """Lines already laid out: rendered as they are (rich would wrap them again, at a cost)."""

    def __init__(self, lines: list[Any]) -> None:
        self.lines = lines

    def append(self, text: str, style: str = "") -> None:
        from rich.text import Text

        self.lines.append(Text(text, style=style))

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.segment import Segment

        for line in self.lines:
            yield from line.render(console)
            yield Segment.line()


def show_table(
    view: BatchView, tz: str, labels: Labels, flt: Filter = Filter(), verbose: bool = False, width: int = 100
) -> Iterator[Any]:
    """The open batch as rich renderables for a terminal of ``width`` columns, produced piece by
    piece: a header, the table in pieces of :data:`CHUNK` records (same columns), the holds."""
    from rich.console import Console
    from rich.text import Text

    recs = selected(view, flt)
    yield Text("\n".join(_header(view, recs, flt)))
    widths = _widths(width, len(recs))
    measure = Console(width=width, color_system=None, force_terminal=False, highlight=False)
    if recs:
        head = [[Text(h, style="bold")] for h in ("#", "Student", "What changes (before → after)", "Status")]
        top = _grid_piece(measure, widths, [head])
        top.append("─" * min(width, sum(widths) + 2 * (len(widths) - 1)), style="dim")
    for start in range(0, len(recs), CHUNK):
        rows = []
        for i, r in enumerate(recs[start : start + CHUNK], start + 1):
            who = [Text(clean(r["student_key"]), style="bold")]
            if r.get("display_name"):
                who.append(Text(clean(r["display_name"])))
            body = [Text.assemble((title(r), "bold"), (f" ({element(r)})", "dim"))]
            for line in record_lines(r, labels, tz, verbose or bool(flt.student)):
                quiet = (
                    line.startswith(
                        (
                            "replaces ",
                            "SIS tables",
                            "record ",
                            "events: ",
                            "replaced: ",
                            "reported by DSO",
                            "entered by a DSO",
                        )
                    )
                    or " in the SIS on " in line
                )
                alert = line.startswith(("! ", "OVERDUE", "URGENT"))
                body.append(Text(line, style="red" if alert else ("dim" if quiet else "")))
            st = status_words(r)
            rows.append(
                [
                    [Text(str(i).rjust(widths[0]))],
                    who,
                    body,
                    [Text(st, style={"ready": "green", "held": "yellow"}.get(st, "cyan"))],
                ]
            )
        piece = _grid_piece(measure, widths, rows)
        if start == 0:
            piece.lines = top.lines + piece.lines
        yield piece
    if not recs and flt.active() and view.records:
        yield Text("No record matches.")
    holds = _holds_grid(view, tz, flt.student, width)
    if holds:
        yield _Lines([holds[0]] + holds[1].lines)
    foot = _footer(view, flt)
    if foot:
        yield Text("\n".join(foot))


def show_json(view: BatchView, tz: str, labels: Labels, flt: Filter = Filter()) -> dict[str, Any]:
    """Everything of ``batch show`` for tools: raw values, the SIS tables, and the words shown to people."""

    def rec_json(r: Mapping[str, Any]) -> dict[str, Any]:
        lineage = r.get("lineage") or []
        last = lineage[-1] if lineage else {}
        chs = [] if r["kind"] == "Create" else changes(r, labels, tz)
        before, after = r.get("before") or {}, r.get("after") or {}
        src = {
            "origin": r.get("origin") or "sis",
            "tables": _tables(r),
            "table": last.get("table"),
            "commit_ts_ms": last.get("commit_ts_ms") or r.get("at_ms"),
            "commit_time": when(last.get("commit_ts_ms") or r.get("at_ms"), tz),
            "changes_merged": _history_count(r, "event_ids"),
            "words": source_words(r, tz, chs),
        }
        if last.get("command_id"):
            src.update(command_id=last["command_id"], dso_user_id=last.get("dso_user_id"))
        return {
            "record_id": r["record_id"],
            "request_id": r["request_id"],
            "student_key": r["student_key"],
            "display_name": r.get("display_name"),
            "sevis_id": r.get("sevis_id"),
            "section": r["section"],
            "element": element(r),
            "title": title(r),
            "kind": r["kind"],
            "status": r["status"],
            "status_words": status_words(r),
            "changes": [
                {"field": k, "before": before.get(k), "after": after.get(k)}
                for k in sorted(set(before) | set(after))
                if before.get(k) != after.get(k)
            ],
            "changes_words": [{"field": c.field, "label": c.label, "before": c.before, "after": c.after} for c in chs],
            "summary": create_summary(r, labels) if r["kind"] == "Create" else [],
            "source": src,
            "problems": list(r.get("problems") or []),
            "replaced": list(r.get("replaced") or []),
            "event_ids": list(r.get("event_ids") or []),
            "history_trimmed": dict(r.get("history_trimmed") or {}),
            "revision": r.get("rev"),
            "due": r.get("due"),
        }

    held = [{"student_key": k, **{x: v.get(x) for x in sorted(v)}} for k, v in sorted(view.held.items())]
    return {
        "org_id": view.org_id,
        "revision": view.revision,
        "counts": view.counts(),
        "filters": {k: v for k, v in vars(flt).items() if v},
        "held_students": held,
        "records": [rec_json(r) for r in selected(view, flt)],
    }


# ----------------------------------------------------------------------------- closed batches


def result_words(res: Mapping[str, Any] | None) -> str:
    if res is None:
        return RESULT_WORDS[None]
    return RESULT_WORDS.get(res.get("status"), clean(res.get("status")))


def result_detail(res: Mapping[str, Any] | None) -> str:
    if res is None:
        return ""
    if res.get("status") == "success":
        return f"SEVIS ID {clean(res['sevis_id'])}" if res.get("sevis_id") else ""
    return " ".join(clean(x) for x in (res.get("error_code"), res.get("error_message")) if x)


def batch_state(b: ClosedBatch) -> str:
    """A closed batch's state in the records' vocabulary."""
    if b.status == "requeued":
        return "refused before upload; records put back in the open batch"
    if b.status == "failed":
        return "refused by SEVIS; records put back in the open batch"
    ok = sum(1 for r in b.results.values() if r.get("status") == "success")
    bad = len(b.results) - ok
    waiting = max(0, len(b.records) - len(b.results))
    if not b.results:
        return "uploaded, no SEVIS result yet" if b.status == "accepted" else "closed, no SEVIS result yet"
    parts = [f"{ok} accepted by SEVIS", f"{bad} rejected by SEVIS"] + (
        [f"{waiting} without result yet"] if waiting else []
    )
    return ", ".join(parts)


def batch_rows(b: ClosedBatch) -> list[tuple[str, str, str, str, str, str]]:
    rows = []
    for r in b.records:
        res = b.results.get(r["request_id"])
        rows.append(
            (
                clean(r["request_id"]),
                clean(r["student_key"]),
                clean(r.get("display_name") or ""),
                f"{title(r)} ({element(r)})",
                result_words(res),
                result_detail(res),
            )
        )
    return rows


def batch_header(view: BatchView, b: ClosedBatch, tz: str) -> list[str]:
    return [
        f"Batch {clean(b.batch_id)} of {clean(view.org_id)}: {_n(len(b.records), 'record')} "
        f"({_n(b.creates, _new_word(view.org_id))}, {_n(b.updates, 'update')})",
        f"Closed by {clean(b.closed_by or 'the scheduler (no person reviewed it)')} on {when(b.at_ms, tz)}; "
        f"{batch_state(b)}",
    ]


def batch_lines(view: BatchView, b: ClosedBatch, tz: str) -> Iterator[str]:
    yield from batch_header(view, b, tz)
    for rid, key, name, what, res, detail in batch_rows(b):
        yield ""
        yield f"{rid}  {key}" + (f"  {name}" if name else "")
        yield f"    {what}"
        yield f"    {res}" + (f": {detail}" if detail else "")


def record_table(rows: Sequence[tuple[str, str, str, str, str, str]]) -> Any:
    """(request, student, name, update, result, detail) rows as a table of four columns that fits 80."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold", show_lines=True)
    t.add_column("Request", no_wrap=True)
    t.add_column("Student", overflow="fold", max_width=22)
    t.add_column("SEVIS update", overflow="fold")
    t.add_column("SEVIS result", overflow="fold")
    for rid, key, name, what, res, detail in rows:
        title_, _, el = what.partition(" (")
        who = Text(key, style="bold")
        if name:
            who.append("\n" + name)
        upd = Text(title_) + (Text("\n(" + el, style="dim") if el else Text())
        style = {"accepted by SEVIS": "green", "rejected by SEVIS": "red"}.get(res, "")
        result = Text(res, style=style) + (Text("\n" + detail) if detail else Text())
        t.add_row(rid, who, upd, result)
    return t


def batch_table(view: BatchView, b: ClosedBatch, tz: str) -> list[Any]:
    from rich.text import Text

    return [Text("\n".join(batch_header(view, b, tz))), record_table(batch_rows(b))]


def list_rows(view: BatchView, tz: str, limit: int) -> list[tuple[str, ...]]:
    batches = sorted(view.batches.values(), key=lambda b: b.batch_id, reverse=True)[:limit]
    return [
        (
            clean(b.batch_id),
            when(b.at_ms, tz),
            clean(b.closed_by or "scheduler"),
            str(b.creates),
            str(b.updates),
            batch_state(b),
        )
        for b in batches
    ]


def list_header(view: BatchView) -> list[str]:
    c = view.counts()
    return [
        f"Open batch of {clean(view.org_id)} (revision {view.revision}): {_n(c['records'], 'record')} "
        f"({c['ready']} ready, {c['held']} held, {c['waiting']} waiting for SEVIS ID)"
    ]


def list_table(view: BatchView, tz: str, limit: int) -> list[Any]:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    rows = list_rows(view, tz, limit)
    out: list[Any] = [Text("\n".join(list_header(view)))]
    if not rows:
        out.append(Text("No batch has been closed yet."))
        return out
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    for name in ("BatchID", "Closed", "By", "New", "Updates", "State"):
        t.add_column(name, overflow="fold", no_wrap=name in ("BatchID",))
    for row in rows:
        t.add_row(*row)
    out.append(t)
    return out


def list_lines(view: BatchView, tz: str, limit: int) -> Iterator[str]:
    yield from list_header(view)
    rows = list_rows(view, tz, limit)
    if not rows:
        yield "No batch has been closed yet."
    for row in rows:
        yield ""
        yield f"{row[0]}  closed {row[1]} by {row[2]}: {row[3]} new, {row[4]} updates"
        yield f"    {row[5]}"


def render_text(renderables: Iterable[Any], width: int) -> str:
    """Renderables as plain text of ``width`` columns (no colours): for golden files and captures."""
    from rich.console import Console

    con = Console(
        width=width,
        color_system=None,
        force_terminal=False,
        legacy_windows=False,
        record=False,
        no_color=True,
        highlight=False,
        soft_wrap=False,
    )
    with con.capture() as cap:
        print_renderables(con, renderables)
    return "\n".join(line.rstrip() for line in cap.get().rstrip("\n").split("\n")) + "\n"
