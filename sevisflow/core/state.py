"""Where a stage's committed state lives: Python dicts, or a RocksDB database on disk.

:class:`sevisflow.core.kafka_io.StateStore` keeps the writes of the open Kafka transaction in a small dict
(staged) and hands them to one of these *committed layers* when the transaction commits, as one
atomic write. Both layers are caches of the stage's compacted changelog topic, which stays the source
of truth: a partition's layer is wiped and replayed from the changelog whenever the partition is
assigned (and after a commit of unknown outcome), and a RocksDB folder is wiped when it is opened.
That is why RocksDB runs without its write-ahead log: nothing on disk has to survive a crash.

The RocksDB layer bounds memory by configuration (``[state]`` block cache and write buffers) instead
of by the size of the SIS, and is the default; the memory layer (dicts) is for tests and tiny schools, where the
state fits and nothing needs bounding.
"""

from __future__ import annotations

import os
import shutil
import threading
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

from sevisflow.core.config import ROCKSDB_COMPRESSIONS, StateSettings

LOAD_CHUNK = 10_000
"""Keys per write batch when a partition is loaded from the changelog (keeps the batch small)."""


class CommittedState(Protocol):
    """The committed key/value state of a stage, per partition."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]: ...

    def partition(self, partition: int) -> Mapping[bytes, bytes]: ...

    def apply(self, staged: Mapping[int, Mapping[bytes, bytes | None]]) -> None: ...

    def load(self, partition: int, data: Mapping[bytes, bytes]) -> None: ...

    def drop(self, partition: int) -> None: ...

    def close(self) -> None: ...


class MemoryState:
    """Committed state in dicts: fast, but memory grows with the state."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[bytes, bytes]] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self._parts.get(partition, {}).get(key)

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self._parts.get(partition, {}).items()))

    def partition(self, partition: int) -> Mapping[bytes, bytes]:
        return self._parts.get(partition, {})

    def apply(self, staged: Mapping[int, Mapping[bytes, bytes | None]]) -> None:
        for p, kv in staged.items():
            target = self._parts.setdefault(p, {})
            for k, v in kv.items():
                if v is None:
                    target.pop(k, None)
                else:
                    target[k] = v

    def load(self, partition: int, data: Mapping[bytes, bytes]) -> None:
        self._parts[partition] = data if isinstance(data, dict) else dict(data)

    def drop(self, partition: int) -> None:
        self._parts.pop(partition, None)

    def close(self) -> None:
        """Nothing to release (the dicts go with the object)."""


_PREFIXES: dict[int, bytes] = {}


def _prefix(partition: int) -> bytes:
    """The 4-byte key prefix of a partition (asked on every read: built once per partition)."""
    pre = _PREFIXES.get(partition)
    if pre is None:
        pre = _PREFIXES[partition] = partition.to_bytes(4, "big")
    return pre


class _PartitionView(Mapping[bytes, bytes]):
    """A read-only mapping over one partition of a :class:`RocksState` (no copy in memory)."""

    def __init__(self, state: RocksState, partition: int) -> None:
        self._state = state
        self._partition = partition

    def __getitem__(self, key: bytes) -> bytes:
        value = self._state.get(self._partition, key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self._state.get(self._partition, key) is not None

    def __iter__(self) -> Iterator[bytes]:
        return (k for k, _ in self._state.items(self._partition))

    def __len__(self) -> int:
        return sum(1 for _ in self._state.items(self._partition))


_open_lock = threading.Lock()
_open_paths: set[str] = set()
_live: weakref.WeakValueDictionary[str, RocksState] = weakref.WeakValueDictionary()
"""The open RocksDB stores of this process by folder (for the memory gauge)."""

MEMORY_PROPERTIES = {
    "block_cache": "rocksdb.block-cache-usage",
    "memtables": "rocksdb.size-all-mem-tables",
    "table_readers": "rocksdb.estimate-table-readers-mem",
}
"""The parts of a RocksDB store's memory, by RocksDB's own accounting: the block cache (bounded by
``block_cache_mb``), the memtables (by ``write_buffer_mb``: at most two, the one being written and one being
flushed), and the index and filter blocks of the open table files (outside the cache: they follow the data
on disk)."""


class RocksState:
    """Committed state in a RocksDB database (rocksdict), one per stage instance.

    ``streams_restore``: the loop restores a partition by wiping its range and applying the changelog
    chunk by chunk, without holding it in memory.

    Keys are ``4-byte big-endian partition + key``, so one partition is one key range: wiped with one
    range delete, read with one seek. Memory is the block cache (index and filter blocks included)
    plus at most two memtables of ``write_buffer_mb``. The folder is private (0700; files 0600) and is
    removed on :meth:`close`; folders left by killed processes are removed when the next instance of
    the same name opens.
    """

    streams_restore = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        name: str,
        block_cache_mb: int,
        write_buffer_mb: int,
        stage: str = "",
        compression: str = "snappy",
    ) -> None:
        from rocksdict import BlockBasedOptions, Cache, DBCompressionType, Options, Rdict, WriteOptions

        base = Path(root)
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        with _open_lock:
            _sweep(base, safe)
            n = 0
            while str(base / f"{safe}.{os.getpid()}.{n}") in _open_paths:
                n += 1
            self.path = base / f"{safe}.{os.getpid()}.{n}"
            _open_paths.add(str(self.path))
        shutil.rmtree(self.path, ignore_errors=True)  # a cache of the changelog: never reused
        self.path.mkdir(mode=0o700)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        table = BlockBasedOptions()
        self._cache = Cache(block_cache_mb << 20)
        table.set_block_cache(self._cache)
        # index and filter blocks stay with the open table files, outside the block cache: small (about
        # 2 MB per million keys) and, in the cache, thrashed by data blocks — a random read then cost
        # ~0.8 ms instead of ~30 µs (measured on a 800,000-key store; docs/ARCHITECTURE.md "State store")
        table.set_cache_index_and_filter_blocks(False)
        table.set_bloom_filter(10, False)
        opts.set_block_based_table_factory(table)
        opts.set_write_buffer_size(write_buffer_mb << 20)
        # RocksDB's Snappy by default: without compression a read-modify-write alone costs a third less, but the
        # stages at 100,000 students used the same CPU either way, with normalize peaking higher (bench/README.md,
        # "State store")
        if compression not in ROCKSDB_COMPRESSIONS:
            raise ValueError(f"compression = {compression!r}: use one of {', '.join(ROCKSDB_COMPRESSIONS)}")
        opts.set_compression_type(getattr(DBCompressionType, compression)())
        opts.set_max_write_buffer_number(2)
        opts.set_keep_log_file_num(1)
        opts.set_max_open_files(256)
        # RocksDB creates its files with 0644 & ~umask: 077 while it opens. Files it writes later (flushes,
        # compactions) follow the process umask (the systemd units set UMask=0077); the 0700 folder keeps
        # them from other users either way.
        old = os.umask(0o077)
        try:
            self._db = Rdict(str(self.path), opts)
        except Exception:
            self._forget()
            raise
        finally:
            os.umask(old)
        self.name = name
        self.stage = stage or name
        self._closed = False
        self._lock = threading.Lock()  # the metrics thread reads the memory while the loop may close
        with _open_lock:
            _live[str(self.path)] = self
        self._write_opts = WriteOptions()
        # rebuilt from the changelog after any restart; rocksdict's stub types this property as a method
        self._write_opts.disable_wal = True  # type: ignore[method-assign, assignment]
        self._db.set_write_options(self._write_opts)
        for f in self.path.iterdir():
            f.chmod(0o600)

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self._db.get(_prefix(partition) + key)

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        lo, hi = _prefix(partition), _prefix(partition + 1)
        it = self._db.iter()
        it.seek(lo)
        while it.valid():
            k = it.key()
            if k >= hi:
                break
            yield k[4:], it.value()
            it.next()

    def partition(self, partition: int) -> Mapping[bytes, bytes]:
        return _PartitionView(self, partition)

    def apply(self, staged: Mapping[int, Mapping[bytes, bytes | None]]) -> None:
        """Write one transaction's staged keys as one WriteBatch (all or nothing)."""
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for p, kv in staged.items():
            pre = _prefix(p)
            for k, v in kv.items():
                if v is None:
                    batch.delete(pre + k)
                else:
                    batch.put(pre + k, v)
        if not batch.is_empty():
            self._db.write(batch, self._write_opts)

    def load(self, partition: int, data: Mapping[bytes, bytes]) -> None:
        from rocksdict import WriteBatch

        if isinstance(data, _PartitionView) and data._state is self and data._partition == partition:
            return  # already here: the loop restored it straight from the changelog
        self.drop(partition)
        pre = _prefix(partition)
        batch = WriteBatch(raw_mode=True)
        for k, v in data.items():
            batch.put(pre + k, v)
            if batch.len() >= LOAD_CHUNK:
                self._db.write(batch, self._write_opts)
                batch = WriteBatch(raw_mode=True)
        if not batch.is_empty():
            self._db.write(batch, self._write_opts)

    def drop(self, partition: int) -> None:
        self._db.delete_range(_prefix(partition), _prefix(partition + 1), self._write_opts)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of each part of :data:`MEMORY_PROPERTIES` (empty once closed)."""
        with self._lock:
            if self._closed:
                return {}
            return {part: self._db.property_int_value(prop) or 0 for part, prop in MEMORY_PROPERTIES.items()}

    def close(self) -> None:
        """Close and remove the folder (the changelog has everything)."""
        try:
            with self._lock:
                self._closed = True
                self._db.close()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)
            self._forget()

    def _forget(self) -> None:
        with _open_lock:
            _open_paths.discard(str(self.path))
            _live.pop(str(self.path), None)


def state_memory() -> dict[tuple[str, str], int]:
    """Bytes by ``(stage, part)`` of the open RocksDB stores of this process (the stages' state), summed over
    the stores of one stage."""
    with _open_lock:
        stores = list(_live.values())
    out: dict[tuple[str, str], int] = {}
    for st in stores:
        for part, n in st.memory_bytes().items():
            out[(st.stage, part)] = out.get((st.stage, part), 0) + n
    return out


def _sweep(base: Path, name: str) -> None:
    """Remove ``name.<pid>.<n>`` folders whose process is gone (a kill -9 leaves them behind)."""
    for d in base.glob(f"{name}.*.*"):
        try:
            pid = int(d.name.rsplit(".", 2)[1])
        except (ValueError, IndexError):
            continue
        if pid == os.getpid():
            if str(d) not in _open_paths:
                shutil.rmtree(d, ignore_errors=True)
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


def open_committed(settings: StateSettings, name: str, stage: str = "") -> CommittedState:
    """The committed layer ``[state]`` asks for; ``name`` is the stage instance (its transactional id), ``stage``
    the stage's name on /metrics."""
    if settings.backend == "rocksdb":
        return RocksState(
            settings.dir, name, settings.block_cache_mb, settings.write_buffer_mb, stage, settings.compression
        )
    return MemoryState()
