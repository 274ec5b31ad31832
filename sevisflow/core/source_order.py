"""Hand a stage its records in the order they were produced, across partitions, while it is behind.

A consumer that is behind receives its partitions one after the other in long runs: librdkafka fetches about a
megabyte of each partition at a time, so with everything already on the broker normalize saw one table's
partition for ~2,600 records, then the next table's. A SIS transaction's rows sit in several tables' topics,
so each of them stayed open — buffered in normalize's state, written to its changelog, often evicted from its
cache and read back — until the last of its partitions came round (docs/ARCHITECTURE.md, "Reading in produce
order"). :class:`SourceOrder` holds a window of fetched records and releases them oldest first by their Kafka
timestamp (the time the connector produced them, i.e. in WAL order), one partition's records always in offset
order. The order it gives is only a help: every stage must be, and normalize is, correct in any order.

Exactly-once is untouched by construction: per partition the released records are a prefix of the fetched ones,
so the loop commits only offsets of records it handled; a held record is never committed, and after a rewind
or a revoke the held records are dropped and fetched again from the committed position.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar


class _Record(Protocol):
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def timestamp(self) -> tuple[int, int]: ...


R = TypeVar("R", bound=_Record)

_NO_TIMESTAMP = 0  # confluent_kafka.TIMESTAMP_NOT_AVAILABLE


class SourceOrder(Generic[R]):
    """Fetched records by partition, released oldest first.

    ``window``: how much may be held while the stage is behind, in ``size`` units (the loop: bytes of keys and
    values; by default one per record). :meth:`take` with ``caught_up`` (the poll drained what the client had
    fetched) releases the oldest up to its ``limit``, all of them without one; otherwise the oldest until what is
    held fits the window, so a stage that keeps up never waits for the window to fill. Ties (the same millisecond, or no timestamp) go in arrival order.
    """

    def __init__(self, window: int, size: Callable[[R], int] | None = None) -> None:
        if window < 1:
            raise ValueError(f"window = {window}: use 1 or more")
        self.window = window
        self._size = size
        self.held_size = 0
        self._queues: dict[tuple[str | None, int | None], deque[tuple[int, int, R, int]]] = {}
        self._heads: list[tuple[int, int, tuple[str | None, int | None]]] = []  # (timestamp, arrival, partition)
        self._held = 0
        self._arrival = 0

    def __len__(self) -> int:
        return self._held

    def __bool__(self) -> bool:
        """True while records are held (not: while the window exists)."""
        return self._held > 0

    def held_by_partition(self) -> dict[tuple[str, int], int]:
        """How many records of each partition are held (the lag metric counts them as still to do)."""
        return {(t, p): len(q) for (t, p), q in self._queues.items() if t is not None and p is not None}

    def add(self, records: Iterable[R]) -> None:
        size = self._size
        for rec in records:
            kind, ts = rec.timestamp()
            n = 1 if size is None else size(rec)
            entry = (ts if kind != _NO_TIMESTAMP else 0, self._arrival, rec, n)
            self.held_size += n
            self._arrival += 1
            key = (rec.topic(), rec.partition())
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = deque()
            if not queue:
                heapq.heappush(self._heads, (entry[0], entry[1], key))
            queue.append(entry)
            self._held += 1

    def take(self, caught_up: bool, limit: int | None = None) -> list[R]:
        """The records to handle now, oldest first: all of them when ``caught_up``, else the oldest until the rest
        fits the window; at most ``limit``."""
        out: list[R] = []
        heads, queues = self._heads, self._queues
        bound = self._held if limit is None else min(self._held, limit)
        while len(out) < bound and (caught_up or self.held_size > self.window):
            _, _, key = heapq.heappop(heads)
            queue = queues[key]
            _, _, rec, n = queue.popleft()
            out.append(rec)
            self.held_size -= n
            if queue:
                nxt = queue[0]
                heapq.heappush(heads, (nxt[0], nxt[1], key))
            else:
                del queues[key]
        self._held -= len(out)
        return out

    def clear(self) -> None:
        """Forget every held record (the consumer was rewound: they come again)."""
        self._queues.clear()
        self._heads.clear()
        self._held = 0
        self.held_size = 0

    def drop(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Forget the held records of ``partitions`` (revoked: their new owner reads them from the committed offset)."""
        gone = {p for p in partitions if p in self._queues}
        if not gone:
            return
        for key in gone:
            queue = self._queues.pop(key)
            self._held -= len(queue)
            self.held_size -= sum(entry[3] for entry in queue)
        self._heads = [h for h in self._heads if h[2] not in gone]
        heapq.heapify(self._heads)
