"""normalize + sevis_events as plain functions over plain data: what the Kafka stages run per record.

:class:`PurePipeline` is used by the tests (table-driven scenarios, hypothesis, the second SIS
schema) and by the benchmark; the Kafka stages call the same :class:`Normalizer` and :func:`derive`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sevisflow.processors.normalize.changes import ChangeFormatError, parse_change, parse_tx_marker
from sevisflow.processors.normalize.mapping import Mapping
from sevisflow.processors.normalize.view import DeadItem, DictKV, Normalizer, Result, StudentUpdate
from sevisflow.processors.sevis_events.derive import Context, Issue, derive


@dataclass
class PureOutput:
    views: list[StudentUpdate] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    dead: list[DeadItem] = field(default_factory=list)
    issues: list[tuple[str, Issue]] = field(default_factory=list)  # (student_key, issue)

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events]


class PurePipeline:
    """Feed change records (topic, key, value); collect views, events, dead letters and issues."""

    def __init__(
        self,
        mapping: Mapping,
        org_id: str = "ZZZ214F99999000",
        tx_topic: str | None = "sis.transaction",
        use_transactions: bool = True,
        timezone: str = "UTC",
        ev_programs: dict[str, str] | None = None,
        schools: dict[str, str] | None = None,
    ) -> None:
        self.mapping = mapping
        self.org_id = org_id
        self.ev_programs = dict(ev_programs or {})  # [[exchange_programs]]: SIS program code → program number
        self.schools = dict(schools or {})  # [[schools]]: SIS school code → the member school's OrgID
        self.timezone = timezone  # school.timezone, as the stage passes it (the I-20 issue-date fallback)
        self.tx_topic = tx_topic
        self.kv = DictKV()
        self.normalizer = Normalizer(mapping, self.kv, use_transactions=use_transactions and tx_topic is not None)
        self.last_view: dict[str, dict[str, Any]] = {}

    def feed(self, records: Iterable[Any]) -> PureOutput:
        out = PureOutput()
        for r in records:
            self.feed_one(r.topic, r.key, r.value, out)
        self.finish(out)
        return out

    def finish(self, out: PureOutput) -> None:
        """The end of the feed: apply a snapshot still held (normalize holds snapshot rows until the
        snapshot is complete; without Kafka, "complete" is the first streamed change or the end)."""
        self._take(self.normalizer.finish(), out)

    def feed_one(
        self, topic: str, key: bytes | None, value: bytes | None, out: PureOutput, partition: int = 0, offset: int = 0
    ) -> None:
        try:
            if topic == self.tx_topic:
                marker = parse_tx_marker(value)
                res = self.normalizer.on_marker(marker) if marker else Result()
            else:
                ch = parse_change(key, value, topic, partition, offset)
                res = self.normalizer.on_change(ch) if ch else Result()
        except ChangeFormatError as exc:
            out.dead.append(DeadItem("bad_change_event", str(exc), None))
            return
        self._take(res, out)

    def _take(self, res: Result, out: PureOutput) -> None:
        out.dead.extend(res.dead)
        for upd in res.updates:
            out.views.append(upd)
            self.apply_view(upd, out)

    def apply_view(self, upd: StudentUpdate, out: PureOutput) -> None:
        prev = self.last_view.get(upd.student_key)
        commit = max((x.get("commit_ts_ms") or 0 for x in upd.lineage), default=0) or None
        ctx = Context(
            self.org_id, upd.unit_id, upd.lineage, commit, upd.snapshot, self.timezone, self.ev_programs, self.schools
        )
        d = derive(prev, upd.view, ctx)
        out.events.extend(d.events)
        out.issues.extend((upd.student_key, i) for i in d.issues)
        self.last_view[upd.student_key] = upd.view
