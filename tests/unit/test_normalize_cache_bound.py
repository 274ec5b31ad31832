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
    assert cache_bound(StateSettings()) is None  # memory: the dicts hold it all anyway
    assert cache_bound(StateSettings(backend="rocksdb")) == StateSettings().cache_entries > 0
    assert cache_bound(StateSettings(backend="rocksdb", cache_entries=0)) is None  # 0 = unbounded
