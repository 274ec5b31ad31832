"""At-least-once input: a connector that restarts re-sends what it had not confirmed — row changes *and*
their BEGIN/END records. normalize applies each SIS transaction once and never waits on a re-sent END.

Debezium writes an END whose id carries the commit's LSN, past the transaction's rows, so an END re-sent
after its transaction was applied cannot be told "late" by position: normalize remembers the transactions
it applied (tests/integration/test_debezium_e2e.py runs the real Debezium)."""

from __future__ import annotations

import orjson

from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline
from tests.scenarios import MAPPING, PKS, TABLES, base_rows


def _feed() -> tuple[SisFeed, dict]:
    feed = SisFeed(primary_keys=PKS)
    rows = base_rows()
    feed.tx(*[("c", TABLES[n], None, r) for n, r in rows.items()])
    return feed, rows


def _events(records) -> list[tuple[str, str]]:
    pipe, out = PurePipeline(MAPPING), PureOutput()
    for i, r in enumerate(records):
        pipe.feed_one(r.topic, r.key, r.value, out, 0, i)
    pipe.finish(out)
    return [(e["kind"], e["student_key"]) for e in out.events]


def test_a_resent_transaction_after_it_was_applied_is_applied_once_and_later_ones_still_flow():
    feed, rows = _feed()
    feed.tx(("u", "public.person", rows["person"], {**rows["person"], "email": "zoe@new.example"}))
    start = len(feed.records)
    feed.tx(("u", "public.address", rows["us"], {**rows["us"], "line1": "9 New St"}))
    resent = feed.records[start:]  # BEGIN, the row, END of the last transaction
    feed.tx(("u", "public.person", rows["person"], {**rows["person"], "email": "zoe@third.example"}))
    once = _events(feed.records)
    twice = _events(feed.records[: start + len(resent)] + resent + feed.records[start + len(resent) :])
    assert twice == once and len([k for k, _ in once if k == "PersonalInfo"]) == 3


def test_a_resent_end_alone_does_not_stop_later_transactions():
    feed, rows = _feed()
    start = len(feed.records)
    feed.tx(("u", "public.person", rows["person"], {**rows["person"], "email": "zoe@new.example"}))
    end = feed.records[-1]
    feed.tx(("u", "public.address", rows["us"], {**rows["us"], "line1": "9 New St"}))
    assert b'"END"' in end.value
    records = feed.records[: start + 3] + [end] + feed.records[start + 3 :]
    assert _events(records) == _events(feed.records)


def test_a_fraction_in_a_whole_dollar_amount_is_rounded_and_the_dso_is_told():
    """Not a duplicate, but the same kind of quiet change: SEVIS takes whole dollars, so 30,000.50 is sent as
    30,001 — and a dead letter names the field (never the amount), which the worklist shows."""
    from decimal import Decimal

    from sevisflow.core.worklist.deadlines import Deadlines
    from sevisflow.core.worklist.items import worklist

    feed, rows = _feed()
    feed.style = "iso"
    feed.tx(("u", "public.finance", rows["finance"], {**rows["finance"], "tuition": Decimal("30000.50")}))
    pipe, out = PurePipeline(MAPPING), PureOutput()
    for i, r in enumerate(feed.records):
        pipe.feed_one(r.topic, r.key, r.value, out, 0, i)
    pipe.finish(out)
    fin = [e for e in out.events if e["kind"] == "FinancialInfo"]
    assert fin and orjson.loads(fin[-1]["payload_json"])["Expense"]["Tuition"] == "30001"
    [note] = [d for d in out.dead if d.code == "value_rounded"]
    assert note.field == "finance.tuition" and "30000" not in note.reason
    letter = {
        "stage": "normalize",
        "code": note.code,
        "student_key": note.student_key,
        "field": note.field,
        "reason": note.reason,
        "at_ms": 1,
    }
    [item] = worklist([], [], [], [letter], {}, Deadlines(), __import__("datetime").date(2026, 1, 1))
    assert item.student_key == note.student_key and "finance.tuition" in item.title
