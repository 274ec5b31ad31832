"""The batcher's state as persistent mappings: a write costs O(log n), and ``apply`` stays a pure function.

``apply`` writes a school's mappings through :class:`Written` versions that share the old mapping's structure
(nothing is copied per event), and leaves :class:`PMap` values in the new state. These must behave like the
dicts they replace: equal to a dict with the same items, never changed once made (also when ``apply`` fails
midway), and the open-batch view's size carried from state to state must be the size a full encoding gives.
"""

from __future__ import annotations

import copy
import pickle

import orjson
import pytest

from sevisflow.processors.batcher import core
from sevisflow.processors.batcher.core import (
    KEEP_CLOSED_BATCHES,
    CommandIn,
    EventIn,
    PMap,
    ResultIn,
    School,
    Written,
    apply,
    changed_keys,
    open_view,
    records_json_bytes,
)
from sevisflow.processors.batcher.ids import batch_id
from testkit.batcher import BASE_MS, ORG, command, event, result

DSO = "DSOUSER001"


def run(state: School, *inputs):
    for inp in inputs:
        state, _ = apply(state, inp)
    return state


def plain(school: School) -> bytes:
    """Every stored field of ``school`` as canonical JSON (a deep snapshot)."""
    fields = ("held", "records", "sevis_ids", "commands", "batches")
    return orjson.dumps({f: dict(getattr(school, f)) for f in fields}, option=orjson.OPT_SORT_KEYS)


def test_a_persistent_mapping_equals_the_dict_with_the_same_items_and_reads_like_one():
    w = Written({"a": 1, "b": 2})
    w["c"] = 3
    del w["a"]
    p = w.frozen()
    same = {"b": 2, "c": 3}
    assert p == same and same == p and p != {"b": 2} and p != {"b": 2, "c": 4}  # both ways round
    assert p == PMap({"c": 3, "b": 2}) and PMap() == {} and not PMap()
    assert sorted(p.items()) == [("b", 2), ("c", 3)] and sorted(p.values()) == [2, 3] and p.keys() == {"b", "c"}
    assert p.get("a") is None and p.get("a", 0) == 0 and "b" in p and "a" not in p and len(p) == 2
    assert changed_keys({"a": 1, "b": 2}, p) is None  # listed only against the very mapping it started from
    assert copy.deepcopy(p) == p and pickle.loads(pickle.dumps(p)) == p
    assert orjson.loads(orjson.dumps(dict(p))) == {"b": 2, "c": 3}


def test_a_working_copy_of_a_persistent_mapping_shares_it_instead_of_copying_it():
    base = PMap({f"k{i}": i for i in range(1000)})
    w = Written(base)
    assert w._map is base._map  # nothing copied before the first write
    w["k1"] = -1
    assert base["k1"] == 1 and w["k1"] == -1 and changed_keys(base, w.frozen()) == {"k1"}


def test_apply_leaves_every_earlier_state_as_it_was():
    states = [School(ORG)]
    inputs = [
        EventIn(event("S1", n=1), BASE_MS),
        EventIn(event("S2", "Create", n=2), BASE_MS),
        EventIn(event("S1", n=3), BASE_MS),
        CommandIn(command("hold", "h1", student_key="S1", dso_user_id=DSO, reason="check")),
        CommandIn(command("close", "c1", dso_user_id=DSO)),
        ResultIn(result("x", "1", student="S2", kind="Create", sevis_id="N0000000042"), BASE_MS),
        CommandIn(command("release", "r1", student_key="S1", dso_user_id=DSO)),
        EventIn(event("S2", n=4, sevis_id=None), BASE_MS),
    ]
    snapshots = [plain(states[0])]
    for inp in inputs:
        states.append(apply(states[-1], inp)[0])
        snapshots.append(plain(states[-1]))
    assert [plain(s) for s in states] == snapshots
    assert states[-1].records == orjson.loads(snapshots[-1])["records"]  # a dict compares equal to the state


def test_a_failing_apply_leaves_the_state_intact_and_the_next_apply_works(monkeypatch):
    s = run(School(ORG), EventIn(event("S1", n=1), BASE_MS), EventIn(event("S2", n=2), BASE_MS))
    before = plain(s)

    def fail(*_a, **_k):
        raise RuntimeError("midway")

    monkeypatch.setattr(core._Tx, "emit", fail)  # after the record was written into the working copy
    with pytest.raises(RuntimeError):
        apply(s, EventIn(event("S1", n=3), BASE_MS))
    monkeypatch.undo()
    assert plain(s) == before and s.records["S1:PersonalInfo"]["event_ids"] == ["ev-S1-PersonalInfo-1"]
    new, _ = apply(s, EventIn(event("S1", n=3), BASE_MS))
    assert new.records["S1:PersonalInfo"]["event_ids"][-1] == "ev-S1-PersonalInfo-3" and plain(s) == before


def test_the_carried_view_size_is_the_size_of_the_encoded_records():
    s = School(ORG)
    assert records_json_bytes(s) == len(b"[]")
    steps = [
        EventIn(event("S1", n=1), BASE_MS),
        EventIn(event("S2", "Create", n=2, display_name="Åsa Ñúñez-Øster"), BASE_MS),
        EventIn(event("S1", n=3), BASE_MS),
        CommandIn(command("hold", "h1", student_key="S2", dso_user_id=DSO, reason="check")),
        EventIn(event("S3", n=4, sevis_id=None), BASE_MS),
        CommandIn(command("close", "c1", dso_user_id=DSO)),
        EventIn(event("S4", n=5), BASE_MS),
    ]
    for inp in steps:
        s, _ = apply(s, inp)
        assert s.records_bytes is not None  # carried, not rebuilt
        whole = orjson.dumps(sorted(s.records.values(), key=lambda r: r["seq"]), option=orjson.OPT_SORT_KEYS)
        assert records_json_bytes(s) == len(whole)
        assert len(open_view(s)["records_json"].encode()) == len(whole)


def test_the_oldest_closed_batches_go_first_and_a_tie_in_time_goes_by_batch_id():
    at = BASE_MS + 3_600_000
    stamps = [at + i for i in range(KEEP_CLOSED_BATCHES)]
    kept = {batch_id(st): {"records": [], "command_id": f"c{st}", "closed_by": DSO, "at_ms": at} for st in stamps}
    # made in reverse: the rule must not depend on the order the mapping was filled in
    s = School(ORG, last_stamp=stamps[-1], batches=dict(reversed(kept.items())))
    s = run(s, EventIn(event("S1", n=1), BASE_MS), CommandIn(command("close", "c-new", dso_user_id=DSO, at_ms=at)))
    assert len(s.batches) == KEEP_CLOSED_BATCHES
    assert batch_id(stamps[0]) not in s.batches and batch_id(stamps[-1] + 1) in s.batches
