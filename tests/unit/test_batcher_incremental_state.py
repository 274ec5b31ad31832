"""The batcher's shortcuts for big open batches give the same state as the long way.

``apply`` lists the keys it wrote (so the stage stages only those) and carries a per-student index of
the open records from state to state (so an event does not scan every open record). With thousands of
records open, both were the batcher's main cost; here any sequence of events, SEVIS IDs, holds,
releases, closes and results must give: the index equal to one built from scratch, every key whose
value changed among the listed ones, and the state saved key by key equal to the state in memory.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sevisflow.core.kafka_io import StateStore
from sevisflow.processors.batcher.core import (
    CommandIn,
    EventIn,
    ResultIn,
    School,
    apply,
    changed_keys,
    student_index,
)
from sevisflow.processors.batcher.stage import load_school, save_diff
from testkit.batcher import BASE_MS, ORG, command, event, result

DSO = "DSOUSER001"
STUDENTS = [f"S{i}" for i in range(1, 6)]
KINDS = ["PersonalInfo", "Create", "Program", "FinancialInfo"]

steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("event"), st.sampled_from(STUDENTS), st.sampled_from(KINDS), st.sampled_from([None, "N1", "N2"])
        ),
        st.tuples(st.just("hold"), st.sampled_from(STUDENTS), st.none(), st.none()),
        st.tuples(st.just("release"), st.sampled_from(STUDENTS), st.none(), st.none()),
        st.tuples(st.just("close"), st.none(), st.none(), st.none()),
        st.tuples(st.just("result"), st.sampled_from(STUDENTS), st.none(), st.sampled_from(["N3", "N4"])),
    ),
    min_size=1,
    max_size=40,
)


def fresh_index(school: School) -> dict[str, set[str]]:
    index: dict[str, set[str]] = {}
    for rid, rec in school.records.items():
        index.setdefault(rec["student_key"], set()).add(rid)
    return index


def as_sets(index) -> dict[str, set[str]]:
    return {k: set(v) for k, v in index.items()}


def differing(old, new) -> set[str]:
    return {k for k in set(old) | set(new) if old.get(k) != new.get(k)}


def to_input(step, n: int):
    what, student, kind, sevis_id = step
    at = BASE_MS + n * 1000
    if what == "event":
        return EventIn(event(student, kind, n=n, sevis_id=sevis_id), at)
    if what in ("hold", "release"):
        cmd = command(what, f"{what}-{n}", at_ms=at, dso_user_id=DSO, student_key=student, reason="check")
        return CommandIn(cmd, at)
    if what == "close":
        return CommandIn(command("close", f"close-{n}", at_ms=at, dso_user_id=DSO), at)
    return ResultIn(result("x", f"{n}", student=student, kind="Create", sevis_id=sevis_id), at)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(steps)
def test_written_keys_and_the_student_index_match_the_long_way(program):
    state = School(ORG)
    student_index(state)  # from the start: every later index is carried, none rebuilt
    store = StateStore()
    for n, step in enumerate(program, start=1):
        new, _ = apply(state, to_input(step, n))
        assert as_sets(student_index(new)) == fresh_index(new), step
        for name in ("records", "sevis_ids", "commands", "batches"):
            old_map, new_map = getattr(state, name), getattr(new, name)
            written = changed_keys(old_map, new_map)
            assert written is not None, (name, step)  # every write went through the tracked copy
            assert differing(old_map, new_map) <= written, (name, step)
        save_diff(store, 0, state, new)
        store.commit()
        assert load_school(store, 0, ORG) == new, step
        state = new


def test_a_state_built_without_the_index_gets_one_on_first_use():
    s, _ = apply(School(ORG), EventIn(event("S1", n=1), BASE_MS))
    s, _ = apply(s, EventIn(event("S2", n=2), BASE_MS))
    rebuilt = load_school_like(s)
    assert rebuilt.student_ids is None
    assert as_sets(student_index(rebuilt)) == {"S1": {"S1:PersonalInfo"}, "S2": {"S2:PersonalInfo"}}


def load_school_like(s: School) -> School:
    return School(ORG, revision=s.revision, seq=s.seq, records=dict(s.records), sevis_ids=dict(s.sevis_ids))
