"""The open-batch view (sevis.batch.open) equals the fold of sevis.batches, and the stage publishes it once per school."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sevisflow.core.config import settings_from_mapping
from sevisflow.core.serde import registry
from sevisflow.processors.batcher import core
from sevisflow.processors.batcher.core import (
    MAX_OPEN_VIEW_BYTES,
    CommandIn,
    EventIn,
    Publish,
    ResultIn,
    School,
    apply,
    open_view,
)
from sevisflow.processors.batcher.stage import OPEN_BATCH_SCHEMA, BatcherStage, BatcherStore, save_diff
from sevisflow.processors.batcher.view import BatchView, fold, from_open_batch
from testkit.batcher import BASE_MS, ORG, command, event, result

DSO = "DSOUSER001"
ORG2 = "XYZ214F00001000"


def shown(view: BatchView) -> dict:
    """What `batch show` (and `close`) use of a view."""
    return {
        "org_id": view.org_id,
        "revision": view.revision,
        "records": view.open_records(),
        "held": view.held,
        "counts": view.counts(),
    }


class Both:
    """Runs inputs through the core; keeps the history fold and the published view side by side."""

    def __init__(self) -> None:
        self.state = School(ORG)
        self.history = BatchView(ORG)

    def __call__(self, inp) -> list:
        self.state, outs = apply(self.state, inp)
        for o in outs:
            if isinstance(o, Publish):
                fold(self.history, o.event)
        self.check()
        return outs

    def check(self) -> None:
        # through Avro, as the CLI reads it
        value = registry().decode(registry().encode(OPEN_BATCH_SCHEMA, open_view(self.state)))
        fast = from_open_batch(value)
        assert fast is not None
        assert shown(fast) == shown(self.history)


def test_view_equals_history_through_adds_replacements_holds_waiting_close_rollover_and_requeue():
    b = Both()
    b(EventIn(event("S1", n=1, before={"email": "a"}, after={"email": "b"}), BASE_MS))
    b(EventIn(event("S1", n=2, before={"email": "b"}, after={"email": "c"}), BASE_MS + 1))  # replaced
    b(EventIn(event("S2", "Create", n=3), BASE_MS + 2))
    b(EventIn(event("S2", n=4, sevis_id=None), BASE_MS + 3))  # waiting for the SEVIS ID
    b(EventIn(event("S3", n=5, before={"email": "x"}, after={"email": "y"}), BASE_MS + 4))
    b(EventIn(event("S3", n=6, before={"email": "y"}, after={"email": "x"}), BASE_MS + 5))  # undone → removed
    b(CommandIn(command("hold", "h1", student_key="S1", dso_user_id=DSO, reason="check address")))
    b(EventIn(event("S1", "Registration", n=7), BASE_MS + 6))  # held on arrival
    assert set(b.history.held) == {"S1"} and b.history.counts()["held"] == 2
    b(CommandIn(command("close", "c0", dso_user_id="short")))  # rejected: no revision change
    b(CommandIn(command("close", "c1", dso_user_id=DSO)))  # closes S2's Create only
    b(
        ResultIn(
            result(b.state.commands["c1"]["batch_ids"][0], "x", student="S2", kind="Create", sevis_id="N0000000042"),
            BASE_MS + 7,
        )
    )  # releases S2's update
    b(CommandIn(command("release", "r1", student_key="S1", dso_user_id=DSO)))
    for i in range(300):  # rollover past 250 at the next close
        b(EventIn(event(f"R{i:03d}", n=100 + i), BASE_MS + 100 + i))
    b(CommandIn(command("close", "c2", dso_user_id=DSO)))
    assert len(b.state.commands["c2"]["batch_ids"]) == 2 and not b.state.records
    b(CommandIn(command("requeue", "q1", batch_id=b.state.commands["c2"]["batch_ids"][1])))
    assert b.history.counts()["records"] == 303 - 250  # S1 ×2, S2, 300 R…: the second document


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("ev"),
            st.integers(0, 5),
            st.sampled_from(["PersonalInfo", "Registration", "Create"]),
            st.integers(0, 3),
        ),
        st.tuples(st.just("close"), st.integers(0, 3)),
        st.tuples(st.just("hold"), st.integers(0, 5)),
        st.tuples(st.just("release"), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(ops)
def test_property_view_equals_history_after_every_input(program):
    b = Both()
    for i, op in enumerate(program):
        if op[0] == "ev":
            _, stu, kind, val = op
            b(
                EventIn(
                    event(
                        f"S{stu}",
                        kind,
                        n=i,
                        before={"v": 0},
                        after={"v": val},
                        sevis_id=None if stu == 5 else "N0000000001",
                    ),
                    BASE_MS + i,
                )
            )
        elif op[0] == "close":
            b(CommandIn(command("close", f"c{i}", dso_user_id=DSO, at_ms=BASE_MS + op[1])))
        else:
            b(CommandIn(command(op[0], f"{op[0]}{i}", student_key=f"S{op[1]}", dso_user_id=DSO)))


def test_an_open_batch_too_large_for_one_record_sends_readers_to_the_history(monkeypatch):
    assert MAX_OPEN_VIEW_BYTES < 8 * 1024 * 1024  # the topic's and the producer's max.message.bytes
    s = School(ORG)
    for i in range(3):
        s, _ = apply(s, EventIn(event(f"S{i}", n=i), BASE_MS + i))
    assert from_open_batch(open_view(s)) is not None
    monkeypatch.setattr(core, "MAX_OPEN_VIEW_BYTES", len(orjson.dumps(list(s.records.values()))) - 1)
    value = open_view(s)
    assert value["records_json"] is None and value["record_count"] == len(s.records)
    assert from_open_batch(registry().decode(registry().encode(OPEN_BATCH_SCHEMA, value))) is None


# ----------------------------------------------------------------------------- the stage's bookkeeping (no Kafka)


def _stage() -> BatcherStage:
    return BatcherStage(settings_from_mapping({"topics": {"open_batches": "sevis.batch.open.t"}}, env={}))


def _views(outs) -> dict[str, dict]:
    assert all(o.topic == "sevis.batch.open.t" for o in outs)
    return {o.key.decode(): registry().decode(o.value) for o in outs}


def test_stage_publishes_one_view_per_changed_school_per_transaction_and_again_after_an_abort():
    stage, store = _stage(), BatcherStore()
    for i in range(5):
        stage._apply(store, 0, ORG, EventIn(event(f"S{i}", n=i), BASE_MS + i), None)
    stage._apply(store, 1, ORG2, EventIn(event("T1", n=9, org=ORG2), BASE_MS), None)
    views = _views(stage.view_outputs(store))
    assert set(views) == {ORG, ORG2} and views[ORG]["record_count"] == 5 and views[ORG]["revision"] == 6
    assert stage.view_outputs(store) == []  # once per transaction
    stage._apply(store, 1, ORG2, EventIn(event("T2", n=10, org=ORG2), BASE_MS), None)
    assert _views(stage.view_outputs(store))[ORG2]["record_count"] == 2  # changed after its view went out
    store.abort()  # the transaction failed: its inputs come again, and the views must go out again
    assert _views(stage.view_outputs(store)).keys() == {ORG, ORG2}
    store.commit()
    assert stage.view_outputs(store) == [] and not store.view_dirty
    # a rejected close changes nothing the DSO sees: no new view
    stage._apply(store, 0, ORG, CommandIn(command("close", "bad", dso_user_id="short")), None)
    assert stage.view_outputs(store) == []


def test_stage_republishes_every_school_of_a_partition_it_takes_over():
    stage, old = _stage(), BatcherStore()
    stage._apply(old, 2, ORG, EventIn(event("S1", n=1), BASE_MS), None)
    stage._apply(old, 2, ORG2, EventIn(event("T1", n=2, org=ORG2), BASE_MS), None)
    data = {k: v for k, v in old.staged()[2].items() if v is not None}
    new = BatcherStore()
    new.load_partition(2, data)
    views = _views(stage.on_idle(new))  # published on the first idle turn after the restore
    assert views[ORG]["revision"] == 2 and orjson.loads(views[ORG2]["records_json"])[0]["student_key"] == "T1"
    new.drop_partition(2)
    assert not new.view_dirty and stage.view_outputs(new) == []


def test_save_diff_and_view_agree_on_a_restored_school():
    """The view written after a restore is built from the changelog's keys: the same as before the restart."""
    from sevisflow.processors.batcher.stage import load_school

    s = School(ORG)
    s, _ = apply(s, EventIn(event("S1", n=1), BASE_MS))
    s, _ = apply(s, CommandIn(command("hold", "h1", student_key="S1", dso_user_id=DSO, reason="why")))
    store = BatcherStore()
    save_diff(store, 0, School(ORG), s)
    assert open_view(load_school(store, 0, ORG)) == open_view(s)


@pytest.mark.parametrize("spilled", [False, True])
def test_the_view_carries_the_records_exactly_as_one_encoding_would_up_to_the_byte_limit(monkeypatch, spilled):
    """Also when the school's records are in the stage's state store (``spilled``): taken as stored, as they
    are, they are the same bytes."""
    from sevisflow.processors.batcher.stage import load_school

    s = School(ORG)
    for i in range(4):
        s, _ = apply(s, EventIn(event(f"S{i}", n=i, display_name="Åsa Ñúñez-Øster"), BASE_MS + i))
    s, _ = apply(s, EventIn(event("S9", "Create", n=9), BASE_MS + 9))
    if spilled:
        store = BatcherStore()
        save_diff(store, 0, School(ORG), s)
        s = load_school(store, 0, ORG)
        assert all(type(v) is core.Spilled for v in s.records._map.values())
    ordered = sorted(s.records.values(), key=lambda r: (r["section"] != "create", r["seq"]))
    whole = core.dumps(ordered)
    assert open_view(s)["records_json"] == whole
    assert orjson.loads(whole)[0]["section"] == "create"  # Creates first, then by sequence
    limit = len(whole.encode())  # bytes, not characters: the names are not ASCII
    monkeypatch.setattr(core, "MAX_OPEN_VIEW_BYTES", limit)
    assert open_view(s)["records_json"] == whole
    monkeypatch.setattr(core, "MAX_OPEN_VIEW_BYTES", limit - 1)
    assert open_view(s)["records_json"] is None


def test_a_batch_with_more_records_than_could_fit_is_not_encoded_at_all(monkeypatch):
    s = School(ORG)
    for i in range(3):
        s, _ = apply(s, EventIn(event(f"S{i}", n=i), BASE_MS + i))
    shortest = min(len(core.dumps(r).encode()) for r in s.records.values())
    assert shortest > core.MIN_RECORD_JSON_BYTES  # the bound the shortcut relies on
    monkeypatch.setattr(core, "MAX_OPEN_VIEW_BYTES", 2 * core.MIN_RECORD_JSON_BYTES)  # room for 2 at most
    monkeypatch.setattr(core, "dumps", lambda _: (_ for _ in ()).throw(AssertionError("encoded")))
    monkeypatch.setattr(core.orjson, "dumps", lambda *a, **k: (_ for _ in ()).throw(AssertionError("encoded")))
    value = open_view(s)
    assert value["records_json"] is None and value["record_count"] == 3
