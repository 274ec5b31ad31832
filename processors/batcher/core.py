"""The batch state machine of one school: ``apply(state, input) -> (new_state, outputs)``.

Plain functions over plain data, no Kafka and no clock: every time comes from
the input (the event's commit time, the command's ``requested_at_ms``, the
scheduler's tick), so replaying the same inputs gives the same outputs byte for
byte (what ``sevisflow verify`` relies on). ``apply`` never mutates its input
state: it copies what it changes and shares the rest, so the Kafka adapter can
find the changed records by identity. The state's mappings are persistent hash
maps (:class:`PMap`): a write makes a new version in O(log n) that shares the
rest with the old one, so an event costs about the same with 100 or 100,000
records in the open batch. The adapter may leave committed records in its state
store (:func:`spilled`): the mapping then reads them back on demand, and ``apply``
cannot tell the difference.

State of a school (:class:`School`), and how it resumes: the adapter stores it in
the compacted changelog ``sevisflow.batcher.state`` (one key per record, per
known SEVIS ID, per applied command, per closed batch, plus one ``meta`` key) in
the same Kafka transaction as the outputs and the input offsets. After a crash
the changelog is read back and processing resumes at the committed input
offsets, i.e. at the first input whose effects are *not* in the state.

Record life cycle in the open batch::

    added ──▶ (replaced)* ──▶ closed            status: open
      │            │     └──▶ removed (undone)
      ├─ held  ◀──▶ released                    status: held    (DSO hold)
      └─ waiting ──▶ released                   status: waiting (update without SEVIS ID)
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, MutableMapping, ValuesView
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol, cast
from zoneinfo import ZoneInfo

import immutables
import orjson

from sevisflow.core.worklist.deadlines import Deadlines, Due, DueMemo
from sevisflow.processors.batcher import ev_refs
from sevisflow.processors.batcher.guard import CommandPolicy, malformed, unauthorized, untimely
from sevisflow.processors.batcher.ids import (
    BATCH_ID_PREFIX,
    is_program,
    next_org_stamp,
    org_batch_id,
    request_id,
    user_id_problem,
)

MAX_PER_SECTION = 250
"""XSD maxOccurs of CreateStudent/Student and UpdateStudent/Student, and of CreateEV/ExchangeVisitor and
UpdateEV/ExchangeVisitor (an exchange program's EV batches: the same 250 + 250 per document)."""
RECORD_HISTORY = 20
"""How many entries of each history list an open record keeps: merged events (``event_ids``), replacements
(``replaced``) and source changes (``lineage``). A student changed over and over while the batch is open (a
runaway SIS job) would otherwise grow the record with every change: each replacement rewrites the whole record
to the state changelog and to sevis.batches, so the cost grows with the square of the changes, and past the
changelog's 8 MiB record limit the batcher stops for every school on the partition. The bound is tight enough
that a closed document of 500 such records (250 creates, 250 updates), which is one state value and one
``closed`` event, still fits in one record. The older history is not lost: every replacement's own event is on
sevis.batches. ``history_trimmed`` counts what was left out and keeps the earliest change time (the record's
reporting clock)."""

CREATE_KINDS = frozenset({"Create", "EV.Create"})
"""Event kinds that go into the create section (a new SEVIS record: F/M student, J-1 exchange visitor)."""
KEEP_CLOSED_BATCHES = 60
"""Closed batches whose content the state keeps (for requeue and result matching)."""
COMMAND_MEMORY_MS = 7 * 86_400_000
"""How long after its Kafka time a command id (applied or refused) is remembered, so that it takes effect once.
Longer is not needed: a DSO's command more than ``guard.MAX_PAST_MS`` (26 h) older than its Kafka time is
refused as untimely anyway, a sink's requeue sent again finds its batch requeued, a resend finds its records
resent. Without a bound every command ever applied, and every forged command refused, stayed in the state
(and the batcher's memory) for good."""
COMMAND_SWEEP_EVERY = 1024
"""Commands past :data:`COMMAND_MEMORY_MS` are dropped from the state each time a school's remembered commands
reach a multiple of this (what is remembered does not depend on when: the duplicate check looks at the time)."""

# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class School:
    """Everything the batcher remembers about one school (OrgID)."""

    org_id: str
    revision: int = 0
    """Counts every published change; a DSO closes what they saw at a revision."""
    seq: int = 0
    """Last record sequence number handed out (requestIDs derive from it; never reused)."""
    last_stamp: int = 0
    """Stamp of the last BatchID handed out (see ids.py)."""
    id_prefix: str = BATCH_ID_PREFIX
    """Letter of the BatchIDs (``S``; the next letter only if a corrupted far-future stamp exhausted it)."""
    open_since: int | None = None
    """Revision of the ``opened`` event of the current open batch, None when nothing is open."""
    sched_date: str | None = None
    """Local date of the last scheduled-close decision (so a day is closed at most once)."""
    early_rev: int = 0
    """Revision of the last early-close decision (a ready record due before the next scheduled close):
    records at or below it were covered by that close, so a tick does not send it twice."""
    held: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    records: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    sevis_ids: Mapping[str, str] = field(default_factory=dict)
    commands: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    batches: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The last KEEP_CLOSED_BATCHES closed batches; committed ones as :class:`SpilledBatch` in the stage."""
    student_ids: Mapping[str, tuple[str, ...]] | None = field(default=None, compare=False, repr=False)
    """Derived: the record ids of each student (see :func:`student_index`); never stored."""
    records_bytes: int | None = field(default=None, compare=False, repr=False)
    """Derived: the bytes of the records' canonical JSON, summed (see :func:`records_json_bytes`); never stored."""
    rejected_ids: Mapping[str, bool] | None = field(default=None, compare=False, repr=False)
    """Derived: record ids SEVIS rejected in a kept batch (see :func:`_rejected_record_ids`); never stored."""

    def meta(self) -> dict[str, Any]:
        return {
            "org_id": self.org_id,
            "revision": self.revision,
            "seq": self.seq,
            "last_stamp": self.last_stamp,
            "open_since": self.open_since,
            "sched_date": self.sched_date,
            "held": dict(self.held),
            "id_prefix": self.id_prefix,
            "early_rev": self.early_rev,
        }


@dataclass(frozen=True)
class EventIn:
    """A SevisEvent (as decoded from sevis.events) and its time from the log."""

    event: Mapping[str, Any]
    at_ms: int


@dataclass(frozen=True)
class CommandIn:
    """A BatchCommand, with what the batcher checks it against.

    ``log_ms`` is the command's Kafka timestamp (the time window of ``requested_at_ms`` is checked
    against it); ``policy`` says who may act (None: not checked, e.g. in pure tests); ``refused`` is a
    refusal decided outside the core (the stage's clock check, or a refusal ``sevisflow verify`` reads
    from the log): the command is rejected with that reason.
    """

    command: Mapping[str, Any]
    log_ms: int | None = None
    policy: CommandPolicy | None = None
    refused: str | None = None
    member_school: bool = False
    """The OrgID is a member school ([[schools]]): its BatchIDs take the member form (ids.member_batch_id), so
    they never equal the main school's, whose scheduled close runs at the same time."""


@dataclass(frozen=True)
class ResultIn:
    result: Mapping[str, Any]
    at_ms: int


@dataclass(frozen=True)
class Tick:
    """The scheduler's look at the clock (only the adapter reads a clock)."""

    now_ms: int
    timezone: str
    close_at: str
    close_dso: str
    close_early: Deadlines | None = None
    """[school] close_early_when_due: the rule table in force (None = never close early)."""
    due_memo: DueMemo | None = field(default=None, compare=False, repr=False)
    """The adapter's memo of each record's due date (the same answers, worked out once per record version)."""


Input = EventIn | CommandIn | ResultIn | Tick


@dataclass(frozen=True)
class Publish:
    """A BatchEvent for sevis.batches."""

    event: dict[str, Any]


@dataclass(frozen=True)
class SendCommand:
    """A BatchCommand for sevis.batch.commands (the scheduled close)."""

    command: dict[str, Any]


@dataclass(frozen=True)
class Reject:
    """Input the batcher cannot use (or a scheduler notice): goes to the DLQ with the reason (no personal data)."""

    code: str
    reason: str
    student_key: str | None = None
    at_ms: int | None = None  # when the input has no log time (a tick): the clock reading it came from
    stage: str = "batcher"  # the dead letter's stage (SCHEDULER_STAGE: shown to the DSO)


SCHEDULER_STAGE = "scheduler"
"""Dead-letter stage of the scheduler's notices (a missed daily close): the DSO's worklist shows them."""


Output = Publish | SendCommand | Reject

# ----------------------------------------------------------------------------- helpers


def dumps(value: Any) -> str:
    """Canonical JSON (sorted keys): the same record always gives the same bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _json_obj(text: str | None, what: str) -> dict[str, Any] | None:
    if text is None or text == "":
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object")
    return value


INTERNAL_FIELDS = ("status", "rev")


def final_record(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A record as it goes into a closed batch: the open-batch bookkeeping dropped."""
    return {k: v for k, v in rec.items() if k not in INTERNAL_FIELDS}


def hold_reason(by: str | None, reason: str | None) -> str:
    """The text of a hold, as the ``student_held`` event and the open-batch view carry it."""
    return f"held by {by or 'a DSO'}" + (f": {reason}" if reason else "")


def status_of(
    section: str, student_key: str, sevis_id: str | None, held: Mapping[str, Any], rec: Mapping[str, Any] | None = None
) -> str:
    """held / waiting (no SEVIS ID yet; for ``rec``, an EV dependent event without its dependent SEVIS ID) / open."""
    if student_key in held:
        return "held"
    if section == "update" and not sevis_id:
        return "waiting"
    if rec is not None and ev_refs.waits_for(rec):
        return "waiting"
    return "open"


_TYPE_FOR_STATUS = {"open": "record_added", "held": "record_held", "waiting": "record_waiting"}


def trim_history(rec: dict[str, Any], keep: int = RECORD_HISTORY) -> None:
    """Bound ``rec``'s history lists in place (see :data:`RECORD_HISTORY`): the newest entries stay, and
    ``history_trimmed`` counts the ones left out and keeps the earliest change time among them."""
    limits = {"event_ids": keep, "replaced": keep, "lineage": keep}
    over = {k: len(rec.get(k) or []) - n for k, n in limits.items() if len(rec.get(k) or []) > n}
    if not over:
        return
    trimmed = dict(rec.get("history_trimmed") or {})
    dropped_times = [int(r.get("at_ms") or 0) for r in (rec.get("replaced") or [])[: over.get("replaced", 0)]]
    earliest = min([t for t in [*dropped_times, int(trimmed.get("first_at_ms") or 0)] if t > 0], default=0)
    for key, n in over.items():
        rec[key] = list(rec[key][n:])
        trimmed[key] = int(trimmed.get(key) or 0) + n
    if earliest:
        trimmed["first_at_ms"] = earliest
    rec["history_trimmed"] = trimmed


def merged_trimmed(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``history_trimmed`` of a record made of two (a refused record merged with the newer open one):
    the counts added up, the earliest change time kept."""
    out: dict[str, Any] = {}
    for part in (a or {}, b or {}):
        for key, value in part.items():
            if key == "first_at_ms":
                out[key] = min(int(value), int(out.get(key) or value))
            else:
                out[key] = int(out.get(key) or 0) + int(value)
    return out


def _source(lineage: list[dict[str, Any]]) -> str:
    if not lineage:
        return "the DSO"
    last = lineage[-1]
    if last.get("command_id"):
        return f"DSO {last.get('dso_user_id')} (command {last['command_id']})"
    return f"{last.get('table') or last.get('topic')} (offset {last.get('offset')})"


def _short(value: Any) -> str | None:
    return value[:100] if isinstance(value, str) and value else None


# ----------------------------------------------------------------------------- transaction


class Spilled:
    """A record whose committed value is in the stage's state store, not in memory (see :func:`spilled`).

    It keeps the fields that passes over every open record look at — the record's version (``rev``) and
    ``status`` for the worklist gauges and the early-close check, which need not read back records whose due
    date the stage's :class:`~sevisflow.core.worklist.deadlines.DueMemo` already knows; ``section`` and
    ``seq`` for the open-batch view, which takes a spilled record's stored JSON as it is (:meth:`Loader.raw`).
    Reading the key through the mapping loads the record with the mapping's ``load``; the stub itself is
    never shown (only :func:`peek_items` sees it). The batcher keeps an open batch's records in its RocksDB
    store this way, so memory does not follow the open batch (about 2.3 KB per record as dicts, ~650 bytes
    as stored JSON, ~80 bytes as a stub)."""

    __slots__ = ("rev", "section", "seq", "status")

    def __init__(self, rev: int | None, status: str | None, section: str | None, seq: int | None) -> None:
        self.rev = rev
        self.status = status
        self.section = section
        self.seq = seq

    @classmethod
    def of(cls, rec: Mapping[str, Any]) -> Spilled:
        return cls(rec.get("rev"), rec.get("status"), rec.get("section"), rec.get("seq"))

    def __repr__(self) -> str:
        return f"Spilled(rev={self.rev}, status={self.status!r}, section={self.section!r}, seq={self.seq})"


class SpilledBatch(Mapping[str, Any]):
    """A kept closed batch whose content (``records``, up to 500 records) is in the stage's state store: its
    other fields — who closed it and when, SEVIS's rejections, ``processed``, ``requeued`` — stay in memory,
    and reading ``records`` reads the content back with ``load``. The batcher keeps the last
    :data:`KEEP_CLOSED_BATCHES` closed batches of every school this way, so memory does not follow how much
    its schools closed (up to 30,000 records per school, ~2.3 KB each as dicts). Only a SEVIS result, a
    requeue or a resend of that batch reads the content; the passes over every kept batch (the rejection
    gauges, the oldest batch to forget at a close) read the fields. Equal to the batch as a dict; pickled as one."""

    __slots__ = ("_bid", "_fields", "_load")

    def __init__(self, bid: str, fields: Mapping[str, Any], load: Callable[[str], list[dict[str, Any]]]) -> None:
        self._bid = bid
        self._fields = {k: v for k, v in fields.items() if k != "records"}
        self._load = load

    def __getitem__(self, key: str) -> Any:
        if key == "records":
            return self._load(self._bid)
        return self._fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        if key == "records":
            return self._load(self._bid)
        return self._fields.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key == "records" or key in self._fields

    def __iter__(self) -> Iterator[str]:
        yield "records"
        yield from self._fields

    def __len__(self) -> int:
        return len(self._fields) + 1

    __hash__ = None  # type: ignore[assignment]  # equal to dicts (Mapping's __eq__), and as unhashable

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self.items()),))

    def __repr__(self) -> str:
        return f"SpilledBatch({self._bid!r}, {self._fields!r})"


def spilled_batches(
    batches: Mapping[str, Any], keys: Iterable[str], load: Callable[[str], list[dict[str, Any]]]
) -> PMap:
    """``batches`` with the batches under ``keys`` left to ``load`` (each becomes a :class:`SpilledBatch`): the
    caller has them in its store, committed. Keys not in ``batches`` are skipped. Equal to ``batches``."""
    m = batches._map if isinstance(batches, _Persistent) else immutables.Map(batches)
    out = m.mutate()
    for key in keys:
        batch = out.get(key)
        if batch is not None and type(batch) is not SpilledBatch:
            out[key] = SpilledBatch(key, batch, load)
    return PMap(out.finish())


class Loader(Protocol):
    """Reads spilled records back (the stage's state store)."""

    def __call__(self, record_id: str) -> Any:
        """The record, decoded."""

    def raw(self, record_id: str) -> bytes:
        """The record as stored: ``dumps`` of it (canonical JSON, sorted keys), not decoded."""


class _Persistent(Mapping[str, Any]):
    """Read side shared by :class:`PMap` and :class:`Written`: a persistent hash map (``immutables.Map``, a HAMT)
    read at C speed, equal to any mapping with the same items (``immutables.Map`` alone never equals a dict).
    A value may be :class:`Spilled`: it is read with ``load`` (the mapping's loader), never shown as the stub."""

    __slots__ = ("_map", "load")
    _map: immutables.Map[str, Any]
    load: Loader | None

    def __getitem__(self, key: str) -> Any:
        value = self._map[key]
        return self._loaded(key) if type(value) is Spilled else value

    def _loaded(self, key: str) -> Any:
        if self.load is None:  # pragma: no cover - spilled() never makes a stub without a loader
            raise KeyError(f"{key!r} is spilled to a state store and this mapping has no loader")
        return self.load(key)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def get(self, key: str, default: Any = None) -> Any:
        value = self._map.get(key, default)
        return self._loaded(key) if type(value) is Spilled else value

    def keys(self) -> KeysView[str]:
        return _Keys(self)

    def values(self) -> ValuesView[Any]:
        return _Values(self)

    def items(self) -> ItemsView[str, Any]:
        return _Items(self)

    def _iter_items(self) -> Iterator[tuple[str, Any]]:
        if self.load is None:
            return iter(self._map.items())
        return ((k, self._loaded(k) if type(v) is Spilled else v) for k, v in self._map.items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Persistent) and self.load is None and other.load is None:
            return bool(self._map == other._map)
        if isinstance(other, Mapping):
            return len(self) == len(other) and all(k in other and other[k] == v for k, v in self._iter_items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to dicts, and as unhashable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self._iter_items())!r})"


class _Keys(KeysView[str]):
    __slots__ = ("_of",)

    def __init__(self, of: _Persistent) -> None:
        super().__init__(of)
        self._of = of  # live, as a dict's view: iterated after a write, it shows the write

    def __iter__(self) -> Iterator[str]:
        return iter(self._of._map)


class _Values(ValuesView[Any]):
    __slots__ = ("_of",)

    def __init__(self, of: _Persistent) -> None:
        super().__init__(of)
        self._of = of

    def __iter__(self) -> Iterator[Any]:
        of = self._of
        if of.load is None:
            return iter(of._map.values())
        return (v for _, v in of._iter_items())


class _Items(ItemsView[str, Any]):
    __slots__ = ("_of",)

    def __init__(self, of: _Persistent) -> None:
        super().__init__(of)
        self._of = of

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self._of._iter_items()


_EMPTY: immutables.Map[str, Any] = immutables.Map()


class PMap(_Persistent):
    """One of a school's mappings as ``apply`` leaves it: immutable, sharing all but O(log n) of its structure
    with the mapping it was made from, so an event costs the same with 100 or 100,000 open records.

    ``written`` lists the keys written since ``base_id``'s mapping (see :func:`changed_keys`); empty for a
    mapping made from scratch. ``load`` reads its :class:`Spilled` values (see :func:`spilled`)."""

    __slots__ = ("base_id", "written")

    def __init__(
        self,
        items: Mapping[str, Any] | immutables.Map[str, Any] = _EMPTY,
        base_id: int | None = None,
        written: AbstractSet[str] = frozenset(),
        load: Loader | None = None,
    ) -> None:
        self._map = items if isinstance(items, immutables.Map) else immutables.Map(items)
        self.base_id = base_id
        self.written = written
        self.load = load

    def __reduce__(self) -> tuple[Any, ...]:
        return (PMap, (dict(self._iter_items()),))


class Written(_Persistent, MutableMapping[str, Any]):
    """The working copy of one of a school's mappings during one ``apply``: it lists the keys written.

    It starts from the old mapping's structure (no copy when that is a :class:`PMap`; a plain dict, e.g. a
    state loaded from the changelog, is converted once) and each write makes a new version of it in
    O(log n), so the old mapping stays intact whatever happens (an exception midway included). With
    thousands of records in an open batch, finding what changed by comparing the two versions cost more than
    the event itself, so the copy remembers it (:func:`changed_keys`). ``base_id`` is the ``id`` of the
    mapping it started from: the list is only trusted against that very object, while the caller still
    holds it."""

    __slots__ = ("base_id", "written")

    def __init__(self, base: Mapping[str, Any]) -> None:
        if isinstance(base, _Persistent):
            self._map, self.load = base._map, base.load
        else:
            self._map, self.load = immutables.Map(base), None
        self.base_id = id(base)
        self.written: set[str] = set()

    def __setitem__(self, key: str, value: Any) -> None:
        self._map = self._map.set(key, value)
        self.written.add(key)

    def __delitem__(self, key: str) -> None:
        self._map = self._map.delete(key)
        self.written.add(key)

    def frozen(self) -> PMap:
        """The finished mapping, for the new state (this working copy is not written again)."""
        return PMap(self._map, self.base_id, frozenset(self.written), self.load)


def spilled(records: Mapping[str, Any], keys: Iterable[str], load: Loader) -> PMap:
    """``records`` with the records under ``keys`` left to ``load`` (each becomes a :class:`Spilled` stub): the
    caller has them in its store, committed, and reads them back through ``load``. Keys not in ``records``
    are skipped. Equal to ``records``; a new mapping, so :func:`changed_keys` against it starts afresh."""
    m = records._map if isinstance(records, _Persistent) else immutables.Map(records)
    out = m.mutate()
    for key in keys:
        rec = out.get(key)
        if rec is not None and type(rec) is not Spilled:
            out[key] = Spilled.of(rec)
    return PMap(out.finish(), load=load)


def peek_items(records: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """The records' items with each spilled one as its :class:`Spilled` stub (nothing read back): for a pass
    over every open record that needs only their :func:`record_status` and :func:`record_rev`."""
    return records._map.items() if isinstance(records, _Persistent) else records.items()


def record_status(rec: Any) -> str | None:
    """The status of a record or of its :class:`Spilled` stub."""
    return rec.status if type(rec) is Spilled else rec.get("status")


def record_rev(rec: Any) -> int:
    """The ``rev`` of a record or of its :class:`Spilled` stub (0 when it has none)."""
    rev = rec.rev if type(rec) is Spilled else rec.get("rev")
    return rev or 0


def memo_due(
    memo: DueMemo, org: str, rid: str, rec: Any, records: Mapping[str, Any], deadlines: Deadlines | None = None
) -> tuple[int, Due | None]:
    """``memo``'s clock and due date of the record ``rid`` (``rec`` as :func:`peek_items` gave it): a spilled
    record is read back from ``records`` only when the memo does not know its version."""
    if type(rec) is Spilled:
        return memo.of_rev(org, rid, rec.rev, records, deadlines)
    return memo.of(org, rid, rec, deadlines)


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> AbstractSet[str] | None:
    """The keys ``apply`` wrote when it made ``new`` from ``old`` (None: unknown, compare them whole)."""
    if new is old:
        return set()
    if isinstance(new, (PMap, Written)) and new.base_id == id(old):
        return new.written
    return None


def student_index(school: School) -> Mapping[str, tuple[str, ...]]:
    """Which record ids each student has in ``school.records``: built once per school state, then carried
    from state to state by ``apply`` (a lookup instead of a pass over every open record)."""
    if school.student_ids is None:
        index: dict[str, list[str]] = {}
        for rid, rec in school.records.items():
            index.setdefault(rec["student_key"], []).append(rid)
        object.__setattr__(school, "student_ids", PMap({k: tuple(v) for k, v in index.items()}))
    return school.student_ids  # type: ignore[return-value]


def _rejected_record_ids(batches: Mapping[str, Mapping[str, Any]]) -> Mapping[str, bool]:
    """The record ids with a SEVIS rejection in one of ``batches`` (resolved or not): built once per school state,
    then carried by ``apply``, which adds each new rejection's record and starts over at a close (it may keep
    a resolved or forgotten one until then). A success of a record not in it has no rejection to resolve, so
    it skips the pass over every kept batch (up to 60, their fields read through :class:`SpilledBatch`)."""
    return PMap({r["record_id"]: True for b in batches.values() for r in (b.get("rejected") or {}).values()})


_last_request_index: tuple[list[dict[str, Any]], dict[Any, dict[str, Any]]] | None = None


def _record_with_request(records: list[dict[str, Any]], request_id: Any) -> dict[str, Any] | None:
    """The first of a closed batch's ``records`` with ``request_id``, or None. SEVIS answers a batch record by
    record, so the index of the last content looked up is kept (by identity: a closed batch's content is never
    changed in place, and the loader hands out the same list while it keeps the batch decoded); one result
    costs a lookup, not a pass over up to 500 records. A cache only: the answer is the pass's."""
    global _last_request_index
    last = _last_request_index
    if last is None or last[0] is not records:
        index: dict[Any, dict[str, Any]] = {}
        for r in records:
            index.setdefault(r.get("request_id"), r)
        last = _last_request_index = (records, index)
    return last[1].get(request_id)


def _record_bytes(rec: Mapping[str, Any] | None) -> int:
    return 0 if rec is None else len(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS))


def records_json_bytes(school: School) -> int:
    """The bytes of ``dumps`` of the school's records as one list (the open-batch view's ``records_json``):
    summed once per school state, then carried from state to state by ``apply`` (two records encoded per
    record written), so a commit learns whether a big open batch fits the view without encoding it."""
    if school.records_bytes is None:
        object.__setattr__(school, "records_bytes", sum(_record_bytes(r) for r in school.records.values()))
    total: int = school.records_bytes  # type: ignore[assignment]
    return 2 + total + max(0, len(school.records) - 1)  # "[", "]" and a "," between two records


def _carried_bytes(old: School, records: Mapping[str, Any]) -> int | None:
    """``old``'s record bytes updated for the record ids written (None when ``old`` had none)."""
    if old.records_bytes is None:
        return None
    written = changed_keys(old.records, records)
    if written is None:
        return None
    total = old.records_bytes
    for rid in written:
        was, now = old.records.get(rid), records.get(rid)
        if was is not now:
            total += _record_bytes(now) - _record_bytes(was)
    return total


def _carried_index(old: School, records: Mapping[str, Any]) -> Mapping[str, tuple[str, ...]] | None:
    """``old``'s student index updated for the record ids written (None when ``old`` had none)."""
    if old.student_ids is None:
        return None
    written = changed_keys(old.records, records)
    if written is None:
        return None
    index: Mapping[str, tuple[str, ...]] = old.student_ids
    copied: Written | None = None
    for rid in written:
        was, now = old.records.get(rid), records.get(rid)
        s_was = was["student_key"] if was is not None else None
        s_now = now["student_key"] if now is not None else None
        if s_was == s_now:
            continue
        if copied is None:
            copied = Written(index)
        if s_was is not None:
            rest = tuple(r for r in copied.get(s_was, ()) if r != rid)
            if rest:
                copied[s_was] = rest
            else:
                copied.pop(s_was, None)
        if s_now is not None:
            copied[s_now] = (*copied.get(s_now, ()), rid)
    return index if copied is None else copied.frozen()


class _Tx:
    """Copy-on-write working set of one ``apply`` call."""

    def __init__(self, s: School) -> None:
        self.s = s
        self.revision = s.revision
        self.seq = s.seq
        self.last_stamp = s.last_stamp
        self.id_prefix = s.id_prefix
        self.open_since = s.open_since
        self.sched_date = s.sched_date
        self.early_rev = s.early_rev
        self.held = s.held
        self.records = s.records
        self.sevis_ids = s.sevis_ids
        self.commands = s.commands
        self.batches = s.batches
        self.rejected_ids: Mapping[str, bool] | None = s.rejected_ids
        self._copied: set[str] = set()
        self.out: list[Output] = []
        self.member_ids = False  # a member school's command: its BatchIDs take the member form

    def w(self, name: str) -> Written:
        """The named mapping, made writable once (a :class:`Written` copy-on-write version: it lists the keys
        written)."""
        if name not in self._copied:
            setattr(self, name, Written(getattr(self, name)))
            self._copied.add(name)
        return cast(Written, getattr(self, name))

    def _done(self, name: str) -> Mapping[str, Any]:
        """The named mapping for the new state: a written one frozen (nothing writes it after ``apply``)."""
        value = getattr(self, name)
        return value.frozen() if isinstance(value, Written) else cast(Mapping[str, Any], value)

    def finish(self) -> School:
        records = self._done("records")
        return dataclasses.replace(
            self.s,
            revision=self.revision,
            seq=self.seq,
            last_stamp=self.last_stamp,
            id_prefix=self.id_prefix,
            open_since=self.open_since,
            sched_date=self.sched_date,
            early_rev=self.early_rev,
            held=self._done("held"),
            records=records,
            sevis_ids=self._done("sevis_ids"),
            commands=self._done("commands"),
            batches=self._done("batches"),
            student_ids=_carried_index(self.s, records),
            records_bytes=_carried_bytes(self.s, records),
            rejected_ids=self.rejected_ids,
        )

    def emit(
        self,
        type_: str,
        at_ms: int,
        *,
        record: Mapping[str, Any] | None = None,
        records: list[dict[str, Any]] | None = None,
        batch: str | None = None,
        closed_by: str | None = None,
        command_id: str | None = None,
        reason: str | None = None,
        bump: bool = True,
    ) -> None:
        if bump:
            self.revision += 1
        self.out.append(
            Publish(
                {
                    "org_id": self.s.org_id,
                    "batch_id": batch,
                    "type": type_,
                    "revision": self.revision,
                    "at_ms": int(at_ms),
                    "record_json": dumps(record) if record is not None else None,
                    "records_json": dumps(records) if records is not None else None,
                    "closed_by": closed_by,
                    "command_id": command_id,
                    "reason": reason,
                }
            )
        )

    def ensure_open(self, at_ms: int, reason: str | None = None, command_id: str | None = None) -> None:
        if self.open_since is None:
            self.emit("opened", at_ms, reason=reason, command_id=command_id)
            self.open_since = self.revision

    def put_record(
        self, rec: dict[str, Any], type_: str, at_ms: int, reason: str | None = None, command_id: str | None = None
    ) -> None:
        """Store ``rec`` (a new dict) and publish ``type_`` for it; its ``rev`` is the new revision."""
        self.ensure_open(at_ms, command_id=command_id)
        rec["rev"] = self.revision + 1
        trim_history(rec)
        self.w("records")[rec["record_id"]] = rec
        self.emit(type_, at_ms, record=rec, reason=reason, command_id=command_id)

    def drop_record(self, record_id: str, at_ms: int, reason: str, command_id: str | None = None) -> None:
        rec = self.w("records").pop(record_id)
        self.emit("record_removed", at_ms, record=rec, reason=reason, command_id=command_id)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def student_records(self, student_key: str) -> list[dict[str, Any]]:
        """The student's open records by sequence: the school's index, plus the records this call wrote."""
        ids = set(student_index(self.s).get(student_key, ()))
        if isinstance(self.records, Written) and self.records.base_id == id(self.s.records):
            ids.update(self.records.written)
        elif self.records is not self.s.records:  # pragma: no cover - every write goes through w()
            ids = set(self.records)
        recs = self.records
        found = [r for r in map(recs.get, ids) if r is not None and r["student_key"] == student_key]
        return sorted(found, key=lambda r: r["seq"])

    def reject_command(self, cmd: Mapping[str, Any], at_ms: int, reason: str, dead_letter: str | None = None) -> None:
        """Refuse ``cmd`` with ``reason`` (a ``command_rejected`` event the CLI shows); ``dead_letter`` = also
        send it to the DLQ under that code. A well-formed command's refusal is remembered, so the same
        command id can never take effect later (a replay after the settings changed); a malformed one is not
        stored (garbage must not grow the state)."""
        if malformed(cmd) is None:
            self.w("commands")[cmd["command_id"]] = {"kind": cmd.get("kind"), "at_ms": at_ms, "rejected": reason}
        self.emit(
            "command_rejected", at_ms, command_id=str(cmd.get("command_id") or "")[:200], reason=reason, bump=False
        )
        if dead_letter:
            self.out.append(
                Reject(
                    dead_letter,
                    f"command {str(cmd.get('command_id'))[:200]!r}: {reason}",
                    _short(cmd.get("student_key")),
                )
            )

    def learn_ev_ids(self, student_key: str, res: Mapping[str, Any], at_ms: int, why: str) -> None:
        """Remember the dependent SEVIS IDs and SiteIds SEVIS assigned (with the SIS keys they belong to) and
        put them into the exchange visitor's records that need them (a waiting dependent event is released)."""
        for what, sis_key, new_id in ev_refs.learned(res):
            key = ev_refs.ref_key(student_key, what, sis_key)
            if self.sevis_ids.get(key) != new_id:
                self.w("sevis_ids")[key] = new_id
        for rec in self.student_records(student_key):
            new = ev_refs.fill(rec, self.sevis_ids)
            if new is None:
                continue
            new["status"] = status_of(rec["section"], student_key, new.get("sevis_id"), self.held, new)
            released = rec["status"] == "waiting" and new["status"] != "waiting"
            self.put_record(
                new,
                "record_released" if released else "record_replaced",
                at_ms,
                reason=f"SEVIS's id of the dependent or site arrived ({why})",
            )

    def learn_sevis_id(self, student_key: str, sevis_id: str, at_ms: int, why: str) -> None:
        """Remember the student's SEVIS ID and release their waiting updates."""
        if self.sevis_ids.get(student_key) != sevis_id:
            self.w("sevis_ids")[student_key] = sevis_id
        for rec in self.student_records(student_key):
            if rec["section"] != "update" or rec.get("sevis_id") == sevis_id:
                continue
            new = dict(rec, sevis_id=sevis_id)
            new["status"] = status_of("update", student_key, sevis_id, self.held, new)
            if rec["status"] == "waiting":
                self.put_record(new, "record_released", at_ms, reason=f"SEVIS ID {sevis_id} arrived ({why})")
            else:
                self.put_record(new, "record_replaced", at_ms, reason=f"SEVIS ID {sevis_id} set ({why})")


# ----------------------------------------------------------------------------- open-batch view

MAX_OPEN_VIEW_BYTES = 6 * 1024 * 1024
"""Above this the view carries no records (readers fold sevis.batches): Kafka refuses records over
8 MiB, and a refused record would abort the batcher's transaction again and again."""


MIN_RECORD_JSON_BYTES = 150
"""No open record encodes shorter (its record id, student key, kind, section, status, seq, rev, payload and
lineage keys alone are longer): above MAX_OPEN_VIEW_BYTES / this many records the view cannot carry them."""


def _records_json_within_limit(school: School) -> str | None:
    """``dumps`` of the records in display order, or None when that exceeds MAX_OPEN_VIEW_BYTES — found
    without encoding a big open batch at every commit (90,000 open records are >100 MB of JSON): no record
    is encoded when there are too many to fit, nor when their carried size (:func:`records_json_bytes`)
    is too big. A spilled record is taken as stored (its canonical JSON), neither read back nor encoded."""
    records = school.records
    if len(records) > MAX_OPEN_VIEW_BYTES // MIN_RECORD_JSON_BYTES:
        return None
    if records_json_bytes(school) > MAX_OPEN_VIEW_BYTES:
        return None
    creates: list[tuple[int, str, Any]] = []
    updates: list[tuple[int, str, Any]] = []
    for rid, r in peek_items(records):
        if type(r) is Spilled:
            (creates if r.section == "create" else updates).append((r.seq, rid, r))  # type: ignore[arg-type]
        else:
            (creates if r["section"] == "create" else updates).append((r["seq"], rid, r))
    by_seq = operator.itemgetter(0)
    ordered = sorted(creates, key=by_seq) + sorted(updates, key=by_seq)  # creates first, each by sequence
    load = records.load if isinstance(records, _Persistent) else None
    parts: list[bytes] = []
    size = 1  # "[" and "]", and a "," between two records: 2 + the records + (records - 1)
    for _, rid, r in ordered:
        part = (
            load.raw(rid) if type(r) is Spilled and load is not None else orjson.dumps(r, option=orjson.OPT_SORT_KEYS)
        )
        size += len(part) + 1
        if size > MAX_OPEN_VIEW_BYTES:
            return None
        parts.append(part)
    return (b"[" + b",".join(parts) + b"]").decode()


def view_changed(old: School, new: School) -> bool:
    """Whether ``apply`` changed what ``batch show`` displays (apply copies what it changes)."""
    return old.revision != new.revision or old.records is not new.records or old.held is not new.held


def open_view(school: School) -> dict[str, Any]:
    """The open batch as the DSO CLI shows it (an OpenBatch record for the compacted view topic).

    Equal to folding the school's ``sevis.batches`` events (:func:`sevisflow.processors.batcher.view.fold`):
    every record event carries the stored record, and every change of the records, the holds or
    the revision is published as an event.
    """
    return {
        "org_id": school.org_id,
        "revision": school.revision,
        "records_json": _records_json_within_limit(school),
        "record_count": len(school.records),
        "held": [
            {
                "student_key": k,
                "at_ms": int(v.get("at_ms") or 0),
                "reason": hold_reason(v.get("by"), v.get("reason")),
                "by": v.get("by"),
                "why": v.get("reason"),
            }
            for k, v in sorted(school.held.items())
        ],
    }


# ----------------------------------------------------------------------------- apply


def apply(state: School, inp: Input) -> tuple[School, list[Output]]:
    """One input in, the new state and what to publish out. Never mutates ``state``."""
    tx = _Tx(state)
    if isinstance(inp, EventIn):
        _on_event(tx, inp.event, inp.at_ms)
    elif isinstance(inp, CommandIn):
        _on_command(tx, inp)
    elif isinstance(inp, ResultIn):
        _on_result(tx, inp.result, inp.at_ms)
    elif isinstance(inp, Tick):
        _on_tick(tx, inp)
        _early_close(tx, inp)
    else:  # pragma: no cover - programming error
        raise TypeError(f"unknown input {type(inp).__name__}")
    return tx.finish(), tx.out


# -- events


def _on_event(tx: _Tx, ev: Mapping[str, Any], at_ms: int, command_id: str | None = None) -> None:
    student = ev.get("student_key") or ""
    kind = ev.get("kind") or ""
    ckey = ev.get("coalesce_key") or ""
    if not student or not kind or not ckey:
        tx.out.append(
            Reject("bad_event", f"event {ev.get('event_id')} lacks student_key, kind or coalesce_key", student or None)
        )
        return
    try:
        payload = _json_obj(ev.get("payload_json"), "payload_json")
        before = _json_obj(ev.get("before_json"), "before_json")
        after = _json_obj(ev.get("after_json"), "after_json")
    except ValueError as exc:
        tx.out.append(Reject("bad_event", f"event {ev.get('event_id')}: {exc}", student))
        return
    if payload is None:
        tx.out.append(Reject("bad_event", f"event {ev.get('event_id')} has an empty payload_json", student))
        return

    event_id = ev["event_id"]
    section = "create" if kind in CREATE_KINDS else "update"
    known = tx.sevis_ids.get(student)
    if ev.get("origin") == "dso" and section == "update" and ev.get("sevis_id") and known and ev["sevis_id"] != known:
        tx.out.append(
            Reject(
                "sevis_id_mismatch",
                f"event {event_id}: the DSO gave SEVIS ID {ev['sevis_id']} but "
                f"{known} is the one known for the student (from SEVIS or the SIS); the event is not "
                "used and no open update is re-targeted - resend it with the right ID",
                student,
            )
        )
        return
    if ev.get("sevis_id") and section == "update":
        tx.learn_sevis_id(student, ev["sevis_id"], at_ms, f"on event {event_id}")
    sevis_id = None if section == "create" else (ev.get("sevis_id") or tx.sevis_ids.get(student))
    lineage = [dict(p) for p in ev.get("lineage") or []]
    commit_ms = max((p.get("commit_ts_ms") or 0 for p in lineage), default=0) or at_ms
    rid = f"{student}:{ckey}"
    existing = tx.records.get(rid)

    if existing is not None and event_id in existing["event_ids"]:
        return  # the same event again (an upstream replay): already in the record

    problems = list(ev.get("problems") or [])
    if section == "create" and tx.sevis_ids.get(student):
        problems.append(
            f"student already has SEVIS ID {tx.sevis_ids[student]}; SEVIS rejects a second "
            f"Create ({'S2141' if kind == 'EV.Create' else 'S1004'}) - check the SIS record"
        )

    if existing is not None:
        merged_before = {**(before or {}), **(existing.get("before") or {})}
        merged_after = {**(existing.get("after") or {}), **(after or {})}
        if (
            existing.get("before") is not None
            and before is not None
            and after is not None
            and merged_after == merged_before
        ):
            fields = ", ".join(sorted(merged_before)) or "the values"
            tx.drop_record(
                rid,
                commit_ms,
                reason=f"undone by event {event_id} from {_source(lineage)}: {fields} back to what SEVIS already has",
                command_id=command_id,
            )
            return
        seq = tx.next_seq()
        rec = dict(existing)
        rec.update(
            {
                "request_id": request_id(seq, student),
                "seq": seq,
                "kind": kind,
                # events carry only the changed elements (e.g. PersonalInfo with just Email): a later event of
                # the same kind adds to / overrides the earlier one element by element; another kind replaces it
                "payload": {**existing["payload"], **payload} if existing["kind"] == kind else payload,
                "sevis_id": sevis_id,
                "event_ids": [*existing["event_ids"], event_id],
                "lineage": [*existing["lineage"], *lineage],
                "before": merged_before if (before is not None or existing.get("before") is not None) else None,
                "after": merged_after if (after is not None or existing.get("after") is not None) else None,
                "display_name": ev.get("display_name") or existing.get("display_name"),
                "problems": problems,
                "origin": ev.get("origin") or "sis",
                "at_ms": commit_ms,
                "replaced": [
                    *existing.get("replaced", []),
                    {
                        "event_id": existing["event_ids"][-1],
                        "kind": existing["kind"],
                        "at_ms": existing["at_ms"],
                        "by_event_id": event_id,
                        "by_kind": kind,
                    },
                ],
            }
        )
        rec = ev_refs.fill(rec, tx.sevis_ids) or rec
        rec["status"] = status_of(section, student, sevis_id, tx.held, rec)
        tx.put_record(
            rec,
            "record_replaced",
            commit_ms,
            reason=f"later change of {ckey} (event {event_id} from {_source(lineage)}) "
            f"replaces event {existing['event_ids'][-1]}",
            command_id=command_id,
        )
        return

    seq = tx.next_seq()
    rec = {
        "record_id": rid,
        "request_id": request_id(seq, student),
        "section": section,
        "student_key": student,
        "sevis_id": sevis_id,
        "kind": kind,
        "coalesce_key": ckey,
        "payload": payload,
        "user_defined_a": student if len(student) <= 10 else None,
        "user_defined_b": None,
        "event_ids": [event_id],
        "lineage": lineage,
        "display_name": ev.get("display_name"),
        "before": before,
        "after": after,
        "problems": problems,
        "origin": ev.get("origin") or "sis",
        "seq": seq,
        "at_ms": commit_ms,
        "replaced": [],
    }
    rec = ev_refs.fill(rec, tx.sevis_ids) or rec
    rec["status"] = status_of(section, student, sevis_id, tx.held, rec)
    reason = {
        "open": None,
        "held": f"student {student} is on hold",
        "waiting": (sevis_id and ev_refs.waits_for(rec))
        or "waiting for the student's SEVIS ID (SEVIS assigns it when it processes the Create)",
    }
    tx.put_record(rec, _TYPE_FOR_STATUS[rec["status"]], commit_ms, reason=reason[rec["status"]], command_id=command_id)


# -- results


def _on_result(tx: _Tx, res: Mapping[str, Any], at_ms: int) -> None:
    bid = res.get("batch_id") or ""
    stored = tx.batches.get(bid)
    rec = None
    if stored is not None:
        rec = _record_with_request(stored["records"], res.get("request_id"))
        if not stored.get("processed"):
            tx.w("batches")[bid] = dict(stored, processed=True)
        if rec is not None:
            _note_outcome(tx, bid, rec, res, at_ms)
    student = res.get("student_key") or (rec or {}).get("student_key")
    kind = res.get("kind") or (rec or {}).get("kind")
    if student and str(kind).startswith("EV.") and ev_refs.learned(res):
        tx.learn_ev_ids(student, res, at_ms, f"{kind} accepted in batch {bid}")
    if not student or kind not in CREATE_KINDS:
        return
    if res.get("status") == "success" and res.get("sevis_id"):
        tx.learn_sevis_id(student, res["sevis_id"], at_ms, f"Create accepted in batch {bid}")
        return
    if res.get("status") != "success":
        note = (
            f"the Create failed in batch {bid} ({res.get('error_code') or 'no code'}); these updates "
            "wait until a corrected Create is accepted"
        )
        for r in tx.student_records(student):
            if r["status"] == "waiting" and note not in r["problems"]:
                new = dict(r, problems=[*r["problems"], note])
                tx.put_record(new, "record_waiting", at_ms, reason=note)


def _note_outcome(tx: _Tx, bid: str, rec: Mapping[str, Any], res: Mapping[str, Any], at_ms: int) -> None:
    """Remember SEVIS's rejections per batch (what ``resend`` may put back, and the open-rejection gauge);
    an acceptance of the same record later marks its earlier rejections resolved. Only rejections and
    their resolution write the state: a batch SEVIS accepted costs nothing more."""
    rid = rec["record_id"]
    if res.get("status") != "success":
        stored = tx.batches[bid]
        rejected = dict(stored.get("rejected") or {})
        rejected[rec["request_id"]] = {"record_id": rid, "code": res.get("error_code"), "at_ms": at_ms}
        tx.w("batches")[bid] = dict(stored, rejected=rejected)
        if tx.rejected_ids is not None and rid not in tx.rejected_ids:
            ids = Written(tx.rejected_ids)
            ids[rid] = True
            tx.rejected_ids = ids.frozen()
        return
    if tx.rejected_ids is None:
        tx.rejected_ids = _rejected_record_ids(tx.batches)
    if rid not in tx.rejected_ids:
        return
    for other, b in list(tx.batches.items()):
        open_rej = {
            q: r
            for q, r in (b.get("rejected") or {}).items()
            if r["record_id"] == rid and not r.get("resolved_in") and other != bid
        }
        if open_rej:
            rejected = dict(b["rejected"])
            for q, r in open_rej.items():
                rejected[q] = dict(r, resolved_in=bid, resolved_at_ms=at_ms)
            tx.w("batches")[other] = dict(tx.batches[other], rejected=rejected)


def open_rejections(school: School) -> list[dict[str, Any]]:
    """SEVIS rejections of the kept batches not yet made good by a later acceptance of the same record."""
    return [
        dict(r, batch_id=bid, request_id=q)
        for bid, b in school.batches.items()
        for q, r in (b.get("rejected") or {}).items()
        if not r.get("resolved_in")
    ]


# -- commands


def _on_command(tx: _Tx, inp: CommandIn) -> None:
    """Check the command (shape, time, who), then apply it; every refusal says why (guard.py)."""
    cmd = inp.command
    tx.member_ids = inp.member_school
    raw_at = cmd.get("requested_at_ms")
    at_ms = raw_at if isinstance(raw_at, int) and 0 < raw_at < 10**13 else int(inp.log_ms or 0)
    problem = malformed(cmd)
    if problem and not (isinstance(cmd.get("command_id"), str) and cmd.get("command_id")):
        tx.out.append(Reject("malformed_command", problem, _short(cmd.get("student_key"))))
        return
    cid = cmd["command_id"]
    done = tx.commands.get(cid)
    if done is not None and _remembered(done, inp.log_ms):
        tx.out.append(
            Reject(
                "duplicate_command",
                f"command {cid[:200]!r} was applied before "
                f"({'refused' if done.get('rejected') else done.get('kind')}); a command id takes "
                "effect once",
                _short(cmd.get("student_key")),
            )
        )
        return
    _checked_and_applied(tx, inp, cmd, at_ms, problem)
    if inp.log_ms:
        entry = tx.commands.get(cid)
        if entry is not None and entry.get("log_ms") != inp.log_ms:
            tx.w("commands")[cid] = {**entry, "log_ms": inp.log_ms}
        if len(tx.commands) % COMMAND_SWEEP_EVERY == 0:
            _forget_old_commands(tx, inp.log_ms)


def _remembered(done: Mapping[str, Any], log_ms: int | None) -> bool:
    """Whether a stored command still makes a command with the same id a duplicate, at Kafka time ``log_ms``."""
    if not log_ms:
        return True
    seen = done.get("log_ms") or done.get("at_ms") or 0
    return bool(seen >= log_ms - COMMAND_MEMORY_MS)


def _forget_old_commands(tx: _Tx, log_ms: int) -> None:
    stale = [cid for cid, done in tx.commands.items() if not _remembered(done, log_ms)]
    if stale:
        commands = tx.w("commands")
        for cid in stale:
            del commands[cid]


def _checked_and_applied(tx: _Tx, inp: CommandIn, cmd: Mapping[str, Any], at_ms: int, problem: str | None) -> None:
    if problem:
        tx.reject_command(cmd, at_ms, f"malformed command: {problem}", dead_letter="malformed_command")
        return
    if inp.refused:
        tx.reject_command(cmd, at_ms, inp.refused, dead_letter="refused_command")
        return
    problem = untimely(cmd, inp.log_ms)
    if problem:
        # recorded at the command's Kafka time: its own time is the forged part
        tx.reject_command(cmd, int(inp.log_ms or at_ms), f"not applied: {problem}", dead_letter="untimely_command")
        return
    if inp.policy is not None:
        problem = unauthorized(cmd, inp.policy)
        if problem:
            tx.reject_command(cmd, at_ms, f"not applied: {problem}", dead_letter="unauthorized_command")
            return
    kind = cmd["kind"]
    if kind == "close":
        _close(tx, cmd, at_ms)
    elif kind == "hold":
        _hold(tx, cmd, at_ms)
    elif kind == "release":
        _release(tx, cmd, at_ms)
    elif kind == "requeue":
        _requeue(tx, cmd, at_ms)
    elif kind == "report":
        _report(tx, cmd, at_ms)
    elif kind == "resend":
        _resend(tx, cmd, at_ms)


def _close(tx: _Tx, cmd: Mapping[str, Any], at_ms: int) -> None:
    """Close exactly what the DSO reviewed into as many ≤250+≤250 documents as needed."""
    cid = cmd["command_id"]
    dso = cmd.get("dso_user_id")
    problem = user_id_problem(dso)
    if problem:
        tx.reject_command(cmd, at_ms, f"not closed: {problem}")
        return
    wanted = set(cmd.get("record_ids") or []) or None
    reviewed = cmd.get("reviewed_revision")
    limit = reviewed if reviewed is not None else cmd.get("basis_revision")
    if limit is not None and limit > tx.revision:
        tx.reject_command(
            cmd,
            at_ms,
            f"nothing closed: revision {limit} does not exist (the open batch is at "
            f"revision {tx.revision}); close a revision `sevisflow batch show` displayed",
        )
        return
    eligible, changed, kept = [], 0, 0
    for rec in tx.records.values():
        if wanted is not None and rec["record_id"] not in wanted:
            continue
        if rec["status"] != "open":
            kept += 1
            continue
        if limit is not None and rec["rev"] > limit:
            changed += 1
            continue
        eligible.append(rec)
    gone = len(wanted - set(tx.records)) if wanted is not None else 0
    notes = []
    if changed:
        notes.append(f"{changed} reviewed record(s) changed after revision {limit} and stay open for review")
    if gone:
        notes.append(f"{gone} reviewed record(s) were undone or closed meanwhile")
    if kept:
        notes.append(f"{kept} record(s) held or waiting for a SEVIS ID stay open")
    if not eligible:
        tx.reject_command(
            cmd,
            at_ms,
            "nothing to close" + (": " + "; ".join(notes) if notes else ": the open batch has no record ready to send"),
        )
        return

    creates = sorted((r for r in eligible if r["section"] == "create"), key=lambda r: r["seq"])
    updates = sorted((r for r in eligible if r["section"] == "update"), key=lambda r: r["seq"])
    n_docs = max(math.ceil(len(creates) / MAX_PER_SECTION), math.ceil(len(updates) / MAX_PER_SECTION))
    ids = []
    records = tx.w("records")
    batches = tx.w("batches")
    stamps = []
    prefix, last = tx.id_prefix, tx.last_stamp
    try:
        for _ in range(n_docs):
            prefix, last = next_org_stamp(tx.s.org_id, at_ms, last, prefix, tx.member_ids)
            stamps.append((prefix, last))
    except ValueError as exc:
        tx.reject_command(cmd, at_ms, f"nothing closed: no BatchID can be made ({exc})", dead_letter="bad_stamp")
        return
    if prefix != tx.id_prefix:
        notes.append(
            f"BatchIDs now start with {prefix}: the {tx.id_prefix} ids were exhausted by a far-future "
            "time stored before commands were time-checked"
        )
    if cid.startswith("scheduled:"):
        notes.append("scheduled close: no person reviewed these records")
    elif reviewed is not None:
        notes.append(f"{dso} reviewed revision {reviewed}")
    elif cmd.get("kind") == "close":  # not the batcher's own re-send of a requeue (close_now)
        notes.append(
            f"closed without a reviewed revision (as read at revision {limit})"
            if limit is not None
            else "closed without a reviewed revision"
        )
    for i in range(n_docs):
        tx.id_prefix, tx.last_stamp = stamps[i]
        bid = org_batch_id(tx.s.org_id, tx.last_stamp, tx.id_prefix, tx.member_ids)
        ids.append(bid)
        part = (
            creates[i * MAX_PER_SECTION : (i + 1) * MAX_PER_SECTION]
            + updates[i * MAX_PER_SECTION : (i + 1) * MAX_PER_SECTION]
        )
        content = [final_record(r) for r in part]
        for r in part:
            del records[r["record_id"]]
        batches[bid] = {"records": content, "command_id": cid, "closed_by": dso, "at_ms": at_ms}
        reason = f"document {i + 1} of {n_docs}" + (f"; {cmd['reason']}" if cmd.get("reason") else "")
        if notes:
            reason += "; " + "; ".join(notes)
        tx.emit("closed", at_ms, records=content, batch=bid, closed_by=dso, command_id=cid, reason=reason)
    # the oldest go first; a tie (one close, several documents) by BatchID, i.e. in the order they were made (the
    # stamps of a school only grow): the persistent mapping has no insertion order to fall back on
    oldest_first = sorted(batches, key=lambda b: (batches[b]["at_ms"], b))
    for old in oldest_first[: max(0, len(batches) - KEEP_CLOSED_BATCHES)]:
        del batches[old]
    tx.rejected_ids = None  # rebuilt at the next success: it forgets what the close forgot
    tx.open_since = None
    tx.w("commands")[cid] = {"kind": "close", "at_ms": at_ms, "batch_ids": ids, "reviewed_revision": reviewed}
    if tx.records:
        tx.ensure_open(at_ms, reason=f"{len(tx.records)} record(s) carried over", command_id=cid)


def _hold(tx: _Tx, cmd: Mapping[str, Any], at_ms: int) -> None:
    cid, student = cmd["command_id"], cmd["student_key"]
    dso, why_text = cmd.get("dso_user_id"), cmd.get("reason")
    current = tx.held.get(student)
    if current is not None:
        tx.reject_command(
            cmd,
            at_ms,
            f"student {student} is already on hold "
            f"({hold_reason(current.get('by'), current.get('reason'))}); nothing changed",
        )
        return
    why = hold_reason(dso, why_text)
    tx.w("held")[student] = {"by": dso, "reason": why_text, "at_ms": at_ms}
    n = 0
    for rec in tx.student_records(student):
        if rec["status"] != "held":
            tx.put_record(dict(rec, status="held"), "record_held", at_ms, reason=why, command_id=cid)
            n += 1
    tx.w("commands")[cid] = {"kind": "hold", "at_ms": at_ms}
    tx.emit(
        "student_held",
        at_ms,
        record={"student_key": student, "records": n, "by": dso, "why": why_text},
        command_id=cid,
        reason=why,
    )


def _release(tx: _Tx, cmd: Mapping[str, Any], at_ms: int) -> None:
    cid, student = cmd["command_id"], cmd["student_key"]
    if student not in tx.held:
        tx.reject_command(cmd, at_ms, f"student {student} is not on hold; nothing to release")
        return
    del tx.w("held")[student]
    who = cmd.get("dso_user_id") or "a DSO"
    n = 0
    for rec in tx.student_records(student):
        if rec["status"] == "held":
            new = dict(rec)
            new["status"] = status_of(rec["section"], student, rec.get("sevis_id"), tx.held, new)
            tx.put_record(new, "record_released", at_ms, reason=f"released by {who}", command_id=cid)
            n += 1
    tx.w("commands")[cid] = {"kind": "release", "at_ms": at_ms}
    tx.emit(
        "student_released",
        at_ms,
        record={"student_key": student, "records": n, "was_held": True, "by": who},
        command_id=cid,
        reason=f"released by {who}",
    )


def _requeue(tx: _Tx, cmd: Mapping[str, Any], at_ms: int) -> None:
    """Records of a batch SEVIS refused as a whole go back into the open batch (new BatchID at next close)."""
    cid, bid = cmd["command_id"], cmd.get("batch_id") or ""
    stored = tx.batches.get(bid)
    if stored is None:
        tx.reject_command(cmd, at_ms, f"requeue: batch {bid or '(none)'} is unknown to the batcher")
        return
    if stored.get("requeued"):
        tx.reject_command(cmd, at_ms, f"requeue: batch {bid} was requeued before")
        return
    why = f"requeued from batch {bid}" + (f" ({cmd['reason']})" if cmd.get("reason") else "")
    only = set(cmd.get("record_ids") or [])  # the XML sink re-queues only the records that were valid
    fresh: list[str] = []  # put back as they were closed (no newer open change): what close_now sends again
    for old in stored["records"]:
        if only and old["record_id"] not in only and old.get("request_id") not in only:
            continue
        if _put_back(tx, old, bid, why, cid, at_ms):
            fresh.append(old["record_id"])
    tx.w("batches")[bid] = dict(stored, requeued=True)
    tx.w("commands")[cid] = {"kind": "requeue", "at_ms": at_ms, "batch_id": bid}
    tx.emit("requeued", at_ms, batch=bid, command_id=cid, reason=why)
    if fresh and _close_now(cmd):
        # the XML sink refused some records of a batch a DSO closed: the valid ones go out at once in a new
        # document (new BatchID, same DSO, same close time), without waiting for another close; records that
        # meanwhile changed, are held or wait for a SEVIS ID stay open for the DSO's review
        _close(
            tx,
            {
                "command_id": cid,
                "dso_user_id": stored.get("closed_by"),
                "record_ids": fresh,
                "reviewed_revision": None,
                "reason": f"re-sent at once: the records of {bid} that passed the XSD (the others went to the DSO)",
            },
            at_ms,
        )
        tx.w("commands")[cid] = {**tx.commands[cid], "kind": "requeue", "batch_id": bid}


def _put_back(
    tx: _Tx,
    old: Mapping[str, Any],
    bid: str,
    why: str,
    cid: str,
    at_ms: int,
    extra: Mapping[str, Any] | None = None,
    known_id_first: bool = False,
) -> bool:
    """Put a record of closed batch ``bid`` back into the open batch; True when it went back as it was
    closed and is ready (no newer open change of the same key). A newer open change of the same key is
    not duplicated: it wins, and takes the old record's elements it does not change (SEVIS never got
    them) and its "before" (what SEVIS still has). It keeps the old record's clock (``replaced``)."""
    rid = old["record_id"]
    current = tx.records.get(rid)
    student = old["student_key"]
    if current is not None:
        rec = dict(current, **(extra or {}))
        if old["kind"] == current["kind"]:
            rec["payload"] = {**old["payload"], **current["payload"]}
        rec["event_ids"] = [*old["event_ids"], *current["event_ids"]]
        rec["lineage"] = [*old["lineage"], *current["lineage"]]
        if old.get("before") is not None or current.get("before") is not None:
            rec["before"] = {**(current.get("before") or {}), **(old.get("before") or {})}
        rec["replaced"] = [
            *old.get("replaced", []),
            {
                "event_id": old["event_ids"][-1],
                "kind": old["kind"],
                "at_ms": old["at_ms"],
                "by_event_id": current["event_ids"][-1],
                "by_kind": current["kind"],
                "requeued_from": bid,
            },
            *current.get("replaced", []),
        ]
        trimmed = merged_trimmed(old.get("history_trimmed"), current.get("history_trimmed"))
        if trimmed:
            rec["history_trimmed"] = trimmed
        tx.put_record(rec, "record_replaced", at_ms, reason=f"{why}; the newer open change wins", command_id=cid)
        return False
    seq = tx.next_seq()
    known = tx.sevis_ids.get(student) if old["section"] == "update" else None
    # a resend after a fix: the SEVIS ID known now (e.g. corrected) wins over the one that was sent
    sevis_id = (known or old.get("sevis_id")) if known_id_first else (old.get("sevis_id") or known)
    rec = dict(old, seq=seq, request_id=request_id(seq, student), sevis_id=sevis_id, **(extra or {}))
    filled = ev_refs.fill(rec, tx.sevis_ids)
    if filled is not None:
        rec = filled
    rec["status"] = status_of(old["section"], student, sevis_id, tx.held, rec)
    tx.put_record(rec, _TYPE_FOR_STATUS[rec["status"]], at_ms, reason=why, command_id=cid)
    status: str = rec["status"]
    return status == "open"


def _resend(tx: _Tx, cmd: Mapping[str, Any], at_ms: int) -> None:
    """A DSO puts records SEVIS rejected back into the open batch, once the cause is fixed (the next close
    sends them with a new requestID). Only rejected, unresolved, not yet resent records of a kept batch."""
    cid, bid, dso = cmd["command_id"], cmd.get("batch_id") or "", cmd.get("dso_user_id")
    stored = tx.batches.get(bid)
    if stored is None:
        tx.reject_command(
            cmd,
            at_ms,
            f"resend: batch {bid} is unknown to the batcher (it keeps the last "
            f"{KEEP_CLOSED_BATCHES} closed batches); check the BatchID with "
            "`sevisflow batch list`",
        )
        return
    if stored.get("requeued"):
        tx.reject_command(
            cmd,
            at_ms,
            f"resend: batch {bid} was re-queued as a whole before; its records are "
            "already back in the open batch or in a later batch",
        )
        return
    rejected = stored.get("rejected") or {}
    by_record = {r["record_id"]: (q, r) for q, r in rejected.items()}
    records = {r["record_id"]: r for r in stored["records"]}
    by_request = {r["request_id"]: r["record_id"] for r in stored["records"]}
    wanted = [by_request.get(x, x) for x in (cmd.get("record_ids") or [])] or sorted(
        rid for rid, (_, r) in by_record.items() if not r.get("resolved_in") and not r.get("resent_at_ms")
    )
    if not wanted:
        why = (
            "SEVIS rejected none of its records"
            if stored.get("processed") and not rejected
            else "it has no SEVIS result yet"
            if not stored.get("processed")
            else "every rejected record was accepted later or resent before"
        )
        tx.reject_command(cmd, at_ms, f"resend: nothing to resend in batch {bid}: {why}")
        return
    for rid in wanted:
        problem = None
        if rid not in records:
            problem = "is not a record of this batch"
        elif rid not in by_record:
            problem = "was not rejected by SEVIS in this batch (no result yet, or accepted)"
        elif by_record[rid][1].get("resolved_in"):
            problem = f"was accepted by SEVIS since, in batch {by_record[rid][1]['resolved_in']}"
        elif by_record[rid][1].get("resent_at_ms"):
            problem = f"was resent before (by {by_record[rid][1].get('resent_by')})"
        if problem:
            tx.reject_command(cmd, at_ms, f"resend: record {rid[:120]} {problem}; nothing was resent")
            return
    note = f"resent from batch {bid} by {dso} after SEVIS rejected it"
    why = note + (f" ({cmd['reason']})" if cmd.get("reason") else "")
    new_rejected = dict(rejected)
    for rid in wanted:
        q, r = by_record[rid]
        marker = {"resent_from": {"batch_id": bid, "request_id": q, "code": r.get("code"), "by": dso, "at_ms": at_ms}}
        _put_back(tx, records[rid], bid, why, cid, at_ms, extra=marker, known_id_first=True)
        new_rejected[q] = dict(r, resent_at_ms=at_ms, resent_by=dso)
    tx.w("batches")[bid] = dict(stored, rejected=new_rejected)
    tx.w("commands")[cid] = {"kind": "resend", "at_ms": at_ms, "batch_id": bid, "record_ids": wanted}
    tx.emit(
        "resent",
        at_ms,
        batch=bid,
        command_id=cid,
        reason=why,
        record={"batch_id": bid, "record_ids": wanted, "by": dso},
    )


def _close_now(cmd: Mapping[str, Any]) -> bool:
    """``payload_json.close_now`` of a requeue (set by the XML sink when it refused only some records)."""
    try:
        body = _json_obj(cmd.get("payload_json"), "payload_json") or {}
    except ValueError:
        return False
    return body.get("close_now") is True


REPORT_KINDS: dict[str, tuple[str, ...]] = {
    "Reprint": ("Reason",),
    "Status.Verify": (),
    "DisciplinaryAction": ("Explanation",),
    "EV.Reprint": ("Reason",),
}
"""Events a DSO (for an exchange program: its RO/ARO) reports with ``sevisflow student report`` (no SIS change
triggers them) → required children."""
ADD_INFO_KINDS: dict[str, tuple[str, ...]] = {
    "PersonalInfo": ("FullName",),
    "Dependent.Add": (
        "FullName",
        "BirthDate",
        "Gender",
        "BirthCountryCode",
        "CitizenshipCountryCode",
        "VisaType",
        "Relationship",
    ),
}
"""SEVIS-only data a DSO adds with ``sevisflow student add-info`` (passport name, a new dependent) → required
children; sent as ``report`` commands too, so they are checked like every DSO command."""
_DEPENDENT_KEY = re.compile(r"Dependent:new-[0-9a-f]{10}")
_SEVIS_ID = re.compile(r"N\d{10}")


def _coalesce_key(kind: str, body: Mapping[str, Any], payload: Mapping[str, Any]) -> str | None:
    """The open-batch key of a DSO-reported record, or None when the body does not fit its kind."""
    if kind in REPORT_KINDS:
        return kind
    if kind == "PersonalInfo":
        full = payload.get("FullName")
        ok = (
            isinstance(full, dict)
            and full.get("PassportName")
            and body.get("coalesce_key") == "PersonalInfo.PassportName"
        )
        return "PersonalInfo.PassportName" if ok else None
    key = body.get("coalesce_key")
    return key if isinstance(key, str) and _DEPENDENT_KEY.fullmatch(key) else None


def _report(tx: _Tx, cmd: Mapping[str, Any], at_ms: int) -> None:
    """A DSO-reported UpdateStudent event: becomes a record like an SIS-derived event, with the command as lineage.

    The CLI validated the content against the XSD's rules; this re-checks only what the batcher needs to
    keep the open batch sendable (known kind, required children, SEVIS ID, the DSO's user id).
    """
    cid, student = cmd["command_id"], cmd.get("student_key") or ""
    dso = cmd.get("dso_user_id")
    problem = user_id_problem(dso)
    if problem:
        tx.reject_command(cmd, at_ms, f"report not added: {problem}")
        return
    if not student:
        tx.reject_command(cmd, at_ms, "report needs the student's key")
        return
    try:
        body = _json_obj(cmd.get("payload_json"), "payload_json") or {}
    except ValueError as exc:
        tx.reject_command(cmd, at_ms, f"report: {exc}")
        return
    kind, payload = body.get("kind"), body.get("payload")
    allowed = {**REPORT_KINDS, **ADD_INFO_KINDS}
    if kind not in allowed or not isinstance(payload, dict):
        tx.reject_command(
            cmd,
            at_ms,
            f"report: event {str(kind)[:40]!r} cannot be reported by a DSO "
            f"(one of {', '.join(allowed)}, with a payload object)",
        )
        return
    if is_program(tx.s.org_id) != kind.startswith("EV."):
        where = "an exchange program's EV batch" if is_program(tx.s.org_id) else "the school's student batch"
        tx.reject_command(
            cmd,
            at_ms,
            f"report: {kind} cannot go into {where} ({tx.s.org_id}); EV events go under "
            "the program number (--org P-…), student events under the school's code",
        )
        return
    missing = [k for k in allowed[kind] if not payload.get(k)]
    if missing:
        tx.reject_command(cmd, at_ms, f"report: {kind} needs {', '.join(missing)}")
        return
    ckey = _coalesce_key(kind, body, payload)
    if ckey is None:
        tx.reject_command(
            cmd,
            at_ms,
            f"report: {kind} needs a passport name (PersonalInfo.PassportName) or a "
            "new-dependent key (Dependent:new-<10 hex digits>)",
        )
        return
    known = tx.sevis_ids.get(student)
    if body.get("sevis_id") is not None and not (
        isinstance(body["sevis_id"], str) and _SEVIS_ID.fullmatch(body["sevis_id"])
    ):
        tx.reject_command(
            cmd,
            at_ms,
            f"report: {str(body['sevis_id'])[:20]!r} is not a SEVIS ID (N and 10 digits)",
            dead_letter="malformed_command",
        )
        return
    if body.get("sevis_id") and known and body["sevis_id"] != known:
        tx.reject_command(
            cmd,
            at_ms,
            f"report: SEVIS ID {body['sevis_id']} differs from {known}, the SEVIS ID known "
            f"for student {student}; nothing was added (fix the ID, or the SIS record)",
        )
        return
    sevis_id = body.get("sevis_id") or known
    if not sevis_id:
        tx.reject_command(
            cmd,
            at_ms,
            f"report: no SEVIS ID is known for student {student}; {kind} can only be "
            "sent for a student already in SEVIS",
        )
        return
    tx.w("commands")[cid] = {"kind": "report", "at_ms": at_ms}
    _on_event(
        tx,
        {
            "event_id": cid,
            "student_key": student,
            "sevis_id": sevis_id,
            "kind": kind,
            "coalesce_key": ckey,
            "payload_json": dumps(payload),
            "before_json": None,
            "after_json": dumps(body["after"] if isinstance(body.get("after"), dict) else {}),
            "origin": "dso",
            "problems": [],
            "display_name": body["display_name"][:200] if isinstance(body.get("display_name"), str) else None,
            "lineage": [{"command_id": cid, "dso_user_id": dso, "requested_at_ms": at_ms}],
        },
        at_ms,
        command_id=cid,
    )


# -- scheduler


LATE_AFTER_MS = 10 * 60 * 1000
"""A scheduled close that runs later than this after its time is *late*: it is recorded at the time it
ran (its reason names the scheduled time), and logged; within it (the scheduler's own jitter) it stands
at its scheduled time."""


def scheduled_close(tx_state: School, tick: Tick) -> tuple[str, int] | None:
    """(local date, due time in ms) of the latest daily close whose time has passed and that is not
    decided yet — today's once its time passed, else yesterday's (a close missed across midnight runs
    late instead of never); see :func:`missed_closes` for the days before it."""
    if not tick.close_at:
        return None
    tz = ZoneInfo(tick.timezone)
    now = datetime.fromtimestamp(tick.now_ms / 1000, tz)
    hh, mm = (int(x) for x in tick.close_at.split(":"))
    day = now.date()
    if (now.hour, now.minute) < (hh, mm):
        if tx_state.sched_date is None:
            return None  # never scheduled before: nothing can have been missed
        day = day - timedelta(days=1)
    if tx_state.sched_date is not None and tx_state.sched_date >= day.isoformat():
        return None
    due = datetime(day.year, day.month, day.day, hh, mm, tzinfo=tz)
    return day.isoformat(), int(due.timestamp() * 1000)


def missed_closes(tx_state: School, day: str) -> list[str]:
    """The local dates strictly between the last decided close and ``day``: their close time passed while
    the batcher was not running, so they had no close of their own (their records go into ``day``'s)."""
    if tx_state.sched_date is None:
        return []
    d = date.fromisoformat(tx_state.sched_date) + timedelta(days=1)
    last = date.fromisoformat(day)
    out = []
    while d < last:
        out.append(d.isoformat())
        d += timedelta(days=1)
    return out


def _on_tick(tx: _Tx, tick: Tick) -> None:
    due = scheduled_close(tx.s, tick)
    if due is None:
        return
    day, due_ms = due
    missed = missed_closes(tx.s, day)
    tx.sched_date = day
    tz = ZoneInfo(tick.timezone)
    ran = datetime.fromtimestamp(tick.now_ms / 1000, tz).isoformat(timespec="seconds")
    late_ms = tick.now_ms - due_ms
    if missed:
        shown = missed if len(missed) <= 5 else missed[:2] + [f"… {len(missed) - 4} more …"] + missed[-2:]
        tx.out.append(
            Reject(
                "scheduled_close_missed",
                f"the scheduled daily close ({tick.close_at} {tick.timezone}) did not run on "
                f"{len(missed)} day(s): {', '.join(shown)} — the batcher was not running at that time. "
                f"Records of those days were not sent then; they go with the close of {day}, run at "
                f"{ran}. Check with `sevisflow batch status` that nothing had a deadline on those days.",
                at_ms=tick.now_ms,
                stage=SCHEDULER_STAGE,
            )
        )
    if not any(record_status(r) == "open" for _, r in peek_items(tx.records)):
        return  # skipped when empty
    if user_id_problem(tick.close_dso):
        return  # checked at start-up; never send a close SEVIS would refuse
    late = late_ms > LATE_AFTER_MS
    when = f"scheduled daily close of {day} at {tick.close_at} {tick.timezone}, run at {ran}" + (
        f", {late_ms // 60000} min late (the batcher was not running at its time)" if late else ""
    )
    tx.out.append(
        SendCommand(
            {
                "command_id": f"scheduled:{tx.s.org_id}:{day}",
                "org_id": tx.s.org_id,
                "kind": "close",
                "dso_user_id": tick.close_dso,
                "student_key": None,
                "record_ids": [],
                "reviewed_revision": None,
                "batch_id": None,
                "reason": when,
                # on time it stands at its scheduled time; late, at the time it really ran (the reason has both)
                "requested_at_ms": tick.now_ms if late else due_ms,
                "payload_json": dumps(
                    {"scheduled_for": day, "scheduled_at_ms": due_ms, "ran_at_ms": tick.now_ms, "missed_days": missed}
                ),
                "principal": None,
                "basis_revision": None,
            }
        )
    )


def next_close_day(tick: Tick) -> date:
    """The local day of the next scheduled close: today while its time has not come, else tomorrow."""
    now = datetime.fromtimestamp(tick.now_ms / 1000, ZoneInfo(tick.timezone))
    hh, mm = (int(x) for x in tick.close_at.split(":"))
    return now.date() if (now.hour, now.minute) < (hh, mm) else now.date() + timedelta(days=1)


def _early_close(tx: _Tx, tick: Tick) -> None:
    """``[school] close_early_when_due``: close now when a ready record would be overdue before the next
    scheduled close (its legal due day is before that close's day). It is a scheduled close like the
    others (school.close_dso, no reviewed revision, everything ready), with its own id."""
    deadlines = tick.close_early
    if deadlines is None or not tick.close_at or user_id_problem(tick.close_dso):
        return
    if any(isinstance(o, SendCommand) for o in tx.out):
        return  # the daily close runs in this very tick
    next_day = next_close_day(tick)
    urgent = []
    memo = tick.due_memo if tick.due_memo is not None else DueMemo(deadlines)  # none lent: one for this tick
    for rid, r in peek_items(tx.records):
        if record_status(r) != "open" or record_rev(r) <= tx.early_rev:
            continue
        due = memo_due(memo, tx.s.org_id, rid, r, tx.records, deadlines)[1]
        if due is not None and due.due_on < next_day:
            urgent.append(due.due_on)
    if not urgent:
        return
    tz = ZoneInfo(tick.timezone)
    now = datetime.fromtimestamp(tick.now_ms / 1000, tz)
    today = now.date().isoformat()
    tx.early_rev = tx.revision
    reason = (
        f"early scheduled close at {now.isoformat(timespec='seconds')}: {len(urgent)} ready record(s) would be "
        f"overdue before the next scheduled close ({next_day.isoformat()} {tick.close_at} {tick.timezone}); "
        f"the first was due {min(urgent).isoformat()}"
    )
    tx.out.append(
        SendCommand(
            {
                "command_id": f"scheduled:{tx.s.org_id}:{today}:early-{tx.revision}",
                "org_id": tx.s.org_id,
                "kind": "close",
                "dso_user_id": tick.close_dso,
                "student_key": None,
                "record_ids": [],
                "reviewed_revision": None,
                "batch_id": None,
                "reason": reason,
                "requested_at_ms": tick.now_ms,
                "payload_json": dumps(
                    {
                        "early": True,
                        "scheduled_for": today,
                        "scheduled_at_ms": tick.now_ms,
                        "ran_at_ms": tick.now_ms,
                        "missed_days": [],
                        "next_scheduled_day": next_day.isoformat(),
                        "first_due": min(urgent).isoformat(),
                    }
                ),
                "principal": None,
                "basis_revision": None,
            }
        )
    )
