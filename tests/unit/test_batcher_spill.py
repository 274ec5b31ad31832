"""The batcher keeps a committed open batch in its state store, not in memory, and behaves exactly as before.

After each commit the stage leaves a school's committed open records to the store (``spilled``): the school
keeps their ids and reads a record back when an input, the view, a close or a periodic pass needs it; the
last ``HOT_RECORDS`` written stay decoded. Whatever the commit points, aborts and restores, the stage must say
and store exactly what the pure core says over plain dicts. No services: the memory store, and RocksDB (the
default backend) for the memory figure.
"""

from __future__ import annotations

import gc
import pickle
import tracemalloc
from typing import Any

import pytest

from sevisflow.core.config import settings_from_mapping
from sevisflow.core.state import open_committed
from sevisflow.core.worklist.deadlines import DueMemo
from sevisflow.processors.batcher import stage as batcher_stage
from sevisflow.processors.batcher.core import (
    CommandIn,
    EventIn,
    PMap,
    Publish,
    ResultIn,
    School,
    SendCommand,
    Spilled,
    SpilledBatch,
    Tick,
    Written,
    apply,
    peek_items,
    record_rev,
    spilled,
    spilled_batches,
)
from sevisflow.processors.batcher.gauges import worklist_gauges
from sevisflow.processors.batcher.stage import BatcherStage, BatcherStore, load_school
from testkit.batcher import BASE_MS, ORG, command, event, result
from testkit.settings import make_settings

DSO = "DSOUSER001"


def _stage() -> BatcherStage:
    return BatcherStage(settings_from_mapping({"school": {"org_id": ORG, "dso_user_ids": [DSO]}}, env={}))


def _in_memory(school: School) -> int:
    """How many of the school's open records it holds as decoded values (not left to the store)."""
    return sum(1 for v in school.records._map.values() if type(v) is not Spilled)  # type: ignore[attr-defined]


def _program(n: int) -> list[Any]:
    """Adds, replacements of the same records, holds, a close of a reviewed revision, SEVIS's results."""
    inputs: list[Any] = []
    for i in range(n):
        inputs.append(EventIn(event(f"S{i % 40}", n=i, sevis_id=None if i % 11 == 0 else f"N{i % 40:010d}"), BASE_MS))
        if i == n // 3:
            inputs.append(CommandIn(command("hold", f"h{i}", student_key="S3", dso_user_id=DSO, reason="check")))
            inputs.append(CommandIn(command("close", f"c{i}", dso_user_id=DSO, reviewed_revision=i // 2)))
        if i == n // 2:
            inputs.append(CommandIn(command("release", f"r{i}", student_key="S3", dso_user_id=DSO)))
            inputs.append(CommandIn(command("close", f"c{i}", dso_user_id=DSO)))
    return inputs


def _with_results(pure: School, inputs: list[Any]) -> list[Any]:
    """``inputs`` and then SEVIS's answer to every record of every batch they closed (a rejection among them)."""
    state = pure
    for inp in inputs:
        state, _ = apply(state, inp)
    answers: list[Any] = []
    for bid, batch in sorted(state.batches.items()):
        for j, rec in enumerate(batch["records"]):
            status = "failure" if j == 2 else "success"
            res = result(bid, rec["request_id"], student=rec["student_key"], kind=rec["kind"], status=status)
            answers.append(ResultIn(res, BASE_MS + 7_200_000))
    first, second = sorted(state.batches)
    later = [  # reading closed batches' content back: a resend of the rejection, a requeue of a whole batch
        CommandIn(command("resend", "rs1", batch_id=first, dso_user_id=DSO)),
        CommandIn(command("requeue", "rq1", batch_id=second, reason="S0013")),
        CommandIn(command("resend", "rs2", batch_id=second, dso_user_id=DSO)),  # refused: requeued
    ]
    end = EventIn(event("S2", n=999_999, sevis_id="N0000000002"), BASE_MS + 9_000_000)
    return inputs + answers + later + [end]


@pytest.mark.parametrize("commit_every", [1, 3, 17])
def test_the_stage_over_spilled_records_says_and_stores_what_the_pure_core_says(commit_every, monkeypatch):
    monkeypatch.setattr(batcher_stage, "HOT_RECORDS", 5)  # most records read back from the store
    inputs = _with_results(School(ORG), _program(120))
    stage, store = _stage(), BatcherStore()
    pure = School(ORG)
    for i, inp in enumerate(inputs):
        pure, outs = apply(pure, inp)
        assert stage._apply(store, 0, ORG, inp, None) == stage._encode(ORG, outs, None), f"input {i}"
        assert sum(isinstance(o, Publish) for o in outs) > 0 or isinstance(inp, ResultIn), f"input {i} said nothing"
        if i % commit_every == commit_every - 1:
            store.commit()
            assert _in_memory(store.cache[(0, ORG)]) == 0 and len(store.hot) <= 5
            assert all(type(b) is SpilledBatch for b in store.cache[(0, ORG)].batches.values())
        assert store.cache[(0, ORG)] == pure, f"input {i}"
    store.commit()
    assert load_school(store, 0, ORG) == pure  # and what a restore reads back
    assert len(pure.records) > 20 and len(pure.batches) >= 2  # the program did exercise a big batch and closes
    assert pure.batches[sorted(pure.batches)[1]]["requeued"] and pure.commands["rs1"]["kind"] == "resend"


def test_an_aborted_transaction_after_a_spill_starts_again_from_the_committed_records():
    stage, store = _stage(), BatcherStore()
    pure = School(ORG)
    for i in range(30):
        inp = EventIn(event(f"S{i}", n=i, sevis_id=f"N{i:010d}"), BASE_MS)
        pure, _ = apply(pure, inp)
        stage._apply(store, 0, ORG, inp, None)
    store.commit()
    committed = pure
    for i in range(10):  # replacements of spilled records, then the transaction fails
        stage._apply(store, 0, ORG, EventIn(event(f"S{i}", n=100 + i, sevis_id=f"N{i:010d}"), BASE_MS), None)
    store.abort()
    assert load_school(store, 0, ORG) == committed
    again = EventIn(event("S1", n=200, sevis_id="N0000000001"), BASE_MS)
    expected, outs = apply(committed, again)
    assert stage._apply(store, 0, ORG, again, None) == stage._encode(ORG, outs, None)
    assert store.cache[(0, ORG)] == expected


def test_a_partition_taken_over_forgets_the_records_it_kept_decoded():
    stage, store = _stage(), BatcherStore()
    stage._apply(store, 3, ORG, EventIn(event("S1", n=1), BASE_MS), None)
    data = {k: v for k, v in store.staged()[3].items() if v is not None}
    store.commit()
    assert any(k[0] == 3 for k in store.hot)
    store.drop_partition(3)
    assert not any(k[0] == 3 for k in store.hot)
    store.load_partition(3, data)  # another instance's state for it: read afresh, nothing decoded kept
    assert not store.hot and load_school(store, 3, ORG).records["S1:PersonalInfo"]["student_key"] == "S1"


def test_a_spilled_mapping_reads_equals_and_copies_like_the_mapping_it_stands_for():
    stored: dict[str, dict[str, Any]] = {"a": {"v": 1}, "b": {"v": 2}}
    loads: list[str] = []

    def load(key: str) -> Any:
        loads.append(key)
        return dict(stored[key])

    p = spilled(PMap({"a": {"v": 1, "rev": 7}, "b": {"v": 2}, "c": {"v": 3}}), ["a", "zz"], load)
    stored["a"]["rev"] = 7
    assert type(p._map["a"]) is Spilled and "zz" not in p  # a key the mapping lacks is not made up
    a = {"v": 1, "rev": 7}
    assert p == {"a": a, "b": {"v": 2}, "c": {"v": 3}} and loads == ["a"]
    assert p["a"] == a and p.get("a") == a and p.get("nope") is None
    assert sorted(v["v"] for v in p.values()) == [1, 2, 3] and dict(p.items())["a"] == a
    assert [rev for _, rev in sorted((k, record_rev(v)) for k, v in peek_items(p))] == [7, 0, 0]
    w = Written(p)  # apply's working copy reads through the same loader and writes over the stub
    w["a"] = {"v": 10}
    assert w.frozen()["a"] == {"v": 10} and p["a"] == a and w.frozen().load is load
    assert "Spilled" not in repr(p) and PMap({"a": a, "b": {"v": 2}, "c": {"v": 3}}) == p
    assert pickle.loads(pickle.dumps(p)) == p and type(pickle.loads(pickle.dumps(p))._map["a"]) is dict


def test_memory_follows_the_hot_records_not_the_open_batch(tmp_path, monkeypatch):
    """3,000 committed open records in RocksDB: the Python heap holds their ids, the student index and the
    last HOT_RECORDS records, not the records (about 2.6 KB each decoded)."""
    monkeypatch.setattr(batcher_stage, "HOT_RECORDS", 100)
    settings = make_settings(state={"backend": "rocksdb", "dir": str(tmp_path)})
    stage, store = BatcherStage(settings), BatcherStore(open_committed(settings.state, "spill-test"))
    n = 3_000
    inputs = [EventIn(event(f"S{i:07d}", n=i, sevis_id=f"N{i:010d}"), BASE_MS) for i in range(n)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, inp in enumerate(inputs):
            stage._apply(store, 0, ORG, inp, None)
            if i % 500 == 499:
                stage.view_outputs(store)
                store.commit()
        gc.collect()
        per_record = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
        store.close()
    school = store.cache[(0, ORG)]
    assert len(school.records) == n and _in_memory(school) == 0 and len(store.hot) == 100
    assert per_record < 900, f"{per_record:.0f} bytes of Python heap per open record"  # 345 measured; 2,297 all kept


def test_a_spilled_batch_reads_equals_and_pickles_like_the_batch_it_stands_for():
    content = [{"record_id": "S1:PersonalInfo", "request_id": "1"}]
    loads: list[str] = []

    def load(bid: str) -> Any:
        loads.append(bid)
        return content

    batch = {"records": content, "at_ms": 5, "closed_by": DSO, "rejected": {"1": {"record_id": "S1:PersonalInfo"}}}
    p = spilled_batches({"B1": batch, "B2": {"records": [], "at_ms": 9}}, ["B1", "nope"], load)
    b1 = p["B1"]
    assert type(b1) is SpilledBatch and "nope" not in p and type(p["B2"]) is dict
    assert b1["at_ms"] == 5 and b1.get("rejected") == batch["rejected"] and b1.get("requeued") is None
    assert loads == [], "its fields are in memory"
    assert b1["records"] == content and loads == ["B1"]
    assert b1 == batch and batch == b1 and dict(b1, processed=True) == {**batch, "processed": True}
    assert sorted(b1) == sorted(batch) and len(b1) == len(batch) and "records" in b1
    assert pickle.loads(pickle.dumps(b1)) == batch and type(pickle.loads(pickle.dumps(b1))) is dict


def test_memory_does_not_follow_the_closed_batches_kept(tmp_path):
    """Twelve closes of 250 records each, all kept (the last 60 are): the Python heap holds each batch's fields
    and the last HOT_BATCHES contents read, not the 3,000 closed records (about 2.6 KB each decoded)."""
    settings = make_settings(state={"backend": "rocksdb", "dir": str(tmp_path)})
    stage, store = _stage(), BatcherStore(open_committed(settings.state, "spill-batches-test"))
    closes, per_close = 12, 250
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for c in range(closes):
            for i in range(per_close):
                n = c * per_close + i
                stage._apply(store, 0, ORG, EventIn(event(f"S{n:07d}", n=n, sevis_id=f"N{n:010d}"), BASE_MS), None)
            store.commit()
            stage._apply(store, 0, ORG, CommandIn(command("close", f"c{c}", dso_user_id=DSO)), None)
            store.commit()
        stage.view_outputs(store)
        gc.collect()
        per_record = (tracemalloc.get_traced_memory()[0] - before) / (closes * per_close)
    finally:
        tracemalloc.stop()
        store.close()
    kept = store.cache[(0, ORG)].batches
    assert len(kept) == closes and all(type(b) is SpilledBatch for b in kept.values())
    assert not store.cache[(0, ORG)].records, "everything was closed"
    assert per_record < 400, f"{per_record:.0f} bytes of Python heap per closed record kept"


class CountingStore(BatcherStore):
    """Counts the open records read back from the store."""

    def __init__(self) -> None:
        super().__init__()
        self.record_reads = 0

    def get(self, partition: int, key: bytes) -> bytes | None:
        self.record_reads += key.startswith(b"r|")
        return super().get(partition, key)


def test_the_periodic_passes_read_back_only_the_records_whose_due_date_the_memo_lacks(monkeypatch):
    """The gauges (every 5 s) and the early-close check (every 2 s tick) look at every open record: a spilled
    record's stub carries its version and status, so a pass reads nothing back once the memo knows them."""
    monkeypatch.setattr(batcher_stage, "HOT_RECORDS", 10)
    school = {"org_id": ORG, "dso_user_ids": [DSO], "close_at": "23:59", "close_dso": DSO}
    stage = BatcherStage(settings_from_mapping({"school": {**school, "close_early_when_due": True}}, env={}))
    store = CountingStore()
    store.partitions.add(0)
    for i in range(200):
        stage._apply(store, 0, ORG, EventIn(event(f"S{i}", n=i, sevis_id=f"N{i:010d}"), BASE_MS), None)
    store.commit()
    now = BASE_MS + 3_600_000

    def gauges() -> Any:
        return worklist_gauges([store.cache[(0, ORG)]], stage.deadlines, now, stage.due_memo)

    store.record_reads = 0
    first = gauges()
    assert store.record_reads >= 190  # the memo knew none (of the 10 kept decoded, some are read before they go)
    store.record_reads = 0
    assert gauges() == first and store.record_reads == 0
    assert first == worklist_gauges([load_school(store, 0, ORG)], stage.deadlines, now)  # as a fresh pass says

    def early_close_check(memo: DueMemo) -> list[Any]:  # the tick's pass, on the school as committed
        later = now + 30 * 86_400_000  # a morning a month on: every record overdue before 23:59
        tick = Tick(later, "America/Chicago", "23:59", DSO, close_early=stage.deadlines, due_memo=memo)
        return apply(store.cache[(0, ORG)], tick)[1]

    store.record_reads = 0
    assert any(isinstance(o, SendCommand) for o in early_close_check(stage.due_memo))  # overdue: close early
    assert store.record_reads == 0  # the early-close check read nothing back either
    assert any(isinstance(o, SendCommand) for o in early_close_check(DueMemo(stage.deadlines)))
    assert store.record_reads >= 190  # (it does look at every record: with a memo that knows none)
    stage._apply(store, 0, ORG, EventIn(event("S5", "Status.Terminate", n=900, event_id="t5"), BASE_MS), None)
    store.commit()
    store.record_reads = 0
    gauges()
    assert store.record_reads <= 1  # only the new version, if it is not hot
