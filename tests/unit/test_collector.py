"""The cyclic collector stays off a stage's long-lived state (sevisflow/core/collector.py)."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

from sevisflow.core.collector import YOUNG_THRESHOLD, full_collection, keep_old_objects_frozen


def _in_generations(objs: list[object]) -> int:
    """How many of ``objs`` the automatic passes would still walk (not frozen)."""
    ids = {id(o) for g in range(3) for o in gc.get_objects(generation=g)}
    return sum(1 for o in objs if id(o) in ids)


def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


@pytest.fixture
def keeper() -> Iterator[Callable[..., threading.Thread]]:
    """Start keepers; stop them (and so unfreeze) after the test."""
    started: list[tuple[threading.Event, threading.Thread]] = []

    def start(**kw: float) -> threading.Thread:
        stop = threading.Event()
        thread = keep_old_objects_frozen(stop, **kw)
        started.append((stop, thread))
        return thread

    yield start
    for stop, thread in started:
        stop.set()
        thread.join(5)
    gc.unfreeze()


class Node:
    """A reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_the_young_generation_is_collected_less_often_while_the_freezer_runs_and_as_before_after() -> None:
    before = gc.get_threshold()
    stop = threading.Event()
    thread = keep_old_objects_frozen(stop, every_s=0.05)
    try:
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
        young: list[Node] = []
        passes = gc.get_stats()[0]["collections"]
        young.extend(Node() for _ in range(YOUNG_THRESHOLD // 2))  # Python's 700 would have run ~14 passes
        assert gc.get_stats()[0]["collections"] - passes <= 1
    finally:
        stop.set()
        thread.join(5)
    assert gc.get_threshold() == before


def test_objects_that_lived_a_while_are_no_longer_walked_by_the_collector(keeper):
    held = [{"record": i, "fields": {"n": i}} for i in range(20_000)]
    assert _in_generations(held) == len(held)  # before: every full pass walks all of them
    keeper(every_s=0.05, full_every_s=3600)
    assert _until(lambda: _in_generations(held) == 0)
    assert gc.get_freeze_count() >= len(held)


def test_frozen_state_is_still_freed_at_once_when_it_is_replaced(keeper):
    """Plain data (no cycles) is freed by reference counting, frozen or not."""
    keeper(every_s=0.05, full_every_s=3600)

    class Record(dict):  # a dict that can be weakly referenced
        pass

    old = Record(status="open")
    gone = weakref.ref(old)
    assert _until(lambda: _in_generations([old]) == 0)
    old = Record(status="replaced")
    assert gone() is None


def test_a_frozen_cycle_is_reclaimed_by_the_periodic_full_pass(keeper):
    keeper(every_s=0.05, full_every_s=0.5)
    held = [Node()]
    gone = weakref.ref(held[0])
    assert _until(lambda: _in_generations(held) == 0)
    held.clear()
    assert _until(lambda: gone() is None)


def test_without_the_full_pass_a_frozen_cycle_stays():
    """The control for the test above: what the periodic full pass is for."""
    stop = threading.Event()
    thread = keep_old_objects_frozen(stop, every_s=0.05, full_every_s=3600)
    try:
        held = [Node()]
        gone = weakref.ref(held[0])
        assert _until(lambda: _in_generations(held) == 0)
        held.clear()
        gc.collect()
        assert gone() is not None
    finally:
        stop.set()  # the freezer must not freeze again between the pass's unfreeze and its collection
        thread.join(5)
    gc.freeze()  # as the freezer left it before it stopped
    assert full_collection() >= 1
    assert gone() is None


def test_stopping_unfreezes_everything(keeper):
    stop = threading.Event()
    thread = keep_old_objects_frozen(stop, every_s=0.05)
    assert _until(lambda: gc.get_freeze_count() > 0)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert gc.get_freeze_count() == 0


def test_the_stages_make_no_reference_cycles_per_record():
    """Why freezing is safe: normalize, sevis_events and the batcher leave nothing that only the cyclic
    collector could free, so their frozen state goes when it is replaced (a cycle would wait for the full pass)."""
    from bench.batcher.big_open_batch import measure
    from sevisflow.processors.normalize.debezium import SisFeed
    from sevisflow.processors.normalize.mapping import load_mapping
    from sevisflow.processors.sevis_events.pure import PurePipeline
    from testkit.school import ORG, school_history
    from testkit.settings import REPO

    mapping = load_mapping(REPO / "deploy/sis/mapping.toml")
    feed = SisFeed(primary_keys={"public.term": ("term_id",)})
    school_history(feed, 50)

    def run_stages() -> int:
        PurePipeline(mapping, org_id=ORG).feed(feed.records)
        return measure(300, 600, passes=1, backend="memory")["events"]

    run_stages()  # first run: imports and caches, made once per process
    gc.collect()
    gc.disable()
    try:
        events = run_stages()
        found = gc.collect()
    finally:
        gc.enable()
    assert events == 600
    assert found == 0


def test_the_pipeline_runs_its_memory_threads_and_stops_them_with_the_stages():
    """`sevisflow run`, `process` and `sink` run their stages in a Pipeline: it
    trims freed native memory (glibc only, core/malloc.py) and keeps the collector off old objects while they run."""
    from sevisflow.app.runner import Pipeline
    from sevisflow.core.config import Settings
    from sevisflow.core.malloc import free_memory_trimmer

    names = {"gc-freeze"} | ({"malloc-trim"} if free_memory_trimmer() is not None else set())

    def helpers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name in names]

    assert not helpers()
    pipeline = Pipeline(
        Settings(), ["x"], functions={"x": lambda s, stop: stop.wait(30)}, serve_metrics=False, status_lines=False
    ).start()
    running = helpers()
    assert sorted(t.name for t in running) == sorted(names)
    assert _until(lambda: gc.get_freeze_count() > 0)
    pipeline.stop_event.set()
    for thread in running:
        thread.join(5)
        assert not thread.is_alive()
    assert gc.get_freeze_count() == 0
