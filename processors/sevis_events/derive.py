"""(previous view, new view) → SEVIS events and DSO issues: a pure function, no clock, no I/O.

Rules (DOMAIN.md §4; docs/MAPPING.md "What is reported"):

* Only *international* views (visa type is a reported SEVIS code) produce anything; a student who
  stops being international stops being reported; views built from a snapshot set the baseline and
  produce no updates (SEVIS already has that state), only a Create when one is due.
* No SEVIS ID yet: ``Create`` once the record is complete and the programme is initial/active (the
  first view that is create-ready); before that, an ``incomplete_record`` issue that lists the
  missing fields, raised again only when that list changes. After the Create, updates are derived as
  usual with ``sevis_id`` null: the batcher holds them until SEVIS returns the ID.
* A SEVIS ID that appears without a Create from us (record made in SEVIS RTI) sets the baseline.
* Updates: ``PersonalInfo`` (names, birth data, citizenship, e-mail, phone, US/mailing/foreign
  address), ``Registration`` (a term registration becomes *enrolled*), ``Program.ManageSessionDates``
  (start date of an initial/deferred student), ``Program.Extension`` / ``Program.Shorten`` (end date
  later/earlier), ``Program.Edit`` (majors, minor, English proficiency), ``EducationLevel.Change``
  (degree level; carries full EducationalInfo + FinancialInfo and replaces Program/Financial events),
  ``Status.Complete`` / ``Status.Terminate`` / ``Status.Cancel``, ``FinancialInfo``,
  ``Dependent.Add`` / ``Dependent.Edit`` / ``Dependent.Terminate``, and from school-approved
  authorisations ``AuthDropBelowFC.Add`` / ``CPTEmployment.Add`` / ``OPTEmployment.Add`` /
  ``OPTEmployment.Extend`` (STEM) when one is approved, the matching ``….Cancel`` when it is withdrawn.
* A value SEVIS would reject never reaches an event: the element is left out and an issue (dead
  letter for the DSO) names the field; an event with nothing left is not emitted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import orjson

from processors.sevis_events import sevis_format as fmt
from processors.sevis_events.sevis_format import FormatProblem

PROCESSOR_VERSION = "sevisflow-events/1"
OPEN_STATUSES = ("initial", "active", "deferred")
TERMINAL = ("completed", "terminated", "canceled")
NAME_FIELDS = ("first_name", "middle_name", "last_name", "preferred_name")
DEP_BIO = ("first_name", "last_name", "birth_date", "gender", "birth_city", "birth_country", "citizenship_country",
           "relationship")
FINANCE_FIELDS = ("academic_term_months", "tuition", "living_expenses", "dependent_expenses", "other_costs",
                  "other_costs_remarks", "personal_funds", "school_funds", "school_funds_remarks", "other_funds",
                  "other_funds_source", "employment_funds")


@dataclass(frozen=True)
class Context:
    """What an event needs besides the two views: where the change came from."""

    org_id: str
    unit_id: str
    lineage: list[dict[str, Any]]
    commit_ts_ms: int | None = None
    snapshot: bool = False


@dataclass
class Issue:
    code: str
    reason: str
    field: str | None = None


@dataclass
class Derived:
    events: list[dict[str, Any]] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


# ---------------------------------------------------------------------------- helpers

def _intl(v: dict[str, Any] | None) -> bool:
    return bool(v and v.get("international"))


def _sevis_id(v: dict[str, Any] | None) -> str | None:
    return (v or {}).get("student", {}).get("sevis_id")


def _status(v: dict[str, Any] | None) -> str | None:
    return (v or {}).get("program", {}).get("status")


def _sub(v: dict[str, Any] | None, section: str) -> dict[str, Any]:
    return (v or {}).get(section) or {}


def _commit_date(ctx: Context) -> str | None:
    if ctx.commit_ts_ms is None:
        return None
    return datetime.fromtimestamp(ctx.commit_ts_ms / 1000, tz=timezone.utc).date().isoformat()


def missing_for_create(v: dict[str, Any]) -> list[str]:
    """Canonical fields a CreateStudent needs that the view lacks (sorted)."""
    st, pg, fi = _sub(v, "student"), _sub(v, "program"), _sub(v, "finance")
    need = [("student", st, ("last_name", "birth_date", "gender", "birth_country", "citizenship_country",
                             "visa_type", "issue_reason")),
            ("program", pg, ("degree_level", "major_cip", "start_date", "end_date", "english_required")),
            ("finance", fi, ("academic_term_months", "tuition", "living_expenses", "personal_funds"))]
    out = [f"{name}.{f}" for name, sec, fields in need for f in fields if sec.get(f) is None]
    fa = _sub(v, "address").get("foreign") or {}
    if not fa.get("line1") or not fa.get("country"):
        out.append("address.foreign")
    return sorted(out)


def create_ready(v: dict[str, Any] | None) -> bool:
    return bool(_intl(v) and not _sevis_id(v) and _status(v) in ("initial", "active")
                and not missing_for_create(v or {}))


def _display(v: dict[str, Any]) -> str | None:
    st = _sub(v, "student")
    last, first = st.get("last_name"), st.get("first_name")
    return ", ".join(x for x in (last, first) if x) or None


class _Builder:
    """Collects events and issues for one (prev, new) pair."""

    def __init__(self, prev: dict[str, Any] | None, new: dict[str, Any], ctx: Context) -> None:
        self.prev, self.new, self.ctx = prev, new, ctx
        self.out = Derived()

    def issue(self, code: str, reason: str, fld: str | None = None) -> None:
        self.out.issues.append(Issue(code, reason, fld))

    def problem(self, p: FormatProblem) -> None:
        self.issue(p.code, p.reason, p.field)

    def attempt(self, fn: Callable[[], Any]) -> Any:
        """Run a formatter; a :class:`FormatProblem` becomes an issue and the result None."""
        try:
            return fn()
        except FormatProblem as p:
            self.problem(p)
            return None

    def event(self, kind: str, coalesce_key: str, payload: dict[str, Any], before: Any = None,
              after: Any = None, sub: str = "", problems: list[str] | None = None) -> None:
        skey = self.new["student_key"]
        digest = hashlib.sha256(f"{self.ctx.org_id}|{skey}|{self.ctx.unit_id}|{kind}|{sub}".encode()).hexdigest()
        self.out.events.append({
            "event_id": digest[:32],
            "org_id": self.ctx.org_id,
            "student_key": skey,
            "sevis_id": _sevis_id(self.new),
            "kind": kind,
            "coalesce_key": coalesce_key,
            "payload_json": orjson.dumps(payload).decode(),
            "before_json": None if before is None else orjson.dumps(before, option=orjson.OPT_SORT_KEYS).decode(),
            "after_json": None if after is None else orjson.dumps(after, option=orjson.OPT_SORT_KEYS).decode(),
            "origin": "sis",
            "display_name": _display(self.new),
            "problems": problems or [],
            "processor_version": PROCESSOR_VERSION,
            "lineage": self.ctx.lineage,
        })


# ---------------------------------------------------------------------------- entry point

def derive(prev: dict[str, Any] | None, new: dict[str, Any] | None, ctx: Context) -> Derived:
    """Events and issues for one new version of a student's view."""
    if new is None:
        return Derived()
    if not _intl(new):
        return _not_reported(prev, new, ctx)
    b = _Builder(prev if _intl(prev) else None, new, ctx)
    p = b.prev
    if not _sevis_id(new):
        if create_ready(new) and not create_ready(p):
            _create(b)
            return b.out
        if not create_ready(new):
            if _status(new) in ("initial", "active") and not ctx.snapshot:
                missing = missing_for_create(new)
                before = missing_for_create(p) if (p and not _sevis_id(p) and _status(p) in ("initial", "active")) \
                    else None
                if missing != before:
                    b.issue("incomplete_record", "CreateStudent waits for: " + ", ".join(missing), ",".join(missing))
            return b.out
    # updates: only for a record SEVIS has (or will have from our Create)
    if p is None or ctx.snapshot:
        return b.out
    if not (_sevis_id(p) or create_ready(p)):
        return b.out
    if _status(p) in TERMINAL and _status(new) in TERMINAL:
        _authorizations(b)  # OPT / a STEM extension may follow completion (SEVIS keeps the record Active)
        return b.out
    level_changed = _level_change(b)
    _personal_info(b)
    _registration(b)
    if not level_changed:
        _program_dates(b)
        _program_edit(b)
        _financial(b)
    _status_events(b)
    _dependents(b)
    _authorizations(b)
    return b.out


def _not_reported(prev: dict[str, Any] | None, new: dict[str, Any], ctx: Context) -> Derived:
    """A student SEVIS holds in a batch sevisflow does not produce (J-1 → EV): what would have been an
    event becomes an issue naming the update, so the RO/ARO files it in SEVIS; nothing is dropped silently."""
    visa = new.get("not_reported_visa")
    if not visa or (prev is not None and prev.get("not_reported_visa") != visa):
        return Derived()
    shadow = derive(None if prev is None else {**prev, "international": True}, {**new, "international": True}, ctx)
    out = Derived()
    for e in shadow.events:
        what = "a new SEVIS record" if e["kind"] == "Create" else f"the update {e['kind']}"
        out.issues.append(Issue("not_reported_visa", f"{visa} student: SEVIS needs {what}, which sevisflow cannot "
                                f"send ({visa} records are updated in SEVIS RTI / the EV batch)", "student.visa_type"))
    return out


# ---------------------------------------------------------------------------- Create

def _edu_info(b: _Builder, v: dict[str, Any]) -> dict[str, Any] | None:
    pg, st = _sub(v, "program"), _sub(v, "student")
    level: dict[str, Any] = {"Level": pg.get("degree_level")}
    if pg.get("degree_level_remarks"):
        level["OtherRemarks"] = pg["degree_level_remarks"]
    elif pg.get("degree_level") == "11":
        b.issue("missing_field", "education level 11 (other) needs remarks: add them to [values.edu_level]",
                "program.degree_level")
        return None
    major1 = b.attempt(lambda: fmt.cip(pg.get("major_cip"), "program.major_cip", allow_zero=False))
    if major1 is None:
        return None
    out: dict[str, Any] = {"EduLevel": level, "MajorCode1": major1}
    for f, el in (("second_major_cip", "MajorCode2"), ("minor_cip", "Minor")):
        val = b.attempt(lambda f=f: fmt.cip(pg.get(f), f"program.{f}", allow_zero=True))
        if val:
            out[el] = val
    iss = st.get("i20_issue_date") or _commit_date(b.ctx)
    out.update({"IssDate": iss, "PrgStartDate": pg.get("start_date"), "PrgEndDate": pg.get("end_date"),
                "EngProficiency": _eng(pg)})
    return out


def _eng(pg: dict[str, Any]) -> dict[str, Any]:
    eng: dict[str, Any] = {"EngRequired": fmt.yes_no(pg.get("english_required"))}
    if pg.get("english_met") is not None:
        eng["RequirementsMet"] = fmt.yes_no(pg.get("english_met"))
    if pg.get("english_required") is False and pg.get("english_not_required_reason"):
        eng["NotRequiredReason"] = pg["english_not_required_reason"][:500]
    return eng


def _amount(b: _Builder, amount: Any, remarks: Any, what: str) -> dict[str, Any] | None:
    if not amount:
        return None
    if not remarks:
        b.issue("missing_field", f"{what} needs remarks (SEVIS requires them with the amount)", f"finance.{what}")
        return None
    return {"Amount": str(amount), "Remarks": str(remarks)[:500]}


def _money(b: _Builder, value: Any, fld: str) -> str | None:
    if value is None:
        return None
    if not 0 <= int(value) <= 99_999_999:
        b.issue("bad_amount", f"finance.{fld} is outside 0-99,999,999 dollars", f"finance.{fld}")
        return None
    return str(int(value))


def _fin_info(b: _Builder, v: dict[str, Any]) -> dict[str, Any]:
    fi = _sub(v, "finance")
    out: dict[str, Any] = {}
    months = fi.get("academic_term_months")
    if months is not None:
        if 1 <= int(months) <= 12:
            out["AcademicTerm"] = f"{int(months):02d}"
        else:
            b.issue("bad_code", "academic term must be 1-12 months", "finance.academic_term_months")
    exp: dict[str, Any] = {}
    for f, el in (("tuition", "Tuition"), ("living_expenses", "LivingExpense"), ("dependent_expenses", "DependentExp")):
        m = _money(b, fi.get(f), f)
        if m is not None:
            exp[el] = m
    other = _amount(b, fi.get("other_costs"), fi.get("other_costs_remarks"), "other_costs")
    if other:
        exp["Other"] = other
    fund: dict[str, Any] = {}
    m = _money(b, fi.get("personal_funds"), "personal_funds")
    if m is not None:
        fund["Personal"] = m
    for f, r, el in (("school_funds", "school_funds_remarks", "School"), ("other_funds", "other_funds_source", "Other")):
        a = _amount(b, fi.get(f), fi.get(r), f)
        if a:
            fund[el] = a
    m = _money(b, fi.get("employment_funds"), "employment_funds")
    if m is not None and int(m):
        fund["Employment"] = m
    if exp:
        out["Expense"] = exp
    if fund:
        out["Funding"] = fund
    return out


def _dependent_bio(b: _Builder, d: dict[str, Any], slot: str) -> dict[str, Any] | None:
    where = f"dependent[{slot}]."
    name = b.attempt(lambda: fmt.full_name(d, where))
    missing = [f for f in ("birth_date", "gender", "birth_country", "citizenship_country", "relationship", "visa_type")
               if d.get(f) is None]
    if missing:
        b.issue("missing_field", f"dependent {slot} lacks " + ", ".join(missing), where + missing[0])
    if name is None or missing:
        return None
    out = {"FullName": name, "BirthDate": d["birth_date"], "Gender": d["gender"]}
    if d.get("birth_city"):
        out["BirthCity"] = fmt._clip(d["birth_city"], 100)
    out.update({"BirthCountryCode": d["birth_country"], "CitizenshipCountryCode": d["citizenship_country"],
                "VisaType": d["visa_type"], "Relationship": d["relationship"]})
    return out


def _create(b: _Builder) -> None:
    v = b.new
    st = _sub(v, "student")
    addr = _sub(v, "address")
    before_issues = len(b.out.issues)
    personal: dict[str, Any] = {}
    name = b.attempt(lambda: fmt.full_name(st))
    if name:
        personal["FullName"] = name
    personal.update({"BirthDate": st["birth_date"], "Gender": st["gender"]})
    if st.get("birth_city"):
        personal["BirthCity"] = fmt._clip(st["birth_city"], 100)
    personal.update({"BirthCountryCode": st["birth_country"], "CitizenshipCountryCode": st["citizenship_country"]})
    mail = b.attempt(lambda: fmt.email(st.get("email"), "student.email"))
    if mail:
        personal["Email"] = mail
    personal["VisaType"] = st["visa_type"]
    tel = fmt.telephone(st)
    if tel:
        personal["Telephone"] = tel
    payload: dict[str, Any] = {"@printForm": "true", "PersonalInfo": personal, "IssueReason": st["issue_reason"]}
    if addr.get("us_physical"):
        us = b.attempt(lambda: fmt.us_address(addr["us_physical"], "address.us_physical"))
        if us:
            payload["USAddress"] = us
    if addr.get("us_mailing"):
        ma = b.attempt(lambda: fmt.us_address(addr["us_mailing"], "address.us_mailing"))
        if ma:
            payload["MailingAddress"] = ma
    fa = b.attempt(lambda: fmt.foreign_address(addr.get("foreign"), "address.foreign"))
    if fa:
        payload["ForeignAddress"] = fa
    edu = _edu_info(b, v)
    if edu:
        payload["EducationalInfo"] = edu
    payload["FinancialInfo"] = _fin_info(b, v)
    deps = []
    for slot, d in sorted(_sub(v, "dependent").items()):
        if d.get("status") == "removed":
            continue
        bio = _dependent_bio(b, d, slot)
        if bio:
            deps.append(bio)
    if deps:
        payload["CreateDependent"] = {"Dependent": deps[:25]}
    if st.get("issue_reason") not in ("I", "S"):
        b.issue("bad_code", "issue reason must be I (initial) or S (change of status)", "student.issue_reason")
    if len(b.out.issues) > before_issues and ("FullName" not in personal or "ForeignAddress" not in payload
                                              or "EducationalInfo" not in payload
                                              or st.get("issue_reason") not in ("I", "S")):
        return  # not sendable: the issues say why; a later change re-tries when the view changes
    b.event("Create", "Create", payload, None, {"student": "new record"},
            problems=[i.reason for i in b.out.issues[before_issues:]])


# ---------------------------------------------------------------------------- updates

def _changed(a: dict[str, Any], c: dict[str, Any], fields: tuple[str, ...]) -> list[str]:
    return [f for f in fields if a.get(f) != c.get(f)]


def _personal_info(b: _Builder) -> None:
    ps, ns = _sub(b.prev, "student"), _sub(b.new, "student")
    pa, na = _sub(b.prev, "address"), _sub(b.new, "address")
    payload: dict[str, Any] = {}
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    if _changed(ps, ns, NAME_FIELDS):
        name = b.attempt(lambda: fmt.full_name(ns))
        if name:
            payload["FullName"] = name
        for f in NAME_FIELDS:
            before[f], after[f] = ps.get(f), ns.get(f)
    simple = (("birth_date", "BirthDate"), ("gender", "Gender"), ("birth_city", "BirthCity"),
              ("birth_country", "BirthCountryCode"), ("citizenship_country", "CitizenshipCountryCode"),
              ("commuter", "Commuter"))
    for f, el in simple:
        if ps.get(f) != ns.get(f):
            before[f], after[f] = ps.get(f), ns.get(f)
            if ns.get(f) is None:
                if f in ("birth_date", "gender", "birth_country", "citizenship_country"):
                    b.issue("missing_field", f"student.{f} was removed in the SIS; SEVIS keeps the old value",
                            f"student.{f}")
                continue
            payload[el] = fmt.yes_no(ns[f]) if f == "commuter" else ns[f]
    if ps.get("email") != ns.get("email"):
        before["email"], after["email"] = ps.get("email"), ns.get("email")
        mail = b.attempt(lambda: fmt.email(ns.get("email"), "student.email"))
        if mail:
            payload["Email"] = mail
        elif ns.get("email") is None:
            b.issue("missing_field", "e-mail removed in the SIS; SEVIS requires one", "student.email")
    if _changed(ps, ns, ("phone", "phone_country_code")):
        before["phone"], after["phone"] = ps.get("phone"), ns.get("phone")
        tel = fmt.telephone(ns)
        if tel:
            payload["Telephone"] = tel
    for slot, el, f in (("us_physical", "USAddress", fmt.us_address), ("us_mailing", "MailingAddress", fmt.us_address),
                        ("foreign", "ForeignAddress", fmt.foreign_address)):
        if pa.get(slot) != na.get(slot):
            before[f"address.{slot}"], after[f"address.{slot}"] = pa.get(slot), na.get(slot)
            if na.get(slot) is None:
                if slot != "us_mailing":
                    b.issue("missing_field", f"address.{slot} was removed in the SIS; SEVIS keeps the old one",
                            f"address.{slot}")
                continue
            val = b.attempt(lambda slot=slot, f=f: f(na.get(slot), f"address.{slot}"))
            if val:
                payload[el] = val
    if payload:
        b.event("PersonalInfo", "PersonalInfo", {"@printForm": "false", **payload}, before, after)


def _registration(b: _Builder) -> None:
    if _status(b.new) not in ("initial", "active"):
        return
    pr, nr = _sub(b.prev, "registration"), _sub(b.new, "registration")
    end = _sub(b.new, "program").get("end_date")
    for slot in sorted(nr):
        r = nr[slot]
        if r.get("status") != "enrolled" or (pr.get(slot) or {}).get("status") == "enrolled":
            continue
        if not r.get("session_start") or not r.get("session_end"):
            b.issue("missing_field", f"registration {slot}: session dates unknown (term row missing?)",
                    f"registration[{slot}].session_start")
            continue
        last = r.get("last_session")
        if last is None:
            last = bool(end and r["session_end"] >= end)
        payload: dict[str, Any] = {"@printForm": "false", "LastSession": fmt.yes_no(last),
                                   "CurrentSessionStartDate": r["session_start"],
                                   "CurrentSessionEndDate": r["session_end"]}
        if not last:
            if not r.get("next_session_start"):
                b.issue("missing_field", f"registration {slot}: next session start date unknown (S1068)",
                        f"registration[{slot}].next_session_start")
                continue
            payload["NextSessionStartDate"] = r["next_session_start"]
        us = _sub(b.new, "address").get("us_physical")
        if us:
            addr = b.attempt(lambda: fmt.us_address(us, "address.us_physical"))
            if addr:
                payload["USAddress"] = addr
        b.event("Registration", "Registration", payload, {"registration": pr.get(slot)}, {"registration": r},
                sub=slot)


def _level_change(b: _Builder) -> bool:
    pp, np_ = _sub(b.prev, "program"), _sub(b.new, "program")
    if not pp.get("degree_level") or not np_.get("degree_level") or pp["degree_level"] == np_["degree_level"]:
        return False
    if np_.get("status") not in ("initial", "active"):
        return False
    edu = _edu_info(b, b.new)
    fin = _fin_info(b, b.new)
    if edu is None:
        return True
    b.event("EducationLevel.Change", "EducationLevel", {"@printForm": "true", "EducationalInfo": edu,
                                                        "FinancialInfo": fin},
            {"program": pp}, {"program": np_})
    return True


def _program_dates(b: _Builder) -> None:
    pp, np_ = _sub(b.prev, "program"), _sub(b.new, "program")
    if np_.get("status") not in OPEN_STATUSES or not pp:
        return
    if pp.get("start_date") != np_.get("start_date") and np_.get("status") in ("initial", "deferred") \
            and np_.get("start_date") and np_.get("end_date"):
        iss = _sub(b.new, "student").get("i20_issue_date") or _commit_date(b.ctx)
        b.event("Program.ManageSessionDates", "Program.SessionDates",
                {"@printForm": "true", "IssDate": iss, "NewPrgStartDate": np_["start_date"],
                 "NewPrgEndDate": np_["end_date"]},
                {"start_date": pp.get("start_date"), "end_date": pp.get("end_date")},
                {"start_date": np_["start_date"], "end_date": np_["end_date"]})
        return
    old, new = pp.get("end_date"), np_.get("end_date")
    if not old or not new or old == new or np_.get("status") == "deferred":
        return
    if new > old:
        reason = np_.get("extension_reason")
        problems = [] if reason else ["Explanation is a default text: confirm the reason for the extension"]
        b.event("Program.Extension", "Program.EndDate",
                {"@printForm": "true", "NewPrgEndDate": new,
                 "Explanation": (reason or f"Program completion date moved from {old} to {new} by the school")[:500]},
                {"end_date": old}, {"end_date": new}, problems=problems)
    else:
        b.event("Program.Shorten", "Program.EndDate", {"@printForm": "true", "NewPrgEndDate": new},
                {"end_date": old}, {"end_date": new})


def _program_edit(b: _Builder) -> None:
    pp, np_ = _sub(b.prev, "program"), _sub(b.new, "program")
    if np_.get("status") not in OPEN_STATUSES or not pp:
        return
    payload: dict[str, Any] = {}
    ch = _changed(pp, np_, ("major_cip", "second_major_cip", "minor_cip"))
    for f, el, zero in (("major_cip", "MajorCode1", False), ("second_major_cip", "MajorCode2", True),
                        ("minor_cip", "Minor", True)):
        if f in ch:
            if np_.get(f) is None:
                if zero:
                    payload[el] = "00.0000"
                else:
                    b.issue("missing_field", "major removed in the SIS", "program.major_cip")
                continue
            val = b.attempt(lambda f=f, zero=zero: fmt.cip(np_.get(f), f"program.{f}", zero))
            if val:
                payload[el] = val
    eng = _changed(pp, np_, ("english_required", "english_met", "english_not_required_reason"))
    if eng and np_.get("english_required") is not None:
        payload["EngProficiency"] = _eng(np_)
    if payload:
        fields = tuple(ch + eng)
        b.event("Program.Edit", "Program.Edit", {"@printForm": "true", **payload},
                {f: pp.get(f) for f in fields}, {f: np_.get(f) for f in fields})


def _financial(b: _Builder) -> None:
    pf, nf = _sub(b.prev, "finance"), _sub(b.new, "finance")
    ch = _changed(pf, nf, FINANCE_FIELDS)
    if not ch or not nf:
        return
    payload = _fin_info(b, b.new)
    if payload:
        b.event("FinancialInfo", "FinancialInfo", {"@printForm": "true", **payload},
                {f: pf.get(f) for f in ch}, {f: nf.get(f) for f in ch})


def _status_events(b: _Builder) -> None:
    pp, np_ = _sub(b.prev, "program"), _sub(b.new, "program")
    old, new = pp.get("status"), np_.get("status")
    if old == new or new not in TERMINAL:
        return
    was_initial = old in ("initial", "deferred") or _sub(b.prev, "student").get("sevis_status") == "INITIAL"
    before, after = {"status": old}, {"status": new}
    if new == "completed":
        if was_initial:
            b.issue("bad_transition", "an initial record cannot be completed; cancel it in SEVIS", "program.status")
            return
        b.event("Status.Complete", "Status", {}, before, after)
        return
    if new == "terminated" and not was_initial:
        reason = np_.get("status_reason")
        if not reason:
            b.issue("needs_dso", "programme ended without a termination reason in [values.program_status]; "
                    "the DSO must terminate in SEVIS", "program.status")
            return
        payload: dict[str, Any] = {"Reason": reason}
        if reason == "16":
            payload["OtherRemarks"] = np_.get("status_remarks") or "Otherwise failing to maintain status"
        b.event("Status.Terminate", "Status", payload, before, after)
        return
    # canceled, or terminated while still initial → Cancel
    if not was_initial:
        b.issue("bad_transition", "an active record cannot be cancelled; map the status to a termination",
                "program.status")
        return
    reason = np_.get("status_cancel_reason")
    if not reason:
        b.issue("needs_dso", "initial record ended without a cancel reason in [values.program_status]",
                "program.status")
        return
    b.event("Status.Cancel", "Status", {"Reason": reason}, before, after)


def _dependents(b: _Builder) -> None:
    pd, nd = _sub(b.prev, "dependent"), _sub(b.new, "dependent")
    for slot in sorted(set(pd) | set(nd)):
        p, n = pd.get(slot), nd.get(slot)
        p_active = bool(p) and p.get("status") != "removed"
        n_active = bool(n) and n.get("status") != "removed"
        ck = f"Dependent:{slot}"
        if n_active and not p_active:
            bio = _dependent_bio(b, n, slot)
            if bio:
                b.event("Dependent.Add", ck, {"@printForm": "true", **bio}, p, n, sub=slot)
        elif p_active and n_active:
            ch = _changed(p, n, DEP_BIO)
            if not ch:
                continue
            payload: dict[str, Any] = {"@printForm": "true"}
            problems = []
            if n.get("dependent_sevis_id"):
                payload["@dependentSevisID"] = n["dependent_sevis_id"]
            else:
                problems.append("dependentSevisID unknown: fill it from SEVIS's result before closing")
            if any(f in ch for f in ("first_name", "last_name")):
                name = b.attempt(lambda: fmt.full_name(n, f"dependent[{slot}]."))
                if name:
                    payload["FullName"] = name
            for f, el in (("birth_date", "BirthDate"), ("gender", "Gender"), ("birth_city", "BirthCity"),
                          ("birth_country", "BirthCountryCode"), ("citizenship_country", "CitizenshipCountryCode"),
                          ("relationship", "Relationship")):
                if f in ch and n.get(f) is not None:
                    payload[el] = n[f]
            if len(payload) > 1 + ("@dependentSevisID" in payload):
                b.event("Dependent.Edit", ck, payload, {f: p.get(f) for f in ch}, {f: n.get(f) for f in ch},
                        sub=slot, problems=problems)
        elif p_active and not n_active:
            reason = (n or {}).get("status_reason")
            if not reason:
                b.issue("needs_dso", f"dependent {slot} was removed in the SIS; terminate them in SEVIS with a reason",
                        f"dependent[{slot}].status")
                continue
            payload = {"Reason": reason}
            problems = []
            if p.get("dependent_sevis_id"):
                payload["@dependentSevisID"] = p["dependent_sevis_id"]
            else:
                problems.append("dependentSevisID unknown: fill it from SEVIS's result before closing")
            b.event("Dependent.Terminate", ck, payload, p, n, sub=slot, problems=problems)


# ---------------------------------------------------------------------------- authorisations

AUTH_EVENT = {"rcl": "AuthDropBelowFC", "cpt": "CPTEmployment", "opt": "OPTEmployment", "opt_stem": "OPTEmployment"}
AUTH_LABEL = {"rcl": "reduced course load", "cpt": "CPT", "opt": "OPT", "opt_stem": "STEM OPT extension"}
# programme statuses in which SEVIS takes the Add (S1054: the record must be Active; an OPT recommendation or a
# STEM extension may come after the programme is completed, while SEVIS keeps the record Active for OPT)
AUTH_ADD_STATUSES = {"rcl": ("active",), "cpt": ("active",), "opt": ("active", "completed"),
                     "opt_stem": ("active", "completed")}
# F-1 only (8 CFR 214.2(f)(10)): CPT and the STEM extension; RCL and OPT exist for F-1 and M-1
AUTH_F1_ONLY = ("cpt", "opt_stem")
AUTH_FIELDS = ("kind", "start_date", "end_date", "time_basis", "employer_name", "employer_line1", "employer_line2",
               "employer_city", "employer_state", "employer_postal_code", "course_relevance", "rcl_reason",
               "academic_year_met", "remarks")
# what each event needs from the canonical authorisation (the rest is optional or formatted below)
AUTH_REQUIRED = {
    ("rcl", False): ("rcl_reason", "start_date", "end_date"),
    ("rcl", True): ("rcl_reason", "start_date", "end_date"),
    ("cpt", False): ("start_date", "end_date", "time_basis", "employer_name"),
    ("cpt", True): ("start_date", "end_date", "time_basis", "employer_name"),
    ("opt", False): ("start_date", "end_date", "time_basis", "academic_year_met"),
    ("opt", True): ("start_date", "end_date", "time_basis"),
    ("opt_stem", False): ("start_date", "end_date", "time_basis", "course_relevance"),
    ("opt_stem", True): ("start_date", "end_date", "time_basis"),
}


def _approved(a: dict[str, Any] | None) -> bool:
    return bool(a) and a.get("status") == "approved"  # type: ignore[union-attr]


def _slot_order(slot: str) -> tuple[int, str]:
    return (len(slot), slot)


def _authorizations(b: _Builder) -> None:
    """Approved → the kind's Add (STEM: OPTEmployment/Extend); approved → withdrawn or deleted → its Cancel.

    One record per authorisation (coalesce key ``Authorization:<slot>``); before/after carry only whether it
    is approved, so an Add withdrawn before the batch closes (or a Cancel re-approved) is undone by the batcher.
    """
    pa, na = _sub(b.prev, "authorization"), _sub(b.new, "authorization")
    for slot in sorted(set(pa) | set(na), key=_slot_order):
        p, n = pa.get(slot), na.get(slot)
        p_ok, n_ok = _approved(p), _approved(n)
        where = f"authorization[{slot}]"
        if p_ok and n_ok:
            changed = bool(_changed(p, n, AUTH_FIELDS))
            if _add_problem(b.prev, p, where) is not None:
                # SEVIS never got this one (it was incomplete or the record not Active): try the Add again
                if n.get("kind") in AUTH_EVENT and (changed or _add_problem(b.new, n, where) is None):
                    _auth_add(b, slot, n["kind"], n)
            elif changed:
                b.issue("needs_dso", f"{where} ({AUTH_LABEL.get(n.get('kind'), 'authorisation')}) changed after "
                        "approval; sevisflow derives no edit of it: change it in SEVIS RTI, or withdraw it and enter "
                        "a new one", where)
            continue
        if p_ok == n_ok:
            continue
        a = n if n_ok else p
        kind = a.get("kind")
        if kind not in AUTH_EVENT:
            b.issue("bad_code", f"{where} has no known kind (rcl, cpt, opt, opt_stem in [values.authorization_kind])",
                    f"{where}.kind")
            continue
        if n_ok:
            _auth_add(b, slot, kind, a)
        elif _add_problem(b.prev, p, where) is None:  # else SEVIS never got it: nothing to cancel
            _auth_cancel(b, slot, kind, a)


def _add_problem(v: dict[str, Any] | None, a: dict[str, Any], where: str) -> tuple[str, str, str] | None:
    """Why SEVIS could not take (or was not sent) the Add of authorisation ``a`` in view ``v``: (code, reason,
    field), or None when the Add is sendable. Pure: the same check decides whether an earlier Add went out."""
    kind = a.get("kind")
    if kind not in AUTH_EVENT:
        return ("bad_code", f"{where} has no known kind (rcl, cpt, opt, opt_stem in [values.authorization_kind])",
                f"{where}.kind")
    status = _status(v)
    if status not in AUTH_ADD_STATUSES[kind]:
        return ("bad_transition", f"{AUTH_LABEL[kind]} ({where}) needs an Active SEVIS record; the programme is "
                f"{status or 'unknown'} (SEVIS would reject it, S1054)", f"{where}.status")
    if kind in AUTH_F1_ONLY and _sub(v, "student").get("visa_type") != "01":
        return ("bad_transition", f"{AUTH_LABEL[kind]} ({where}) exists for F-1 students only", f"{where}.kind")
    missing = [f for f in AUTH_REQUIRED[(kind, False)] if a.get(f) is None]
    if missing:
        what = f"{AUTH_EVENT[kind]}/{'Extend' if kind == 'opt_stem' else 'Add'}"
        return ("incomplete_record", f"{what} for {where} ({AUTH_LABEL[kind]}) waits for: " + ", ".join(missing),
                f"{where}.{missing[0]}")
    if kind in ("cpt", "opt_stem"):
        try:
            fmt.employer_address(a, f"{where}.employer", "USAddressType" if kind == "cpt" else "USAddrDoctorType")
        except FormatProblem as p:
            return (p.code, p.reason, p.field)
    return None


def _auth_missing(b: _Builder, slot: str, kind: str, a: dict[str, Any], cancel: bool) -> bool:
    missing = [f for f in AUTH_REQUIRED[(kind, cancel)] if a.get(f) is None]
    if missing:
        what = f"{AUTH_EVENT[kind]}/{'Cancel' if cancel else ('Extend' if kind == 'opt_stem' else 'Add')}"
        b.issue("incomplete_record", f"{what} for authorization {slot} ({AUTH_LABEL[kind]}) waits for: "
                + ", ".join(missing), f"authorization[{slot}].{missing[0]}")
    return bool(missing)


def _auth_flags(a: dict[str, Any], approved: bool) -> dict[str, Any]:
    return {"approved": approved, "kind": a.get("kind"), "start_date": a.get("start_date"),
            "end_date": a.get("end_date")}


def _auth_add(b: _Builder, slot: str, kind: str, a: dict[str, Any]) -> None:
    where = f"authorization[{slot}]"
    problem = _add_problem(b.new, a, where)
    if problem is not None:
        b.issue(*problem)
        return
    payload: dict[str, Any] = {"@printForm": "true"}
    if kind == "rcl":
        payload.update({"Reason": a["rcl_reason"], "StartDate": a["start_date"], "EndDate": a["end_date"]})
        if a.get("remarks"):
            payload["Remarks"] = str(a["remarks"])[:500]
        sub = "Add"
    elif kind == "cpt":
        addr = b.attempt(lambda: fmt.employer_address(a, f"{where}.employer", "USAddressType"))
        if addr is None:
            return
        payload.update({"StartDate": a["start_date"], "EndDate": a["end_date"],
                        "FullPartTimeIndicator": a["time_basis"], "EmployerName": fmt._clip(a["employer_name"], 100),
                        "EmployerAddress": addr})
        if a.get("course_relevance"):
            payload["CourseRelevance"] = str(a["course_relevance"])[:250]
        if a.get("remarks"):
            payload["EmploymentRemarks"] = str(a["remarks"])[:250]
        sub = "Add"
    elif kind == "opt":
        payload.update({"StartDate": a["start_date"], "EndDate": a["end_date"],
                        "FullPartTimeIndicator": a["time_basis"], "AcademicYearMet": fmt.yes_no(a["academic_year_met"])})
        if a.get("remarks"):
            payload["Remarks"] = str(a["remarks"])[:250]
        sub = "Add"
    else:  # opt_stem: the extension names the employer (≥1 Employer)
        addr = b.attempt(lambda: fmt.employer_address(a, f"{where}.employer", "USAddrDoctorType"))
        if addr is None:
            return
        employer: dict[str, Any] = {}
        if a.get("employer_name"):
            employer["EmployerName"] = fmt._clip(a["employer_name"], 121)
        employer.update({"EmployerAddress": addr, "CourseRelevance": str(a["course_relevance"])[:1000],
                         "FullPartTimeIndicator": a["time_basis"], "StartDate": a["start_date"],
                         "EndDate": a["end_date"]})
        payload.update({"StartDate": a["start_date"], "EndDate": a["end_date"],
                        "FullPartTimeIndicator": a["time_basis"], "Employer": [employer]})
        sub = "Extend"
    b.event(f"{AUTH_EVENT[kind]}.{sub}", f"Authorization:{slot}", payload, _auth_flags(a, False),
            _auth_flags(a, True), sub=slot)


def _auth_cancel(b: _Builder, slot: str, kind: str, a: dict[str, Any]) -> None:
    """Withdrawn (or the row deleted): cancel what SEVIS was told, so the payload is the approved version."""
    if _auth_missing(b, slot, kind, a, cancel=True):
        return
    payload: dict[str, Any] = {"@printForm": "false"}
    if kind == "rcl":
        payload.update({"Reason": a["rcl_reason"], "StartDate": a["start_date"], "EndDate": a["end_date"]})
    else:
        payload.update({"StartDate": a["start_date"], "EndDate": a["end_date"],
                        "FullPartTimeIndicator": a["time_basis"]})
        if kind == "cpt":
            payload["EmployerName"] = fmt._clip(a["employer_name"], 100)
    b.event(f"{AUTH_EVENT[kind]}.Cancel", f"Authorization:{slot}", payload, _auth_flags(a, True),
            _auth_flags(a, False), sub=slot)
