"""What the DSO sees: ``sevis.batches`` (and ``sevis.results``) folded into a view of one school.

Pure: :func:`fold` takes decoded BatchEvents in log order; :func:`from_open_batch` reads the
batcher's compacted per-school view (one OpenBatch record, the fast path of ``batch show``). The CLI reads the
topics with :func:`sevisflow.core.kafka_io.read_topic` (never moving any offsets)
and renders this view; the golden tests render views built from fixed events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class ClosedBatch:
    batch_id: str
    closed_by: str | None
    at_ms: int
    command_id: str | None
    reason: str | None
    records: list[dict[str, Any]]
    status: str = "closed"
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    resent: dict[str, dict[str, Any]] = field(default_factory=dict)
    """record_id → who resent it (``sevisflow batch resend``) and when, for records SEVIS rejected."""

    @property
    def creates(self) -> int:
        return sum(1 for r in self.records if r["section"] == "create")

    @property
    def updates(self) -> int:
        return sum(1 for r in self.records if r["section"] == "update")

    def state(self) -> str:
        """closed / requeued / results in: n ok, m failed."""
        if self.status != "closed":
            return self.status
        if not self.results:
            return "closed, no SEVIS result yet"
        ok = sum(1 for r in self.results.values() if r.get("status") == "success")
        bad = len(self.results) - ok
        return f"processed: {ok} ok, {bad} failed" + (
            "" if len(self.results) >= len(self.records) else f", {len(self.records) - len(self.results)} pending"
        )


@dataclass
class BatchView:
    org_id: str
    revision: int = 0
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: dict[str, ClosedBatch] = field(default_factory=dict)
    by_command: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def open_records(self) -> list[dict[str, Any]]:
        """The open batch in the order it will be sent: creates first, then updates, each by sequence."""
        return sorted(self.records.values(), key=lambda r: (r["section"] != "create", r["seq"]))

    def held_students(self) -> list[dict[str, Any]]:
        """Every student on hold, with or without records yet: key, name (when a record gives one), who held
        them (``by``, a SEVIS user id), why (``why``, as typed), when (``at_ms``), the full text (``reason``) and
        how many open-batch records are held now (``records``; 0 = none yet, later changes are held too)."""
        out = []
        for key, h in sorted(self.held.items()):
            recs = [r for r in self.records.values() if r["student_key"] == key]
            name = next((r.get("display_name") for r in recs if r.get("display_name")), None)
            out.append(
                {
                    "student_key": key,
                    "display_name": name,
                    "by": h.get("by"),
                    "why": h.get("why"),
                    "at_ms": h.get("at_ms"),
                    "reason": h.get("reason"),
                    "records": sum(1 for r in recs if r["status"] == "held"),
                }
            )
        return out

    def counts(self) -> dict[str, int]:
        recs = self.records.values()
        return {
            "records": len(self.records),
            "creates": sum(1 for r in recs if r["section"] == "create"),
            "updates": sum(1 for r in recs if r["section"] == "update"),
            "ready": sum(1 for r in recs if r["status"] == "open"),
            "held": sum(1 for r in recs if r["status"] == "held"),
            "waiting": sum(1 for r in recs if r["status"] == "waiting"),
        }


def fold(view: BatchView, ev: Mapping[str, Any]) -> None:
    """Apply one BatchEvent (decoded) of ``view.org_id``."""
    if ev.get("org_id") != view.org_id:
        return
    t = ev["type"]
    view.revision = max(view.revision, ev.get("revision") or 0)
    if ev.get("command_id"):
        view.by_command.setdefault(ev["command_id"], []).append(dict(ev))
    rec = orjson.loads(ev["record_json"]) if ev.get("record_json") else None
    if t in ("record_added", "record_replaced", "record_held", "record_released", "record_waiting") and rec:
        view.records[rec["record_id"]] = rec
    elif t == "record_removed" and rec:
        view.records.pop(rec["record_id"], None)
    elif t == "student_held" and rec:
        view.held[rec["student_key"]] = {
            "at_ms": ev["at_ms"],
            "reason": ev.get("reason"),
            "by": rec.get("by"),
            "why": rec.get("why"),
        }
    elif t == "student_released" and rec:
        view.held.pop(rec["student_key"], None)
    elif t == "closed":
        records = orjson.loads(ev["records_json"] or "[]")
        for r in records:
            cur = view.records.get(r["record_id"])
            if cur is not None and cur.get("request_id") == r.get("request_id"):
                del view.records[r["record_id"]]
        view.batches[ev["batch_id"]] = ClosedBatch(
            ev["batch_id"], ev.get("closed_by"), ev["at_ms"], ev.get("command_id"), ev.get("reason"), records
        )
    elif t in ("requeued", "failed", "accepted") and ev.get("batch_id") in view.batches:
        view.batches[ev["batch_id"]].status = t
    elif t == "resent" and rec and ev.get("batch_id") in view.batches:  # rejected records back in the open batch
        for rid in rec.get("record_ids") or []:
            view.batches[ev["batch_id"]].resent[rid] = {"by": rec.get("by"), "at_ms": ev["at_ms"]}


def fold_result(view: BatchView, res: Mapping[str, Any]) -> None:
    if res.get("org_id") != view.org_id:
        return
    batch = view.batches.get(res.get("batch_id") or "")
    if batch is not None:
        batch.results[res["request_id"]] = dict(res)


def from_open_batch(value: Mapping[str, Any]) -> BatchView | None:
    """The view of an OpenBatch record (the compacted view topic), or None when it holds no records.

    Gives the same ``revision``, ``records`` and ``held`` as :func:`build_view` over the history;
    closed batches and per-command events are not in it (``batch list``/``status`` read the history).
    """
    if value.get("records_json") is None:
        return None
    view = BatchView(value["org_id"], revision=int(value["revision"]))
    for rec in orjson.loads(value["records_json"]):
        view.records[rec["record_id"]] = rec
    for h in value.get("held") or []:
        view.held[h["student_key"]] = {
            "at_ms": h["at_ms"],
            "reason": h.get("reason"),
            "by": h.get("by"),
            "why": h.get("why"),
        }
    return view


def build_view(
    org_id: str, events: Iterable[Mapping[str, Any]], results: Iterable[Mapping[str, Any]] = ()
) -> BatchView:
    view = BatchView(org_id)
    for ev in events:
        fold(view, ev)
    for res in results:
        fold_result(view, res)
    return view
