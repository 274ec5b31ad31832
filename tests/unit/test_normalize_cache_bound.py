"""normalize's decoded-value cache bounded by ``[state] cache_entries`` (with the rocksdb store).

The Kafka stage runs the same Normalizer on the same store; here its Kafka transactions are played as
the loop does them (flush + commit of the staged state every few records). Bounded or not, the views,
events and committed state must be identical; bounded, the cache is back under its bound after every
transaction, whatever the school's size.
"""

from __future__ import annotations

import pytest

from sevisflow.core.config import StateSettings
from sevisflow.core.state import RocksState
from sevisflow.processors.normalize.debezium import Record, SisFeed
from sevisflow.processors.normalize.stage import NormalizeStore, cache_bound
from sevisflow.processors.normalize.view import Normalizer
from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline
from tests.scenarios import MAPPING, school_history

BOUND = 25


def run(store: NormalizeStore, records: list[Record], every: int = 40) -> tuple[PureOutput, list[int]]:
    """Feed the records as the stage does, one 'Kafka transaction' every ``every`` records; the cache
    size after each."""
    pipe = PurePipeline(MAPPING)
    pipe.normalizer = Normalizer(MAPPING, store.kv, use_transactions=True, hold_streamed=True)
    out, sizes = PureOutput(), []
    for i, r in enumerate(records):
        pipe.feed_one(r.topic, r.key, r.value, out, 0, i)
        st = pipe.normalizer.snapshot_status()
        if st is not None and st.get("ended"):
            pipe._take(pipe.normalizer.release_snapshot(), out)
        if i % every == every - 1 or i == len(records) - 1:
            store.staged()
            store.commit()
            sizes.append(len(store.kv.cache))
    return out, sizes


@pytest.fixture(scope="module")
def school() -> list[Record]:
    feed = SisFeed(primary_keys={"public.term": ("term_id",)})
    school_history(feed, 60)
    return list(feed.records)


def test_a_bounded_cache_gives_the_same_events_and_state_and_stays_bounded(school, tmp_path):
    free = NormalizeStore()
    expected, sizes_free = run(free, school)
    rocks = RocksState(tmp_path, "normalize-test", 8, 4)
    try:
        bounded = NormalizeStore(rocks, cache_entries=BOUND)
        got, sizes = run(bounded, school)
        assert got.events == expected.events and got.dead == expected.dead and got.issues == expected.issues
        assert len(expected.events) > 100
        assert dict(rocks.items(0)) == dict(free.committed_partition(0))
    finally:
        rocks.close()
    assert max(sizes) <= BOUND < max(sizes_free)  # unbounded, the cache grows with the school (here ~1,100)


def test_the_bound_also_holds_over_the_memory_store(school):
    free = NormalizeStore()
    expected, _ = run(free, school)
    bounded = NormalizeStore(cache_entries=BOUND)
    got, sizes = run(bounded, school, every=7)
    assert got.events == expected.events and max(sizes) <= BOUND


def test_the_bound_applies_with_the_rocksdb_store_only():
    assert cache_bound(StateSettings(backend="memory")) is None  # memory: the dicts hold it all anyway
    assert cache_bound(StateSettings(backend="rocksdb")) == StateSettings().cache_entries > 0
    assert cache_bound(StateSettings(backend="rocksdb", cache_entries=0)) is None  # 0 = unbounded


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_dropping_a_key_writes_a_tombstone_only_when_the_key_may_be_committed(tmp_path, backend):
    """normalize knows, without asking the store again, which keys it found absent: one made and dropped
    in the same transaction writes nothing, a committed one dropped writes a tombstone, and a key whose
    tombstone is already staged is never taken for absent (its committed value must still be deleted)."""
    rocks = RocksState(tmp_path, "normalize-kv", 8, 4) if backend == "rocksdb" else None
    try:
        store = NormalizeStore(rocks)
        kv = store.kv
        kv.put("kept", {"v": 1})
        kv.put("gone", {"v": 2})
        store.staged()
        store.commit()

        assert kv.get("t:1") is None  # a transaction buffer: made and dropped in one transaction
        kv.put("t:1", ["row"])
        kv.put("t:1", None)
        kv.put("gone", None)
        assert store.staged() == {0: {b"gone": None}}
        store.commit()
        assert store.committed_partition(0).get(b"gone") is None and b"t:1" not in dict(store.committed_partition(0))

        kv.put("kept", None)
        store.staged()  # the tombstone is staged; then the same transaction goes on
        kv.reset()  # e.g. the value was trimmed from the cache: read back from the store
        assert kv.get("kept") is None
        kv.put("kept", {"v": 3})
        kv.put("kept", None)
        assert store.staged()[0][b"kept"] is None, "the committed value must still be deleted"
        store.commit()
        assert b"kept" not in dict(store.committed_partition(0))
    finally:
        if rocks is not None:
            rocks.close()
