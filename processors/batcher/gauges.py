"""The worklist gauges the batcher exports: open-batch records per legal deadline band, the age of the
oldest ready record, SEVIS rejections not yet made good and the age of the oldest. Pure: schools in,
numbers out (the stage sets the Prometheus gauges from them, see docs/OPERATIONS.md "Observability").

Why the batcher: it holds every open-batch record (with its first-change clock) and every kept closed
batch with SEVIS's rejections (``rejected`` of a stored batch, resolved by a later acceptance of the same
record), so the numbers need no extra reading of Kafka. A school's "today" is its own time zone's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sevisflow.core.worklist.deadlines import BANDS, Deadlines, DueMemo
from sevisflow.processors.batcher.core import School, memo_due, open_rejections, peek_items, record_status

ALL_BANDS = (*BANDS, "none")
"""Deadline bands of the gauge; ``none`` = a record no legal limit covers (a Create, financial information)."""


@dataclass
class WorklistGauges:
    records_by_band: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ALL_BANDS, 0))
    oldest_ready_age_s: float = 0.0
    rejections_open: int = 0
    oldest_rejection_age_s: float = 0.0


def worklist_gauges(
    schools: Iterable[School], deadlines: Deadlines, now_ms: int, memo: DueMemo | None = None
) -> WorklistGauges:
    """The gauges over ``schools`` at ``now_ms`` (ages in seconds; 0 when there is nothing).

    With ``memo`` (the stage's) a record's due date is worked out once per version of the record, not once
    per pass, and the memo is swept at the end: this pass asked about every open record of every school."""
    g = WorklistGauges()
    today = deadlines.local_day(now_ms)
    memo = memo if memo is not None else DueMemo(deadlines)  # none lent: one for this pass
    for school in schools:
        org = school.org_id
        records = school.records
        for rid, rec in peek_items(records):  # a spilled record is read back only if the memo lacks its version
            clock, due = memo_due(memo, org, rid, rec, records, deadlines)
            g.records_by_band[deadlines.band(due.due_on, today) if due else "none"] += 1
            if record_status(rec) == "open" and clock:
                g.oldest_ready_age_s = max(g.oldest_ready_age_s, (now_ms - clock) / 1000)
        for rej in open_rejections(school):
            g.rejections_open += 1
            if rej.get("at_ms"):
                g.oldest_rejection_age_s = max(g.oldest_rejection_age_s, (now_ms - int(rej["at_ms"])) / 1000)
    memo.sweep()
    return g
