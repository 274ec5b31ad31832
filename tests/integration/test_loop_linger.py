"""A stage's transactional producer lingers (``kafka_io.TXN_LINGER_MS``) to send each transaction's records in
fewer batches; that must never delay what a transaction makes visible, because the loop flushes before it
commits. Proved with a linger far longer than the test may wait: every transaction's outputs and state records
must still be readable (read_committed) right after their commit."""

from __future__ import annotations

import threading
import time

import pytest

from sevisflow.core import kafka_io
from sevisflow.core.config import KafkaSettings
from sevisflow.core.kafka_io import Output, TopicSpec, TransactionalLoop, ensure_topics, make_producer, read_topic

pytestmark = pytest.mark.integration

LINGER_MS = 55_000
"""Just under what librdkafka allows a transactional producer (its message timeout: the 60 s transaction
timeout): a commit that waited for the linger would miss every deadline below (at most 25 s)."""


def _feed(kafka: KafkaSettings, topic: str, values: list[bytes]) -> None:
    producer = make_producer(kafka)
    for v in values:
        producer.produce(topic, key=v, value=v)
    assert producer.flush(30) == 0


def _wait_for(kafka: KafkaSettings, topic: str, count: int, timeout_s: float) -> list[bytes]:
    deadline = time.monotonic() + timeout_s
    got: list[bytes] = []
    while time.monotonic() < deadline:
        got = [m.value() for m in read_topic(kafka, topic)]
        if len(got) >= count:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{len(got)} of {count} records on {topic} after {timeout_s}s")


def test_outputs_are_visible_when_the_transaction_commits_however_long_the_producer_lingers(
    kafka_stack, unique, monkeypatch
):
    monkeypatch.setattr(kafka_io, "TXN_LINGER_MS", LINGER_MS)  # read by the loop's default producer factory
    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap)
    inp, out, state = f"linger.in.{unique}", f"linger.out.{unique}", f"linger.state.{unique}"
    ensure_topics(
        kafka, [TopicSpec(inp, 1, 1), TopicSpec(out, 1, 1), TopicSpec(state, 1, 1, {"cleanup.policy": "compact"})]
    )

    def handler(msg, st):
        st.put(msg.partition(), msg.key(), b"seen")
        yield Output(out, msg.key(), msg.value() + b"!")

    loop = TransactionalLoop(
        kafka, f"linger-{unique}", [inp], handler, transactional_id=f"linger-{unique}-0", state_topic=state
    )
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    try:
        first = [f"a{i}".encode() for i in range(5)]
        _feed(kafka, inp, first)
        assert sorted(_wait_for(kafka, out, 5, 25)) == sorted(v + b"!" for v in first)
        assert len(_wait_for(kafka, state, 5, 25)) == 5  # the state records of the same transactions
        later = [f"b{i}".encode() for i in range(5)]  # and the transactions after the first one
        _feed(kafka, inp, later)
        assert sorted(_wait_for(kafka, out, 10, 25)) == sorted(v + b"!" for v in first + later)
    finally:
        loop.stop()
        runner.join(30)
    assert not runner.is_alive()
