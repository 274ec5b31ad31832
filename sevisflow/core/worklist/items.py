"""The DSO's worklist: one list of what a person must do, per student, most urgent first. Pure.

Sources, each turned into items by one function:

* records waiting in the open batch (to close, or held / waiting for a SEVIS ID) — with their legal due day;
* SEVIS rejections across every closed batch, until a later batch gets the same record accepted —
  with SEVIS's message, what it means and the fix; the record keeps its original clock;
* registrations not yet reported: an Initial or Active student whose session has started (or starts
  within the limit) and who is not registered — "register by <day>" (an Initial student neither
  registered nor terminated is a No-Show risk);
* dead letters meant for a DSO (data the pipeline could not send), repeated changes of one student and
  code folded into one item.

An item's ``item_id`` is stable across runs (derived from what it is about), so marking it done
(``sevisflow todo done``) survives restarts and later runs; a done item comes back only when its
content changes (a new rejection, a new change).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sevisflow.core.worklist.deadlines import Deadlines, first_change_ms, session_start_of

# Dead letters of these stages are about a student's data, so they are the DSO's to act on; the others
# (malformed input, mapping errors, refused commands) are the operator's and stay in `sevisflow issues`.
DSO_STAGES = frozenset({"sevis_events", "sink_xml", "scheduler"})  # scheduler: a daily close that did not run

# SEVIS result codes a DSO meets most, in words, with the fix (from the SEVIS batch error list the
# school receives with its transaction logs; unknown codes show SEVIS's own message).
SEVIS_CODES: Mapping[str, tuple[str, str]] = {
    "S1003": (
        "SEVIS does not know the SEVIS ID sent for this student",
        "check the SEVIS ID in the SIS or with `sevisflow student add-info --sevis-id`, then resend",
    ),
    "S1068": (
        "the next session start date is missing or not after the current session",
        "fix the term calendar in the SIS (next term start), then resend",
    ),
    "S1120": (
        "the student's record is not in a status that allows this update",
        "look the record up in SEVIS RTI; the update may have to be made there",
    ),
}


@dataclass
class Item:
    item_id: str
    student_key: str | None
    name: str | None
    what: str  # kind of work: "send", "rejected", "register", "fix data", "held", "waiting"
    title: str
    detail: list[str] = field(default_factory=list)
    action: str = ""
    due_on: date | None = None
    band: str = "none"  # overdue | urgent | soon | ok | none (no legal limit)
    rule: dict[str, Any] | None = None
    done: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "student_key": self.student_key,
            "name": self.name,
            "what": self.what,
            "title": self.title,
            "detail": self.detail,
            "action": self.action,
            "due_on": self.due_on.isoformat() if self.due_on else None,
            "band": self.band,
            "rule": self.rule,
            "done": self.done,
        }


def _id(*parts: Any) -> str:
    return "w" + hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:11]


def _with_due(
    item: Item, deadlines: Deadlines, today: date, kind: str, clock_ms: int, session_start: str | None = None
) -> Item:
    due = deadlines.due(kind, clock_ms, session_start)
    if due is not None:
        item.due_on = due.due_on
        item.band = deadlines.band(due.due_on, today)
        item.rule = due.to_json()
    return item


def open_batch_items(records: Iterable[Mapping[str, Any]], deadlines: Deadlines, today: date) -> list[Item]:
    """Each record of the open batch: ready to close, held, or waiting for a SEVIS ID."""
    out = []
    for r in records:
        status = r.get("status") or "open"
        what, action = {
            "open": ("send", "review and close it: sevisflow batch show, then sevisflow batch close"),
            "held": ("held", "release it when the hold is settled: sevisflow batch release"),
            "waiting": ("waiting", "nothing yet: it goes out once SEVIS returns the student's SEVIS ID"),
        }.get(status, ("send", "review it: sevisflow batch show"))
        detail = list(r.get("problems") or [])
        if r.get("resent_from"):  # `sevisflow batch resend`: the rejection it answers, on the record itself
            rf = r["resent_from"]
            detail.append(
                f"SEVIS rejected it in batch {rf.get('batch_id')} ({rf.get('code') or 'no code'}); resent by "
                f"{rf.get('by')}: it keeps its original due day"
            )
        item = Item(
            _id("record", r["record_id"], r.get("request_id")),
            r.get("student_key"),
            r.get("display_name"),
            what,
            f"{r['kind']} to report",
            detail,
            action=action,
        )
        out.append(_with_due(item, deadlines, today, r["kind"], first_change_ms(r), session_start_of(r)))
    return out


def rejection_items(
    batches: Iterable[Any], deadlines: Deadlines, today: date, open_ids: frozenset[str] | set[str] = frozenset()
) -> list[Item]:
    """SEVIS rejections not yet made good by a later accepted result for the same record. A resent record
    still in the open batch (``open_ids``) is that batch's item; once closed again it shows as "resent"."""
    accepted_after: dict[str, int] = {}
    rejected: dict[str, tuple[int, Any, Mapping[str, Any], Mapping[str, Any]]] = {}
    for b in sorted(batches, key=lambda b: b.at_ms):
        by_request = {r.get("request_id"): r for r in b.records}
        for req, res in b.results.items():
            rec = by_request.get(req)
            if rec is None:
                continue
            if res.get("status") == "success":
                accepted_after[rec["record_id"]] = b.at_ms
                rejected.pop(rec["record_id"], None)
            else:
                rejected[rec["record_id"]] = (b.at_ms, b, rec, res)
    out = []
    for rid, (_, b, rec, res) in sorted(rejected.items()):
        code = res.get("error_code") or ""
        meaning, fix = SEVIS_CODES.get(
            code, ("", "correct the data in the SIS (or with sevisflow student add-info), then resend")
        )
        detail = [f"SEVIS said: {code} {res.get('error_message') or ''}".rstrip()]
        if meaning:
            detail.append(f"meaning: {meaning}")
        resent = getattr(b, "resent", {}).get(rid)
        if resent and rid in open_ids:
            continue
        if resent:  # fixed and resent: shown until SEVIS accepts it (a new rejection is a new item)
            detail.append(f"resent by {resent.get('by')}: in the open batch or a later batch, waiting for SEVIS")
            item = Item(
                _id("resent", b.batch_id, rec.get("request_id"), code),
                rec.get("student_key"),
                rec.get("display_name"),
                "resent",
                f"SEVIS rejected {rec['kind']} in batch {b.batch_id}; resent",
                detail,
                "nothing more to fix: it goes out with the next close; this item clears when SEVIS accepts it",
            )
        else:
            item = Item(
                _id("rejected", b.batch_id, rec.get("request_id"), code),
                rec.get("student_key"),
                rec.get("display_name"),
                "rejected",
                f"SEVIS rejected {rec['kind']} in batch {b.batch_id}",
                detail,
                f"{fix}: sevisflow batch resend {b.batch_id} --record {rid} --dso <your SEVIS user id>",
            )
        out.append(_with_due(item, deadlines, today, rec["kind"], first_change_ms(rec), session_start_of(rec)))
    return out


def registration_items(
    students: Iterable[Mapping[str, Any]], pending_students: set[str], deadlines: Deadlines, today: date
) -> list[Item]:
    """Initial/Active students whose current session started (or starts within the limit) unregistered.

    ``students`` are canonical views (``sevisflow.students``); a student with a Registration record already
    pending (open batch) is not listed twice."""
    rule = deadlines.rule_for("Registration")
    limit = rule.days if rule else 30
    out = []
    for v in students:
        key = v.get("student_key")
        program = v.get("program") or {}
        if not key or key in pending_students or program.get("status") not in ("initial", "active"):
            continue
        for slot, reg in sorted((v.get("registration") or {}).items()):
            start = reg.get("session_start")
            if not start or reg.get("status") == "enrolled":
                continue
            start_day = date.fromisoformat(str(start)[:10])
            if start_day - timedelta(days=limit) > today or start_day + timedelta(days=limit + 60) < today:
                continue  # not started within reach, or a long-past term (not this session's to-do)
            name = (
                " ".join(
                    x
                    for x in ((v.get("student") or {}).get("first_name"), (v.get("student") or {}).get("last_name"))
                    if x
                )
                or None
            )
            risk = (
                " — No-Show risk: SEVIS terminates an Initial record not registered in time"
                if program.get("status") == "initial"
                else ""
            )
            item = Item(
                _id("register", key, slot, start),
                key,
                name,
                "register",
                f"register for the session starting {start_day.isoformat()}{risk}",
                [f"SIS registration status: {reg.get('status') or 'none'}"],
                "enrol the student in the SIS (the Registration then goes out with the next batch), or "
                "terminate the record (No Show) if the student did not come",
            )
            out.append(_with_due(item, deadlines, today, "Registration", 0, str(start)))
    return out


def dead_letter_items(letters: Iterable[Mapping[str, Any]]) -> list[Item]:
    """Dead letters meant for a DSO, one item per (student, code): repeated changes fold into one."""
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for d in letters:
        if d.get("stage") not in DSO_STAGES and not (d.get("stage") == "normalize" and d.get("student_key")):
            continue  # normalize's letters that name a student are about the SIS data (a bad code, a rounding)
        grouped.setdefault((d.get("student_key") or "", d["code"]), []).append(d)
    out = []
    for (student, code), ds in sorted(grouped.items()):
        last = max(ds, key=lambda d: d.get("at_ms") or 0)
        detail = [d["reason"] for d in sorted(ds, key=lambda d: d.get("at_ms") or 0)][-5:]
        if len(ds) > 5:
            detail.insert(0, f"({len(ds) - 5} earlier occurrence(s) not shown)")
        if last.get("stage") == "scheduler":  # a daily close that did not run: nothing to fix in the data
            out.append(
                Item(
                    _id("dlq", student, code, last.get("at_ms")),
                    None,
                    None,
                    "check",
                    code.replace("_", " "),
                    detail,
                    "check that nothing due on those days is late (`sevisflow batch status`); "
                    "mark it done once checked",
                )
            )
            continue
        detail += changed_lines(ds)
        out.append(
            Item(
                _id("dlq", student, code, last.get("at_ms")),
                student or None,
                None,
                "fix data",
                f"{code.replace('_', ' ')}" + (f" ({last.get('field')})" if last.get("field") else ""),
                detail,
                DSO_ACTIONS.get(
                    code, "correct it in the SIS (a new change is sent automatically), or report it in SEVIS RTI"
                ).replace("<key>", student),
            )
        )
    return out


def changed_lines(letters: Sequence[Mapping[str, Any]], limit: int = 12) -> list[str]:
    """What changed in the SIS across an item's letters (``changes``: path → [before, after], oldest first):
    each path's first "before" and last "after", so the DSO can act in SEVIS RTI without opening the SIS."""
    merged: dict[str, list[Any]] = {}
    for d in sorted(letters, key=lambda d: d.get("at_ms") or 0):
        for path, (before, after) in (d.get("changes") or {}).items():
            merged[path] = [merged[path][0] if path in merged else before, after]
    lines = [f"in the SIS: {p}: {_show(b)} → {_show(a)}" for p, (b, a) in merged.items() if b != a]
    return lines[:limit] + ([f"… {len(lines) - limit} more change(s) (`--json`)"] if len(lines) > limit else [])


def _show(value: Any) -> str:
    return "(none)" if value is None or value == "" else str(value)


# what to do for the codes the events stage raises when it sent something altered or nothing at all
DSO_ACTIONS: Mapping[str, str] = {
    "name_altered": "compare the spelling sent to SEVIS with the passport (`sevisflow batch show --student <key>` "
    "shows both); if the passport differs, correct the SIS, else mark this done",
    "status_left_fmj": "complete, transfer or terminate the record in SEVIS RTI, or correct the visa in the SIS",
    "student_removed": "complete, transfer or terminate the record in SEVIS RTI, or restore the student in the SIS",
    "not_reported_visa": "report the change(s) in SEVIS RTI (the EV record), then mark this done",
    "incomplete_record": "complete the SIS record (the Create then goes out by itself), or create the record in "
    "SEVIS RTI and enter its SEVIS ID in the SIS",
    "needs_dso": "make the change in SEVIS RTI (or correct the SIS), then mark this done",
    "unknown_school": "correct person.school_code in the SIS, or ask the administrator to add a [[schools]] entry "
    "with that sis_school (the next change is then reported)",
    "school_changed": "transfer the student's record in SEVIS RTI to the new school (or correct "
    "person.school_code in the SIS), then mark this done",
}


def worklist(
    open_records: Sequence[Mapping[str, Any]],
    batches: Iterable[Any],
    students: Iterable[Mapping[str, Any]],
    letters: Iterable[Mapping[str, Any]],
    done: Mapping[str, Mapping[str, Any]],
    deadlines: Deadlines,
    today: date,
    include_done: bool = False,
) -> list[Item]:
    """Every item, grouped per student and sorted by due day (overdue first; no limit last)."""
    pending = {r["student_key"] for r in open_records if r.get("kind") == "Registration"}
    open_ids = {r["record_id"] for r in open_records}
    items = (
        open_batch_items(open_records, deadlines, today)
        + rejection_items(batches, deadlines, today, open_ids)
        + registration_items(students, pending, deadlines, today)
        + dead_letter_items(letters)
    )
    names = {i.student_key: i.name for i in items if i.name}
    for i in items:
        i.name = i.name or names.get(i.student_key)
        i.done = dict(done[i.item_id]) if i.item_id in done else None
    if not include_done:
        items = [i for i in items if i.done is None]
    first_due: dict[str | None, date] = {}
    for i in items:
        if i.due_on and (i.student_key not in first_due or i.due_on < first_due[i.student_key]):
            first_due[i.student_key] = i.due_on
    far = date.max
    return sorted(
        items, key=lambda i: (first_due.get(i.student_key, far), i.student_key or "", i.due_on or far, i.title)
    )


def band_counts(items: Iterable[Item]) -> dict[str, int]:
    counts = dict.fromkeys(("overdue", "urgent", "soon", "ok", "none"), 0)
    for i in items:
        counts[i.band] += 1
    return counts
