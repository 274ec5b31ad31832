"""What the Kafka-backed bench suites share: a Kafka to run against, given or started for the run, and a
background reader of the topics a run writes."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, Self

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from sevisflow.core.kafka_io import make_consumer, topic_partitions


@contextmanager
def kafka_bootstrap(given: str | None, name: str) -> Iterator[str]:
    """``given`` when set (a running Kafka), else a throwaway local Kafka named ``name`` (deploy/local/stack.py,
    the tests' stack, without PostgreSQL), stopped and removed when the block ends."""
    if given:
        yield given
        return
    from sevisflow.deploy.local.stack import start_stack, stop_stack

    info = start_stack(name=name, postgres=False, progress=lambda *_: None)
    try:
        yield info.kafka.bootstrap
    finally:
        stop_stack(info, remove=True)


@dataclass
class TopicFollower:
    """Reads some of a run's topics in a background thread and hands each record with a value to :meth:`take`.

    Manual assignment and no group commits: it moves no offsets, so it never disturbs the stages it watches.
    Subclasses say where it starts (:meth:`assignment`) and what a record means to them (:meth:`take`). An
    exception ends the thread and is kept in ``error``, for the bench to report the run as incomplete.
    """

    settings: Any
    _: KW_ONLY
    error: str = ""
    cpu_s: float = 0.0
    """The reading thread's CPU seconds, noted when it ends (what following cost the box)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    name: ClassVar[str] = "bench-follower"
    """The thread's name and the prefix of the reader's (unused) group id."""

    def start(self, timeout_s: float = 30.0) -> Self:
        """Start reading; return once the reader is assigned (what is written from then on will be read)."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait(timeout_s)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def assignment(self, consumer: Consumer) -> list[TopicPartition]:
        """Where to read: every partition of the topics to follow, at the offset to start from."""
        raise NotImplementedError

    def take(self, msg: Message) -> None:
        """One record read (never an error, never a tombstone); runs on the reading thread."""
        raise NotImplementedError

    def from_beginning(self, consumer: Consumer, topics: Iterable[str]) -> list[TopicPartition]:
        """An :meth:`assignment` of every partition of ``topics`` from its first record."""
        assign = []
        for topic in topics:
            parts = topic_partitions(consumer, self.settings.kafka, topic, 30.0) or []
            assign += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts]
        return assign

    def _run(self) -> None:
        consumer = make_consumer(self.settings.kafka, group_id=f"{self.name}-{uuid.uuid4().hex[:8]}")
        try:
            consumer.assign(self.assignment(consumer))
            self._ready.set()
            while not self._stop.is_set():
                for msg in consumer.consume(1000, 0.2):
                    if msg.error() is None and msg.value() is not None:
                        self.take(msg)
        except Exception as exc:  # noqa: BLE001 - reported by the bench as an incomplete run
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._ready.set()
            self.cpu_s = time.thread_time()
            consumer.close()
