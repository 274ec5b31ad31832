"""Legal reporting time limits: which rule applies to a pending SEVIS record, and when it is due.

SEVIS batch does not refuse a late record; the regulation simply says the school was late, and
SEVIS's own automatic functions (a No-Show termination, the cancellation of an Initial record) fire
when a limit passes. So the worklist computes, for every pending record, the day it is legally due —
in the school's time zone, from a rule table a school can tighten or change in its settings
(``[deadlines] limits``, in days, per rule name) — and a band: ok, soon, urgent, overdue.

The clock: for a change in the SIS it starts when the school learned of it — the pipeline's earliest
evidence is the SIS commit time of the first change the record holds (a record that is replaced by a
later change of the same kind keeps its first clock; a record SEVIS rejected keeps its clock too).
For a registration it starts at the session's start date. Pure: plain data in, plain data out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

CFR_G3 = "8 CFR 214.3(g)(3)"
ICE_FACT_SHEET = 'ICE fact sheet "SEVIS Reporting Requirements for Designated School Officials"'
SITS_REG = 'Study in the States, SEVIS Help Hub, "Registration"'


@dataclass(frozen=True)
class Rule:
    """One legal limit: which records it covers (record kinds, by prefix), how long, from when, why."""

    name: str
    kinds: tuple[str, ...]
    days: int
    clock: str  # "change": the SIS commit of the first change | "session_start": the session's start date
    what: str
    source: str


RULES: tuple[Rule, ...] = (
    Rule("name_address", ("PersonalInfo",), 21, "change", "a student's legal name or U.S. address changed", CFR_G3),
    Rule(
        "program_change",
        ("Program.Edit", "Program.Extension", "EducationLevel"),
        21,
        "change",
        "a change of program (major, level) or an extension",
        f"{CFR_G3}; {ICE_FACT_SHEET}",
    ),
    Rule(
        "dependents",
        ("Dependent.Add", "Dependent.Edit"),
        21,
        "change",
        "a dependant was added or a dependant's name or address changed",
        CFR_G3,
    ),
    Rule(
        "status_end",
        ("Status.Terminate", "Status.Complete"),
        21,
        "change",
        "early completion, withdrawal, failure to maintain status or to complete",
        CFR_G3,
    ),
    Rule(
        "discipline",
        ("DisciplinaryAction",),
        21,
        "change",
        "a disciplinary action following a criminal conviction",
        CFR_G3,
    ),
    Rule(
        "registration",
        ("Registration",),
        30,
        "session_start",
        "registration for a session (an Initial student not registered is a No-Show risk)",
        f"{CFR_G3}(iii); {ICE_FACT_SHEET}; {SITS_REG}",
    ),
)
"""The default table, from the regulation and ICE's guidance. Kinds without a rule (a Create, financial
information, a reprint …) have no legal limit: they are listed without a due date."""

BANDS = ("overdue", "urgent", "soon", "ok")


@dataclass(frozen=True)
class Deadlines:
    """The rule table in force: the defaults, with a school's own limits (stricter targets, changed law)."""

    rules: tuple[Rule, ...] = RULES
    soon_days: int = 7
    urgent_days: int = 2
    timezone: str = "America/Chicago"

    @classmethod
    def configured(cls, limits: Mapping[str, int], soon_days: int, urgent_days: int, tz: str) -> Deadlines:
        """The defaults with ``limits`` (rule name → days) applied; an unknown rule name is an error."""
        by_name = {r.name: r for r in RULES}
        unknown = sorted(set(limits) - set(by_name))
        if unknown:
            raise ValueError(f"deadlines.limits: unknown rule {unknown[0]!r} (rules: {', '.join(by_name)})")
        bad = [n for n, d in limits.items() if d < 0]
        if bad:
            raise ValueError(f"deadlines.limits.{bad[0]} = {limits[bad[0]]}: a limit is a number of days, ≥ 0")
        rules = tuple(Rule(r.name, r.kinds, int(limits.get(r.name, r.days)), r.clock, r.what, r.source) for r in RULES)
        return cls(rules, soon_days, urgent_days, tz)

    def rule_for(self, kind: str) -> Rule | None:
        """The rule whose kind prefix matches ``kind`` best (``Dependent.Add`` under ``Dependent.Add``)."""
        best: tuple[int, Rule] | None = None
        for rule in self.rules:
            for prefix in rule.kinds:
                if (kind == prefix or kind.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), rule)
        return best[1] if best else None

    def local_day(self, at_ms: int) -> date:
        """The school-local calendar day of a moment (deadlines are whole days in the school's zone)."""
        return datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(ZoneInfo(self.timezone)).date()

    def due(self, kind: str, first_change_ms: int, session_start: str | None = None) -> Due | None:
        """When a record of ``kind`` is legally due, or None when no rule covers it (or its clock is unknown)."""
        rule = self.rule_for(kind)
        if rule is None:
            return None
        if rule.clock == "session_start":
            if not session_start:
                return None
            start = date.fromisoformat(session_start[:10])
        else:
            start = self.local_day(first_change_ms)
        return Due(rule, start, start + timedelta(days=rule.days))

    def band(self, due_on: date, today: date) -> str:
        left = (due_on - today).days
        if left < 0:
            return "overdue"
        if left <= self.urgent_days:
            return "urgent"
        if left <= self.soon_days:
            return "soon"
        return "ok"


@dataclass(frozen=True)
class Due:
    rule: Rule
    clock_start: date
    due_on: date

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule.name,
            "limit_days": self.rule.days,
            "clock": self.rule.clock,
            "clock_start": self.clock_start.isoformat(),
            "due_on": self.due_on.isoformat(),
            "what": self.rule.what,
            "source": self.rule.source,
        }


def first_change_ms(record: Mapping[str, Any]) -> int:
    """When the school first learned of what a batcher record reports: the earliest time it holds.

    A record replaced by later changes of the same key keeps the first change's clock (``replaced``
    lists what it replaced, with their times; ``history_trimmed.first_at_ms`` the earliest of those a
    record changed very often no longer lists)."""
    times = [int(record.get("at_ms") or 0)] + [int(r.get("at_ms") or 0) for r in record.get("replaced") or []]
    times.append(int((record.get("history_trimmed") or {}).get("first_at_ms") or 0))
    times = [t for t in times if t > 0]
    return min(times) if times else 0


def session_start_of(record: Mapping[str, Any]) -> str | None:
    payload = record.get("payload") or {}
    start = payload.get("CurrentSessionStartDate")
    return str(start) if start else None


def record_due(record: Mapping[str, Any], deadlines: Deadlines) -> tuple[int, Due | None]:
    """A batcher record's clock (:func:`first_change_ms`) and when it is due under ``deadlines``."""
    clock = first_change_ms(record)
    return clock, deadlines.due(record["kind"], clock, session_start_of(record))


class DueMemo:
    """Each open record's clock and due date, worked out once per version of the record.

    The batcher's gauges (every few seconds) and its early-close check (every scheduler tick) ask for the
    due date of every open record; with tens of thousands open, working it out each time (the rule lookup,
    the school-local day) took a large part of a second per pass. A record's version is its ``rev`` (the
    batcher gives every stored version of a record a new one: the school's revision that made it), so a
    remembered answer holds while the record asked about has the ``rev`` it was made for; another version,
    or another rule table, is worked out afresh. The memo holds the ``rev``, not the record: the batcher
    keeps most open records in its state store rather than in memory (a record read back is a new dict), and
    the memo must neither pin them in memory nor miss on them. A record without a ``rev`` (not a batcher's)
    is remembered by identity instead. :meth:`sweep` keeps only the records asked about since the previous
    sweep, so the memo follows the open batch instead of growing (about 90 bytes per open record; one
    ``Due`` per rule and clock day is shared).
    """

    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines
        self._kept: dict[str, dict[str, tuple[object, int, Due | None]]] = {}
        self._asked: dict[str, dict[str, tuple[object, int, Due | None]]] = {}
        self._dues: dict[tuple[str, date], Due] = {}  # equal answers shared: many records start the same day

    def of(
        self, org: str, record_id: str, record: Mapping[str, Any], deadlines: Deadlines | None = None
    ) -> tuple[int, Due | None]:
        """``(first_change_ms, due)`` of one of school ``org``'s records (by ``deadlines``, default the memo's)."""
        if not self._same_rules(deadlines):
            return record_due(record, deadlines)  # type: ignore[arg-type]  # not None: _same_rules(None) holds
        rev = record.get("rev")
        version: object = rev if type(rev) is int else record  # type, not isinstance: a bool is no rev
        hit = self._known(org, record_id, version)
        if hit is None:
            clock, due = record_due(record, self.deadlines)
            if due is not None:
                due = self._dues.setdefault((due.rule.name, due.clock_start), due)
            hit = self._asked.setdefault(org, {})[record_id] = (version, clock, due)
        return hit[1], hit[2]

    def of_rev(
        self,
        org: str,
        record_id: str,
        rev: int | None,
        records: Mapping[str, Mapping[str, Any]],
        deadlines: Deadlines | None = None,
    ) -> tuple[int, Due | None]:
        """:meth:`of` for a record known by its ``rev`` only: ``records[record_id]`` is read (for the batcher,
        from its state store) only when the memo does not know that version."""
        hit = self._known(org, record_id, rev) if type(rev) is int and self._same_rules(deadlines) else None
        if hit is not None:
            return hit[1], hit[2]
        return self.of(org, record_id, records[record_id], deadlines)

    def _same_rules(self, deadlines: Deadlines | None) -> bool:
        return deadlines is None or deadlines is self.deadlines or deadlines == self.deadlines

    def _known(self, org: str, record_id: str, version: object) -> tuple[object, int, Due | None] | None:
        """The remembered answer for this version of the record (noted as asked about), or None."""
        hit = self._asked.get(org, {}).get(record_id) or self._kept.get(org, {}).get(record_id)
        if hit is None:
            return None
        if type(version) is int:
            if type(hit[0]) is not int or hit[0] != version:
                return None
        elif hit[0] is not version:
            return None
        self._asked.setdefault(org, {})[record_id] = hit
        return hit

    def sweep(self) -> None:
        """Forget the records not asked about since the last sweep (closed, removed or replaced ones)."""
        self._kept, self._asked = self._asked, {}
        if len(self._dues) > 4096:  # one per rule and day: thousands only after a long run; start afresh
            self._dues = {}

    def __len__(self) -> int:
        orgs = self._kept.keys() | self._asked.keys()
        return sum(len(self._kept.get(o, {}).keys() | self._asked.get(o, {}).keys()) for o in orgs)
