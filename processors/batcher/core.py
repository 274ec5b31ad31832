"""The batch state machine of one school: ``apply(state, input) -> (new_state, outputs)``.

Plain functions over plain data, no Kafka and no clock: every time comes from
the input (the event's commit time, the command's ``requested_at_ms``, the
scheduler's tick), so replaying the same inputs gives the same outputs byte for
byte (what ``sevisflow verify`` relies on). ``apply`` never mutates its input
state: it copies what it changes and shares the rest, so the Kafka adapter can
find the changed records by identity.

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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Union
from zoneinfo import ZoneInfo

import orjson

from processors.batcher.ids import batch_id, next_stamp, request_id, user_id_problem

MAX_PER_SECTION = 250
"""XSD maxOccurs of CreateStudent/Student and UpdateStudent/Student."""
KEEP_CLOSED_BATCHES = 60
"""Closed batches whose content the state keeps (for requeue and result matching)."""

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
    open_since: int | None = None
    """Revision of the ``opened`` event of the current open batch, None when nothing is open."""
    sched_date: str | None = None
    """Local date of the last scheduled-close decision (so a day is closed at most once)."""
    held: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    records: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    sevis_ids: Mapping[str, str] = field(default_factory=dict)
    commands: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    batches: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        return {"org_id": self.org_id, "revision": self.revision, "seq": self.seq,
                "last_stamp": self.last_stamp, "open_since": self.open_since,
                "sched_date": self.sched_date, "held": dict(self.held)}


@dataclass(frozen=True)
class EventIn:
    """A SevisEvent (as decoded from sevis.events) and its time from the log."""

    event: Mapping[str, Any]
    at_ms: int


@dataclass(frozen=True)
class CommandIn:
    command: Mapping[str, Any]


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


Input = Union[EventIn, CommandIn, ResultIn, Tick]


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
    """Input the batcher cannot use: goes to the DLQ with the reason (no personal data in it)."""

    code: str
    reason: str
    student_key: str | None = None


Output = Union[Publish, SendCommand, Reject]

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


def status_of(section: str, student_key: str, sevis_id: str | None, held: Mapping[str, Any]) -> str:
    if student_key in held:
        return "held"
    if section == "update" and not sevis_id:
        return "waiting"
    return "open"


_TYPE_FOR_STATUS = {"open": "record_added", "held": "record_held", "waiting": "record_waiting"}


def _source(lineage: list[dict[str, Any]]) -> str:
    if not lineage:
        return "the DSO"
    last = lineage[-1]
    if last.get("command_id"):
        return f"DSO {last.get('dso_user_id')} (command {last['command_id']})"
    return f"{last.get('table') or last.get('topic')} (offset {last.get('offset')})"


# ----------------------------------------------------------------------------- transaction


class _Tx:
    """Copy-on-write working set of one ``apply`` call."""

    def __init__(self, s: School) -> None:
        self.s = s
        self.revision = s.revision
        self.seq = s.seq
        self.last_stamp = s.last_stamp
        self.open_since = s.open_since
        self.sched_date = s.sched_date
        self.held = s.held
        self.records = s.records
        self.sevis_ids = s.sevis_ids
        self.commands = s.commands
        self.batches = s.batches
        self._copied: set[str] = set()
        self.out: list[Output] = []

    def w(self, name: str) -> dict[str, Any]:
        """The named mapping, copied once for writing."""
        if name not in self._copied:
            setattr(self, name, dict(getattr(self, name)))
            self._copied.add(name)
        return getattr(self, name)  # type: ignore[no-any-return]

    def finish(self) -> School:
        return dataclasses.replace(
            self.s, revision=self.revision, seq=self.seq, last_stamp=self.last_stamp,
            open_since=self.open_since, sched_date=self.sched_date, held=self.held, records=self.records,
            sevis_ids=self.sevis_ids, commands=self.commands, batches=self.batches)

    def emit(self, type_: str, at_ms: int, *, record: Mapping[str, Any] | None = None,
             records: list[dict[str, Any]] | None = None, batch: str | None = None,
             closed_by: str | None = None, command_id: str | None = None, reason: str | None = None,
             bump: bool = True) -> None:
        if bump:
            self.revision += 1
        self.out.append(Publish({
            "org_id": self.s.org_id, "batch_id": batch, "type": type_, "revision": self.revision,
            "at_ms": int(at_ms),
            "record_json": dumps(record) if record is not None else None,
            "records_json": dumps(records) if records is not None else None,
            "closed_by": closed_by, "command_id": command_id, "reason": reason,
        }))

    def ensure_open(self, at_ms: int, reason: str | None = None, command_id: str | None = None) -> None:
        if self.open_since is None:
            self.emit("opened", at_ms, reason=reason, command_id=command_id)
            self.open_since = self.revision

    def put_record(self, rec: dict[str, Any], type_: str, at_ms: int, reason: str | None = None,
                   command_id: str | None = None) -> None:
        """Store ``rec`` (a new dict) and publish ``type_`` for it; its ``rev`` is the new revision."""
        self.ensure_open(at_ms, command_id=command_id)
        rec["rev"] = self.revision + 1
        self.w("records")[rec["record_id"]] = rec
        self.emit(type_, at_ms, record=rec, reason=reason, command_id=command_id)

    def drop_record(self, record_id: str, at_ms: int, reason: str, command_id: str | None = None) -> None:
        rec = self.w("records").pop(record_id)
        self.emit("record_removed", at_ms, record=rec, reason=reason, command_id=command_id)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def student_records(self, student_key: str) -> list[dict[str, Any]]:
        return sorted((r for r in self.records.values() if r["student_key"] == student_key),
                      key=lambda r: r["seq"])

    def reject_command(self, cmd: Mapping[str, Any], at_ms: int, reason: str) -> None:
        self.w("commands")[cmd["command_id"]] = {"kind": cmd.get("kind"), "at_ms": at_ms, "rejected": reason}
        self.emit("command_rejected", at_ms, command_id=cmd["command_id"], reason=reason, bump=False)

    def learn_sevis_id(self, student_key: str, sevis_id: str, at_ms: int, why: str) -> None:
        """Remember the student's SEVIS ID and release their waiting updates."""
        if self.sevis_ids.get(student_key) != sevis_id:
            self.w("sevis_ids")[student_key] = sevis_id
        for rec in self.student_records(student_key):
            if rec["section"] != "update" or rec.get("sevis_id") == sevis_id:
                continue
            new = dict(rec, sevis_id=sevis_id)
            new["status"] = status_of("update", student_key, sevis_id, self.held)
            if rec["status"] == "waiting":
                self.put_record(new, "record_released", at_ms, reason=f"SEVIS ID {sevis_id} arrived ({why})")
            else:
                self.put_record(new, "record_replaced", at_ms, reason=f"SEVIS ID {sevis_id} set ({why})")


# ----------------------------------------------------------------------------- open-batch view

MAX_OPEN_VIEW_BYTES = 6 * 1024 * 1024
"""Above this the view carries no records (readers fold sevis.batches): Kafka refuses records over
8 MiB, and a refused record would abort the batcher's transaction again and again."""


def view_changed(old: School, new: School) -> bool:
    """Whether ``apply`` changed what ``batch show`` displays (apply copies what it changes)."""
    return old.revision != new.revision or old.records is not new.records or old.held is not new.held


def open_view(school: School) -> dict[str, Any]:
    """The open batch as the DSO CLI shows it (an OpenBatch record for the compacted view topic).

    Equal to folding the school's ``sevis.batches`` events (:func:`processors.batcher.view.fold`):
    every record event carries the stored record, and every change of the records, the holds or
    the revision is published as an event.
    """
    records = sorted(school.records.values(), key=lambda r: (r["section"] != "create", r["seq"]))
    text: str | None = dumps(records)
    if len(text) > MAX_OPEN_VIEW_BYTES:
        text = None
    return {
        "org_id": school.org_id, "revision": school.revision, "records_json": text, "record_count": len(records),
        "held": [{"student_key": k, "at_ms": int(v.get("at_ms") or 0), "reason": hold_reason(v.get("by"), v.get("reason"))}
                 for k, v in sorted(school.held.items())],
    }


# ----------------------------------------------------------------------------- apply


def apply(state: School, inp: Input) -> tuple[School, list[Output]]:
    """One input in, the new state and what to publish out. Never mutates ``state``."""
    tx = _Tx(state)
    if isinstance(inp, EventIn):
        _on_event(tx, inp.event, inp.at_ms)
    elif isinstance(inp, CommandIn):
        _on_command(tx, inp.command)
    elif isinstance(inp, ResultIn):
        _on_result(tx, inp.result, inp.at_ms)
    elif isinstance(inp, Tick):
        _on_tick(tx, inp)
    else:  # pragma: no cover - programming error
        raise TypeError(f"unknown input {type(inp).__name__}")
    return tx.finish(), tx.out


# -- events


def _on_event(tx: _Tx, ev: Mapping[str, Any], at_ms: int, command_id: str | None = None) -> None:
    student = ev.get("student_key") or ""
    kind = ev.get("kind") or ""
    ckey = ev.get("coalesce_key") or ""
    if not student or not kind or not ckey:
        tx.out.append(Reject("bad_event", f"event {ev.get('event_id')} lacks student_key, kind or coalesce_key",
                             student or None))
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
    section = "create" if kind == "Create" else "update"
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
        problems.append(f"student already has SEVIS ID {tx.sevis_ids[student]}; SEVIS rejects a second "
                        "Create (S1004) - check the SIS record")

    if existing is not None:
        merged_before = {**(before or {}), **(existing.get("before") or {})}
        merged_after = {**(existing.get("after") or {}), **(after or {})}
        if existing.get("before") is not None and before is not None and after is not None \
                and merged_after == merged_before:
            fields = ", ".join(sorted(merged_before)) or "the values"
            tx.drop_record(rid, commit_ms, reason=f"undone by event {event_id} from {_source(lineage)}: "
                                                    f"{fields} back to what SEVIS already has", command_id=command_id)
            return
        seq = tx.next_seq()
        rec = dict(existing)
        rec.update({
            "request_id": request_id(seq, student), "seq": seq, "kind": kind,
            # events carry only the changed elements (e.g. PersonalInfo with just Email): a later event of
            # the same kind adds to / overrides the earlier one element by element; another kind replaces it
            "payload": {**existing["payload"], **payload} if existing["kind"] == kind else payload,
            "sevis_id": sevis_id, "event_ids": [*existing["event_ids"], event_id],
            "lineage": [*existing["lineage"], *lineage],
            "before": merged_before if (before is not None or existing.get("before") is not None) else None,
            "after": merged_after if (after is not None or existing.get("after") is not None) else None,
            "display_name": ev.get("display_name") or existing.get("display_name"),
            "problems": problems, "origin": ev.get("origin") or "sis", "at_ms": commit_ms,
            "replaced": [*existing.get("replaced", []), {
                "event_id": existing["event_ids"][-1], "kind": existing["kind"], "at_ms": existing["at_ms"],
                "by_event_id": event_id, "by_kind": kind}],
        })
        rec["status"] = status_of(section, student, sevis_id, tx.held)
        tx.put_record(rec, "record_replaced", commit_ms,
                      reason=f"later change of {ckey} (event {event_id} from {_source(lineage)}) "
                             f"replaces event {existing['event_ids'][-1]}", command_id=command_id)
        return

    seq = tx.next_seq()
    rec = {
        "record_id": rid, "request_id": request_id(seq, student), "section": section, "student_key": student,
        "sevis_id": sevis_id, "kind": kind, "coalesce_key": ckey, "payload": payload,
        "user_defined_a": student if len(student) <= 10 else None, "user_defined_b": None,
        "event_ids": [event_id], "lineage": lineage, "display_name": ev.get("display_name"),
        "before": before, "after": after, "problems": problems, "origin": ev.get("origin") or "sis",
        "seq": seq, "at_ms": commit_ms, "replaced": [],
    }
    rec["status"] = status_of(section, student, sevis_id, tx.held)
    reason = {"open": None, "held": f"student {student} is on hold",
              "waiting": "waiting for the student's SEVIS ID (SEVIS assigns it when it processes the Create)"}
    tx.put_record(rec, _TYPE_FOR_STATUS[rec["status"]], commit_ms, reason=reason[rec["status"]], command_id=command_id)


# -- results


def _on_result(tx: _Tx, res: Mapping[str, Any], at_ms: int) -> None:
    bid = res.get("batch_id") or ""
    stored = tx.batches.get(bid)
    rec = None
    if stored is not None:
        rec = next((r for r in stored["records"] if r.get("request_id") == res.get("request_id")), None)
        if not stored.get("processed"):
            tx.w("batches")[bid] = dict(stored, processed=True)
    student = res.get("student_key") or (rec or {}).get("student_key")
    kind = res.get("kind") or (rec or {}).get("kind")
    if not student or kind != "Create":
        return
    if res.get("status") == "success" and res.get("sevis_id"):
        tx.learn_sevis_id(student, res["sevis_id"], at_ms, f"Create accepted in batch {bid}")
        return
    if res.get("status") != "success":
        note = (f"the Create failed in batch {bid} ({res.get('error_code') or 'no code'}); these updates "
                "wait until a corrected Create is accepted")
        for r in tx.student_records(student):
            if r["status"] == "waiting" and note not in r["problems"]:
                new = dict(r, problems=[*r["problems"], note])
                tx.put_record(new, "record_waiting", at_ms, reason=note)


# -- commands


def _on_command(tx: _Tx, cmd: Mapping[str, Any]) -> None:
    cid = cmd.get("command_id") or ""
    at_ms = int(cmd.get("requested_at_ms") or 0)
    if not cid or cid in tx.commands:
        return  # applied before: a command id takes effect once
    kind = cmd.get("kind")
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
    elif kind == "result":
        try:
            res = _json_obj(cmd.get("payload_json"), "payload_json") or {}
        except ValueError as exc:
            tx.reject_command(cmd, at_ms, f"result command: {exc}")
            return
        tx.w("commands")[cid] = {"kind": kind, "at_ms": at_ms}
        _on_result(tx, res, at_ms)
    else:
        tx.reject_command(cmd, at_ms, f"unknown command kind {kind!r} (close, hold, release, requeue, "
                                      "result, report)")


def _close(tx: _Tx, cmd: Mapping[str, Any], at_ms: int) -> None:
    """Close exactly what the DSO reviewed into as many ≤250+≤250 documents as needed."""
    cid = cmd["command_id"]
    dso = cmd.get("dso_user_id")
    problem = user_id_problem(dso)
    if problem:
        tx.reject_command(cmd, at_ms, f"not closed: {problem}")
        return
    wanted = set(cmd.get("record_ids") or []) or None
    limit = cmd.get("reviewed_revision")
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
        tx.reject_command(cmd, at_ms, "nothing to close" + (": " + "; ".join(notes) if notes else
                                                             ": the open batch has no record ready to send"))
        return

    creates = sorted((r for r in eligible if r["section"] == "create"), key=lambda r: r["seq"])
    updates = sorted((r for r in eligible if r["section"] == "update"), key=lambda r: r["seq"])
    n_docs = max(math.ceil(len(creates) / MAX_PER_SECTION), math.ceil(len(updates) / MAX_PER_SECTION))
    ids = []
    records = tx.w("records")
    batches = tx.w("batches")
    for i in range(n_docs):
        tx.last_stamp = next_stamp(at_ms, tx.last_stamp)
        bid = batch_id(tx.last_stamp)
        ids.append(bid)
        part = creates[i * MAX_PER_SECTION:(i + 1) * MAX_PER_SECTION] + \
            updates[i * MAX_PER_SECTION:(i + 1) * MAX_PER_SECTION]
        content = [final_record(r) for r in part]
        for r in part:
            del records[r["record_id"]]
        batches[bid] = {"records": content, "command_id": cid, "closed_by": dso, "at_ms": at_ms}
        reason = f"document {i + 1} of {n_docs}" + (f"; {cmd['reason']}" if cmd.get("reason") else "")
        if notes:
            reason += "; " + "; ".join(notes)
        tx.emit("closed", at_ms, records=content, batch=bid, closed_by=dso, command_id=cid, reason=reason)
    for old in sorted(batches, key=lambda b: batches[b]["at_ms"])[:max(0, len(batches) - KEEP_CLOSED_BATCHES)]:
        del batches[old]
    tx.open_since = None
    tx.w("commands")[cid] = {"kind": "close", "at_ms": at_ms, "batch_ids": ids}
    if tx.records:
        tx.ensure_open(at_ms, reason=f"{len(tx.records)} record(s) carried over", command_id=cid)


def _hold(tx: _Tx, cmd: Mapping[str, Any], at_ms: int) -> None:
    cid, student = cmd["command_id"], cmd.get("student_key")
    if not student:
        tx.reject_command(cmd, at_ms, "hold needs the student's key")
        return
    why = hold_reason(cmd.get("dso_user_id"), cmd.get("reason"))
    tx.w("held")[student] = {"by": cmd.get("dso_user_id"), "reason": cmd.get("reason"), "at_ms": at_ms}
    n = 0
    for rec in tx.student_records(student):
        if rec["status"] != "held":
            tx.put_record(dict(rec, status="held"), "record_held", at_ms, reason=why, command_id=cid)
            n += 1
    tx.w("commands")[cid] = {"kind": "hold", "at_ms": at_ms}
    tx.emit("student_held", at_ms, record={"student_key": student, "records": n}, command_id=cid, reason=why)


def _release(tx: _Tx, cmd: Mapping[str, Any], at_ms: int) -> None:
    cid, student = cmd["command_id"], cmd.get("student_key")
    if not student:
        tx.reject_command(cmd, at_ms, "release needs the student's key")
        return
    was_held = student in tx.held
    if was_held:
        del tx.w("held")[student]
    who = cmd.get("dso_user_id") or "a DSO"
    n = 0
    for rec in tx.student_records(student):
        if rec["status"] == "held":
            new = dict(rec)
            new["status"] = status_of(rec["section"], student, rec.get("sevis_id"), tx.held)
            tx.put_record(new, "record_released", at_ms, reason=f"released by {who}", command_id=cid)
            n += 1
    tx.w("commands")[cid] = {"kind": "release", "at_ms": at_ms}
    tx.emit("student_released", at_ms, record={"student_key": student, "records": n, "was_held": was_held},
            command_id=cid, reason=f"released by {who}")


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
    for old in stored["records"]:
        if only and old["record_id"] not in only and old.get("request_id") not in only:
            continue
        rid = old["record_id"]
        current = tx.records.get(rid)
        student = old["student_key"]
        if current is not None:
            # the open record is the newer change; what SEVIS has is still the requeued record's "before"
            rec = dict(current)
            if old["kind"] == current["kind"]:
                rec["payload"] = {**old["payload"], **current["payload"]}
            rec["event_ids"] = [*old["event_ids"], *current["event_ids"]]
            rec["lineage"] = [*old["lineage"], *current["lineage"]]
            if old.get("before") is not None or current.get("before") is not None:
                rec["before"] = {**(current.get("before") or {}), **(old.get("before") or {})}
            rec["replaced"] = [*old.get("replaced", []), {"event_id": old["event_ids"][-1], "kind": old["kind"],
                                                          "at_ms": old["at_ms"], "by_event_id": current["event_ids"][-1],
                                                          "by_kind": current["kind"], "requeued_from": bid},
                               *current.get("replaced", [])]
            tx.put_record(rec, "record_replaced", at_ms, reason=f"{why}; the newer open change wins", command_id=cid)
            continue
        seq = tx.next_seq()
        sevis_id = old.get("sevis_id") or (tx.sevis_ids.get(student) if old["section"] == "update" else None)
        rec = dict(old, seq=seq, request_id=request_id(seq, student), sevis_id=sevis_id)
        rec["status"] = status_of(old["section"], student, sevis_id, tx.held)
        tx.put_record(rec, _TYPE_FOR_STATUS[rec["status"]], at_ms, reason=why, command_id=cid)
    tx.w("batches")[bid] = dict(stored, requeued=True)
    tx.w("commands")[cid] = {"kind": "requeue", "at_ms": at_ms, "batch_id": bid}
    tx.emit("requeued", at_ms, batch=bid, command_id=cid, reason=why)


REPORT_KINDS: dict[str, tuple[str, ...]] = {
    "Reprint": ("Reason",), "Status.Verify": (), "DisciplinaryAction": ("Explanation",)}
"""Events a DSO reports with ``sevisflow student report`` (no SIS change triggers them) → required children."""


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
    if kind not in REPORT_KINDS or not isinstance(payload, dict):
        tx.reject_command(cmd, at_ms, f"report: event {kind!r} cannot be reported by a DSO "
                                      f"(one of {', '.join(REPORT_KINDS)}, with a payload object)")
        return
    missing = [k for k in REPORT_KINDS[kind] if not payload.get(k)]
    if missing:
        tx.reject_command(cmd, at_ms, f"report: {kind} needs {', '.join(missing)}")
        return
    sevis_id = body.get("sevis_id") or tx.sevis_ids.get(student)
    if not sevis_id:
        tx.reject_command(cmd, at_ms, f"report: no SEVIS ID is known for student {student}; {kind} can only be "
                                      "sent for a student already in SEVIS")
        return
    tx.w("commands")[cid] = {"kind": "report", "at_ms": at_ms}
    _on_event(tx, {
        "event_id": cid, "student_key": student, "sevis_id": sevis_id, "kind": kind, "coalesce_key": kind,
        "payload_json": dumps(payload), "before_json": None, "after_json": dumps(body.get("after") or {}),
        "origin": "dso", "display_name": body.get("display_name"), "problems": [],
        "lineage": [{"command_id": cid, "dso_user_id": dso,
                     "requested_at_ms": at_ms}],
    }, at_ms, command_id=cid)


# -- scheduler


def scheduled_close(tx_state: School, tick: Tick) -> tuple[str, int] | None:
    """(local date, due time in ms) when the daily close is due now and not yet decided today."""
    if not tick.close_at:
        return None
    tz = ZoneInfo(tick.timezone)
    now = datetime.fromtimestamp(tick.now_ms / 1000, tz)
    hh, mm = (int(x) for x in tick.close_at.split(":"))
    if (now.hour, now.minute) < (hh, mm):
        return None
    day = now.date().isoformat()
    if tx_state.sched_date == day:
        return None
    due = datetime(now.year, now.month, now.day, hh, mm, tzinfo=tz)
    return day, int(due.timestamp() * 1000)


def _on_tick(tx: _Tx, tick: Tick) -> None:
    due = scheduled_close(tx.s, tick)
    if due is None:
        return
    day, due_ms = due
    tx.sched_date = day
    if not any(r["status"] == "open" for r in tx.records.values()):
        return  # skipped when empty
    if user_id_problem(tick.close_dso):
        return  # checked at start-up; never send a close SEVIS would refuse
    tx.out.append(SendCommand({
        "command_id": f"scheduled:{tx.s.org_id}:{day}", "org_id": tx.s.org_id, "kind": "close",
        "dso_user_id": tick.close_dso, "student_key": None, "record_ids": [], "reviewed_revision": None,
        "batch_id": None, "reason": f"scheduled daily close at {tick.close_at} {tick.timezone}",
        "requested_at_ms": due_ms, "payload_json": None,
    }))
