"""At-least-once input: a connector that restarts re-sends what it had not confirmed — row changes *and*
their BEGIN/END records. normalize applies each SIS transaction once and never waits on a re-sent END.

Debezium writes an END whose id carries the commit's LSN, past the transaction's rows, so an END re-sent
after its transaction was applied cannot be told "late" by position: normalize remembers the transactions
it applied (tests/integration/test_debezium_e2e.py runs the real Debezium)."""

from __future__ import annotations

from processors.normalize.debezium import SisFeed
from processors.sevis_events.pure import PureOutput, PurePipeline
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
    resent = feed.records[start:]                       # BEGIN, the row, END of the last transaction
    feed.tx(("u", "public.person", rows["person"], {**rows["person"], "email": "zoe@third.example"}))
    once = _events(feed.records)
    twice = _events(feed.records[:start + len(resent)] + resent + feed.records[start + len(resent):])
    assert twice == once and len([k for k, _ in once if k == "PersonalInfo"]) == 3


def test_a_resent_end_alone_does_not_stop_later_transactions():
    feed, rows = _feed()
    start = len(feed.records)
    feed.tx(("u", "public.person", rows["person"], {**rows["person"], "email": "zoe@new.example"}))
    end = feed.records[-1]
    feed.tx(("u", "public.address", rows["us"], {**rows["us"], "line1": "9 New St"}))
    assert b'"END"' in end.value
    records = feed.records[:start + 3] + [end] + feed.records[start + 3:]
    assert _events(records) == _events(feed.records)
