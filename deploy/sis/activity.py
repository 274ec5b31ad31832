"""Deterministic SIS activity: a term of realistic changes, as SQL transactions.

The pipeline's interesting cases come from how a real SIS changes, not from single-row updates:
one student's change often spans tables in one commit (a withdrawal updates program and
enrollment; a new admit inserts five tables), domestic students change too (the pipeline must
ignore them), and deletes happen. `generate_activity` models the school in memory so each change is
valid against the rows the earlier ones left (updates hit exactly one row, keys stay unique), and
returns structured ops; `Op.sql` renders them, `sevisflow.deploy.sis.load.play_activity` runs them.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from sevisflow.deploy.sis import refdata, terms
from sevisflow.deploy.sis.builder import UTC, IdCounters, SchoolBuilder, ascii_fold, weighted
from sevisflow.deploy.sis.model import PRIMARY_KEYS, TABLE_ORDER, Op, Row, School, Transaction, World

__all__ = [
    "AUTHORIZATION_KINDS",
    "CHANGE_KINDS",
    "EXTRA_KINDS",
    "Op",
    "Transaction",
    "World",
    "activity_span",
    "generate_activity",
    "generate_authorizations",
    "in_registration_window",
]

# The kinds the brief asks for; every activity of at least len(CHANGE_KINDS) changes has each.
CHANGE_KINDS: tuple[str, ...] = (
    "address_move",
    "name_change",
    "contact_change",
    "major_change",
    "term_registration",
    "withdrawal",
    "completion",
    "extension",
    "shortening",
    "new_admit",
    "dependent_added",
    "domestic_change",
)
# Further everyday changes: a REGISTERED row for next term (not reportable), a funding update.
EXTRA_KINDS: tuple[str, ...] = ("course_signup", "finance_change")
_WEIGHTS: dict[str, int] = {
    "address_move": 12,
    "name_change": 4,
    "contact_change": 10,
    "major_change": 6,
    "term_registration": 20,
    "withdrawal": 3,
    "completion": 5,
    "extension": 5,
    "shortening": 2,
    "new_admit": 6,
    "dependent_added": 3,
    "domestic_change": 15,
    "course_signup": 6,
    "finance_change": 3,
}
_DOMESTIC_SUBKINDS = (
    "address_move",
    "contact_change",
    "name_change",
    "major_change",
    "term_registration",
    "withdrawal",
    "course_signup",
)


@dataclass
class _Tx:
    """Collects the ops of one transaction and applies each to the world at once."""

    world: World
    ops: list[Op] = field(default_factory=list)

    def insert(self, table: str, row: Row) -> None:
        op = Op("insert", table, {}, dict(row))
        self.world.apply(op)
        self.ops.append(op)

    def update(self, table: str, row: Row, **changes: Any) -> None:
        changed = {c: v for c, v in changes.items() if row.get(c) != v}
        if changed:
            op = Op("update", table, {c: row[c] for c in PRIMARY_KEYS[table]}, changed)
            self.world.apply(op)
            self.ops.append(op)

    def delete(self, table: str, row: Row) -> None:
        op = Op("delete", table, {c: row[c] for c in PRIMARY_KEYS[table]}, {})
        self.world.apply(op)
        self.ops.append(op)


class _Activity:
    """Change makers, one method per kind; each returns a note or None when `pid` does not fit."""

    def __init__(self, school: School, seed: int, today: date) -> None:
        self.rng = random.Random(seed)
        self.world = World(school)
        self.ids = IdCounters.after(school)
        self.sevis_ids = {r["sevis_id"] for r in school.get("immigration", []) if r["sevis_id"]}
        self.known_terms = {r["term_id"] for r in school.get("term", [])}
        self.at = datetime.combine(today, time(9), UTC)
        self.tx = _Tx(self.world)

    # ---- helpers ------------------------------------------------------------------------------

    @property
    def day(self) -> date:
        return self.at.date()

    def builder(self) -> SchoolBuilder:
        return SchoolBuilder(self.rng, self.day, self.ids, self.sevis_ids)

    def studying(self, pid: int) -> Row | None:
        """The current programme if the student is admitted or active (not gone)."""
        program = self.world.program(pid)
        return program if program is not None and program["status"] in ("ACTIVE", "ADMITTED") else None

    def active(self, pid: int) -> Row | None:
        program = self.world.program(pid)
        return program if program is not None and program["status"] == "ACTIVE" else None

    def touch_person(self, pid: int, **changes: Any) -> None:
        self.tx.update("person", self.world.person(pid), **changes, updated_at=self.at)

    def target_term(self) -> terms.Term:
        """The regular term in progress at `at`, or the next one in a break."""
        return terms.regular(terms.ordinal_on_or_after(self.day))

    # ---- kinds --------------------------------------------------------------------------------

    def address_move(self, pid: int) -> str | None:
        physical = self.world.address(pid, "US_PHYSICAL")
        if physical is None or self.studying(pid) is None:
            return None
        rng = self.rng
        foreign = self.world.address(pid, "FOREIGN")
        if foreign is not None and rng.random() < 0.2:
            self.tx.update("address", foreign, **self.builder().foreign_place(foreign["country"]))
            return "foreign address"
        self.tx.update("address", physical, **self.builder().us_place("US_PHYSICAL", local=rng.random() < 0.85))
        note = "US address"
        if rng.random() < 0.25:
            phone, code = self.builder().phone("US")
            self.touch_person(pid, phone=phone, phone_country_code=code)
            note += " + phone"
        mailing = self.world.address(pid, "US_MAILING")
        if mailing is not None and rng.random() < 0.3:
            self.tx.delete("address", mailing)
            note += " + mailing address removed"
        elif mailing is None and rng.random() < 0.1:
            self.tx.insert("address", self.builder().us_address(pid, "US_MAILING", local=False))
            note += " + mailing address added"
        return note

    def name_change(self, pid: int) -> str | None:
        if self.studying(pid) is None:
            return None
        rng = self.rng
        p = self.world.person(pid)
        pool = weighted(rng, refdata.COUNTRIES[p["citizenship_country"]][0])
        r = rng.random()
        if r < 0.5:
            other = self.builder().name(pool, "M")[2]
            if other == p["last_name"]:
                return None
            new_last = other if rng.random() < 0.5 else f"{p['last_name']}-{other}"
            self.touch_person(pid, last_name=new_last)
            return "last name (marriage)"
        if r < 0.8 and p["preferred_name"]:
            self.touch_person(pid, first_name=p["preferred_name"], preferred_name=None)
            return "preferred name became legal first name"
        given = self.builder().name(pool, p["gender"])[0]
        if given is None or given == p["first_name"]:
            return None
        self.touch_person(pid, middle_name=given if p["middle_name"] is None else None)
        return "middle name"

    def contact_change(self, pid: int) -> str | None:
        if self.studying(pid) is None:
            return None
        rng = self.rng
        p = self.world.person(pid)
        changes: dict[str, Any] = {}
        r = rng.random()
        if r < 0.75:
            local = f"{ascii_fold(p['first_name'] or p['last_name'])}.{ascii_fold(p['last_name'])}"
            changes["email"] = f"{local}{rng.randint(100, 999)}@" + rng.choice(
                ("example.com", "example.net", "example.org")
            )
        if r >= 0.6:
            changes["phone"], changes["phone_country_code"] = self.builder().phone("US")
        self.touch_person(pid, **changes)
        return " + ".join(sorted(changes.keys() - {"phone_country_code"}))

    def major_change(self, pid: int) -> str | None:
        program = self.active(pid)
        if program is None or program["degree_level"] == "LANGUAGE":
            return None
        rng = self.rng
        choices = [c for c in refdata.CIP_ACADEMIC if c not in (program["major_cip"], program["minor_cip"])]
        changes: dict[str, Any] = {"major_cip": rng.choice(choices)}
        note = "major"
        if program["degree_level"] == "BACHELORS" and rng.random() < 0.3:
            changes["minor_cip"] = rng.choice([c for c in choices if c != changes["major_cip"]])
            note += " + minor"
        if rng.random() < 0.25:
            ordinal = terms.ordinal_on_or_after(program["expected_end_date"])
            changes["expected_end_date"] = terms.regular(ordinal + 1).end_date
            note += " + end date later"
        self.tx.update("program", program, **changes)
        return note

    def term_registration(self, pid: int) -> str | None:
        t = self.target_term()
        if not -14 <= (self.day - t.start_date).days <= 30 or t.term_id not in self.known_terms:
            return None  # schools confirm enrolment around the start of the term
        program = self.active(pid)
        if program is None or t.start_date > program["expected_end_date"]:
            return None
        row = self.world.enrollment(pid, t.term_id)
        if row is not None and row["status"] != "REGISTERED":
            return None
        if row is None:
            new = self.builder().enrollment(
                pid, t, program["degree_level"], "ENROLLED", self.at, full_time=self.rng.random() > 0.05
            )
            self.tx.insert("enrollment", new)
            note = "enrolled (walk-in)"
        else:
            self.tx.update("enrollment", row, status="ENROLLED", confirmed_at=self.at)
            note = "registered -> enrolled"
        physical = self.world.address(pid, "US_PHYSICAL")
        if physical is not None and self.rng.random() < 0.2:
            self.tx.update("address", physical, **self.builder().us_place("US_PHYSICAL", local=True))
            note += " + US address confirmed at check-in"
        return note

    def withdrawal(self, pid: int) -> str | None:
        program = self.active(pid)
        if program is None:
            return None
        status = "DISMISSED" if self.rng.random() < 0.1 else "WITHDRAWN"
        self.tx.update("program", program, status=status)
        note = status.lower()
        row = self.world.enrollment(pid, self.target_term().term_id)
        if row is not None and row["status"] in ("REGISTERED", "ENROLLED"):
            self.tx.update("enrollment", row, status="WITHDRAWN" if status == "WITHDRAWN" else "DROPPED")
            note += " + term enrollment ended"
        return note

    def completion(self, pid: int) -> str | None:
        program = self.active(pid)
        if program is None or (program["expected_end_date"] - self.day).days > 150:
            return None
        self.tx.update("program", program, status="COMPLETED")
        return "degree conferred"

    def extension(self, pid: int) -> str | None:
        program = self.active(pid)
        if program is None:
            return None
        ordinal = terms.ordinal_on_or_after(program["expected_end_date"])
        new_end = terms.regular(ordinal + self.rng.randint(1, 2)).end_date
        self.tx.update("program", program, expected_end_date=new_end)
        return f"end date {program['expected_end_date']} later"

    def shortening(self, pid: int) -> str | None:
        program = self.active(pid)
        if program is None:
            return None
        ordinal = terms.ordinal_on_or_after(program["expected_end_date"])
        earliest = terms.ordinal_on_or_after(self.day + timedelta(days=30))
        if ordinal - 1 < earliest:
            return None
        new_end = terms.regular(self.rng.randint(earliest, ordinal - 1)).end_date
        if not program["start_date"] < new_end < program["expected_end_date"]:
            return None
        self.tx.update("program", program, expected_end_date=new_end)
        return "end date earlier"

    def new_admit(self) -> tuple[int, str]:
        """A new international admit who needs an I-20: every table of theirs in one commit."""
        rows = self.builder().international(
            stage="new_admit", visa=weighted(self.rng, (("F-1", 90), ("M-1", 5), ("J-1", 5)))
        )
        rows["person"][0]["updated_at"] = self.at
        for table in TABLE_ORDER:
            for row in rows[table]:
                self.tx.insert(table, row)
        immigration = rows["immigration"][0]
        return (
            rows["person"][0]["person_id"],
            f"{immigration['visa_type']}, issue reason {immigration['issue_reason']}",
        )

    def dependent_added(self, pid: int) -> str | None:
        immigration = self.world.immigration(pid)
        finance = self.world.finance(pid)
        if (
            immigration is None
            or immigration["visa_type"] not in ("F-1", "M-1")
            or finance is None
            or self.studying(pid) is None
        ):
            return None
        student = self.world.person(pid)
        if student["birth_date"] is None or (self.day - student["birth_date"]).days < 22 * 365:
            return None
        has_spouse = any(
            d["relationship"] == "SPOUSE" and d["status"] == "ACTIVE" for d in self.world.of("dependent", pid)
        )
        relationship = "CHILD" if has_spouse else "SPOUSE"
        visa = "F-2" if immigration["visa_type"] == "F-1" else "M-2"
        self.tx.insert("dependent", self.builder().dependent(student, relationship, visa))
        cost = 6000 if relationship == "SPOUSE" else 4000
        self.tx.update(
            "finance",
            finance,
            dependent_expenses=finance["dependent_expenses"] + cost,
            personal_funds=finance["personal_funds"] + cost,
        )
        return relationship.lower()

    def course_signup(self, pid: int) -> str | None:
        program = self.active(pid)
        if program is None:
            return None
        t = terms.regular(terms.last_started_ordinal(self.day) + 1)
        if (
            t.start_date > program["expected_end_date"]
            or t.term_id not in self.known_terms
            or self.world.enrollment(pid, t.term_id) is not None
        ):
            return None
        self.tx.insert("enrollment", self.builder().enrollment(pid, t, program["degree_level"], "REGISTERED", None))
        return f"registered for {t.term_id}"

    def finance_change(self, pid: int) -> str | None:
        finance = self.world.finance(pid)
        if finance is None or self.active(pid) is None:
            return None
        raise_by = int(finance["tuition"] * self.rng.uniform(0.02, 0.06))
        self.tx.update(
            "finance",
            finance,
            tuition=finance["tuition"] + raise_by,
            personal_funds=finance["personal_funds"] + raise_by,
        )
        return "tuition increase"


def _pick(act: _Activity, pool: list[int], make: Callable[[int], str | None]) -> tuple[int, str] | None:
    """Try random students of `pool`, then all of them in order; the first that fits wins."""
    if not pool:
        return None
    tries = [act.rng.choice(pool) for _ in range(30)]
    start = act.rng.randrange(len(pool))
    for pid in tries + pool[start:] + pool[:start]:
        note = make(pid)
        if note is not None:
            return pid, note
    return None


def _one(act: _Activity, kind: str) -> Transaction | None:
    if kind == "new_admit":
        pid, note = act.new_admit()
        return _finish(act, kind, pid, True, note)
    if kind == "domestic_change":
        for sub in act.rng.sample(_DOMESTIC_SUBKINDS, len(_DOMESTIC_SUBKINDS)):
            picked = _pick(act, act.world.domestic, getattr(act, sub))
            if picked is not None:
                return _finish(act, kind, picked[0], False, f"{sub}: {picked[1]}")
        return None
    picked = _pick(act, act.world.international, getattr(act, kind))
    if picked is None:
        return None
    return _finish(act, kind, picked[0], True, picked[1])


def _finish(act: _Activity, kind: str, pid: int, international: bool, note: str) -> Transaction:
    ops = tuple(act.tx.ops)
    act.tx = _Tx(act.world)
    return Transaction(kind, pid, international, act.at, ops, note)


def activity_span(today: date) -> tuple[datetime, datetime]:
    """From 09:00 UTC on `today` to 30 days after the first regular term starting 60+ days later.

    So the span always holds at least one term start with its registration wave, and most of a term.
    """
    ordinal = terms.ordinal_on_or_after(today)
    while (terms.regular(ordinal).start_date - today).days < 60:
        ordinal += 1
    end = terms.regular(ordinal).start_date + timedelta(days=30)
    return datetime.combine(today, time(9), UTC), datetime.combine(end, time(17), UTC)


def in_registration_window(day: date) -> bool:
    """True from 14 days before to 30 days after a regular term starts (SEVIS's 30-day rule)."""
    return -14 <= (day - terms.regular(terms.ordinal_on_or_after(day)).start_date).days <= 30


def _weights(day: date) -> dict[str, int]:
    weights = dict(_WEIGHTS)
    weights["term_registration"] = 60 if in_registration_window(day) else 0
    next_start = terms.regular(terms.last_started_ordinal(day) + 1).start_date
    weights["course_signup"] = 20 if 0 < (next_start - day).days <= 75 else 2
    return weights


def _schedule(rng: random.Random, times: list[datetime]) -> list[str]:
    """One kind per time slot, drawn by the weights of its day; each CHANGE_KIND at least once."""
    kinds = CHANGE_KINDS + EXTRA_KINDS
    schedule = []
    for at in times:
        w = _weights(at.date())
        schedule.append(rng.choices(kinds, weights=[w[k] for k in kinds])[0])
    if len(times) < len(CHANGE_KINDS):
        return schedule
    counts = Counter(schedule)

    def spare(i: int) -> bool:  # a slot that can change kind without losing a required one
        return schedule[i] not in CHANGE_KINDS or counts[schedule[i]] > 1

    # term_registration first: it only fits slots in a registration window
    for kind in sorted(CHANGE_KINDS, key=lambda k: k != "term_registration"):
        if counts[kind]:
            continue
        slots = list(range(len(schedule)))
        if kind == "term_registration":
            window = [i for i in slots if in_registration_window(times[i].date())] or slots
            slots = [i for i in window if spare(i)] or window
        else:
            slots = [i for i in slots if spare(i)]
        i = rng.choice(slots)
        counts[schedule[i]] -= 1
        schedule[i] = kind
        counts[kind] += 1
    return schedule


def generate_activity(school: School, n_changes: int, seed: int, today: date) -> list[Transaction]:
    """`n_changes` transactions over `activity_span(today)`, in commit order.

    `school` is the data that was loaded (it is not modified). With n_changes >= len(CHANGE_KINDS)
    every kind in CHANGE_KINDS is scheduled; a change that no student fits at its time is replaced
    by another kind drawn for that time (new_admit always fits), so exactly n_changes come back.
    """
    act = _Activity(school, seed, today)
    rng = act.rng
    start, end = activity_span(today)
    step = (end - start) / max(n_changes, 1)
    times = [start + step * i + step * rng.uniform(0, 0.9) for i in range(n_changes)]
    out: list[Transaction] = []
    for at, kind in zip(times, _schedule(rng, times)):
        act.at = at
        tried = {kind}
        candidates = [kind]
        while True:
            tx = _one(act, candidates[-1])
            if tx is not None and tx.ops:
                out.append(tx)
                break
            w = _weights(at.date())
            left = [k for k in w if k not in tried and w[k] > 0]
            nxt = rng.choices(left, weights=[w[k] for k in left])[0] if len(tried) < 5 and left else "new_admit"
            tried.add(nxt)
            candidates.append(nxt)
    return out


# ---- school-approved authorisations (RCL, CPT, OPT, STEM OPT) ----------------------------------------

# Kept out of generate_activity's schedule on purpose: a new kind there would re-draw every later
# change of every seed (and the demo's expected counts). generate_authorizations is its own stream.
AUTHORIZATION_KINDS: tuple[str, ...] = (
    "rcl_approved",
    "cpt_approved",
    "opt_recommended",
    "stem_extension",
    "authorization_withdrawn",
)
_RCL_REASONS = ("ENGLISH_LANGUAGE", "READING", "TEACHING_METHODS", "COURSE_LEVEL", "MEDICAL", "FINAL_TERM")


def _authorization_row(act: _Activity, pid: int, kind: str, start: date, end: date) -> Row:
    rng = act.rng
    row: Row = {
        "authorization_id": act.ids.take("student_authorization"),
        "person_id": pid,
        "kind": kind,
        "status": "APPROVED",
        "start_date": start,
        "end_date": end,
        "time_basis": None,
        "employer_name": None,
        "employer_line1": None,
        "employer_line2": None,
        "employer_city": None,
        "employer_state": None,
        "employer_postal_code": None,
        "course_relevance": None,
        "rcl_reason": None,
        "academic_year_met": None,
        "remarks": None,
    }
    if kind == "RCL":
        row["rcl_reason"] = rng.choice(_RCL_REASONS)
    else:
        row["time_basis"] = "PART_TIME" if kind == "CPT" and rng.random() < 0.6 else "FULL_TIME"
    if kind == "OPT":
        row["academic_year_met"] = True
    if kind in ("CPT", "STEM_OPT"):
        place = act.builder().us_place("US_PHYSICAL", local=rng.random() < 0.7)
        row.update(
            {
                "employer_name": rng.choice(refdata.EMPLOYERS),
                "employer_line1": place["line1"],
                "employer_line2": place["line2"],
                "employer_city": place["city"],
                "employer_state": place["state"],
                "employer_postal_code": place["postal_code"],
                "course_relevance": "Training directly related to the student's major field of study",
            }
        )
    return row


def _authorize(act: _Activity, kind: str) -> tuple[int, str] | None:
    """One approval (or a withdrawal) for a fitting student: active F-1 with a SEVIS ID."""

    def fits(pid: int) -> bool:
        imm = act.world.immigration(pid) or {}
        return bool(act.active(pid) and imm.get("visa_type") == "F-1" and imm.get("sevis_id"))

    pool = [pid for pid in act.world.international if fits(pid)]
    if kind == "authorization_withdrawn":
        approved = [a for pid in pool for a in act.world.of("student_authorization", pid) if a["status"] == "APPROVED"]
        if not approved:
            return None
        row = approved[act.rng.randrange(len(approved))]
        act.tx.update("student_authorization", row, status="WITHDRAWN")
        return row["person_id"], f"{row['kind']} withdrawn"
    taken = {a["person_id"] for pid in pool for a in act.world.of("student_authorization", pid)}
    pool = [pid for pid in pool if pid not in taken]
    if not pool:
        return None
    pid = pool[act.rng.randrange(len(pool))]
    program = act.world.program(pid) or {}
    day = act.day
    if kind == "rcl_approved":
        term = act.target_term()
        row = _authorization_row(act, pid, "RCL", max(day, term.start_date), term.end_date)
    elif kind == "cpt_approved":
        row = _authorization_row(act, pid, "CPT", day + timedelta(days=14), day + timedelta(days=14 + 84))
    else:
        start = max(program.get("expected_end_date") or day, day) + timedelta(days=30)
        if kind == "opt_recommended":
            row = _authorization_row(act, pid, "OPT", start, start + timedelta(days=364))
        else:
            row = _authorization_row(act, pid, "STEM_OPT", start, start + timedelta(days=729))
    act.tx.insert("student_authorization", row)
    return pid, kind.replace("_", " ")


def generate_authorizations(
    school: School, seed: int, today: date, *, kinds: tuple[str, ...] = AUTHORIZATION_KINDS
) -> list[Transaction]:
    """A few DSO approvals (and one withdrawal) for active F-1 students, one commit each, a day apart.

    Deterministic from (school, seed, today); its own random stream, so generate_activity is unchanged.
    A kind no student fits is skipped, so fewer than len(kinds) may come back.
    """
    act = _Activity(school, seed * 7919 + 17, today)
    out: list[Transaction] = []
    for i, kind in enumerate(kinds):
        act.at = datetime.combine(today + timedelta(days=i + 1), time(10), UTC)
        picked = _authorize(act, kind)
        if picked is not None and act.tx.ops:
            out.append(_finish(act, kind, picked[0], True, picked[1]))
    return out
