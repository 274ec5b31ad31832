"""The processors' state store: staged writes visible at once, dropped on abort — on both committed layers."""

import os
import stat
import subprocess
import sys

import pytest

from sevisflow.core.config import StateSettings, settings_from_mapping
from sevisflow.core.errors import ConfigError
from sevisflow.core.kafka_io import StateStore
from sevisflow.core.state import MemoryState, RocksState, open_committed


@pytest.fixture(params=["memory", "rocksdb"])
def s(request, tmp_path):
    settings = settings_from_mapping(
        {"state": {"backend": request.param, "dir": str(tmp_path / "state"), "block_cache_mb": 8, "write_buffer_mb": 4}}
    )
    store = StateStore(open_committed(settings.state, "stage-a"))
    assert isinstance(store.committed, RocksState if request.param == "rocksdb" else MemoryState)
    yield store
    store.close()


def test_staged_writes_visible_then_committed(s):
    s.put(0, b"k", b"v1")
    assert s.get(0, b"k") == b"v1"
    assert s.committed.get(0, b"k") is None  # nothing reaches the committed layer before commit
    s.commit()
    assert s.get(0, b"k") == b"v1" and s.staged() == {}
    assert s.committed.get(0, b"k") == b"v1"


def test_abort_restores_last_committed_value(s):
    s.put(0, b"k", b"v1")
    s.commit()
    s.put(0, b"k", b"v2")
    s.put(0, b"other", b"x")
    s.abort()
    assert s.get(0, b"k") == b"v1" and s.get(0, b"other") is None


def test_delete_and_items_merge_staged_over_committed(s):
    s.load_partition(1, {b"a": b"1", b"b": b"2"})
    s.put(1, b"a", None)
    s.put(1, b"c", b"3")
    s.put(1, b"b", b"2b")
    assert dict(s.items(1)) == {b"b": b"2b", b"c": b"3"}
    assert s.get(1, b"a") is None
    s.commit()
    assert dict(s.items(1)) == {b"b": b"2b", b"c": b"3"}
    assert b"a" not in s.committed_partition(1) and s.committed_partition(1)[b"c"] == b"3"
    s.drop_partition(1)
    assert s.get(1, b"b") is None and list(s.items(1)) == []


def test_partitions_are_separate_and_load_replaces(s):
    # 1 and 256 share no prefix byte order trap: big-endian partition numbers keep ranges apart
    for p in (0, 1, 255, 256):
        s.put(p, b"k", str(p).encode())
    s.commit()
    assert [s.get(p, b"k") for p in (0, 1, 255, 256)] == [b"0", b"1", b"255", b"256"]
    s.load_partition(1, {b"x": b"new"})  # a restore wipes what the partition held before
    assert dict(s.items(1)) == {b"x": b"new"}
    assert dict(s.items(0)) == {b"k": b"0"} and dict(s.items(256)) == {b"k": b"256"}
    s.drop_partition(255)
    assert s.get(255, b"k") is None and s.get(256, b"k") == b"256"


def test_a_large_load_and_commit(s):
    s.load_partition(2, {f"k{i:06d}".encode(): b"v" * 50 for i in range(25_000)})
    for i in range(0, 25_000, 2):
        s.put(2, f"k{i:06d}".encode(), None)
    s.commit()
    assert sum(1 for _ in s.items(2)) == 12_500 and len(s.committed_partition(2)) == 12_500


def test_rocksdb_folder_is_private_and_removed_on_close(tmp_path):
    store = RocksState(tmp_path / "state", "sevisflow-events-host1", 8, 4)
    store.apply({0: {b"student": b"personal data"}})
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o700
    files = [f for f in store.path.iterdir() if f.is_file()]
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), {
        f.name: oct(f.stat().st_mode) for f in files
    }
    store.close()
    assert not store.path.exists()


def test_rocksdb_two_stores_of_one_name_in_one_process_do_not_collide(tmp_path):
    a = RocksState(tmp_path, "same", 8, 4)
    b = RocksState(tmp_path, "same", 8, 4)
    a.apply({0: {b"k": b"a"}})
    assert b.get(0, b"k") is None and a.path != b.path
    a.close()
    b.close()


def test_rocksdb_folder_left_by_a_killed_process_is_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    left = tmp_path / f"stage-a.{int(dead.stdout)}.0"
    left.mkdir()
    (left / "000009.sst").write_bytes(b"old state")
    alive = tmp_path / f"stage-a.{os.getppid()}.0"  # a live process's folder is left alone
    alive.mkdir()
    store = RocksState(tmp_path, "stage-a", 8, 4)
    assert not left.exists() and alive.exists()
    store.close()


def test_rocksdb_restore_by_chunks_keeps_the_last_value_and_drops_tombstoned_keys(tmp_path):
    """What the loop does on assignment with a disk layer: wipe the range, apply the changelog in log
    order chunk by chunk, then load_partition with the layer's own view (no second write)."""
    store = StateStore(RocksState(tmp_path, "restore", 8, 4))
    store.put(3, b"stale", b"from before the restart")
    store.commit()
    store.committed.drop(3)
    store.committed.apply({3: {b"a": b"1", b"b": b"1"}})
    store.committed.apply({3: {b"a": b"2", b"b": None}})  # a later chunk: a new value, a tombstone
    store.load_partition(3, store.committed.partition(3))
    assert dict(store.items(3)) == {b"a": b"2"}
    store.close()


def test_a_rocksdb_store_shows_its_memory_on_the_metrics_page_within_its_configured_bounds(tmp_path):
    """``sevisflow_state_store_memory_bytes``: the part of a stage's resident size that ``[state]`` bounds, by
    RocksDB's own accounting; the family goes when the store closes."""
    from prometheus_client import CollectorRegistry, generate_latest

    from sevisflow.core.observability import register_runtime_collectors

    registry = CollectorRegistry()
    register_runtime_collectors(registry)

    def shown() -> dict[str, float]:
        lines = generate_latest(registry).decode().splitlines()
        prefix = 'sevisflow_state_store_memory_bytes{part="'
        return {
            line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in lines
            if line.startswith(prefix) and 'stage="normalize"' in line
        }

    store = RocksState(
        tmp_path, "sevisflow-normalize-sequencer", block_cache_mb=1, write_buffer_mb=1, stage="normalize"
    )
    for chunk in range(8):  # ~4 MB: several memtable flushes into table files
        store.apply({0: {f"k{chunk}-{i}".encode(): os.urandom(200) for i in range(2_500)}})
    for chunk in range(8):
        for i in range(0, 2_500, 7):
            assert store.get(0, f"k{chunk}-{i}".encode()) is not None
    parts = shown()
    assert set(parts) == {"block_cache", "memtables", "table_readers"}
    assert 0 < parts["block_cache"] <= 1.1 * (1 << 20)  # full, and no more than block_cache_mb
    assert 0 < parts["memtables"] <= 3 * (1 << 20)  # at most two memtables (one written, one flushing), with slack
    assert parts["table_readers"] > 0
    store.close()
    assert shown() == {} and store.memory_bytes() == {}
    assert "sevisflow_state_store_memory_bytes" not in generate_latest(registry).decode()  # no empty family


@pytest.mark.parametrize(("compression", "recorded"), [("none", "kNoCompression"), ("zstd", "kZSTD")])
def test_rocksdb_compresses_its_files_as_state_compression_says(tmp_path, compression, recorded):
    """``[state] compression`` reaches RocksDB: uncompressed table files hold the values' bytes as written (least
    CPU per read), zstd ones a fraction of them; either way every value reads back."""
    settings = StateSettings(dir=str(tmp_path), block_cache_mb=1, write_buffer_mb=1, compression=compression)
    store = open_committed(settings, "sevisflow-events-host1", stage="events")
    assert isinstance(store, RocksState)
    value = b'{"view":"' + b"the same student view, over and over " * 50 + b'"}'  # ~1.9 KB, compressible
    for chunk in range(4):  # ~4 MB: several memtable flushes into table files
        store.apply({0: {f"k{chunk}-{i}".encode(): value for i in range(500)}})
    store._db.flush()  # the memtable's rest into a table file too, and wait for the flushes in the background
    options = max(store.path.glob("OPTIONS-*")).read_text()
    on_disk = sum(f.stat().st_size for f in store.path.glob("*.sst"))
    assert all(store.get(0, f"k{c}-{i}".encode()) == value for c in range(4) for i in range(0, 500, 13))
    store.close()
    assert f"compression={recorded}" in options
    flushed = on_disk / len(value)  # values' worth of bytes in the table files
    assert (flushed > 1000) if compression == "none" else (0 < flushed < 500), flushed


def test_an_unknown_rocksdb_compression_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"state\.compression.*none.*lz4.*snappy.*zstd"):
        settings_from_mapping({"state": {"compression": "brotli"}}, env={})
    with pytest.raises(ValueError, match="compression = 'brotli': use one of none, lz4, snappy, zstd"):
        RocksState(tmp_path, "stage-a", 1, 1, compression="brotli")
