"""The processors' state store: staged writes visible at once, dropped on abort."""

from sevisflow.kafka_io import StateStore


def test_staged_writes_visible_then_committed():
    s = StateStore()
    s.put(0, b"k", b"v1")
    assert s.get(0, b"k") == b"v1"
    s.commit()
    assert s.get(0, b"k") == b"v1" and s.staged() == {}


def test_abort_restores_last_committed_value():
    s = StateStore()
    s.put(0, b"k", b"v1")
    s.commit()
    s.put(0, b"k", b"v2")
    s.put(0, b"other", b"x")
    s.abort()
    assert s.get(0, b"k") == b"v1" and s.get(0, b"other") is None


def test_delete_and_items_merge_staged_over_committed():
    s = StateStore()
    s.load_partition(1, {b"a": b"1", b"b": b"2"})
    s.put(1, b"a", None)
    s.put(1, b"c", b"3")
    assert dict(s.items(1)) == {b"b": b"2", b"c": b"3"}
    s.drop_partition(1)
    assert s.get(1, b"b") is None
