"""Pure audit views over decoded records: one student's timeline, one batch's report.

No Kafka and no clock here: the functions take :class:`~sevisflow.app.audit.decode.Decoded`
records (as :mod:`sevisflow.app.audit.sources` reads them, or as a test builds them) and
return plain data; :func:`student_records` picks, from undecoded records, the few that one student's
timeline can use. The CLI (:mod:`sevisflow.app.cli.audit`) only reads and prints.

A student's timeline follows one student through every stage::

    sis      change events on <prefix>.<schema>.<table> (the student's rows; "reported" when a
             SEVIS event names it in its lineage)
    event    sevis.events: each reportable change, with the source positions it came from
    command  sevis.batch.commands: the DSO's hold / release, the close of a batch that carried the student
    batch    sevis.batches: record added / replaced / held / released / waiting / removed, closed
             into a batch (BatchID, requestID, by whom), requeued / failed
    upload   the outbox folder of the batch (state, upload attempts with SEVIS's codes)
    result   sevis.results: what SEVIS answered for the record (joined by BatchID + requestID)

What is shown is identifiers, codes and field *names*; row values (names, dates) stay in
the records, which ``sevisflow replay --student`` exports when an auditor needs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sevisflow.app.audit.decode import Decoded, RawRecord, iso_ms
from sevisflow.app.audit.replay import StudentMatcher, table_of

STAGE_ORDER = {"sis": 0, "event": 1, "command": 2, "batch": 3, "upload": 4, "result": 5}
RECORD_TYPES = ("record_added", "record_replaced", "record_held", "record_released", "record_waiting", "record_removed")
BATCH_LIFECYCLE = ("requeued", "failed", "accepted")


@dataclass(frozen=True)
class Step:
    """One thing that happened to the student (or batch), where it is recorded, and when."""

    at_ms: int | None
    stage: str
    what: str
    ref: str
    batch_id: str | None = None
    request_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def sort_key(self) -> tuple[Any, ...]:
        return (self.at_ms if self.at_ms is not None else 2**62, STAGE_ORDER.get(self.stage, 9), self.ref)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": iso_ms(self.at_ms),
            "at_ms": self.at_ms,
            "stage": self.stage,
            "what": self.what,
            "ref": self.ref,
            "batch_id": self.batch_id,
            "request_id": self.request_id,
            "details": dict(self.details),
        }


def _v(d: Decoded) -> dict[str, Any]:
    return d.value if isinstance(d.value, dict) else {}


def _is(d: Decoded, schema: str) -> bool:
    return d.format == "avro" and d.schema == schema


EVENT = "sevisflow.events.SevisEvent"
BATCH = "sevisflow.batches.BatchEvent"
RESULT = "sevisflow.results.SevisResult"
COMMAND = "sevisflow.commands.BatchCommand"


def lineage_ref(pos: Mapping[str, Any]) -> str:
    if pos.get("command_id"):  # an event a DSO reported with `sevisflow student report`
        return f"command {pos['command_id']} by {pos.get('dso_user_id')}"
    return f"{pos.get('topic')}[{pos.get('partition')}]@{pos.get('offset')}"


def changed_columns(value: Mapping[str, Any]) -> list[str]:
    """Names of the columns a change touched (all columns of an insert/delete/snapshot row)."""
    before, after = value.get("before") or {}, value.get("after") or {}
    if before and after:
        return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return sorted(after or before)


# ----------------------------------------------------------------------------- student timeline


@dataclass
class StudentTimeline:
    student: str
    steps: list[Step]
    batches: list[str]
    unreported_changes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "student": self.student,
            "batches": self.batches,
            "unreported_changes": self.unreported_changes,
            "steps": [s.to_json() for s in self.steps],
        }


@dataclass
class _Batched:
    """What the batch topic says about the student: its steps, and what went out in which batch."""

    steps: list[Step] = field(default_factory=list)
    sent: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (BatchID, requestID) → record
    batch_ids: list[str] = field(default_factory=list)
    close_commands: dict[str, str] = field(default_factory=dict)  # close command id → BatchID


def student_timeline(
    student: str,
    *,
    changes: Iterable[Decoded] = (),
    events: Iterable[Decoded] = (),
    batches: Iterable[Decoded] = (),
    results: Iterable[Decoded] = (),
    commands: Iterable[Decoded] = (),
    uploads: Mapping[str, Mapping[str, Any]] | None = None,
    matcher: StudentMatcher | None = None,
) -> StudentTimeline:
    """Every recorded step of ``student``, oldest first. Inputs in log order; any may be empty.

    One function per source below; events come first because their lineage says which SIS
    changes were reported, and the batch topic before commands, uploads and results because
    it says which batches (and requests) carried the student."""
    steps, reported = _event_steps(student, events)
    change_steps, unreported = _change_steps(changes, reported, matcher or StudentMatcher(student))
    steps += change_steps
    batched = _batch_steps(student, list(batches))
    steps += batched.steps
    steps += _command_steps(student, commands, batched)
    for bid in batched.batch_ids:
        steps += upload_steps(bid, (uploads or {}).get(bid))
    steps += _result_steps(student, results, batched.sent)
    steps.sort(key=Step.sort_key)
    return StudentTimeline(student, steps, batched.batch_ids, unreported)


def student_batches(student: str, batches: Iterable[Decoded]) -> tuple[list[str], list[str]]:
    """The BatchIDs of the closed batches that carried ``student``, and the ids of the commands that closed
    them (what :func:`student_timeline` joins commands, uploads and results by)."""
    out = _Batched()
    for d in batches:
        v = _v(d)
        if _is(d, BATCH) and v.get("type") == "closed":
            _closed_steps(student, d, v, out)
    return out.batch_ids, list(out.close_commands)


# ----------------------------------------------------------------------------- what one student needs

_PLAIN_KEY = re.compile(r"[A-Za-z0-9._:@+-]+")


def student_needle(student: str) -> bytes | None:
    """Bytes that every SEVIS-side record about ``student`` holds in its value; None when there are none.

    The key is written as is in the Avro string fields (``student_key``) and, by the batcher's JSON,
    inside ``record_json`` / ``records_json``. JSON writes letters, digits and ``._:@+-`` unescaped, so a
    record without these bytes cannot name such a key. Any other key could be escaped: no byte test."""
    return student.encode() if _PLAIN_KEY.fullmatch(student) else None


@dataclass
class StudentRecords:
    """The SEVIS-side records that may concern one student, decoded; how many were read and decoded."""

    events: list[Decoded] = field(default_factory=list)
    batches: list[Decoded] = field(default_factory=list)
    commands: list[Decoded] = field(default_factory=list)
    results: list[Decoded] = field(default_factory=list)
    read: int = 0
    decoded: int = 0
    byte_test: bool = True
    """False: the key has characters JSON may escape, so every record was decoded"""


def student_records(
    student: str,
    *,
    events: Sequence[RawRecord] = (),
    batches: Sequence[RawRecord] = (),
    commands: Sequence[RawRecord] = (),
    results: Sequence[RawRecord] = (),
) -> StudentRecords:
    """The records :func:`student_timeline` can use for ``student``, decoded, in the order given; the others
    are not decoded (decoding is most of the cost of reading a school's whole history).

    A record is decoded when its value bytes hold the student key (:func:`student_needle`), or, once the
    closed events naming the student are known, one of those batches' BatchIDs (lifecycle events,
    requeues and resends, SEVIS results) or of their close command ids. Each rule of the timeline that
    selects a record compares one of these strings with a field of it, so the timeline is the one the
    whole log gives (tests/integration/test_audit_student_scale.py compares both on a real Kafka)."""
    needle = student_needle(student)
    n = len(events) + len(batches) + len(commands) + len(results)
    if needle is None:

        def every(lst: Sequence[RawRecord]) -> list[Decoded]:
            return [r.decode() for r in lst]

        return StudentRecords(
            every(events), every(batches), every(commands), every(results), read=n, decoded=n, byte_test=False
        )
    mine = (needle,)
    first = {i: r.decode() for i, r in enumerate(batches) if r.mentions(mine)}
    batch_ids, close_ids = student_batches(student, first.values())
    later = tuple(b.encode() for b in batch_ids)
    rest = {i: r.decode() for i, r in enumerate(batches) if i not in first and r.mentions(later)}
    out = StudentRecords(
        events=[r.decode() for r in events if r.mentions(mine)],
        batches=[d for _, d in sorted({**first, **rest}.items())],
        commands=[r.decode() for r in commands if r.mentions(mine + later + tuple(c.encode() for c in close_ids))],
        results=[r.decode() for r in results if r.mentions(mine + later)],
        read=n,
    )
    out.decoded = len(out.events) + len(out.batches) + len(out.commands) + len(out.results)
    return out


def _event_steps(student: str, events: Iterable[Decoded]) -> tuple[list[Step], dict[str, list[str]]]:
    """The student's SEVIS events, and source position → the ids of the events that reported it."""
    steps: list[Step] = []
    reported: dict[str, list[str]] = {}
    for d in events:
        v = _v(d)
        if not _is(d, EVENT) or v.get("student_key") != student:
            continue
        lineage = v.get("lineage") or []
        for pos in lineage:
            reported.setdefault(lineage_ref(pos), []).append(v.get("event_id", ""))
        # at the commit time of the change(s) it reports, like the batch records made from it
        commit = max((p.get("commit_ts_ms") or 0 for p in lineage), default=0) or d.timestamp_ms
        after = v.get("after")
        steps.append(
            Step(
                commit,
                "event",
                f"SEVIS event {v.get('kind')} ({v.get('origin', 'sis')})",
                d.ref,
                details={
                    "written_at": iso_ms(d.timestamp_ms),
                    "event_id": v.get("event_id"),
                    "kind": v.get("kind"),
                    "coalesce_key": v.get("coalesce_key"),
                    "sevis_id": v.get("sevis_id"),
                    "changed_fields": sorted(after if isinstance(after, dict) else []),
                    "processor_version": v.get("processor_version"),
                    "problems": v.get("problems") or [],
                    "lineage": [lineage_ref(p) for p in lineage],
                },
            )
        )
    return steps, reported


def _change_steps(
    changes: Iterable[Decoded], reported: Mapping[str, list[str]], matcher: StudentMatcher
) -> tuple[list[Step], int]:
    """The student's SIS changes (those the matcher recognises or an event reported), and how many went unreported."""
    steps: list[Step] = []
    unreported = 0
    for d in changes:
        if d.format == "debezium":
            matcher.learn(d)
        if d.ref not in reported and not matcher.matches(d):
            continue
        v = _v(d)
        src = v.get("source") or {}
        ev_ids = reported.get(d.ref, [])
        if not ev_ids:
            unreported += 1
        op = v.get("op") if d.format == "debezium" else d.format
        steps.append(
            Step(
                src.get("ts_ms") or v.get("ts_ms") or d.timestamp_ms,
                "sis",
                f"SIS change {op} {table_of(d) or d.topic}"
                + (f" → event(s) {', '.join(ev_ids)}" if ev_ids else " (no SEVIS event)"),
                d.ref,
                details={
                    "op": op,
                    "table": table_of(d),
                    "lsn": src.get("lsn"),
                    "tx_id": src.get("txId"),
                    "sequence": src.get("sequence"),
                    "snapshot": src.get("snapshot"),
                    "columns": changed_columns(v) if d.format == "debezium" else [],
                    "event_ids": ev_ids,
                },
            )
        )
    return steps, unreported


def _batch_steps(student: str, batch_events: list[Decoded]) -> _Batched:
    """The student's records on the batch topic, the batches that carried them, and those batches' fate."""
    out = _Batched()
    for d in batch_events:
        v = _v(d)
        if not _is(d, BATCH):
            continue
        t = v.get("type")
        rec = v.get("record") if isinstance(v.get("record"), dict) else None
        if t in RECORD_TYPES and rec and rec.get("student_key") == student:
            out.steps.append(_record_step(d, v, rec))
        elif t in ("student_held", "student_released") and rec and rec.get("student_key") == student:
            out.steps.append(
                Step(
                    v.get("at_ms"),
                    "batch",
                    f"{t.replace('_', ' ')}: {v.get('reason') or ''}".strip(),
                    d.ref,
                    details={
                        "type": t,
                        "records": rec.get("records"),
                        "command_id": v.get("command_id"),
                        "reason": v.get("reason"),
                    },
                )
            )
        elif t == "closed":
            _closed_steps(student, d, v, out)
    for d in batch_events:
        v = _v(d)
        if _is(d, BATCH) and v.get("type") in BATCH_LIFECYCLE and v.get("batch_id") in out.batch_ids:
            out.steps.append(
                Step(
                    v.get("at_ms"),
                    "batch",
                    f"batch {v['batch_id']} {v['type']}: {v.get('reason') or ''}".strip(),
                    d.ref,
                    batch_id=v["batch_id"],
                    details={"type": v["type"], "command_id": v.get("command_id"), "reason": v.get("reason")},
                )
            )
    return out


def _record_step(d: Decoded, v: Mapping[str, Any], rec: Mapping[str, Any]) -> Step:
    t = v.get("type") or ""
    return Step(
        v.get("at_ms"),
        "batch",
        f"{t.replace('_', ' ')}: {rec.get('record_id')} ({rec.get('kind')}, "
        f"{rec.get('section')}) request {rec.get('request_id')}",
        d.ref,
        request_id=rec.get("request_id"),
        details={
            "type": t,
            "revision": v.get("revision"),
            "record_id": rec.get("record_id"),
            "kind": rec.get("kind"),
            "status": rec.get("status"),
            "event_ids": rec.get("event_ids") or [],
            "reason": v.get("reason"),
            "command_id": v.get("command_id"),
            "sevis_id": rec.get("sevis_id"),
        },
    )


def _closed_steps(student: str, d: Decoded, v: Mapping[str, Any], out: _Batched) -> None:
    """A ``closed`` event that carried the student's records: one step per record, remembered for the results."""
    mine = [r for r in v.get("records") or [] if isinstance(r, dict) and r.get("student_key") == student]
    if not mine:
        return
    bid = v.get("batch_id") or ""
    out.batch_ids.append(bid)
    if v.get("command_id"):
        out.close_commands[v["command_id"]] = bid
    for r in mine:
        out.sent[(bid, r.get("request_id") or "")] = r
        out.steps.append(
            Step(
                v.get("at_ms"),
                "batch",
                f"closed into batch {bid} by {v.get('closed_by')}: {r.get('kind')} request {r.get('request_id')}",
                d.ref,
                batch_id=bid,
                request_id=r.get("request_id"),
                details={
                    "closed_by": v.get("closed_by"),
                    "command_id": v.get("command_id"),
                    "record_id": r.get("record_id"),
                    "kind": r.get("kind"),
                    "section": r.get("section"),
                    "sevis_id": r.get("sevis_id"),
                    "event_ids": r.get("event_ids") or [],
                    "lineage": [lineage_ref(p) for p in r.get("lineage") or []],
                    "reason": v.get("reason"),
                },
            )
        )


def _command_steps(student: str, commands: Iterable[Decoded], batched: _Batched) -> list[Step]:
    """The DSO's hold / release of the student, the closes of its batches, requeues and resends of them."""
    steps: list[Step] = []
    close_commands = batched.close_commands
    for d in commands:
        v = _v(d)
        if not _is(d, COMMAND):
            continue
        kind = v.get("kind")
        if (kind in ("hold", "release") and v.get("student_key") == student) or (
            kind == "close" and v.get("command_id") in close_commands
        ):
            target = f" of batch {close_commands[v['command_id']]}" if kind == "close" else ""
            steps.append(
                Step(
                    v.get("requested_at_ms"),
                    "command",
                    f"DSO command {kind}{target} by {v.get('dso_user_id') or 'the scheduler'}",
                    d.ref,
                    batch_id=close_commands.get(v.get("command_id") or ""),
                    details={
                        "command_id": v.get("command_id"),
                        "kind": kind,
                        "dso_user_id": v.get("dso_user_id"),
                        "reason": v.get("reason"),
                        "reviewed_revision": v.get("reviewed_revision"),
                    },
                )
            )
        elif kind in ("requeue", "resend") and v.get("batch_id") in batched.batch_ids:
            what = (
                f"resend of rejected records of batch {v.get('batch_id')} by {v.get('dso_user_id')}"
                if kind == "resend"
                else f"requeue of batch {v.get('batch_id')}"
            )
            steps.append(
                Step(
                    v.get("requested_at_ms"),
                    "command",
                    what,
                    d.ref,
                    batch_id=v.get("batch_id"),
                    details={"command_id": v.get("command_id"), "reason": v.get("reason")},
                )
            )
    return steps


def _result_steps(student: str, results: Iterable[Decoded], sent: Mapping[tuple[str, str], Any]) -> list[Step]:
    """What SEVIS answered for the student's requests (joined by BatchID + requestID)."""
    steps: list[Step] = []
    for d in results:
        v = _v(d)
        if not _is(d, RESULT):
            continue
        key = (v.get("batch_id") or "", v.get("request_id") or "")
        if key not in sent and v.get("student_key") != student:
            continue
        status = v.get("status")
        detail = f" {v.get('error_code')}" if v.get("error_code") else ""
        if v.get("sevis_id") and status == "success":
            detail += f", SEVIS ID {v['sevis_id']}"
        steps.append(
            Step(
                d.timestamp_ms,
                "result",
                f"SEVIS result for {key[0]} request {key[1]}: {status}{detail}"
                + ("" if key in sent else " (no matching closed record found)"),
                d.ref,
                batch_id=key[0],
                request_id=key[1],
                details={
                    "status": status,
                    "error_code": v.get("error_code"),
                    "error_message": v.get("error_message"),
                    "sevis_id": v.get("sevis_id"),
                    "kind": v.get("kind"),
                    "processed_at": v.get("processed_at"),
                    "matched": key in sent,
                },
            )
        )
    return steps


def upload_steps(batch_id: str, upload: Mapping[str, Any] | None) -> list[Step]:
    """Steps from a batch's outbox folder: where it is, and each upload/download attempt."""
    if not upload:
        return []
    ref = f"outbox:{upload.get('day')}/{upload.get('state')}/{batch_id}"
    out = []
    for h in upload.get("history") or []:
        at = h.get("at")
        code = h.get("code") or h.get("error") or ""
        out.append(
            Step(
                int(at * 1000) if isinstance(at, (int, float)) else None,
                "upload",
                f"{h.get('what')} of batch {batch_id} {code}".strip(),
                ref,
                batch_id=batch_id,
                details=dict(h),
            )
        )
    if not out:
        out.append(
            Step(
                None,
                "upload",
                f"batch {batch_id} is in the outbox, state {upload.get('state')}",
                ref,
                batch_id=batch_id,
                details={"state": upload.get("state")},
            )
        )
    return out


# ----------------------------------------------------------------------------- batch report


@dataclass
class BatchReport:
    batch_id: str
    found: bool
    closed: dict[str, Any] | None = None
    close_command: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    lifecycle: list[dict[str, Any]] = field(default_factory=list)
    unmatched_results: list[dict[str, Any]] = field(default_factory=list)
    upload: dict[str, Any] | None = None

    def counts(self) -> dict[str, int]:
        st = [r["result"]["status"] if r.get("result") else "pending" for r in self.records]
        return {
            "records": len(self.records),
            "creates": sum(1 for r in self.records if r.get("section") == "create"),
            "updates": sum(1 for r in self.records if r.get("section") != "create"),
            "success": st.count("success"),
            "failure": st.count("failure"),
            "pending": st.count("pending"),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "found": self.found,
            "closed": self.closed,
            "close_command": self.close_command,
            "counts": self.counts(),
            "records": self.records,
            "lifecycle": self.lifecycle,
            "unmatched_results": self.unmatched_results,
            "upload": self.upload,
        }


def reviewed_by(close: Mapping[str, Any]) -> str:
    """Who reviewed what a close command closed, as the command itself records it (never re-read)."""
    if str(close.get("command_id") or "").startswith("scheduled:"):
        return "none (scheduled close: no person reviewed it)"
    if close.get("reviewed_revision") is None:
        basis = close.get("basis_revision")
        return (
            "none (closed with --yes without a reviewed revision"
            + (f"; bound to revision {basis} as read" if basis is not None else "")
            + ")"
        )
    return f"{close.get('dso_user_id')} (revision {close['reviewed_revision']})"


def batch_report(
    batch_id: str,
    *,
    batches: Iterable[Decoded],
    results: Iterable[Decoded] = (),
    commands: Iterable[Decoded] = (),
    upload: Mapping[str, Any] | None = None,
) -> BatchReport:
    """Who closed ``batch_id``, when, what it contained, and what SEVIS answered per record."""
    report = BatchReport(batch_id, found=False, upload=dict(upload) if upload else None)
    closed_ev: Decoded | None = None
    for d in batches:
        v = _v(d)
        if not _is(d, BATCH) or v.get("batch_id") != batch_id:
            continue
        if v.get("type") == "closed" and closed_ev is None:
            closed_ev = d
        elif v.get("type") != "closed":
            report.lifecycle.append(
                {
                    "type": v.get("type"),
                    "at": iso_ms(v.get("at_ms")),
                    "at_ms": v.get("at_ms"),
                    "reason": v.get("reason"),
                    "command_id": v.get("command_id"),
                    "ref": d.ref,
                }
            )
    if closed_ev is None:
        return report
    v = _v(closed_ev)
    report.found = True
    report.closed = {
        "org_id": v.get("org_id"),
        "closed_by": v.get("closed_by"),
        "at": iso_ms(v.get("at_ms")),
        "at_ms": v.get("at_ms"),
        "command_id": v.get("command_id"),
        "revision": v.get("revision"),
        "reason": v.get("reason"),
        "ref": closed_ev.ref,
    }
    for d in commands:
        c = _v(d)
        if _is(d, COMMAND) and c.get("command_id") == v.get("command_id") and c.get("kind") == "close":
            report.close_command = {
                "command_id": c.get("command_id"),
                "dso_user_id": c.get("dso_user_id"),
                "requested_at": iso_ms(c.get("requested_at_ms")),
                "requested_at_ms": c.get("requested_at_ms"),
                "reviewed_revision": c.get("reviewed_revision"),
                "reviewed_by": reviewed_by(c),
                "record_ids": len(c.get("record_ids") or []),
                "reason": c.get("reason"),
                "ref": d.ref,
            }
            break
    by_request: dict[str, dict[str, Any]] = {}
    for r in v.get("records") or []:
        entry = {
            "request_id": r.get("request_id"),
            "record_id": r.get("record_id"),
            "section": r.get("section"),
            "student_key": r.get("student_key"),
            "sevis_id": r.get("sevis_id"),
            "kind": r.get("kind"),
            "event_ids": r.get("event_ids") or [],
            "lineage": [lineage_ref(p) for p in r.get("lineage") or []],
            "replaced": len(r.get("replaced") or []) + int((r.get("history_trimmed") or {}).get("replaced") or 0),
            "history_trimmed": dict(r.get("history_trimmed") or {}),
            "result": None,
        }
        report.records.append(entry)
        by_request[r.get("request_id") or ""] = entry
    for d in results:
        res = _v(d)
        if not _is(d, RESULT) or res.get("batch_id") != batch_id:
            continue
        summary = {
            "status": res.get("status"),
            "error_code": res.get("error_code"),
            "error_message": res.get("error_message"),
            "sevis_id": res.get("sevis_id"),
            "process_code": res.get("process_code"),
            "processed_at": res.get("processed_at"),
            "ref": d.ref,
        }
        matched = by_request.get(res.get("request_id") or "")
        if matched is None:
            report.unmatched_results.append({"request_id": res.get("request_id"), **summary})
        else:
            matched["result"] = summary  # a later result for the same request wins (log order)
    return report


def format_timeline(tl: StudentTimeline) -> list[list[Any]]:
    return [[iso_ms(s.at_ms) or "-", s.stage, s.what, s.ref] for s in tl.steps]


def format_batch_records(report: BatchReport) -> list[list[Any]]:
    rows = []
    for r in report.records:
        res = r.get("result") or {}
        answer = res.get("status") or "pending"
        if res.get("error_code"):
            answer += f" {res['error_code']}"
        if res.get("status") == "success" and res.get("sevis_id") and r.get("section") == "create":
            answer += f" → {res['sevis_id']}"
        rows.append([r["request_id"], r["student_key"], r["kind"], r["sevis_id"] or "", len(r["lineage"]), answer])
    return rows


def summarize(seq: Sequence[Step]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in seq:
        out[s.stage] = out.get(s.stage, 0) + 1
    return out
