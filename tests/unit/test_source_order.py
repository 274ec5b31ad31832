"""SourceOrder: fetched records handed over oldest first across partitions, never out of order within one."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sevisflow.core.source_order import SourceOrder

CREATE_TIME, NOT_AVAILABLE = 1, 0


@dataclass(frozen=True)
class Rec:
    """What SourceOrder reads of a consumed Kafka message."""

    t: str
    p: int
    o: int
    ts: int
    kind: int = CREATE_TIME

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def timestamp(self) -> tuple[int, int]:
        return (self.kind, self.ts)


def run_of(topic: str, partition: int, stamps: list[int]) -> list[Rec]:
    return [Rec(topic, partition, i, ts) for i, ts in enumerate(stamps)]


def test_caught_up_hands_everything_over_oldest_first_across_partitions():
    order: SourceOrder[Rec] = SourceOrder(window=100)
    person = run_of("sis.person", 0, [10, 20, 30])
    enrollment = run_of("sis.enrollment", 2, [11, 21, 31])
    order.add(person + enrollment)  # fetched one partition after the other
    got = order.take(caught_up=True)
    assert [r.ts for r in got] == [10, 11, 20, 21, 30, 31]
    assert len(order) == 0 and not order


def test_behind_it_holds_the_window_and_hands_over_only_the_oldest_beyond_it():
    order: SourceOrder[Rec] = SourceOrder(window=4)
    order.add(run_of("a", 0, [1, 3, 5, 7]))
    assert order.take(caught_up=False) == []  # within the window: held for the other partitions
    order.add(run_of("b", 0, [2, 4, 6]))
    got = order.take(caught_up=False)
    assert [r.ts for r in got] == [1, 2, 3]
    assert len(order) == 4 and order
    assert [r.ts for r in order.take(caught_up=True)] == [4, 5, 6, 7]


def test_limit_caps_one_turn_and_the_rest_stays_held_in_order():
    order: SourceOrder[Rec] = SourceOrder(window=10)
    order.add(run_of("a", 0, [1, 2, 3, 4, 5]))
    assert [r.ts for r in order.take(caught_up=True, limit=2)] == [1, 2]
    assert [r.ts for r in order.take(caught_up=True, limit=2)] == [3, 4]
    assert [r.ts for r in order.take(caught_up=True, limit=2)] == [5]


def test_a_partition_keeps_its_offset_order_even_when_its_timestamps_go_back():
    order: SourceOrder[Rec] = SourceOrder(window=10)
    order.add(run_of("a", 0, [50, 10, 60]))  # a producer clock step back: offset 1 is "older" than offset 0
    order.add(run_of("b", 0, [20, 55]))
    got = order.take(caught_up=True)
    assert [(r.t, r.o) for r in got if r.t == "a"] == [("a", 0), ("a", 1), ("a", 2)]
    assert [(r.t, r.o) for r in got if r.t == "b"] == [("b", 0), ("b", 1)]
    assert [r.ts for r in got] == [20, 50, 10, 55, 60]


def test_ties_and_missing_timestamps_go_in_arrival_order():
    order: SourceOrder[Rec] = SourceOrder(window=10)
    first = [Rec("a", 0, 0, 7), Rec("b", 0, 0, 7)]
    untimed = [Rec("c", 0, 0, -1, NOT_AVAILABLE), Rec("c", 0, 1, -1, NOT_AVAILABLE)]
    order.add(first + untimed)
    assert order.take(caught_up=True) == [*untimed, *first]  # no timestamp counts as the oldest, in arrival order


def test_clear_forgets_everything_held_and_drop_only_the_revoked_partitions():
    order: SourceOrder[Rec] = SourceOrder(window=10)
    order.add(run_of("a", 0, [1, 4]) + run_of("a", 1, [2, 5]) + run_of("b", 0, [3]))
    assert order.held_by_partition() == {("a", 0): 2, ("a", 1): 2, ("b", 0): 1}
    order.drop([("a", 1), ("z", 9)])
    assert len(order) == 3 and order.held_by_partition() == {("a", 0): 2, ("b", 0): 1}
    assert [(r.t, r.p, r.ts) for r in order.take(caught_up=True)] == [("a", 0, 1), ("b", 0, 3), ("a", 0, 4)]
    order.add(run_of("a", 0, [8, 9]))
    order.clear()
    assert len(order) == 0 and order.take(caught_up=True) == []
    order.add(run_of("b", 0, [1]))  # usable again after a clear
    assert [r.ts for r in order.take(caught_up=True)] == [1]


def test_the_window_counts_what_size_says_a_record_weighs():
    order: SourceOrder[Rec] = SourceOrder(window=100, size=lambda r: r.ts)  # here a record weighs its timestamp
    order.add(run_of("a", 0, [40, 50]) + run_of("b", 0, [30]))
    assert order.held_size == 120
    assert [r.ts for r in order.take(caught_up=False)] == [30]  # 90 left: fits
    assert order.held_size == 90 and len(order) == 2
    order.add(run_of("b", 0, [60]))
    assert [r.ts for r in order.take(caught_up=False)] == [40, 50]  # 150 → 110 → 60
    order.drop([("b", 0)])
    assert order.held_size == 0 and len(order) == 0


def test_a_window_below_one_is_refused():
    with pytest.raises(ValueError, match="window = 0"):
        SourceOrder(window=0)


@settings(max_examples=200, deadline=None)
@given(
    polls=st.lists(
        st.tuples(
            st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 1), st.integers(0, 50)), max_size=12),
            st.booleans(),
            st.one_of(st.none(), st.integers(1, 8)),
        ),
        max_size=15,
    ),
    window=st.integers(1, 10),
)
def test_every_record_is_handed_over_once_in_partition_order_and_no_more_than_the_window_is_held(polls, window):
    order: SourceOrder[Rec] = SourceOrder(window=window)
    next_offset: dict[tuple[str, int], int] = {}
    fetched: list[Rec] = []
    handed: list[Rec] = []
    for batch, caught_up, limit in polls:
        recs = []
        for topic, partition, ts in batch:
            o = next_offset.get((topic, partition), 0)
            next_offset[(topic, partition)] = o + 1
            recs.append(Rec(topic, partition, o, ts))
        fetched.extend(recs)
        order.add(recs)
        before = len(order)
        got = order.take(caught_up=caught_up, limit=limit)
        handed.extend(got)
        expected = before if caught_up else max(before - window, 0)
        assert len(got) == (expected if limit is None else min(expected, limit))
        assert len(order) == before - len(got)
    handed.extend(order.take(caught_up=True))
    assert sorted(handed, key=lambda r: (r.t, r.p, r.o)) == sorted(fetched, key=lambda r: (r.t, r.p, r.o))
    for key in next_offset:
        assert [r.o for r in handed if (r.t, r.p) == key] == list(range(next_offset[key]))
