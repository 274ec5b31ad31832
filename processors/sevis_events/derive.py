"""(previous view, new view) → SEVIS events and DSO issues: a pure function, no clock, no I/O.

Rules (docs/MAPPING.md "What is reported"):

* Only *international* views (visa type is a reported SEVIS code) produce events; a student who
  stops being international stops being reported — one SEVIS holds as open becomes an issue
  ``status_left_fmj`` (``student_removed`` when the student row is gone); views built from a snapshot set
  the baseline and produce no updates (SEVIS already has that state), only a Create when one is due (or
  ``incomplete_record`` when it cannot be made).
* Nothing silent: a name spelled differently for SEVIS is sent with both spellings in the event's
  ``problems`` and an issue ``name_altered``; a value removed in the SIS, a change a batch cannot make
  (a closed record reopened, an active record's start date, a deferred admission's end date) and a
  J-1 student's update (naming the changed fields) are issues. Every quiet ``return``/``continue`` is
  annotated ``# reported:`` / ``# not-reportable:`` (tests/unit/test_nothing_silent.py).
* No SEVIS ID yet: ``Create`` once the record is complete and the programme is initial/active (the
  first view that is create-ready); before that, an ``incomplete_record`` issue that lists the
  missing fields, raised again only when that list changes. After the Create, updates are derived as
  usual with ``sevis_id`` null: the batcher holds them until SEVIS returns the ID.
* A SEVIS ID that appears without a Create from us (record made in SEVIS RTI) sets the baseline.
* Many schools in one deployment: an F/M student's events go under the OrgID of the student's school,
  ``student.school_code`` (empty = the main school, ``ctx.org_id``; a member's SIS code → its OrgID,
  ``ctx.schools``). An unknown code is an ``unknown_school`` issue and no event; a student SEVIS holds whose
  code changed (a move between member schools) is a ``school_changed`` issue and no event for that change
  (the transfer is made in SEVIS RTI), later changes go under the new school. EV views are routed by their
  sponsor program, not by school.
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
  letter for the DSO) names the field; an event with nothing left is not emitted. Every payload passes
  :func:`sevisflow.processors.sevis_events.hygiene.check_event` before it is emitted (control characters, lengths,
  amounts, dates): a finding refuses that event only. A Create that was refused is tried again by the next
  create-ready version.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from sevisflow.processors.sevis_events import hygiene
from sevisflow.processors.sevis_events import sevis_format as fmt
from sevisflow.processors.sevis_events.sevis_format import FormatProblem

PROCESSOR_VERSION = "sevisflow-events/1"
OPEN_STATUSES = ("initial", "active", "deferred")
TERMINAL = ("completed", "terminated", "canceled")
NAME_FIELDS = ("first_name", "middle_name", "last_name", "preferred_name")
DEP_BIO = (
    "first_name",
    "last_name",
    "birth_date",
    "gender",
    "birth_city",
    "birth_country",
    "citizenship_country",
    "relationship",
)
FINANCE_FIELDS = (
    "academic_term_months",
    "tuition",
    "living_expenses",
    "dependent_expenses",
    "other_costs",
    "other_costs_remarks",
    "personal_funds",
    "school_funds",
    "school_funds_remarks",
    "other_funds",
    "other_funds_source",
    "employment_funds",
)


@dataclass(init=False)
class Context:
    """What an event needs besides the two views: where the change came from. Not changed once made
    (``dataclasses.replace`` makes a routed copy). The ``__init__``s of this class, :class:`Issue` and
    :class:`Derived` are written out: compiled by mypyc, a dataclass's generated one runs as Python."""

    org_id: str
    unit_id: str
    lineage: list[dict[str, Any]]
    commit_ts_ms: int | None
    snapshot: bool
    timezone: str  # the school's time zone (school.timezone): a commit's local calendar date
    # J-1 sponsor programs the settings configure: the SIS's program code → program number (the EV batch OrgID)
    ev_programs: Mapping[str, str]
    # member F/M schools ([[schools]]): the SIS's school code (student.school_code) → the school's OrgID; a
    # student with an empty code belongs to the main school (``org_id``)
    schools: Mapping[str, str]
    # the main school's OrgID once ``org_id`` was routed to a member school ("" = ``org_id`` is the main one)
    main_org_id: str

    def __init__(
        self,
        org_id: str,
        unit_id: str,
        lineage: list[dict[str, Any]],
        commit_ts_ms: int | None = None,
        snapshot: bool = False,
        timezone: str = "UTC",
        ev_programs: Mapping[str, str] | None = None,
        schools: Mapping[str, str] | None = None,
        main_org_id: str = "",
    ) -> None:
        self.org_id = org_id
        self.unit_id = unit_id
        self.lineage = lineage
        self.commit_ts_ms = commit_ts_ms
        self.snapshot = snapshot
        self.timezone = timezone
        self.ev_programs = {} if ev_programs is None else ev_programs
        self.schools = {} if schools is None else schools
        self.main_org_id = main_org_id


@dataclass(init=False)
class Issue:
    code: str
    reason: str
    field: str | None

    def __init__(self, code: str, reason: str, field: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.field = field


@dataclass(init=False)
class Derived:
    events: list[dict[str, Any]]
    issues: list[Issue]

    def __init__(self, events: list[dict[str, Any]] | None = None, issues: list[Issue] | None = None) -> None:
        self.events = [] if events is None else events
        self.issues = [] if issues is None else issues


# ---------------------------------------------------------------------------- helpers


def _intl(v: dict[str, Any] | None) -> bool:
    return bool(v and v.get("international"))


def _sevis_id(v: dict[str, Any] | None) -> str | None:
    sevis_id: str | None = (v or {}).get("student", {}).get("sevis_id")
    return sevis_id


def _status(v: dict[str, Any] | None) -> str | None:
    status: str | None = (v or {}).get("program", {}).get("status")
    return status


def _sub(v: dict[str, Any] | None, section: str) -> dict[str, Any]:
    return (v or {}).get(section) or {}


@lru_cache(maxsize=8)
def _zone(name: str) -> Any:
    return UTC if name == "UTC" else ZoneInfo(name)


def _commit_date(ctx: Context) -> str | None:
    """The SIS commit's date where the school is: the I-20 issue date when the SIS gives none (a
    commit at 19:00 in Chicago is that day there, though it is already the next day in UTC)."""
    if ctx.commit_ts_ms is None:
        return None
    return datetime.fromtimestamp(ctx.commit_ts_ms / 1000, tz=_zone(ctx.timezone)).date().isoformat()


def missing_for_create(v: dict[str, Any]) -> list[str]:
    """Canonical fields a CreateStudent needs that the view lacks (sorted)."""
    st, pg, fi = _sub(v, "student"), _sub(v, "program"), _sub(v, "finance")
    need = [
        (
            "student",
            st,
            ("last_name", "birth_date", "gender", "birth_country", "citizenship_country", "visa_type", "issue_reason"),
        ),
        ("program", pg, ("degree_level", "major_cip", "start_date", "end_date", "english_required")),
        ("finance", fi, ("academic_term_months", "tuition", "living_expenses", "personal_funds")),
    ]
    out = [f"{name}.{f}" for name, sec, fields in need for f in fields if sec.get(f) is None]
    if pg.get("status") is None:
        out.append("program.status")
    fa = _sub(v, "address").get("foreign") or {}
    if not fa.get("line1") or not fa.get("country"):
        out.append("address.foreign")
    return sorted(out)


def create_ready(v: dict[str, Any] | None) -> bool:
    return bool(
        _intl(v) and not _sevis_id(v) and _status(v) in ("initial", "active") and not missing_for_create(v or {})
    )


def _display(v: dict[str, Any]) -> str | None:
    st = _sub(v, "student")
    last, first = st.get("last_name"), st.get("first_name")
    return ", ".join(x for x in (last, first) if x) or None


SPELLING = "spelling for SEVIS"
"""Prefix of the ``problems`` note that shows a name's SIS spelling next to the one sent (``batch show``, ``todo``)."""


def _spelling(who: dict[str, Any], prefix: str, label: str) -> tuple[list[str], list[Issue]]:
    """Names SEVIS gets spelled differently from the SIS (accents, hyphens, apostrophes, periods): a note per
    field with both spellings for the record's ``problems`` (records hold names anyway), and a ``name_altered``
    issue for the DSO's worklist whose reason names the field and the change, never the name — the caller adds
    the issues once the event carrying the name went out."""
    notes: list[str] = []
    issues: list[Issue] = []
    for f in NAME_FIELDS:
        text = who.get(f)
        how = fmt.name_alterations(text) if isinstance(text, str) else []
        if not how:
            continue  # not-reportable: SEVIS gets the SIS spelling (spaces aside)
        try:
            sent = fmt.sevis_name(text, prefix + f, 180 if f == "preferred_name" else 80)
        except FormatProblem:
            continue  # reported: name_rejected, raised where the name is formatted
        notes.append(f'{SPELLING} — {label}{f.replace("_", " ")}: SIS "{text}" → sent "{sent}" ({", ".join(how)})')
        issues.append(
            Issue(
                "name_altered",
                f"the SIS spelling of {prefix}{f} was changed for SEVIS "
                f"({', '.join(how)}); the record is sent: `sevisflow batch show --student <key>` shows "
                "both spellings — if the passport spells it otherwise, correct the SIS",
                prefix + f,
            )
        )
    return notes, issues


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

    def event(
        self,
        kind: str,
        coalesce_key: str,
        payload: dict[str, Any],
        before: Any = None,
        after: Any = None,
        sub: str = "",
        problems: list[str] | None = None,
        told: list[Issue] | None = None,
    ) -> bool:
        """Emit the event (True), or refuse it with an issue per hygiene finding (False). ``told``: issues that
        hold only if the event goes out (a name altered for SEVIS)."""
        # data hygiene at the door: a value SEVIS cannot carry refuses this event (an issue per finding), never
        # the batch it would have joined; other events and students are not affected
        day = _commit_date(self.ctx)
        findings = hygiene.check_event(kind, payload, self.new, hygiene.parse_date(day) if day else None)
        if findings:
            for f in findings:
                self.issue(f.code, hygiene.refusal_reason(kind, [f]), f.field)
            return False  # reported: an issue per finding
        skey = self.new["student_key"]
        digest = hashlib.sha256(f"{self.ctx.org_id}|{skey}|{self.ctx.unit_id}|{kind}|{sub}".encode()).hexdigest()
        self.out.events.append(
            {
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
            }
        )
        self.out.issues.extend(told or [])
        return True


# ---------------------------------------------------------------------------- entry point


def derive(prev: dict[str, Any] | None, new: dict[str, Any] | None, ctx: Context) -> Derived:
    """Events and issues for one new version of a student's view.

    Every ``return``/``continue`` that leaves a change without an event or an issue says why on its line
    (``# reported: …`` / ``# not-reportable: …``); tests/unit/test_nothing_silent.py fails on one that does not."""
    if new is None:
        return Derived()  # not-reportable: a tombstone carries no SIS data (a deleted student is a view, exists=false)
    from sevisflow.processors.sevis_events import ev_derive  # here: ev_derive builds on this module

    if ev_derive.is_exchange(new):
        return ev_derive.derive_ev(prev, new, ctx)  # reported: EV events, or issues (ev_derive's own rules)
    if not _intl(new):
        return _not_reported(prev, new, ctx)  # reported: status_left_fmj / student_removed / not_reported_visa
    routed = _route(prev, new, ctx)
    if isinstance(routed, Derived):
        return routed  # reported: unknown_school / school_changed
    ctx = routed
    b = _Builder(prev if _intl(prev) else None, new, ctx)
    p = b.prev
    if not _sevis_id(new):
        if new.get("rekeyed_from") and create_ready(new):
            # the student's SIS key changed before SEVIS returned an ID: a Create may already be on its
            # way under the old key, and a second one would make a duplicate SEVIS record (told once)
            if p is not None and p.get("rekeyed_from") == new["rekeyed_from"] and create_ready(p):
                return b.out  # reported: student_key_changed, by the first version under the new key
            b.issue(
                "student_key_changed",
                f"student key changed from {new['rekeyed_from']} before SEVIS "
                "returned a SEVIS ID: no second CreateStudent is sent; if the Create for the old key "
                "was accepted, enter its SEVIS ID in the SIS, else create the record in SEVIS RTI",
                "student.sevis_id",
            )
            return b.out
        if create_ready(new) and not _create_went_out(p, ctx):
            _create(b)
            return b.out  # reported: the Create, or the issues that hold it back
        if not create_ready(new) and not _create_went_out(p, ctx):
            if _status(new) in (None, "initial", "active"):
                missing = missing_for_create(new)
                before = (
                    missing_for_create(p)
                    if (p and not _sevis_id(p) and _status(p) in (None, "initial", "active") and not ctx.snapshot)
                    else None
                )
                if missing != before:
                    b.issue(
                        "incomplete_record",
                        "CreateStudent waits for: " + ", ".join(missing) + ": complete the "
                        "SIS record (the Create goes out by itself), or create the record in SEVIS RTI and "
                        "enter its SEVIS ID in the SIS",
                        ",".join(missing),
                    )
                return b.out  # reported: incomplete_record, again whenever the list of missing fields changes
            return b.out  # not-reportable: no SEVIS record and none due (a deferred admit, or closed before a Create)
        # not create-ready any more after our Create went out: what changed is an update of that record
    # updates: only for a record SEVIS has (or will have from our Create)
    if p is None or ctx.snapshot:
        return b.out  # not-reportable: the baseline — SEVIS already holds this state (a snapshot, a first view)
    if not (_sevis_id(p) or create_ready(p)):
        return b.out  # not-reportable: the SEVIS ID came from SEVIS RTI (record made there): the baseline
    _closed_status(b)
    if _status(p) is not None and _status(p) not in TERMINAL and _status(new) is None:
        b.issue(
            "missing_field",
            "the programme record was removed in the SIS (or lost its status): SEVIS keeps the "
            "record as it was, and no programme change or registration is reported until the SIS has it again — "
            "restore it in the SIS",
            "program.status",
        )
    if _status(p) in TERMINAL and _status(new) in TERMINAL:
        _authorizations(b)  # OPT / a STEM extension may follow completion (SEVIS keeps the record Active)
        return b.out  # not-reportable: SEVIS takes no update of a closed record (a status change is told above)
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


ROUTING_CODES = ("unknown_school", "school_changed")


def school_code(v: dict[str, Any] | None) -> str:
    """The view's SIS school code (``student.school_code``), "" for the main school (null, blank or absent: a view
    written before the field existed belongs to the main school)."""
    code = _sub(v, "student").get("school_code")
    return code.strip() if isinstance(code, str) else ""


def school_org(v: dict[str, Any] | None, ctx: Context) -> str | None:
    """The F/M OrgID of the view's school: the main school's for an empty code, a member's, or None (unknown)."""
    code = school_code(v)
    return ctx.schools.get(code) if code else (ctx.main_org_id or ctx.org_id)


def _route(prev: dict[str, Any] | None, new: dict[str, Any], ctx: Context) -> Context | Derived:
    """The context whose ``org_id`` is the new view's school, or the issues that stop this change: an unknown
    school code, and/or a student SEVIS holds who moved to another school (a transfer is made in SEVIS RTI)."""
    org = school_org(new, ctx)
    key = new.get("student_key")
    code = school_code(new)
    main = ctx.main_org_id or ctx.org_id
    routed = ctx if org in (None, ctx.org_id) else dataclasses.replace(ctx, org_id=org, main_org_id=main)
    issues: list[Issue] = []
    if org is None:
        shown = code[:40]
        issues.append(
            Issue(
                "unknown_school",
                f"student {key}: SIS school code {shown!r} is not a configured school, so nothing is "
                f'reported for this change: add a [[schools]] entry with sis_school = "{shown}" (its '
                "org_id and DSOs) to the settings, or correct person.school_code in the SIS row",
                "student.school_code",
            )
        )
    if prev is not None and _intl(prev) and school_code(prev) != code:
        before = school_org(prev, routed)
        if _sevis_id(prev) or (before is not None and _create_went_out(prev, routed)):
            to = org or f"school code {code[:40]!r} (not configured)"
            issues.append(
                Issue(
                    "school_changed",
                    f"student {key} moved from {before or 'an unconfigured school'} to {to} in the SIS: "
                    "sevisflow does not move a SEVIS record between schools, so nothing is reported for "
                    "this change; transfer the student in SEVIS RTI (or correct person.school_code in the "
                    f"SIS row); later changes are reported under {org or 'that school once it is configured'}",
                    "student.school_code",
                )
            )
    return Derived(issues=issues) if issues else routed


def _create_went_out(p: dict[str, Any] | None, ctx: Context) -> bool:
    """Whether the previous version's Create was emitted. One that was refused (a rejected name, a value SEVIS
    cannot carry) was not: the next create-ready version tries the Create again instead of deriving updates."""
    return create_ready(p) and any(e["kind"] == "Create" for e in derive(None, p, ctx).events)


def _sevis_active(v: dict[str, Any] | None, ctx: Context) -> bool:
    """Whether SEVIS holds (or will hold, from our Create) an open F, M or J record for the student of view ``v``."""
    if not v or _status(v) not in OPEN_STATUSES:
        return False
    if _intl(v):
        return bool(_sevis_id(v)) or _create_went_out(v, ctx)
    return bool(v.get("not_reported_visa") and _sevis_id(v))


def _closed_status(b: _Builder) -> None:
    """A closed record (completed/terminated/canceled) whose SIS status changes again: SEVIS takes no second
    ending and does not reopen a record from a batch, so the DSO must act in SEVIS (or correct the SIS)."""
    old, new = _status(b.prev), _status(b.new)
    if old not in TERMINAL or new == old:
        return  # not-reportable: not a closed record, or its status did not change
    if new in TERMINAL:
        b.issue(
            "needs_dso",
            f"the programme status changed from {old} to {new} after the SEVIS record was closed: "
            "SEVIS takes no second ending from a batch — if SEVIS shows the wrong one, request a correction "
            "from the SEVIS Help Desk, else correct the SIS",
            "program.status",
        )
    else:
        b.issue(
            "needs_dso",
            f"the programme is {new or 'without a status'} again after it was {old}: a batch cannot "
            "reopen a closed SEVIS record — apply for reinstatement or request a correction in SEVIS, or correct "
            "the SIS",
            "program.status",
        )


def _not_reported(prev: dict[str, Any] | None, new: dict[str, Any], ctx: Context) -> Derived:
    """A student sevisflow does not report (any more). One SEVIS holds as open while the SIS no longer shows an
    F/M visa becomes ``status_left_fmj`` (or ``student_removed``). A student SEVIS holds in a batch sevisflow does
    not produce (J-1 → EV): what would have been an event becomes an issue naming the update and the fields that
    changed, so the RO/ARO files it in SEVIS RTI; nothing is dropped silently."""
    out = Derived()
    visa = new.get("not_reported_visa")
    if _sevis_active(prev, ctx) and not (visa and visa == (prev or {}).get("not_reported_visa")):
        if not new.get("exists", True):
            if new.get("rekeyed_to") and not new.get("exists"):
                # not-reportable: the key changed: the record goes on under the new key (normalize moved its rows)
                return out
            out.issues.append(
                Issue(
                    "student_removed",
                    "the student is no longer in the SIS (the student row was "
                    "deleted) while SEVIS holds the record as active: complete, transfer or terminate "
                    "the record in SEVIS, or restore the student in the SIS",
                    "student",
                )
            )
        elif visa:
            out.issues.append(
                Issue(
                    "status_left_fmj",
                    f"the SIS now shows a {visa} visa for a student SEVIS holds as "
                    f"an active F/M record: complete, transfer or terminate that record in SEVIS (the "
                    f"{visa} record is kept in SEVIS RTI), or correct the SIS",
                    "student.visa_type",
                )
            )
        else:
            out.issues.append(
                Issue(
                    "status_left_fmj",
                    "the SIS no longer shows an F/M/J visa for a student SEVIS "
                    "holds as active: complete, transfer or terminate the record in SEVIS, or correct "
                    "the SIS",
                    "student.visa_type",
                )
            )
    if not visa:
        return out  # not-reportable: not international (one SEVIS held as open is reported just above)
    same = prev is not None and prev.get("not_reported_visa") == visa
    shadow_prev = {**prev, "international": True} if prev is not None and same else None
    shadow = derive(shadow_prev, {**new, "international": True}, ctx)
    out.issues.extend(i for i in shadow.issues if i.code in ROUTING_CODES)  # no school: nothing to name below
    for e in shadow.events:
        if e["kind"] == "Create":
            what = "a new SEVIS record"
        else:
            fields = _changed_fields(e)
            what = f"the update {e['kind']}" + (f" (changed in the SIS: {', '.join(fields)})" if fields else "")
        out.issues.append(
            Issue(
                "not_reported_visa",
                f"{visa} student: SEVIS needs {what}, which sevisflow cannot "
                f"send ({visa} records are updated in SEVIS RTI / the EV batch)",
                "student.visa_type",
            )
        )
    return out


def _changed_fields(e: dict[str, Any]) -> list[str]:
    """The names (never the values) of what an event's before → after changes, for a reason that is logged; none
    for an event that adds something whole (a dependant: its kind says it)."""
    if not e.get("before_json"):
        return []
    before = orjson.loads(e["before_json"])
    after = orjson.loads(e["after_json"]) if e.get("after_json") else {}
    if not isinstance(before, dict) or not isinstance(after, dict):
        return []
    out = []
    for k in sorted(set(before) | set(after)):
        bv, av = before.get(k), after.get(k)
        if isinstance(bv, dict) and isinstance(av, dict) and k not in ("registration",) and not k.startswith("address"):
            out += [f"{k}.{x}" for x in sorted(set(bv) | set(av)) if bv.get(x) != av.get(x)]
        elif bv != av:
            out.append(k)
    return out


# ---------------------------------------------------------------------------- Create


def _edu_info(b: _Builder, v: dict[str, Any]) -> dict[str, Any] | None:
    pg, st = _sub(v, "program"), _sub(v, "student")
    level: dict[str, Any] = {"Level": pg.get("degree_level")}
    if pg.get("degree_level_remarks"):
        level["OtherRemarks"] = pg["degree_level_remarks"]
    elif pg.get("degree_level") == "11":
        b.issue(
            "missing_field",
            "education level 11 (other) needs remarks: add them to [values.edu_level]",
            "program.degree_level",
        )
        return None
    major1 = b.attempt(lambda: fmt.cip(pg.get("major_cip"), "program.major_cip", allow_zero=False))
    if major1 is None:
        if pg.get("major_cip") is None:
            b.issue(
                "missing_field",
                "program.major_cip is empty: SEVIS needs the major with the education level; enter it in the SIS",
                "program.major_cip",
            )
        return None  # reported: missing_field above, or bad_code by the formatter
    out: dict[str, Any] = {"EduLevel": level, "MajorCode1": major1}
    for f, el in (("second_major_cip", "MajorCode2"), ("minor_cip", "Minor")):
        val = b.attempt(functools.partial(fmt.cip, pg.get(f), f"program.{f}", allow_zero=True))
        if val:
            out[el] = val
    iss = st.get("i20_issue_date") or _commit_date(b.ctx)
    out.update(
        {
            "IssDate": iss,
            "PrgStartDate": pg.get("start_date"),
            "PrgEndDate": pg.get("end_date"),
            "EngProficiency": _eng(pg),
        }
    )
    return out


def _eng(pg: dict[str, Any]) -> dict[str, Any]:
    eng: dict[str, Any] = {"EngRequired": fmt.yes_no(pg.get("english_required"))}
    if pg.get("english_met") is not None:
        eng["RequirementsMet"] = fmt.yes_no(pg.get("english_met"))
    if pg.get("english_required") is False and pg.get("english_not_required_reason"):
        eng["NotRequiredReason"] = pg["english_not_required_reason"]
    return eng


def _amount(b: _Builder, amount: Any, remarks: Any, what: str) -> dict[str, Any] | None:
    if not amount:
        return None  # not-reportable: no amount, nothing to send
    if not remarks:
        b.issue("missing_field", f"{what} needs remarks (SEVIS requires them with the amount)", f"finance.{what}")
        return None
    return {"Amount": str(amount), "Remarks": str(remarks)}  # checked (amount, length) by the event check


def _money(b: _Builder, value: Any, fld: str) -> str | None:
    if value is None:
        return None  # not-reportable: no amount (a required one is listed by missing_for_create / the event check)
    n = hygiene.whole_amount(value)
    if n is None:
        b.issue(
            "bad_amount",
            f"finance.{fld} must be a whole number of dollars from 0 to 99,999,999: correct it in the SIS",
            f"finance.{fld}",
        )
        return None
    return str(n)


def _fin_info(b: _Builder, v: dict[str, Any]) -> dict[str, Any]:
    fi = _sub(v, "finance")
    out: dict[str, Any] = {}
    months = fi.get("academic_term_months")
    if months is not None:
        n = hygiene.whole_amount(months)
        if n is not None and 1 <= n <= 12:
            out["AcademicTerm"] = f"{n:02d}"
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
    for f, r, el in (
        ("school_funds", "school_funds_remarks", "School"),
        ("other_funds", "other_funds_source", "Other"),
    ):
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
    missing = [
        f
        for f in ("birth_date", "gender", "birth_country", "citizenship_country", "relationship", "visa_type")
        if d.get(f) is None
    ]
    if missing:
        b.issue("missing_field", f"dependent {slot} lacks " + ", ".join(missing), where + missing[0])
    if name is None or missing:
        return None  # reported: missing_field above, or the name's issue (name_rejected, missing_field)
    out = {"FullName": name, "BirthDate": d["birth_date"], "Gender": d["gender"]}
    if d.get("birth_city"):
        out["BirthCity"] = fmt._clip(d["birth_city"], 100)
    out.update(
        {
            "BirthCountryCode": d["birth_country"],
            "CitizenshipCountryCode": d["citizenship_country"],
            "VisaType": d["visa_type"],
            "Relationship": d["relationship"],
        }
    )
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
    tel = b.attempt(lambda: fmt.telephone(st))
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
    deps, dep_slots = [], []
    for slot, d in sorted(_sub(v, "dependent").items()):
        if d.get("status") == "removed":
            continue  # not-reportable: a removed dependant is not part of a new record
        bio = _dependent_bio(b, d, slot)
        if bio:
            deps.append(bio)
            dep_slots.append(slot)
    if deps:
        payload["CreateDependent"] = {"Dependent": deps}  # > 25 is refused by the event check, not cut
    if st.get("issue_reason") not in ("I", "S"):
        b.issue("bad_code", "issue reason must be I (initial) or S (change of status)", "student.issue_reason")
    if len(b.out.issues) > before_issues and (
        "FullName" not in personal
        or "ForeignAddress" not in payload
        or "EducationalInfo" not in payload
        or st.get("issue_reason") not in ("I", "S")
    ):
        return  # reported: the issues above say why it is not sendable; a later change re-tries
    notes, told = _spelling(st, "student.", "")
    for slot in dep_slots:
        more, also = _spelling(_sub(v, "dependent")[slot], f"dependent[{slot}].", f"dependent {slot} ")
        notes, told = notes + more, told + also
    b.event(
        "Create",
        "Create",
        payload,
        None,
        {"student": "new record"},
        problems=[i.reason for i in b.out.issues[before_issues:]] + notes,
        told=told,
    )


# ---------------------------------------------------------------------------- updates


def _changed(a: dict[str, Any], c: dict[str, Any], fields: tuple[str, ...]) -> list[str]:
    return [f for f in fields if a.get(f) != c.get(f)]


def _personal_info(b: _Builder) -> None:
    ps, ns = _sub(b.prev, "student"), _sub(b.new, "student")
    pa, na = _sub(b.prev, "address"), _sub(b.new, "address")
    if ps == ns and pa == na:
        return  # not-reportable: every check below compares a field of these two sections, and none changed
    payload: dict[str, Any] = {}
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    if _changed(ps, ns, NAME_FIELDS):
        name = b.attempt(lambda: fmt.full_name(ns))
        if name:
            payload["FullName"] = name
        for f in NAME_FIELDS:
            before[f], after[f] = ps.get(f), ns.get(f)
    simple = (
        ("birth_date", "BirthDate"),
        ("gender", "Gender"),
        ("birth_city", "BirthCity"),
        ("birth_country", "BirthCountryCode"),
        ("citizenship_country", "CitizenshipCountryCode"),
        ("commuter", "Commuter"),
    )
    for f, el in simple:
        if ps.get(f) != ns.get(f):
            before[f], after[f] = ps.get(f), ns.get(f)
            if ns.get(f) is None:
                b.issue(
                    "missing_field",
                    f"student.{f} was removed in the SIS; a batch cannot remove it, so SEVIS "
                    "keeps the old value: enter the right value in the SIS, or correct it in SEVIS RTI",
                    f"student.{f}",
                )
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
        tel = b.attempt(lambda: fmt.telephone(ns))
        if tel:
            payload["Telephone"] = tel
        elif not ns.get("phone"):
            b.issue(
                "missing_field",
                "student.phone was removed in the SIS; a batch cannot remove it, so SEVIS keeps "
                "the old number: enter the new one in the SIS, or correct it in SEVIS RTI",
                "student.phone",
            )
        elif not any(i.field == "student.phone" for i in b.out.issues):
            b.issue("bad_phone", "student.phone has no digits: enter the number in the SIS", "student.phone")
    for slot, el, to_address in (
        ("us_physical", "USAddress", fmt.us_address),
        ("us_mailing", "MailingAddress", fmt.us_address),
        ("foreign", "ForeignAddress", fmt.foreign_address),
    ):
        if pa.get(slot) != na.get(slot):
            before[f"address.{slot}"], after[f"address.{slot}"] = pa.get(slot), na.get(slot)
            if na.get(slot) is None:
                b.issue(
                    "missing_field",
                    f"address.{slot} was removed in the SIS; a batch cannot remove it, so SEVIS "
                    "keeps the old one: enter the current address in the SIS, or update it in SEVIS RTI",
                    f"address.{slot}",
                )
                continue
            val = b.attempt(functools.partial(to_address, na.get(slot), f"address.{slot}"))
            if val:
                payload[el] = val
    if payload:
        # the notes go with every PersonalInfo while the name is altered: a later event of the record (an e-mail)
        # replaces the record's problems, and the name sent earlier stays in its payload
        notes, told = _spelling(ns, "student.", "")
        b.event(
            "PersonalInfo",
            "PersonalInfo",
            {"@printForm": "false", **payload},
            before,
            after,
            problems=notes,
            told=told if "FullName" in payload else None,
        )


def _registration(b: _Builder) -> None:
    if _status(b.new) not in ("initial", "active"):
        return  # not-reportable: SEVIS registers only initial/active records (a closed one takes no update)
    pr, nr = _sub(b.prev, "registration"), _sub(b.new, "registration")
    end = _sub(b.new, "program").get("end_date")
    for slot in sorted(nr):
        r = nr[slot]
        if r.get("status") != "enrolled" or (pr.get(slot) or {}).get("status") == "enrolled":
            continue  # not-reportable: only the first confirmed enrolment of a session is reported
        if not r.get("session_start") or not r.get("session_end"):
            b.issue(
                "missing_field",
                f"registration {slot}: session dates unknown (term row missing?)",
                f"registration[{slot}].session_start",
            )
            continue
        last = r.get("last_session")
        if last is None:
            last = bool(end and r["session_end"] >= end)
        payload: dict[str, Any] = {
            "@printForm": "false",
            "LastSession": fmt.yes_no(last),
            "CurrentSessionStartDate": r["session_start"],
            "CurrentSessionEndDate": r["session_end"],
        }
        if not last:
            if not r.get("next_session_start"):
                b.issue(
                    "missing_field",
                    f"registration {slot}: next session start date unknown (S1068)",
                    f"registration[{slot}].next_session_start",
                )
                continue
            payload["NextSessionStartDate"] = r["next_session_start"]
        us = _sub(b.new, "address").get("us_physical")
        if us:
            addr = b.attempt(functools.partial(fmt.us_address, us, "address.us_physical"))
            if addr:
                payload["USAddress"] = addr
        b.event("Registration", "Registration", payload, {"registration": pr.get(slot)}, {"registration": r}, sub=slot)


def _level_change(b: _Builder) -> bool:
    pp, np_ = _sub(b.prev, "program"), _sub(b.new, "program")
    if pp.get("degree_level") == np_.get("degree_level"):
        return False  # not-reportable: the level did not change
    if not np_.get("degree_level"):
        if pp and np_:  # the whole programme row gone is one issue, raised by derive
            b.issue(
                "missing_field",
                "program.degree_level was removed in the SIS; SEVIS keeps the old education level: enter it in the SIS",
                "program.degree_level",
            )
        return False  # reported: missing_field here or, for a removed programme row, by derive
    if not pp.get("degree_level"):
        if pp:
            b.issue(
                "needs_dso",
                "program.degree_level was set in the SIS where it was empty: sevisflow cannot tell "
                "whether SEVIS holds the same level — check the record in SEVIS RTI and change the education "
                "level there if it differs",
                "program.degree_level",
            )
        return False  # reported: needs_dso above; not-reportable for a first programme row (the baseline)
    if np_.get("status") not in ("initial", "active"):
        status = np_.get("status") or "without a status"
        b.issue(
            "needs_dso",
            f"program.degree_level changed while the programme is {status}: SEVIS changes the "
            "education level of initial or active records only — change it in SEVIS "
            "RTI if it applies, or correct the SIS",
            "program.degree_level",
        )
        return False
    edu = _edu_info(b, b.new)
    fin = _fin_info(b, b.new)
    if edu is None:
        return True  # reported: _edu_info raised the issue that holds the EducationLevel.Change back
    b.event(
        "EducationLevel.Change",
        "EducationLevel",
        {"@printForm": "true", "EducationalInfo": edu, "FinancialInfo": fin},
        {"program": pp},
        {"program": np_},
    )
    return True


def _program_dates(b: _Builder) -> None:
    pp, np_ = _sub(b.prev, "program"), _sub(b.new, "program")
    if np_.get("status") not in OPEN_STATUSES or not pp:
        return  # not-reportable: a closed record takes no date change; a first programme row is the baseline
    for f in ("start_date", "end_date"):
        if pp.get(f) and not np_.get(f):
            b.issue(
                "missing_field",
                f"program.{f} was removed in the SIS; SEVIS keeps the old date: enter it in the SIS",
                f"program.{f}",
            )
        elif np_.get(f) and not pp.get(f):
            b.issue(
                "needs_dso",
                f"program.{f} was set in the SIS where it was empty: sevisflow cannot tell whether "
                "SEVIS holds the same date — check the record in SEVIS RTI and correct it there if it differs",
                f"program.{f}",
            )
    if (
        pp.get("start_date")
        and np_.get("start_date")
        and pp["start_date"] != np_["start_date"]
        and np_.get("status") == "active"
    ):
        b.issue(
            "needs_dso",
            "program.start_date changed for an active record: SEVIS takes a new programme start "
            "date for initial records only — request a correction in SEVIS (or correct the SIS)",
            "program.start_date",
        )
    if (
        pp.get("start_date") != np_.get("start_date")
        and np_.get("status") in ("initial", "deferred")
        and np_.get("start_date")
        and np_.get("end_date")
    ):
        iss = _sub(b.new, "student").get("i20_issue_date") or _commit_date(b.ctx)
        b.event(
            "Program.ManageSessionDates",
            "Program.SessionDates",
            {
                "@printForm": "true",
                "IssDate": iss,
                "NewPrgStartDate": np_["start_date"],
                "NewPrgEndDate": np_["end_date"],
            },
            {"start_date": pp.get("start_date"), "end_date": pp.get("end_date")},
            {"start_date": np_["start_date"], "end_date": np_["end_date"]},
        )
        return
    old, new = pp.get("end_date"), np_.get("end_date")
    if not old or not new or old == new:
        return  # reported: a removed or newly set date above; else not-reportable: the end date did not change
    if np_.get("status") == "deferred":
        b.issue(
            "needs_dso",
            "program.end_date changed for a deferred admission without a new start date: SEVIS "
            "moves both together (Program/ManageSessionDates) — update the dates in SEVIS RTI, or change the "
            "start date in the SIS too",
            "program.end_date",
        )
        return
    if new > old:
        reason = np_.get("extension_reason")
        problems = [] if reason else ["Explanation is a default text: confirm the reason for the extension"]
        b.event(
            "Program.Extension",
            "Program.EndDate",
            {
                "@printForm": "true",
                "NewPrgEndDate": new,
                "Explanation": reason or f"Program completion date moved from {old} to {new} by the school",
            },
            {"end_date": old},
            {"end_date": new},
            problems=problems,
        )
    else:
        b.event(
            "Program.Shorten",
            "Program.EndDate",
            {"@printForm": "true", "NewPrgEndDate": new},
            {"end_date": old},
            {"end_date": new},
        )


def _program_edit(b: _Builder) -> None:
    pp, np_ = _sub(b.prev, "program"), _sub(b.new, "program")
    if np_.get("status") not in OPEN_STATUSES or not pp:
        return  # not-reportable: a closed record takes no programme edit; a first programme row is the baseline
    payload: dict[str, Any] = {}
    ch = _changed(pp, np_, ("major_cip", "second_major_cip", "minor_cip"))
    for f, el, zero in (
        ("major_cip", "MajorCode1", False),
        ("second_major_cip", "MajorCode2", True),
        ("minor_cip", "Minor", True),
    ):
        if f in ch:
            if np_.get(f) is None:
                if zero:
                    payload[el] = "00.0000"
                else:
                    b.issue(
                        "missing_field",
                        "program.major_cip was removed in the SIS; SEVIS keeps the old major: enter it in the SIS",
                        "program.major_cip",
                    )
                continue  # reported: 00.0000 sent, or the issue above
            val = b.attempt(functools.partial(fmt.cip, np_.get(f), f"program.{f}", zero))
            if val:
                payload[el] = val
    eng = _changed(pp, np_, ("english_required", "english_met", "english_not_required_reason"))
    if eng and np_.get("english_required") is not None:
        payload["EngProficiency"] = _eng(np_)
    elif eng:
        b.issue(
            "missing_field",
            "program.english_required is empty: SEVIS needs it with any English proficiency "
            "change — enter it in the SIS",
            "program.english_required",
        )
    if payload:
        fields = tuple(ch + eng)
        b.event(
            "Program.Edit",
            "Program.Edit",
            {"@printForm": "true", **payload},
            {f: pp.get(f) for f in fields},
            {f: np_.get(f) for f in fields},
        )


def _financial(b: _Builder) -> None:
    pf, nf = _sub(b.prev, "finance"), _sub(b.new, "finance")
    ch = _changed(pf, nf, FINANCE_FIELDS)
    if not ch:
        return  # not-reportable: no finance field changed
    if not nf:
        b.issue(
            "missing_field",
            "the finance record was removed in the SIS; SEVIS keeps the old figures: enter the current ones in the SIS",
            "finance",
        )
        return
    for f in ch:  # the update leaves an element out = no change: a value emptied in the SIS stays in SEVIS
        if nf.get(f) is None and pf.get(f) not in (None, 0):
            b.issue(
                "missing_field",
                f"finance.{f} was removed in the SIS; a batch cannot remove it, so SEVIS keeps "
                "the old value: enter the current one (0 if none) in the SIS",
                f"finance.{f}",
            )
    told = len(b.out.issues)
    payload = _fin_info(b, b.new)
    if payload:
        b.event(
            "FinancialInfo",
            "FinancialInfo",
            {"@printForm": "true", **payload},
            {f: pf.get(f) for f in ch},
            {f: nf.get(f) for f in ch},
        )
    elif len(b.out.issues) == told:
        b.issue(
            "missing_field",
            "the finance record has no value SEVIS can take (term, costs and funds are empty): enter them in the SIS",
            "finance",
        )


def _status_events(b: _Builder) -> None:
    pp, np_ = _sub(b.prev, "program"), _sub(b.new, "program")
    old, new = pp.get("status"), np_.get("status")
    if old == "active" and new in ("initial", "deferred"):
        b.issue(
            "needs_dso",
            f"the programme went from active back to {new} in the SIS: a SEVIS record does not go "
            "back to Initial — correct the SIS, or handle the change in SEVIS RTI",
            "program.status",
        )
    elif old == "initial" and new == "deferred" and pp.get("start_date") == np_.get("start_date"):
        b.issue(
            "needs_dso",
            "the admission was deferred in the SIS without a new programme start date: enter the new "
            "start date in the SIS (Program/ManageSessionDates then goes out), or update it in SEVIS RTI",
            "program.start_date",
        )
    if old == new or new not in TERMINAL:
        return  # not-reportable: not an ending (SEVIS activates a record itself on Registration; reopening: above)
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
            b.issue(
                "needs_dso",
                "programme ended without a termination reason in [values.program_status]; "
                "the DSO must terminate in SEVIS",
                "program.status",
            )
            return
        payload: dict[str, Any] = {"Reason": reason}
        if reason == "16":
            payload["OtherRemarks"] = np_.get("status_remarks") or "Otherwise failing to maintain status"
        b.event("Status.Terminate", "Status", payload, before, after)
        return
    # canceled, or terminated while still initial → Cancel
    if not was_initial:
        b.issue(
            "bad_transition", "an active record cannot be cancelled; map the status to a termination", "program.status"
        )
        return
    reason = np_.get("status_cancel_reason")
    if not reason:
        b.issue(
            "needs_dso", "initial record ended without a cancel reason in [values.program_status]", "program.status"
        )
        return
    b.event("Status.Cancel", "Status", {"Reason": reason}, before, after)


def _dependents(b: _Builder) -> None:
    pd, nd = _sub(b.prev, "dependent"), _sub(b.new, "dependent")
    for slot in sorted(set(pd) | set(nd)):
        p, n = pd.get(slot), nd.get(slot)
        p_active = bool(p and p.get("status") != "removed")
        n_active = bool(n and n.get("status") != "removed")
        ck = f"Dependent:{slot}"
        if n_active and not p_active:
            assert n is not None  # n_active
            bio = _dependent_bio(b, n, slot)
            if bio:
                notes, told = _spelling(n, f"dependent[{slot}].", f"dependent {slot} ")
                b.event("Dependent.Add", ck, {"@printForm": "true", **bio}, p, n, sub=slot, problems=notes, told=told)
        elif p_active and n_active:
            assert p is not None and n is not None  # both active
            ch = _changed(p, n, DEP_BIO)
            if p.get("visa_type") != n.get("visa_type") and n.get("visa_type") not in ("04", "05"):
                b.issue(
                    "needs_dso",
                    f"dependent {slot}'s visa type is no longer F-2/M-2 in the SIS: SEVIS keeps the "
                    "dependant until terminated — terminate them in SEVIS RTI with a reason, or correct the SIS",
                    f"dependent[{slot}].visa_type",
                )
            removed = [f for f in ch if n.get(f) is None]
            if removed:
                b.issue(
                    "missing_field",
                    f"dependent {slot}: {', '.join(removed)} removed in the SIS; a batch cannot "
                    "remove it, so SEVIS keeps the old value: enter it in the SIS",
                    f"dependent[{slot}].{removed[0]}",
                )
            if not ch:
                continue  # not-reportable: no field SEVIS holds for the dependant changed (a visa change: above)
            payload: dict[str, Any] = {"@printForm": "true"}
            problems = []
            if n.get("dependent_sevis_id"):
                payload["@dependentSevisID"] = n["dependent_sevis_id"]
            else:
                problems.append("dependentSevisID unknown: fill it from SEVIS's result before closing")
            if any(f in ch for f in ("first_name", "last_name")):
                name = b.attempt(functools.partial(fmt.full_name, n, f"dependent[{slot}]."))
                if name:
                    payload["FullName"] = name
            for f, el in (
                ("birth_date", "BirthDate"),
                ("gender", "Gender"),
                ("birth_city", "BirthCity"),
                ("birth_country", "BirthCountryCode"),
                ("citizenship_country", "CitizenshipCountryCode"),
                ("relationship", "Relationship"),
            ):
                if f in ch and n.get(f) is not None:
                    payload[el] = n[f]
            if len(payload) > 1 + ("@dependentSevisID" in payload):
                notes, told = _spelling(n, f"dependent[{slot}].", f"dependent {slot} ")
                b.event(
                    "Dependent.Edit",
                    ck,
                    payload,
                    {f: p.get(f) for f in ch},
                    {f: n.get(f) for f in ch},
                    sub=slot,
                    problems=problems + notes,
                    told=told if "FullName" in payload else None,
                )
        elif p_active and not n_active:
            assert p is not None  # p_active
            reason = (n or {}).get("status_reason")
            if not reason:
                b.issue(
                    "needs_dso",
                    f"dependent {slot} was removed in the SIS; terminate them in SEVIS with a reason",
                    f"dependent[{slot}].status",
                )
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
AUTH_ADD_STATUSES = {
    "rcl": ("active",),
    "cpt": ("active",),
    "opt": ("active", "completed"),
    "opt_stem": ("active", "completed"),
}
# F-1 only (8 CFR 214.2(f)(10)): CPT and the STEM extension; RCL and OPT exist for F-1 and M-1
AUTH_F1_ONLY = ("cpt", "opt_stem")
AUTH_FIELDS = (
    "kind",
    "start_date",
    "end_date",
    "time_basis",
    "employer_name",
    "employer_line1",
    "employer_line2",
    "employer_city",
    "employer_state",
    "employer_postal_code",
    "course_relevance",
    "rcl_reason",
    "academic_year_met",
    "remarks",
)
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
            assert p is not None and n is not None  # both approved
            changed = bool(_changed(p, n, AUTH_FIELDS))
            if _add_problem(b.prev, p, where) is not None:
                # SEVIS never got this one (it was incomplete or the record not Active): try the Add again
                if n.get("kind") in AUTH_EVENT and (changed or _add_problem(b.new, n, where) is None):
                    _auth_add(b, slot, n["kind"], n)
            elif changed:
                b.issue(
                    "needs_dso",
                    f"{where} ({AUTH_LABEL.get(n.get('kind'), 'authorisation')}) changed after "
                    "approval; sevisflow derives no edit of it: change it in SEVIS RTI, or withdraw it and enter "
                    "a new one",
                    where,
                )
            continue  # reported: the Add again, the issue above, or the Add's own issue when it was first refused
        if p_ok == n_ok:
            continue  # not-reportable: neither version is approved (SEVIS hears of school-approved ones only)
        a = n if n_ok else p
        assert a is not None  # the approved one
        kind = a.get("kind")
        if kind not in AUTH_EVENT:
            b.issue(
                "bad_code",
                f"{where} has no known kind (rcl, cpt, opt, opt_stem in [values.authorization_kind])",
                f"{where}.kind",
            )
            continue
        if n_ok:
            _auth_add(b, slot, kind, a)
        elif _add_problem(b.prev, a, where) is None:  # else SEVIS never got it: nothing to cancel
            _auth_cancel(b, slot, kind, a)


def _add_problem(v: dict[str, Any] | None, a: dict[str, Any], where: str) -> tuple[str, str, str] | None:
    """Why SEVIS could not take (or was not sent) the Add of authorisation ``a`` in view ``v``: (code, reason,
    field), or None when the Add is sendable. Pure: the same check decides whether an earlier Add went out."""
    kind = a.get("kind")
    if kind not in AUTH_EVENT:
        return (
            "bad_code",
            f"{where} has no known kind (rcl, cpt, opt, opt_stem in [values.authorization_kind])",
            f"{where}.kind",
        )
    status = _status(v)
    if status not in AUTH_ADD_STATUSES[kind]:
        return (
            "bad_transition",
            f"{AUTH_LABEL[kind]} ({where}) needs an Active SEVIS record; the programme is "
            f"{status or 'unknown'} (SEVIS would reject it, S1054)",
            f"{where}.status",
        )
    if kind in AUTH_F1_ONLY and _sub(v, "student").get("visa_type") != "01":
        return ("bad_transition", f"{AUTH_LABEL[kind]} ({where}) exists for F-1 students only", f"{where}.kind")
    missing = [f for f in AUTH_REQUIRED[(kind, False)] if a.get(f) is None]
    if missing:
        what = f"{AUTH_EVENT[kind]}/{'Extend' if kind == 'opt_stem' else 'Add'}"
        return (
            "incomplete_record",
            f"{what} for {where} ({AUTH_LABEL[kind]}) waits for: " + ", ".join(missing),
            f"{where}.{missing[0]}",
        )
    if kind in ("cpt", "opt_stem"):
        try:
            fmt.employer_address(a, f"{where}.employer", "USAddressType" if kind == "cpt" else "USAddrDoctorType")
        except FormatProblem as p:
            return (p.code, p.reason, p.field)
    bad = hygiene.authorization_problem(kind, a, where)  # dates, characters, lengths: refused Adds are retried
    return None if bad is None else (bad.code, bad.reason, bad.field)


def _auth_missing(b: _Builder, slot: str, kind: str, a: dict[str, Any], cancel: bool) -> bool:
    missing = [f for f in AUTH_REQUIRED[(kind, cancel)] if a.get(f) is None]
    if missing:
        what = f"{AUTH_EVENT[kind]}/{'Cancel' if cancel else ('Extend' if kind == 'opt_stem' else 'Add')}"
        b.issue(
            "incomplete_record",
            f"{what} for authorization {slot} ({AUTH_LABEL[kind]}) waits for: " + ", ".join(missing),
            f"authorization[{slot}].{missing[0]}",
        )
    return bool(missing)


def _auth_flags(a: dict[str, Any], approved: bool) -> dict[str, Any]:
    return {
        "approved": approved,
        "kind": a.get("kind"),
        "start_date": a.get("start_date"),
        "end_date": a.get("end_date"),
    }


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
            payload["Remarks"] = str(a["remarks"])
        sub = "Add"
    elif kind == "cpt":
        addr = b.attempt(lambda: fmt.employer_address(a, f"{where}.employer", "USAddressType"))
        if addr is None:
            return  # reported: the formatter's issue (b.attempt)
        payload.update(
            {
                "StartDate": a["start_date"],
                "EndDate": a["end_date"],
                "FullPartTimeIndicator": a["time_basis"],
                "EmployerName": fmt._clip(a["employer_name"], 100),
                "EmployerAddress": addr,
            }
        )
        if a.get("course_relevance"):
            payload["CourseRelevance"] = str(a["course_relevance"])
        if a.get("remarks"):
            payload["EmploymentRemarks"] = str(a["remarks"])
        sub = "Add"
    elif kind == "opt":
        payload.update(
            {
                "StartDate": a["start_date"],
                "EndDate": a["end_date"],
                "FullPartTimeIndicator": a["time_basis"],
                "AcademicYearMet": fmt.yes_no(a["academic_year_met"]),
            }
        )
        if a.get("remarks"):
            payload["Remarks"] = str(a["remarks"])
        sub = "Add"
    else:  # opt_stem: the extension names the employer (≥1 Employer)
        addr = b.attempt(lambda: fmt.employer_address(a, f"{where}.employer", "USAddrDoctorType"))
        if addr is None:
            return  # reported: the formatter's issue (b.attempt)
        employer: dict[str, Any] = {}
        if a.get("employer_name"):
            employer["EmployerName"] = fmt._clip(a["employer_name"], 121)
        employer.update(
            {
                "EmployerAddress": addr,
                "CourseRelevance": str(a["course_relevance"]),
                "FullPartTimeIndicator": a["time_basis"],
                "StartDate": a["start_date"],
                "EndDate": a["end_date"],
            }
        )
        payload.update(
            {
                "StartDate": a["start_date"],
                "EndDate": a["end_date"],
                "FullPartTimeIndicator": a["time_basis"],
                "Employer": [employer],
            }
        )
        sub = "Extend"
    b.event(
        f"{AUTH_EVENT[kind]}.{sub}",
        f"Authorization:{slot}",
        payload,
        _auth_flags(a, False),
        _auth_flags(a, True),
        sub=slot,
    )


def _auth_cancel(b: _Builder, slot: str, kind: str, a: dict[str, Any]) -> None:
    """Withdrawn (or the row deleted): cancel what SEVIS was told, so the payload is the approved version."""
    if _auth_missing(b, slot, kind, a, cancel=True):
        return  # reported: incomplete_record, raised by _auth_missing
    payload: dict[str, Any] = {"@printForm": "false"}
    if kind == "rcl":
        payload.update({"Reason": a["rcl_reason"], "StartDate": a["start_date"], "EndDate": a["end_date"]})
    else:
        payload.update(
            {"StartDate": a["start_date"], "EndDate": a["end_date"], "FullPartTimeIndicator": a["time_basis"]}
        )
        if kind == "cpt":
            payload["EmployerName"] = fmt._clip(a["employer_name"], 100)
    b.event(
        f"{AUTH_EVENT[kind]}.Cancel",
        f"Authorization:{slot}",
        payload,
        _auth_flags(a, True),
        _auth_flags(a, False),
        sub=slot,
    )
