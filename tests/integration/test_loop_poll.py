"""A record never waits for a batch to fill: the loop's poll waits for the first record only, then takes what is
fetched already. librdkafka's batch consume (``consume(n, timeout)``) returns only with n records or after the
whole timeout, so a trickle of records used to wait ``batch_timeout_s`` in every stage. Proved on a real broker,
with the loop's consumer behind a spy that logs every consume: a lone record is handled long before a poll
timeout of 30 s, and a backlog is still taken in large batches."""

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

POLL_TIMEOUT_S = 30.0
BACKLOG = 600


class ConsumeSpy:
    """The loop's real consumer; every ``consume`` is logged as (records asked, timeout, records returned)."""

    def __init__(self, consumer: Any, calls: list[tuple[int, float, int]]) -> None:
        self._consumer = consumer
        self._calls = calls

    def consume(self, num_messages: int, timeout: float) -> Any:
        got = self._consumer.consume(num_messages, timeout)
        self._calls.append((num_messages, timeout, len(got)))
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def _send(kafka: KafkaSettings, topic: str, values: list[bytes]) -> None:
    producer = make_producer(kafka)
    errors: list[KafkaError] = []
    for v in values:
        produce(producer, topic, b"k", v, on_delivery=delivery_raiser(errors))
    flush_or_raise(producer, errors)


def test_a_lone_record_is_handled_without_waiting_for_the_batch_to_fill_and_a_backlog_still_comes_in_batches(
    kafka_stack, unique
):
    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap)
    inp, out, state = f"poll.in.{unique}", f"poll.out.{unique}", f"poll.state.{unique}"
    ensure_topics(
        kafka, [TopicSpec(inp, 1, 1), TopicSpec(out, 1, 1), TopicSpec(state, 1, 1, {"cleanup.policy": "compact"})]
    )
    _send(kafka, inp, [f"backlog {i}".encode() for i in range(BACKLOG)])
    handled: dict[bytes, float] = {}
    backlog_done = threading.Event()
    lone_seen = threading.Event()

    def handler(msg: Any, st: Any) -> list[Output]:
        handled[msg.value()] = time.monotonic()
        if len(handled) == BACKLOG:
            backlog_done.set()
        if msg.value() == b"lone":
            lone_seen.set()
        return [Output(out, b"k", msg.value())]

    calls: list[tuple[int, float, int]] = []
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
        assert backlog_done.wait(60)
        time.sleep(1.0)  # the loop is back in a waiting poll
        sent = time.monotonic()
        _send(kafka, inp, [b"lone"])
        assert lone_seen.wait(POLL_TIMEOUT_S / 2), "the lone record waited for the poll's whole timeout"
        handled_after_s = handled[b"lone"] - sent
    finally:
        loop.stop()
        runner.join(POLL_TIMEOUT_S + 30)
    assert not runner.is_alive()

    assert handled_after_s < POLL_TIMEOUT_S / 2
    assert sorted(m.value() for m in read_topic(kafka, out)) == sorted(handled)  # every record's output, once
    # a waiting poll asks for one record; what follows it takes the rest without waiting
    waits = [c for c in calls if c[1] > 0]
    assert waits and all(asked == 1 for asked, _, _ in waits)
    follow_ups = [c for c in calls if c[0] > 1]
    assert follow_ups and all(timeout == 0 for _, timeout, _ in follow_ups)
    # the backlog came in large batches, not record by record
    assert max(got for _, _, got in calls) >= BACKLOG // 4
    assert sum(got for _, _, got in calls) == BACKLOG + 1
