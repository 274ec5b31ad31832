"""The batcher's periodic passes over its open batch (worklist gauges, the early-close check, the list of
schools) give the same answers as before while working out a record's due date once per version of the
record and listing the schools without a pass over every key (no services)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson

from sevisflow.core.state import MemoryState
from sevisflow.core.worklist.deadlines import Deadlines, Due, DueMemo
from sevisflow.processors.batcher.core import CommandIn, EventIn, School, SendCommand, Tick, apply
from sevisflow.processors.batcher.gauges import worklist_gauges
from sevisflow.processors.batcher.stage import BatcherStore
from testkit.batcher import BASE_MS, ORG, command, event, run

TZ = "America/Chicago"
DSO = "DSOUSER001"


@dataclasses.dataclass(frozen=True)
class CountingDeadlines(Deadlines):
    """The default rule table, counting how often a due date is worked out."""

    calls: list[str] = dataclasses.field(default_factory=list, compare=False)

    def due(self, kind: str, first_change_ms: int, session_start: str | None = None) -> Due | None:
        self.calls.append(kind)
        return super().due(kind, first_change_ms, session_start)


def at(local: str) -> int:
    return int(datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(TZ)).timestamp() * 1000)


def school_with(n: int) -> School:
    s = School(ORG)
    for i in range(n):
        s, _ = apply(s, EventIn(event(f"S{i}", n=i), BASE_MS))
    return s


def test_a_due_date_is_worked_out_once_per_version_of_a_record():
    deadlines = CountingDeadlines(timezone=TZ)
    memo = DueMemo(deadlines)
    s = school_with(5)
    now = at("2025-07-01T12:00:00")
    first = worklist_gauges([s], deadlines, now, memo)
    assert len(deadlines.calls) == 5
    assert worklist_gauges([s], deadlines, now, memo) == first
    assert len(deadlines.calls) == 5  # the second pass worked nothing out
    s, _ = apply(s, EventIn(event("S2", "Status.Terminate", n=99, event_id="t2"), BASE_MS))  # a new version of one
    again = worklist_gauges([s], deadlines, now, memo)
    assert deadlines.calls[5:] == ["Status.Terminate"]
    assert again == worklist_gauges([s], Deadlines(timezone=TZ), now)  # what the pass without a memo says


def test_a_record_read_back_from_the_state_store_is_the_version_the_memo_knows():
    """The batcher reads spilled records back as new dicts: the memo goes by ``rev``, and holds no record."""
    deadlines = CountingDeadlines(timezone=TZ)
    memo = DueMemo(deadlines)
    s = school_with(3)
    now = at("2025-07-01T12:00:00")
    first = worklist_gauges([s], deadlines, now, memo)
    read_back = dataclasses.replace(s, records={k: orjson.loads(orjson.dumps(v)) for k, v in s.records.items()})
    assert worklist_gauges([read_back], deadlines, now, memo) == first and len(deadlines.calls) == 3
    assert not any(isinstance(hit[0], dict) for per_org in memo._asked.values() for hit in per_org.values())
    rid = next(iter(s.records))
    newer = dict(read_back.records[rid], rev=s.revision + 1, kind="Status.Terminate")
    worklist_gauges([dataclasses.replace(s, records={**read_back.records, rid: newer})], deadlines, now, memo)
    assert deadlines.calls[3:] == ["Status.Terminate"]  # another version: worked out afresh
    no_rev = {k: v for k, v in newer.items() if k != "rev"}
    worklist_gauges([dataclasses.replace(s, records={rid: no_rev})], deadlines, now, memo)
    assert len(deadlines.calls) == 5  # a record without a rev is known by identity only


def test_the_memo_forgets_records_that_left_the_open_batch():
    deadlines = Deadlines(timezone=TZ)
    memo = DueMemo(deadlines)
    s = school_with(4)
    worklist_gauges([s], deadlines, at("2025-07-01T12:00:00"), memo)
    assert len(memo) == 4
    s, _ = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    assert len(s.records) == 0
    worklist_gauges([s], deadlines, at("2025-07-01T12:00:00"), memo)
    worklist_gauges([s], deadlines, at("2025-07-01T12:00:05"), memo)
    assert len(memo) == 0


def test_another_rule_table_is_never_answered_from_the_memo():
    memo = DueMemo(Deadlines(timezone=TZ))
    s = school_with(1)
    (rid, rec) = next(iter(s.records.items()))
    _, default_due = memo.of(ORG, rid, rec)
    stricter = Deadlines.configured({"name_address": 3}, 7, 2, TZ)
    _, strict_due = memo.of(ORG, rid, rec, stricter)
    assert default_due is not None and strict_due is not None
    assert (strict_due.due_on - strict_due.clock_start).days == 3
    assert (default_due.due_on - default_due.clock_start).days == 21


def test_gauges_with_the_memo_equal_gauges_without_it_as_the_batch_changes():
    deadlines = Deadlines(timezone=TZ)
    memo = DueMemo(deadlines)
    s = School(ORG)
    steps = [
        EventIn(event("S1", n=1), BASE_MS),
        EventIn(event("S2", "Create", n=2), BASE_MS),
        EventIn(event("S3", n=3, sevis_id=None), BASE_MS),  # waiting for a SEVIS ID
        EventIn(event("S1", "Status.Terminate", n=4, event_id="t1"), BASE_MS + 86_400_000),
        CommandIn(command("hold", "h1", student_key="S2", dso_user_id=DSO)),
        CommandIn(command("close", "c1", dso_user_id=DSO)),
        EventIn(event("S4", n=5), BASE_MS + 2 * 86_400_000),
    ]
    for i, step in enumerate(steps):
        s, _ = apply(s, step)
        for when in ("2025-06-20T09:00:00", "2025-07-05T12:00:00", "2025-07-09T08:00:00"):
            now = at(when) + i
            assert worklist_gauges([s], deadlines, now, memo) == worklist_gauges([s], deadlines, now), (i, when)


def _early_tick(local: str, memo: DueMemo | None) -> Tick:
    dt = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(TZ))
    return Tick(int(dt.timestamp() * 1000), TZ, "16:30", DSO, close_early=Deadlines(timezone=TZ), due_memo=memo)


def test_the_early_close_decides_the_same_with_the_memo_as_without_it():
    memo = DueMemo(Deadlines(timezone=TZ))
    script = [
        EventIn(event("S1", n=1), BASE_MS),
        "2025-07-05T16:31:00",
        CommandIn(command("close", "c0", dso_user_id=DSO)),
        EventIn(event("S2", n=2), BASE_MS),
        "2025-07-05T18:00:00",
        "2025-07-06T16:31:00",
        EventIn(event("S3", n=3), BASE_MS),
        "2025-07-06T17:00:00",
        "2025-07-06T17:00:02",
        EventIn(event("S3", "Status.Terminate", n=4, event_id="t3"), BASE_MS),
        "2025-07-06T17:00:04",
    ]
    plain, memoized = School(ORG), School(ORG)
    sent = 0
    for step in script:
        if isinstance(step, str):
            plain, a = apply(plain, _early_tick(step, None))
            memoized, b = apply(memoized, _early_tick(step, memo))
        else:
            plain, a = apply(plain, step)
            memoized, b = apply(memoized, step)
        assert a == b, step
        sent += sum(isinstance(o, SendCommand) for o in a)
        for o in a:  # the scheduled closes it sends are applied, as the stage would read them back
            if isinstance(o, SendCommand):
                plain, _ = apply(plain, CommandIn(o.command))
                memoized, _ = apply(memoized, CommandIn(o.command))
    assert sent >= 2  # the script reaches both the daily close and an early one


def _scan(store: BatcherStore, partition: int) -> list[str]:
    """The schools of a partition as the store used to list them: a pass over every key."""
    return sorted(k[2:].decode() for k, _ in store.items(partition) if k.startswith(b"m|"))


def test_the_store_lists_its_schools_without_a_pass_over_every_key():
    store = BatcherStore(MemoryState())
    store.load_partition(0, {b"m|AAA": b"{}", b"r|AAA|x": b"{}", b"m|BBB": b"{}"})
    store.load_partition(1, {})
    assert store.orgs(0) == _scan(store, 0) == ["AAA", "BBB"]
    store.put(0, b"m|CCC", b"{}")  # a new school in the open transaction
    store.put(1, b"m|DDD", b"{}")
    assert store.orgs(0) == _scan(store, 0) == ["AAA", "BBB", "CCC"]
    store.abort()  # ... that did not commit
    assert store.orgs(0) == _scan(store, 0) == ["AAA", "BBB"] and store.orgs(1) == []
    store.put(0, b"m|CCC", b"{}")
    store.put(0, b"m|AAA", None)
    store.commit()
    assert store.orgs(0) == _scan(store, 0) == ["BBB", "CCC"]
    store.drop_partition(0)
    assert store.orgs(0) == _scan(store, 0) == []
    store.load_partition(0, {b"m|EEE": b"{}"})
    assert store.orgs(0) == _scan(store, 0) == ["EEE"]
