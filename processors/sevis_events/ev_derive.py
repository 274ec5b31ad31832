"""(previous view, new view) → SEVIS exchange-visitor (EV) events and DSO issues: pure, no clock, no I/O.

A J-1 exchange visitor is a student view whose visa is J-1 and whose ``exchange`` section names a sponsor
program (``exchange.sis_program``, docs/MAPPING.md "Exchange visitors"). When the settings configure that
program (``[[exchange_programs]]``: SIS code → program number), the events go to the program number's
batch stream (``org_id`` = ``P-…``/``G-…``, never the school's F/M code) with ``kind`` ``EV.<element path>``;
when they do not, every event that would have gone out becomes a ``not_reported_visa`` issue naming the
program, so the RO/ARO files it in SEVIS RTI. Nothing of the F/M rules applies to these views.

Derived (docs/MAPPING.md, "Exchange visitors: what is reported"):

* ``EV.Create`` once the record is complete (biography, position, category, subject, dates, funding, at least
  one active site of activity; J-2 dependents ride along in ``CreateDependent``); before that an
  ``incomplete_record`` issue listing what is missing, again whenever the list changes.
* ``EV.Validate`` when the sponsor's record turns active (the EV checked in): US residence, e-mail, US phone.
* ``EV.Biographical`` (the whole block, as both public clients send it) for names, birth data, citizenship,
  permanent residence, e-mail, phone, position, US residence and mailing address.
* ``EV.Program.Amend`` (initial: new dates), ``.Extension`` / ``.Shorten`` (active: end date later / earlier,
  Shorten with the mapped reason), ``.Matriculate`` (a J-1 student's category moves to a higher degree with a
  later end date), ``.EditSubject`` (subject/field code or remarks).
* ``EV.FinancialInfo``; ``EV.SiteOfActivity.Add|Edit|Delete``; ``EV.Dependent.Add|Edit|Delete|EndStatus|Terminate``.
* ``EV.Status.NoShow`` / ``.Invalid`` (initial records), ``.Terminate`` (active records, with reason and date).

Sites and dependents are keyed in the SIS; until SEVIS's own id is known (``SiteId``, dependent SEVIS ID) the
payload carries the SIS key under ``@sisKey`` (the renderer strips it and fills the id SEVIS returned). Every
quiet ``return``/``continue`` says why on its line (tests/unit/test_ev_derive.py walks this file).
"""

from __future__ import annotations

import dataclasses
from datetime import date
from typing import Any

from sevisflow.processors.sevis_events import sevis_format as fmt
from sevisflow.processors.sevis_events.derive import (
    NAME_FIELDS,
    Context,
    Derived,
    Issue,
    _Builder,
    _commit_date,
    _spelling,
    _sub,
)
from sevisflow.processors.sevis_events.sevis_format import FormatProblem

EV_VISA = "J-1"
CLOSED = ("completed", "no_show", "invalid", "terminated")
OPEN = ("initial", "active")
OPEN_OR_NONE = (None, *OPEN)
BIO_FIELDS = (
    "first_name",
    "middle_name",
    "last_name",
    "preferred_name",
    "birth_date",
    "gender",
    "birth_city",
    "birth_country",
    "citizenship_country",
    "email",
    "phone",
    "phone_country_code",
)
FORM_FIELDS = (
    "first_name",
    "middle_name",
    "last_name",
    "preferred_name",
    "birth_date",
    "gender",
    "birth_city",
    "birth_country",
    "citizenship_country",
)  # printed on the DS-2019: a new form is printed
FUNDING_FIELDS = (
    "us_govt_funds",
    "sponsor_funds",
    "us_agency",
    "us_agency_funds",
    "intl_org",
    "intl_org_funds",
    "home_govt_funds",
    "binational_funds",
    "other_org",
    "other_org_funds",
    "personal_funds",
)
SITE_FIELDS = ("name", "line1", "line2", "city", "state", "postal_code", "primary")
DEP_FIELDS = (
    "first_name",
    "last_name",
    "birth_date",
    "gender",
    "birth_city",
    "birth_country",
    "citizenship_country",
    "residence_country",
    "relationship",
)
# J-1 student categories of a degree programme → the MatriculationCode of moving into it (associate,
# bachelor's, master's, doctorate)
MATRICULATION = {"1B": "A", "1C": "B", "1D": "M", "1E": "D"}
END_STATUS_REASONS = ("02", "04", "09")  # DependentCompletionType: death, divorce, other
DEP_TERMINATION_REASONS = ("01", "05", "09")  # EVDepTerminationReasonType: crime, unauthorized work, other


# ---------------------------------------------------------------------------- which views are EV views


def _ex(v: dict[str, Any] | None) -> dict[str, Any]:
    return _sub(v, "exchange")


def is_exchange(v: dict[str, Any] | None) -> bool:
    """A J-1 view with a sponsor program: derived here, never by the F/M rules (an F/M student is not, even with
    a sponsor record left over)."""
    if not v or not v.get("exists", True) or v.get("international") or not _ex(v).get("sis_program"):
        return False
    return bool(v.get("not_reported_visa") or _sub(v, "student").get("visa_type") == EV_VISA)


def program_number(v: dict[str, Any] | None, ctx: Context) -> str | None:
    """The configured program number (OrgID of the EV batch) of the view's sponsor program, or None."""
    return dict(ctx.ev_programs).get(_ex(v).get("sis_program") or "")


def _status(v: dict[str, Any] | None) -> str | None:
    return _ex(v).get("status")


def _sevis_id(v: dict[str, Any] | None) -> str | None:
    return _sub(v, "student").get("sevis_id")


def _active_sites(v: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {k: s for k, s in sorted(_sub(v, "ev_site").items()) if s and s.get("active") is not False}


def _active_deps(v: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {k: d for k, d in sorted(_sub(v, "ev_dependent").items()) if d and d.get("status") == "active"}


def missing_for_create(v: dict[str, Any]) -> list[str]:
    """Canonical fields a CreateEV needs that the view lacks (sorted)."""
    st, ex, fu = _sub(v, "student"), _ex(v), _sub(v, "ev_funding")
    need = [
        ("student", st, ("last_name", "birth_date", "gender", "birth_city", "birth_country", "citizenship_country")),
        (
            "exchange",
            ex,
            (
                "residence_country",
                "position",
                "category",
                "subject_cip",
                "subject_remarks",
                "start_date",
                "end_date",
                "status",
            ),
        ),
        ("ev_funding", fu, ("us_govt_funds",)),
    ]
    out = [f"{name}.{f}" for name, sec, fields in need for f in fields if sec.get(f) is None]
    if not _active_sites(v):
        out.append("ev_site")
    return sorted(out)


def create_ready(v: dict[str, Any] | None) -> bool:
    return bool(is_exchange(v) and not _sevis_id(v) and _status(v) in OPEN and not missing_for_create(v or {}))


# ---------------------------------------------------------------------------- entry point


def derive_ev(prev: dict[str, Any] | None, new: dict[str, Any], ctx: Context) -> Derived:
    """EV events and issues for one new version of an exchange visitor's view (``is_exchange(new)``)."""
    number = program_number(new, ctx)
    if number is None:
        return _unconfigured(prev, new, ctx)  # reported: not_reported_visa per event SEVIS would need
    b = _Builder(prev if is_exchange(prev) else None, new, dataclasses.replace(ctx, org_id=number))
    p = b.prev
    if p is not None and _ex(p).get("sis_program") != _ex(new).get("sis_program"):
        b.issue(
            "needs_dso",
            f"the exchange visitor moved from sponsor program {_ex(p).get('sis_program')} to "
            f"{_ex(new).get('sis_program')}: a batch has no program transfer — transfer the record in SEVIS RTI, "
            "or correct the SIS",
            "exchange.sis_program",
        )
        return b.out
    if not _sevis_id(new):
        if create_ready(new) and not create_went_out(p, ctx):
            _create(b)
            if _status(new) == "active" and any(e["kind"] == "EV.Create" for e in b.out.events):
                _validate(b, force=True)
            return b.out  # reported: the Create (and Validate), or the issues that hold it back
        if not create_ready(new) and not create_went_out(p, ctx):
            if _status(new) in OPEN_OR_NONE:
                missing = missing_for_create(new)
                before = (
                    missing_for_create(p)
                    if p and not _sevis_id(p) and _status(p) in OPEN_OR_NONE and not ctx.snapshot
                    else None
                )
                if missing != before:
                    b.issue(
                        "incomplete_record",
                        "CreateEV waits for: " + ", ".join(missing) + ": complete the "
                        "sponsor's record in the SIS (the Create goes out by itself), or create the record in "
                        "SEVIS RTI and enter its SEVIS ID in the SIS",
                        ",".join(missing),
                    )
                return b.out  # reported: incomplete_record, again whenever the list of missing fields changes
            return b.out  # not-reportable: no SEVIS record and none due (closed before a Create)
    if p is None or ctx.snapshot:
        return b.out  # not-reportable: the baseline — SEVIS already holds this state (a snapshot, a first view)
    if not (_sevis_id(p) or create_ready(p)):
        return b.out  # not-reportable: the SEVIS ID came from SEVIS RTI (record made there): the baseline
    if _closed(b):
        return b.out  # reported: needs_dso when a closed record changes status; else not-reportable (closed)
    _registrar(b)
    validated = _validate(b)
    _biographical(b, skip_address=validated)
    _program(b)
    _financial(b)
    _sites(b)
    _dependents(b)
    _status_events(b)
    return b.out


def create_went_out(p: dict[str, Any] | None, ctx: Context) -> bool:
    """Whether the previous version's CreateEV was emitted (one refused is tried again by the next version)."""
    return create_ready(p) and any(e["kind"] == "EV.Create" for e in derive_ev(None, p or {}, ctx).events)


def _unconfigured(prev: dict[str, Any] | None, new: dict[str, Any], ctx: Context) -> Derived:
    """A sponsor program the settings do not list: what SEVIS would need becomes a ``not_reported_visa`` issue."""
    code = _ex(new).get("sis_program")
    shadow = derive_ev(
        prev if is_exchange(prev) else None,
        new,
        dataclasses.replace(ctx, ev_programs={**dict(ctx.ev_programs), str(code): "P-0-00000"}),
    )
    out = Derived()
    for e in shadow.events:
        what = "a new SEVIS record (CreateEV)" if e["kind"] == "EV.Create" else f"the update {e['kind']}"
        out.issues.append(
            Issue(
                "not_reported_visa",
                f"J-1 exchange visitor: SEVIS needs {what}, which sevisflow "
                f"cannot send: sponsor program {code} is not configured ([[exchange_programs]] in the "
                "settings) — report it in SEVIS RTI, or configure the program",
                "exchange.sis_program",
            )
        )
    return out


def _closed(b: _Builder) -> bool:
    """True when the previous record is closed: SEVIS takes no update of it; a status change is told."""
    old, new = _status(b.prev), _status(b.new)
    if old not in CLOSED:
        return False  # not-reportable: an open record, derived as usual
    if new != old:
        b.issue(
            "needs_dso",
            f"the exchange visitor's status changed from {old} to {new or 'none'} after the SEVIS "
            "record was closed: a batch cannot reopen or re-close it — request a correction or reinstatement in "
            "SEVIS, or correct the SIS",
            "exchange.status",
        )
    return True


def _registrar(b: _Builder) -> None:
    """A J-1 student whose registrar programme ends while the sponsor's record is open: SEVIS hears of the end only
    from the sponsor's record (exchange.status / end_date), so the DSO is told to update it."""
    old, new = _sub(b.prev, "program").get("status"), _sub(b.new, "program").get("status")
    if old == new or new not in ("completed", "terminated", "canceled") or _status(b.new) not in OPEN:
        return  # not-reportable: the registrar's status did not end a programme, or the sponsor's record is closed
    b.issue(
        "needs_dso",
        f"the registrar's programme is {new} but the sponsor's exchange record is still "
        f"{_status(b.new)}: SEVIS hears of a J-1 program end only from that record — shorten, end or terminate "
        "it in the SIS's exchange record",
        "exchange.status",
    )


# ---------------------------------------------------------------------------- building blocks


def _phone(st: dict[str, Any]) -> str | None:
    """The 10-digit US number SEVIS's EV schema takes, or None (no number, or a foreign one)."""
    try:
        tel = fmt.telephone(st)
    except FormatProblem:
        return None
    return ((tel or {}).get("Phone") or {}).get("USNumber")


def _bio(b: _Builder, who: dict[str, Any], residence: Any, where: str, required: bool = True) -> dict[str, Any] | None:
    """NonImgBioType: the biography SEVIS requires of an EV or a J-2 (None with an issue when it cannot be made);
    ``required=False`` (Biographical, whose every child is optional): what the SIS has, the rest left out."""
    name = b.attempt(lambda: fmt.full_name(who, where))
    if name is None:
        return None  # reported: the formatter's issue (missing or rejected name)
    out: dict[str, Any] = {
        "FullName": name,
        "BirthDate": who.get("birth_date"),
        "Gender": who.get("gender"),
        "BirthCity": fmt._clip(who.get("birth_city"), 60) if who.get("birth_city") else None,
        "BirthCountryCode": who.get("birth_country"),
        "CitizenshipCountryCode": who.get("citizenship_country"),
        "PermanentResidenceCountryCode": residence,
    }
    missing = [k for k, v in out.items() if v is None]
    if not required:
        out = {k: v for k, v in out.items() if v is not None}
    elif missing:
        b.issue(
            "missing_field",
            f"{where.rstrip('.')} lacks {', '.join(missing)} (SEVIS requires them for an "
            "exchange visitor and each dependent): enter them in the SIS",
            where + missing[0],
        )
        return None
    if who.get("email"):
        mail = b.attempt(lambda: fmt.email(who.get("email"), where + "email"))
        if mail:
            out["EmailAddress"] = mail
    return out


def _us(b: _Builder, a: dict[str, Any] | None, field: str) -> dict[str, Any] | None:
    return b.attempt(lambda: fmt.us_address(a, field)) if a else None


def _site_address(b: _Builder, s: dict[str, Any], slot: str) -> dict[str, Any] | None:
    where = f"ev_site[{slot}]"
    addr = _us(b, {k: s.get(k) for k in ("line1", "line2", "city", "state", "postal_code")}, where)
    if addr is None:
        if not s.get("line1"):
            b.issue("missing_field", f"{where} has no street line", f"{where}.line1")
        return None  # reported: missing_field above or the address formatter's issue
    name = fmt._clip(s.get("name"), 60)
    if not name:
        b.issue("missing_field", f"{where} has no site name (SEVIS requires one)", f"{where}.name")
        return None
    return {**addr, "SiteName": name}


def _dollars(v: Any) -> int:
    """A positive whole amount, else 0 (SEVIS takes no $0 amount: S2151)."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def _funding(b: _Builder, fu: dict[str, Any]) -> dict[str, Any] | None:
    """FinancialInfo: ReceivedUSGovtFunds, ProgramSponsorFunds, OtherFunds; amounts of $0 are left out (S2151)."""
    if fu.get("us_govt_funds") is None:
        b.issue(
            "missing_field",
            "ev_funding.us_govt_funds is empty: SEVIS needs to know whether US government funds are received",
            "ev_funding.us_govt_funds",
        )
        return None
    out: dict[str, Any] = {"ReceivedUSGovtFunds": fmt.yes_no(fu["us_govt_funds"])}

    if _dollars(fu.get("sponsor_funds")):
        out["ProgramSponsorFunds"] = str(_dollars(fu.get("sponsor_funds")))
    other: dict[str, Any] = {}
    for org, f, el in (("us_agency", "us_agency_funds", "USGovt"), ("intl_org", "intl_org_funds", "International")):
        if _dollars(fu.get(f)):
            if not fu.get(org):
                b.issue(
                    "missing_field",
                    f"ev_funding.{f} needs the organisation's code in ev_funding.{org}",
                    f"ev_funding.{org}",
                )
                return None
            other[el] = {"Org1": fu[org], "Amount1": str(_dollars(fu.get(f)))}
    for f, el in (("home_govt_funds", "EVGovt"), ("binational_funds", "BinationalCommission")):
        if _dollars(fu.get(f)):
            other[el] = str(_dollars(fu.get(f)))
    if _dollars(fu.get("other_org_funds")):
        if not fu.get("other_org"):
            b.issue(
                "missing_field",
                "ev_funding.other_org_funds needs the organisation's name (S2223)",
                "ev_funding.other_org",
            )
            return None
        other["Other"] = {"Name": fmt._clip(fu["other_org"], 60), "Amount": str(_dollars(fu.get("other_org_funds")))}
    if _dollars(fu.get("personal_funds")):
        other["Personal"] = str(_dollars(fu.get("personal_funds")))
    total = sum(_dollars(fu.get(f)) for f in FUNDING_FIELDS if f.endswith("_funds") and f != "us_govt_funds")
    if total < 1:
        b.issue(
            "bad_amount",
            "the exchange visitor's funding totals $0: SEVIS needs at least $1 (S2152) — enter the funding in the SIS",
            "ev_funding",
        )
        return None
    if other:
        out["OtherFunds"] = other
    return out


def _dep_bio(b: _Builder, d: dict[str, Any], slot: str) -> dict[str, Any] | None:
    bio = _bio(b, d, d.get("residence_country"), f"ev_dependent[{slot}].")
    if bio is None:
        return None  # reported: _bio's issue
    if d.get("relationship") is None:
        b.issue("missing_field", f"ev_dependent[{slot}] lacks relationship", f"ev_dependent[{slot}].relationship")
        return None
    return {**bio, "Relationship": d["relationship"]}


# ---------------------------------------------------------------------------- Create


def _create(b: _Builder) -> None:
    v = b.new
    st, ex, addr = _sub(v, "student"), _ex(v), _sub(v, "address")
    before = len(b.out.issues)
    bio = _bio(b, st, ex.get("residence_country"), "student.")
    subject = b.attempt(lambda: fmt.cip(ex.get("subject_cip"), "exchange.subject_cip", allow_zero=False))
    funding = _funding(b, _sub(v, "ev_funding"))
    sites = []
    for slot, s in _active_sites(v).items():
        a = _site_address(b, s, slot)
        if a:
            sites.append({"@xsi:type": "SOA", "@sisKey": slot, **a, "PrimarySite": fmt.yes_no(s.get("primary"))})
    if sites and not any(s["PrimarySite"] == "true" for s in sites):
        sites[0]["PrimarySite"] = "true"
        b.issue(
            "needs_dso",
            "no site of activity is marked primary in the SIS: the first one is sent as primary — "
            "mark the primary site in the SIS",
            "ev_site",
        )
    deps, slots = [], []
    for slot, d in _active_deps(v).items():
        db = _dep_bio(b, d, slot)
        if db:
            deps.append({**db, "@sisKey": slot})
            slots.append(slot)
    if bio is None or subject is None or funding is None or not sites:
        return  # reported: the issues above say why the Create is not sendable; a later change re-tries it
    phone = _phone(st)
    if phone:
        bio["PhoneNumber"] = phone
    payload: dict[str, Any] = {
        "@printForm": "true",
        "Biographical": bio,
        "PositionCode": ex["position"],
        "PrgStartDate": ex["start_date"],
        "PrgEndDate": ex["end_date"],
        "CategoryCode": ex["category"],
        "SubjectField": {"SubjectFieldCode": subject, "Remarks": fmt._clip(ex["subject_remarks"], 500)},
    }
    for slot_name, el in (("us_physical", "USAddress"), ("us_mailing", "MailAddress")):
        a = _us(b, addr.get(slot_name), f"address.{slot_name}")
        if a:
            payload[el] = a
    payload["FinancialInfo"] = funding
    if deps:
        payload["CreateDependent"] = {"Dependent": deps}
    payload["AddSiteOfActivity"] = {"SiteOfActivity": sites}
    notes, told = _spelling(st, "student.", "")
    for slot in slots:
        more, also = _spelling(_sub(v, "ev_dependent")[slot], f"ev_dependent[{slot}].", f"dependent {slot} ")
        notes, told = notes + more, told + also
    if len(deps) > 25 or len(sites) > 25:
        b.issue(
            "too_many",
            "a CreateEV takes at most 25 dependents and 25 sites of activity: add the others with "
            "later updates (correct the SIS)",
            "ev_dependent" if len(deps) > 25 else "ev_site",
        )
        return
    b.event(
        "EV.Create",
        "EV.Create",
        payload,
        None,
        {"exchange_visitor": "new record"},
        problems=[i.reason for i in b.out.issues[before:]] + notes,
        told=told,
    )


# ---------------------------------------------------------------------------- Validate, Biographical


def validate_problem(v: dict[str, Any] | None) -> tuple[str, str, str] | None:
    """Why a Validate of view ``v`` cannot go out: (code, reason, field), or None. Pure: the same check says
    whether an earlier version's Validate went out."""
    us = _sub(v, "address").get("us_physical")
    if not us:
        return (
            "incomplete_record",
            "Validate waits for: address.us_physical (the exchange visitor's US residence): enter it in the SIS",
            "address.us_physical",
        )
    try:
        fmt.us_address(us, "address.us_physical")
    except FormatProblem as p:
        return (p.code, p.reason, p.field)
    return None


def _validate(b: _Builder, force: bool = False) -> bool:
    """Initial → active (checked in): Validate. A Validate held back (no US address) goes out once it can."""
    old, new = _status(b.prev), _status(b.new)
    if new != "active":
        return False  # not-reportable: not (or no longer) a validated record
    due = force or old == "initial" or (old == "active" and validate_problem(b.prev) is not None)
    if not due:
        return False  # not-reportable: validated before (SEVIS holds the record as Active)
    problem = validate_problem(b.new)
    if problem is not None:
        b.issue(*problem)
        return False
    start, day = _ex(b.new).get("start_date"), _commit_date(b.ctx)
    early = bool(start and day and _days(day, start) > 30)
    st = _sub(b.new, "student")
    payload: dict[str, Any] = {
        "USAddress": fmt.us_address(_sub(b.new, "address")["us_physical"], "address.us_physical")
    }
    mail = b.attempt(lambda: fmt.email(st.get("email"), "student.email"))
    if mail:
        payload["EmailAddress"] = mail
    phone = _phone(st)
    problems = [] if phone else ["no US phone number in the SIS: SEVIS expects one at validation"]
    if early:  # a record cannot wait for a date here (pure, no clock): the RO holds it (`batch hold`)
        problems.append(
            f"checked in more than 30 days before the program begin date {start}: SEVIS refuses a "
            "Validate that early (S2284) — hold this record until 30 days before that date"
        )
    if phone:
        payload["PhoneNumber"] = phone
    return b.event("EV.Validate", "EV.Validate", payload, {"status": old}, {"status": new}, problems=problems)


def _days(a: str, c: str) -> int:
    """Days from ISO date ``a`` to ISO date ``c``."""
    return (date.fromisoformat(c) - date.fromisoformat(a)).days


def _biographical(b: _Builder, skip_address: bool) -> None:
    ps, ns = _sub(b.prev, "student"), _sub(b.new, "student")
    pe, ne = _ex(b.prev), _ex(b.new)
    pa, na = _sub(b.prev, "address"), _sub(b.new, "address")
    changed = [
        f
        for f in BIO_FIELDS
        if ps.get(f) != ns.get(f) and not (skip_address and f in ("email", "phone", "phone_country_code"))
    ]
    if pe.get("residence_country") != ne.get("residence_country"):
        changed.append("residence_country")
    if pe.get("position") != ne.get("position"):
        changed.append("position")
    slots = [s for s in ("us_physical", "us_mailing") if pa.get(s) != na.get(s)]
    if skip_address:
        slots = [s for s in slots if s != "us_physical"]  # the Validate carried the residence, e-mail and phone
    if not changed and not slots:
        return  # not-reportable: nothing SEVIS holds in the biography changed
    removed = [
        f
        for f in changed
        if f
        in (
            "birth_date",
            "gender",
            "birth_city",
            "birth_country",
            "citizenship_country",
            "email",
            "residence_country",
            "position",
        )
        and (ns.get(f) if f not in ("residence_country", "position") else ne.get(f)) is None
    ]
    removed += [f"address.{s}" for s in slots if na.get(s) is None]
    for f in removed:
        b.issue(
            "missing_field",
            f"{f} was removed in the SIS; a batch cannot remove it, so SEVIS keeps the old "
            "value: enter the current one in the SIS",
            f if "." in f else f"student.{f}",
        )
    bio = _bio(b, ns, ne.get("residence_country"), "student.", required=False)
    if bio is None:
        return  # reported: _bio's issue
    if ns.get("birth_country") != "US":
        bio["BirthCountryReason"] = ""  # SEVIS wants the empty tag when the birth country is not the US (S2104)
    phone = _phone(ns)
    if phone:
        bio["PhoneNumber"] = phone
    if ne.get("position") is not None:
        bio["PositionCode"] = ne["position"]
    for s, el in (("us_physical", "USAddress"), ("us_mailing", "MailAddress")):
        a = _us(b, na.get(s), f"address.{s}")
        if a and (s in slots or not skip_address):
            bio[el] = a
    form = any(f in FORM_FIELDS or f in ("residence_country", "position") for f in changed)
    before = {f: ps.get(f) for f in changed if f in BIO_FIELDS}
    after = {f: ns.get(f) for f in changed if f in BIO_FIELDS}
    for f in ("residence_country", "position"):
        if f in changed:
            before[f], after[f] = pe.get(f), ne.get(f)
    for s in slots:
        before[f"address.{s}"], after[f"address.{s}"] = pa.get(s), na.get(s)
    notes, told = _spelling(ns, "student.", "")
    b.event(
        "EV.Biographical",
        "EV.Biographical",
        {"@printForm": fmt.yes_no(form), **bio},
        before,
        after,
        problems=notes,
        told=told if any(f in NAME_FIELDS for f in changed) else None,
    )


# ---------------------------------------------------------------------------- Program


def _program(b: _Builder) -> None:
    pe, ne = _ex(b.prev), _ex(b.new)
    status = ne.get("status")
    if status not in OPEN or _status(b.prev) not in OPEN:
        return  # not-reportable: a closing change is a Status event (below); a closed record takes none
    _subject(b, pe, ne)
    for f in ("start_date", "end_date"):
        if pe.get(f) and not ne.get(f):
            b.issue(
                "missing_field",
                f"exchange.{f} was removed in the SIS; SEVIS keeps the old date: enter it in the SIS",
                f"exchange.{f}",
            )
            return
    old_s, new_s, old_e, new_e = pe.get("start_date"), ne.get("start_date"), pe.get("end_date"), ne.get("end_date")
    dates = ({"start_date": old_s, "end_date": old_e}, {"start_date": new_s, "end_date": new_e})
    if status == "initial":
        if (old_s, old_e) != (new_s, new_e):
            payload = {"@printForm": "true", "PrgStartDate": new_s, "PrgEndDate": new_e}
            if ne.get("change_remarks"):
                payload["Remarks"] = fmt._clip(ne["change_remarks"], 500)
            b.event("EV.Program.Amend", "EV.Program.Dates", payload, dates[0], dates[1])
        _category(b, pe, ne, extended=False)
        return  # reported: the Amend above, the category issue; else not-reportable (initial, dates unchanged)
    if old_s != new_s:
        b.issue(
            "needs_dso",
            "exchange.start_date changed for a validated (active) exchange visitor: SEVIS moves the "
            "begin date of initial records only (Program/Amend) — request a correction in SEVIS, or correct "
            "the SIS",
            "exchange.start_date",
        )
    if old_e == new_e or not old_e or not new_e:
        _category(b, pe, ne, extended=False)
        return  # reported: a category change is told by _category; else not-reportable (dates unchanged)
    if str(new_e) > str(old_e):
        if _category(b, pe, ne, extended=True):
            return  # reported: Program.Matriculate carries the new end date
        payload = {"@printForm": "true", "NewPrgEndDate": new_e}
        if ne.get("change_remarks"):
            payload["Remarks"] = fmt._clip(ne["change_remarks"], 500)
        b.event("EV.Program.Extension", "EV.Program.Dates", payload, dates[0], dates[1])
        return
    _category(b, pe, ne, extended=False)
    _shorten(b, ne, str(old_e), str(new_e), dates)


def _shorten(b: _Builder, ne: dict[str, Any], old_e: str, new_e: str, dates: tuple[dict[str, Any], ...]) -> None:
    if new_e < (ne.get("start_date") or new_e):
        b.issue(
            "date_order",
            "exchange.end_date is before exchange.start_date: correct the dates in the SIS",
            "exchange.end_date",
        )
        return
    reason = ne.get("end_reason")
    if not reason:
        b.issue(
            "missing_field",
            "exchange.end_date moved earlier without a reason (exchange.end_reason): SEVIS needs "
            "one to shorten the program (Program/Shorten) — enter it in the SIS",
            "exchange.end_reason",
        )
        return
    remarks = ne.get("end_remarks")
    problems = [] if remarks else ["Remarks is a default text: confirm why the program ended early"]
    b.event(
        "EV.Program.Shorten",
        "EV.Program.Dates",
        {
            "@printForm": "true",
            "NewPrgEndDate": new_e,
            "ShortenReason": reason,
            "Remarks": fmt._clip(remarks, 500)
            if remarks
            else f"Program end date moved from {old_e} to {new_e} by the sponsor",
        },
        dates[0],
        dates[1],
        problems=problems,
    )


def _category(b: _Builder, pe: dict[str, Any], ne: dict[str, Any], extended: bool) -> bool:
    """A category change: Matriculate when a J-1 student moves to a degree programme with a later end date (True);
    any other change of category is not a batch event (needs_dso)."""
    old, new = pe.get("category"), ne.get("category")
    if old == new:
        return False  # not-reportable: the category did not change
    if (
        extended
        and ne.get("status") == "active"
        and old in ("1A", "1B", "1C", "1D", "1E", "1F")
        and new in MATRICULATION
    ):
        b.event(
            "EV.Program.Matriculate",
            "EV.Program.Dates",
            {"@printForm": "true", "NewPrgEndDate": ne["end_date"], "MatriculationCode": MATRICULATION[new]},
            {"category": old, "end_date": pe.get("end_date")},
            {"category": new, "end_date": ne["end_date"]},
        )
        return True
    b.issue(
        "needs_dso",
        f"the exchange category changed from {old} to {new}: a batch changes a J-1 student's "
        "category only by matriculation with a later end date — make the change of category in SEVIS RTI, or "
        "correct the SIS",
        "exchange.category",
    )
    return False


def _subject(b: _Builder, pe: dict[str, Any], ne: dict[str, Any]) -> None:
    if (pe.get("subject_cip"), pe.get("subject_remarks")) == (ne.get("subject_cip"), ne.get("subject_remarks")):
        return  # not-reportable: subject/field unchanged
    code = b.attempt(lambda: fmt.cip(ne.get("subject_cip"), "exchange.subject_cip", allow_zero=False))
    if code is None or not ne.get("subject_remarks"):
        if ne.get("subject_cip") is None or not ne.get("subject_remarks"):
            b.issue(
                "missing_field",
                "exchange.subject_cip and exchange.subject_remarks are both required by SEVIS: enter them in the SIS",
                "exchange.subject_cip",
            )
        return  # reported: missing_field above, or the formatter's bad_code
    remarks = ne.get("change_remarks")
    b.event(
        "EV.Program.EditSubject",
        "EV.Program.Subject",
        {
            "@printForm": "true",
            "SubjectFieldCode": code,
            "SubjectFieldRemarks": fmt._clip(ne["subject_remarks"], 500),
            "Remarks": fmt._clip(remarks, 500) if remarks else "Subject field updated by the sponsor",
        },
        {"subject_cip": pe.get("subject_cip"), "subject_remarks": pe.get("subject_remarks")},
        {"subject_cip": ne.get("subject_cip"), "subject_remarks": ne.get("subject_remarks")},
        problems=[] if remarks else ["Remarks is a default text: say why the subject field changed"],
    )


# ---------------------------------------------------------------------------- FinancialInfo


def _financial(b: _Builder) -> None:
    pf, nf = _sub(b.prev, "ev_funding"), _sub(b.new, "ev_funding")
    ch = [f for f in FUNDING_FIELDS if pf.get(f) != nf.get(f)]
    if not ch or not pf:
        return  # not-reportable: funding unchanged, or a first funding row (the baseline)
    if not nf:
        b.issue(
            "missing_field",
            "the exchange visitor's funding record was removed in the SIS; SEVIS keeps the old "
            "funding: restore it in the SIS",
            "ev_funding",
        )
        return
    fin = _funding(b, nf)
    if fin is None:
        return  # reported: _funding's issue
    b.event(
        "EV.FinancialInfo",
        "EV.FinancialInfo",
        {"@printForm": "true", **fin},
        {f: pf.get(f) for f in ch},
        {f: nf.get(f) for f in ch},
    )


# ---------------------------------------------------------------------------- sites of activity


def _site_ref(s: dict[str, Any], slot: str) -> dict[str, Any]:
    """How SEVIS finds a site: its SiteId once known (else the renderer fills it from @sisKey), and its name."""
    ref: dict[str, Any] = {"@sisKey": slot}
    if s.get("site_sevis_id"):
        ref["SiteId"] = str(s["site_sevis_id"])
    name = fmt._clip(s.get("name"), 60)
    if name:
        ref["SiteName"] = name
    return ref


def _sites(b: _Builder) -> None:
    ps, ns = _active_sites(b.prev), _active_sites(b.new)
    for slot in sorted(set(ps) | set(ns)):
        p, n = ps.get(slot), ns.get(slot)
        ck = f"EV.Site:{slot}"
        if n and not p:
            a = _site_address(b, n, slot)
            if a:
                b.event(
                    "EV.SiteOfActivity.Add",
                    ck,
                    {
                        "@xsi:type": "AddSOA",
                        "@printForm": "false",
                        "@sisKey": slot,
                        **a,
                        "PrimarySite": fmt.yes_no(n.get("primary")),
                    },
                    {"site": None},
                    {"site": {f: n.get(f) for f in SITE_FIELDS}},
                    sub=slot,
                )
        elif p and not n:
            if p.get("primary"):
                b.issue(
                    "needs_dso",
                    f"ev_site[{slot}] was the primary site of activity and was removed in the SIS: "
                    "SEVIS never deletes the primary site (S2203) — mark another site primary first, or correct "
                    "the SIS",
                    f"ev_site[{slot}]",
                )
                continue
            b.event(
                "EV.SiteOfActivity.Delete",
                ck,
                _site_ref(p, slot),
                {"site": {f: p.get(f) for f in SITE_FIELDS}},
                {"site": None},
                sub=slot,
            )
        elif p and n:
            ch = [f for f in SITE_FIELDS if p.get(f) != n.get(f)]
            if not ch:
                continue  # not-reportable: nothing SEVIS holds about the site changed (its SiteId arrived)
            _site_edit(b, slot, p, n, ch)


def _site_edit(b: _Builder, slot: str, p: dict[str, Any], n: dict[str, Any], ch: list[str]) -> None:
    if p.get("primary") and not n.get("primary") and not any(s.get("primary") for s in _active_sites(b.new).values()):
        b.issue(
            "needs_dso",
            f"ev_site[{slot}] is no longer primary and no other site is: SEVIS keeps one primary "
            "site (S2201) — mark the new primary site in the SIS",
            f"ev_site[{slot}].primary",
        )
        return
    a = _site_address(b, n, slot)
    if a is None:
        return  # reported: _site_address's issue
    payload: dict[str, Any] = {
        "@printForm": "false",
        **{k: v for k, v in a.items() if k != "SiteName"},
        **_site_ref(p, slot),
    }
    if "name" in ch:
        payload["NewSiteName"] = a["SiteName"]
    if "primary" in ch:
        payload["PrimarySite"] = fmt.yes_no(n.get("primary"))
    b.event(
        "EV.SiteOfActivity.Edit",
        f"EV.Site:{slot}",
        payload,
        {f: p.get(f) for f in ch},
        {f: n.get(f) for f in ch},
        sub=slot,
    )


# ---------------------------------------------------------------------------- J-2 dependents


def _dep_ref(d: dict[str, Any], slot: str) -> tuple[dict[str, Any], list[str]]:
    if d.get("dependent_sevis_id"):
        return {"@dependentSevisID": d["dependent_sevis_id"], "@sisKey": slot}, []
    return {"@sisKey": slot}, ["dependentSevisID unknown: filled from SEVIS's result before the batch is sent"]


def _dependents(b: _Builder) -> None:
    pd, nd = _sub(b.prev, "ev_dependent"), _sub(b.new, "ev_dependent")
    for slot in sorted(set(pd) | set(nd)):
        p, n = pd.get(slot) or {}, nd.get(slot) or {}
        was, now = p.get("status"), n.get("status")
        if now == "active" and was != "active":
            if was in ("ended", "terminated", "deleted"):
                b.issue(
                    "needs_dso",
                    f"ev_dependent[{slot}] is active again after it was {was}: a batch cannot "
                    "reactivate a dependent — do it in SEVIS RTI, or correct the SIS",
                    f"ev_dependent[{slot}].status",
                )
                continue
            _dep_add(b, slot, n)
        elif was == "active" and now == "active":
            _dep_edit(b, slot, p, n)
        elif was == "active":
            _dep_end(b, slot, p, n)


def _dep_add(b: _Builder, slot: str, n: dict[str, Any]) -> None:
    bio = _dep_bio(b, n, slot)
    if bio is None:
        return  # reported: _dep_bio's issue
    notes, told = _spelling(n, f"ev_dependent[{slot}].", f"dependent {slot} ")
    b.event(
        "EV.Dependent.Add",
        f"EV.Dependent:{slot}",
        {"@printForm": "true", "@sisKey": slot, **bio, "FormPurpose": "06" if n.get("accompanying") else "08"},
        {"status": None},
        {"status": "active"},
        sub=slot,
        problems=notes,
        told=told,
    )


def _dep_edit(b: _Builder, slot: str, p: dict[str, Any], n: dict[str, Any]) -> None:
    ch = [f for f in DEP_FIELDS if p.get(f) != n.get(f)]
    if not ch:
        return  # not-reportable: nothing SEVIS holds about the dependent changed (its SEVIS ID arrived)
    bio = _dep_bio(b, n, slot)
    if bio is None:
        return  # reported: _dep_bio's issue
    ref, problems = _dep_ref(n if n.get("dependent_sevis_id") else p, slot)
    notes, told = _spelling(n, f"ev_dependent[{slot}].", f"dependent {slot} ")
    b.event(
        "EV.Dependent.Edit",
        f"EV.Dependent:{slot}",
        {"@printForm": "true", **ref, **bio},
        {f: p.get(f) for f in ch},
        {f: n.get(f) for f in ch},
        sub=slot,
        problems=problems + notes,
        told=told if any(f in ("first_name", "last_name") for f in ch) else None,
    )


def _dep_end(b: _Builder, slot: str, p: dict[str, Any], n: dict[str, Any]) -> None:
    """Active → ended (EndStatus), terminated (Terminate), deleted or the row gone (Delete: entered in error)."""
    now = n.get("status")
    ref, problems = _dep_ref(p, slot)
    where = f"ev_dependent[{slot}]"
    if now in (None, "deleted"):
        # after = no dependent: an Add still in the open batch and this Delete cancel out (entered in error)
        b.event(
            "EV.Dependent.Delete",
            f"EV.Dependent:{slot}",
            ref,
            {"status": "active"},
            {"status": None},
            sub=slot,
            problems=problems,
        )
        return
    reason = n.get("end_reason")
    allowed = END_STATUS_REASONS if now == "ended" else DEP_TERMINATION_REASONS
    if now not in ("ended", "terminated") or reason not in allowed:
        b.issue(
            "needs_dso",
            f"{where} left the program ({now}) without a reason SEVIS takes for it "
            f"({', '.join(allowed)} from [values.ev_dependent_end_reason]): end it in SEVIS RTI, or enter the "
            "reason in the SIS",
            f"{where}.end_reason",
        )
        return
    if now == "ended":
        b.event(
            "EV.Dependent.EndStatus",
            f"EV.Dependent:{slot}",
            {**ref, "Reason": reason},
            {"status": "active"},
            {"status": "ended"},
            sub=slot,
            problems=problems,
        )
        return
    if not n.get("end_date"):
        b.issue(
            "missing_field",
            f"{where} was terminated without a date (end_date): SEVIS needs the effective date",
            f"{where}.end_date",
        )
        return
    b.event(
        "EV.Dependent.Terminate",
        f"EV.Dependent:{slot}",
        {**ref, "Reason": reason, "EffectiveDate": n["end_date"]},
        {"status": "active"},
        {"status": "terminated"},
        sub=slot,
        problems=problems,
    )


# ---------------------------------------------------------------------------- Status


def _status_events(b: _Builder) -> None:
    old, new = _status(b.prev), _status(b.new)
    ne = _ex(b.new)
    if old == new or new in OPEN:
        if old == "active" and new == "initial":
            b.issue(
                "needs_dso",
                "the exchange visitor is initial again after validation: SEVIS cannot undo a "
                "validation from a batch — request a correction in SEVIS, or correct the SIS",
                "exchange.status",
            )
        return  # reported: above, or a Validate; else not-reportable (status unchanged)
    before, after = {"status": old}, {"status": new}
    if new == "completed":
        return  # not-reportable: SEVIS ends the record at its end date (an early end is Program/Shorten)
    if new in ("no_show", "invalid"):
        if old != "initial":
            b.issue(
                "bad_transition",
                f"only an initial (not yet validated) record can be a {new.replace('_', ' ')}; "
                "this one is active — shorten or terminate the program instead",
                "exchange.status",
            )
            return
        if new == "no_show":
            b.event("EV.Status.NoShow", "EV.Status", {}, before, after)
            return
        remarks = ne.get("end_remarks")
        b.event(
            "EV.Status.Invalid",
            "EV.Status",
            {"Remarks": fmt._clip(remarks, 500) if remarks else "The exchange program will not take place"},
            before,
            after,
            problems=[] if remarks else ["Remarks is a default text: say why"],
        )
        return
    if new != "terminated":
        b.issue(
            "bad_code",
            f"exchange.status {new} is not a status sevisflow knows (initial, active, completed, "
            "no_show, invalid, terminated in [values.ev_status])",
            "exchange.status",
        )
        return
    if old != "active":
        b.issue(
            "bad_transition",
            "an initial record cannot be terminated: report a no-show or an invalid record instead",
            "exchange.status",
        )
        return
    reason, day = ne.get("termination_reason"), ne.get("termination_date")
    if not reason or not day:
        b.issue(
            "missing_field",
            "the exchange visitor was terminated without a reason or date "
            "(exchange.termination_reason, exchange.termination_date): SEVIS needs both — enter them in the SIS",
            "exchange.termination_reason" if not reason else "exchange.termination_date",
        )
        return
    payload: dict[str, Any] = {"Reason": reason, "EffectiveDate": day}
    if reason == "OTHER":
        if not ne.get("end_remarks"):
            b.issue(
                "missing_field",
                "termination reason OTHER needs remarks (exchange.end_remarks, S2222)",
                "exchange.end_remarks",
            )
            return
        payload["OtherRemarks"] = fmt._clip(ne["end_remarks"], 500)
    b.event("EV.Status.Terminate", "EV.Status", payload, before, after)
