"""How the loop polls: a record that reaches an idle stage is handled at once, steady input is still taken in
transactions paced ``[kafka] commit_interval_ms`` apart, and a backlog in large batches. librdkafka's batch consume
(``consume(n, timeout)``) returns only with n records or after the whole timeout, so it used to hold every
record of a quiet stage for up to ``batch_timeout_s``. Proved on a real broker, with the loop's consumer behind
a spy that logs every consume: what it asked for, how long it let librdkafka wait, and what came back."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError

from sevisflow.core.config import KafkaSettings
from sevisflow.core.kafka_io import (
    Output,
    TopicSpec,
    TransactionalLoop,
    delivery_raiser,
    ensure_topics,
    flush_or_raise,
    make_producer,
    produce,
    read_topic,
)

pytestmark = pytest.mark.integration

POLL_TIMEOUT_S = 1.0
BACKLOG = 600
TRICKLE = 40
TRICKLE_EVERY_S = 0.05


class ConsumeSpy:
    """The loop's real consumer; every ``consume`` is logged as (records asked, timeout, values returned)."""

    def __init__(self, consumer: Any, calls: list[tuple[int, float, list[bytes]]]) -> None:
        self._consumer = consumer
        self._calls = calls

    def consume(self, num_messages: int, timeout: float) -> Any:
        got = self._consumer.consume(num_messages, timeout)
        self._calls.append((num_messages, timeout, [m.value() for m in got if m.error() is None]))
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def _send(kafka: KafkaSettings, topic: str, values: list[bytes], every_s: float = 0.0) -> None:
    producer = make_producer(kafka)
    errors: list[KafkaError] = []
    for v in values:
        produce(producer, topic, b"k", v, on_delivery=delivery_raiser(errors))
        if every_s:
            producer.flush(5)
            time.sleep(every_s)
    flush_or_raise(producer, errors)


def test_an_idle_stage_takes_a_record_at_once_steady_input_is_paced_and_a_backlog_comes_in_batches(kafka_stack, unique):
    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap, commit_interval_ms=int(POLL_TIMEOUT_S * 1000))
    inp, out, state = f"poll.in.{unique}", f"poll.out.{unique}", f"poll.state.{unique}"
    ensure_topics(
        kafka, [TopicSpec(inp, 1, 1), TopicSpec(out, 1, 1), TopicSpec(state, 1, 1, {"cleanup.policy": "compact"})]
    )
    _send(kafka, inp, [f"backlog {i}".encode() for i in range(BACKLOG)])
    handled: list[bytes] = []
    seen = {"backlog": threading.Event(), "lone": threading.Event(), "trickle": threading.Event()}

    def handler(msg: Any, st: Any) -> list[Output]:
        handled.append(msg.value())
        if len(handled) == BACKLOG:
            seen["backlog"].set()
        if msg.value() == b"lone":
            seen["lone"].set()
        if msg.value() == f"trickle {TRICKLE - 1}".encode():
            seen["trickle"].set()
        return [Output(out, b"k", msg.value())]

    calls: list[tuple[int, float, list[bytes]]] = []
    loop = TransactionalLoop(
        kafka,
        f"poll-{unique}",
        [inp],
        handler,
        transactional_id=f"poll-{unique}-0",
        state_topic=state,
        batch_size=2000,
        batch_timeout_s=POLL_TIMEOUT_S,
    )
    loop.consumer = ConsumeSpy(loop.consumer, calls)
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    try:
        assert seen["backlog"].wait(60)
        time.sleep(POLL_TIMEOUT_S * 1.5)  # idle: no transaction for longer than the pacing interval
        _send(kafka, inp, [b"lone"])
        assert seen["lone"].wait(30)
        time.sleep(POLL_TIMEOUT_S * 1.5)
        _send(kafka, inp, [f"trickle {i}".encode() for i in range(TRICKLE)], every_s=TRICKLE_EVERY_S)
        assert seen["trickle"].wait(30)
    finally:
        loop.stop()
        runner.join(30)
    assert not runner.is_alive()
    assert sorted(m.value() for m in read_topic(kafka, out)) == sorted(handled)  # every record's output, once
    assert len(handled) == BACKLOG + 1 + TRICKLE

    # every poll that may wait asks librdkafka for one record only
    assert all(asked == 1 for asked, timeout, _ in calls if timeout == POLL_TIMEOUT_S)
    # the backlog came in large batches, not record by record
    assert max(len(got) for _, _, got in calls) >= BACKLOG // 4
    # the lone record, at an idle stage: taken by a poll for one record, and nothing gathered after it
    lone = next(i for i, (_, _, got) in enumerate(calls) if b"lone" in got)
    assert calls[lone][0] == 1
    assert calls[lone + 1][0] > 1 and calls[lone + 1][1] == 0
    # the trickle (one record every 50 ms for 2 s): a few transactions paced ~1 s apart, not one per record
    firsts = [i for i, (asked, _, got) in enumerate(calls) if asked == 1 and any(v.startswith(b"trickle") for v in got)]
    trickle_s = TRICKLE * TRICKLE_EVERY_S
    assert 1 <= len(firsts) <= trickle_s / POLL_TIMEOUT_S + 3
    assert any(calls[i + 1][1] > 0 for i in firsts)  # gathered for the rest of the interval


def test_with_no_commit_interval_each_record_of_a_trickle_is_taken_as_it_comes(kafka_stack, unique):
    """``commit_interval_ms = 0``: the operator's trade of CPU for latency (bench/README.md, "Polling for the first
    record"): no gathering after a transaction, so a trickle is taken in many small transactions."""
    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap, commit_interval_ms=0)
    inp, out, state = f"poll0.in.{unique}", f"poll0.out.{unique}", f"poll0.state.{unique}"
    ensure_topics(
        kafka, [TopicSpec(inp, 1, 1), TopicSpec(out, 1, 1), TopicSpec(state, 1, 1, {"cleanup.policy": "compact"})]
    )
    last = threading.Event()
    calls: list[tuple[int, float, list[bytes]]] = []

    def handler(msg: Any, st: Any) -> list[Output]:
        if msg.value() == f"trickle {TRICKLE - 1}".encode():
            last.set()
        return [Output(out, b"k", msg.value())]

    loop = TransactionalLoop(
        kafka, f"poll0-{unique}", [inp], handler, transactional_id=f"poll0-{unique}-0", state_topic=state
    )
    loop.consumer = ConsumeSpy(loop.consumer, calls)
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    try:
        time.sleep(2.0)  # subscribed and assigned
        _send(kafka, inp, [f"trickle {i}".encode() for i in range(TRICKLE)], every_s=TRICKLE_EVERY_S)
        assert last.wait(30)
    finally:
        loop.stop()
        runner.join(30)
    assert not runner.is_alive()
    assert len(list(read_topic(kafka, out))) == TRICKLE
    gathers = [timeout for asked, timeout, _ in calls if asked > 1]
    assert gathers and set(gathers) == {0}
    firsts = [i for i, (asked, _, got) in enumerate(calls) if asked == 1 and got]
    assert len(firsts) >= TRICKLE // 4  # about one transaction per record or two, where 1 s of pacing made at most 5


def test_a_backlog_over_several_partitions_is_handed_over_oldest_first_within_the_reorder_window(kafka_stack, unique):
    """``reorder_window_bytes`` (sevisflow/core/source_order.py): a stage that is behind gets its records in the order they
    were produced, across partitions — here two partitions written in alternation — in transactions of at most one
    batch, each partition's in offset order; a record reaching it once it has caught up is not held back."""
    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap)
    BATCH = 10
    inp, out, state = f"order.in.{unique}", f"order.out.{unique}", f"order.state.{unique}"
    ensure_topics(
        kafka, [TopicSpec(inp, 2, 1), TopicSpec(out, 1, 1), TopicSpec(state, 2, 1, {"cleanup.policy": "compact"})]
    )
    producer = make_producer(kafka)
    start_ms = int(time.time() * 1000) - 600_000
    n = 300
    for i in range(2 * n):  # even timestamps to partition 0, odd to partition 1
        producer.produce(inp, key=b"k", value=f"r{i}".encode(), partition=i % 2, timestamp=start_ms + i)
    assert producer.flush(30) == 0
    handled: list[tuple[int, int]] = []
    batches: list[int] = []
    lone = threading.Event()

    def handler(msg: Any, st: Any) -> list[Output]:
        handled.append((msg.partition(), msg.timestamp()[1]))
        if msg.value() == b"lone":
            lone.set()
        return [Output(out, b"k", msg.value())]

    def before_commit(st: Any) -> list[Output]:
        batches.append(len(handled))
        return []

    loop = TransactionalLoop(
        kafka,
        f"order-{unique}",
        [inp],
        handler,
        transactional_id=f"order-{unique}-0",
        state_topic=state,
        batch_size=BATCH,
        before_commit=before_commit,
        reorder_window_bytes=1 << 20,  # more than the whole backlog
    )
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while len(handled) < 2 * n and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(handled) == 2 * n, f"handled {len(handled)} of {2 * n}"
        time.sleep(1.0)
        sent = time.monotonic()
        _send(kafka, inp, [b"lone"])
        assert lone.wait(30)
        lone_s = time.monotonic() - sent
    finally:
        loop.stop()
        runner.join(30)
    assert not runner.is_alive()
    stamps = [ts for _, ts in handled[: 2 * n]]
    assert sorted(stamps) == [start_ms + i for i in range(2 * n)]  # each record once
    # produce order across partitions, where the partitions came one after the other (each record ~n places from
    # its produce position): a poll that comes back short — at the start, or when the client is between fetches —
    # hands over the oldest batch held, so a few may be out of place, not more
    in_place = sum(1 for i, ts in enumerate(stamps) if abs(ts - start_ms - i) <= 2)
    assert in_place >= 0.9 * len(stamps), f"{in_place} of {len(stamps)} within 2 places of their produce position"
    for p in (0, 1):
        assert [ts for q, ts in handled[: 2 * n] if q == p] == [start_ms + i for i in range(p, 2 * n, 2)]
    sizes = [b - a for a, b in zip([0, *batches], batches)]
    assert max(sizes) <= BATCH, sizes  # never more than one batch per transaction
    assert lone_s < 5.0  # taken as it came (the poll's own wait), not held for the window
    values = sorted(m.value() for m in read_topic(kafka, out))
    assert values == sorted([f"r{i}".encode() for i in range(2 * n)] + [b"lone"])  # each once
