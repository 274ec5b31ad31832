"""No silent stall and no stop for one record, on a real broker.

* a record the handler raises for, an output larger than its topic's ``max.message.bytes``
  (refused by the broker) and one larger than the producer's own limit (refused before it is
  queued) go to the dead-letter topic with the reason and the source position; every other record
  (before and after them) is processed once;
* an I/O error in the handler is the environment, not the record: retried with backoff, never
  dead-lettered;
* a state value the changelog refuses is not one record's fault: the loop cannot commit, says so on
  ``/health`` (false, with the reason), retries with a capped exponential backoff, and carries on by
  itself once the topic accepts the value again; one above the producer's own limit gets the same
  reason and backoff.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import threading
import time
from collections import Counter

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from sevisflow.core.config import KafkaSettings
from sevisflow.core.kafka_io import (
    Output,
    TopicSpec,
    TransactionalLoop,
    ensure_topics,
    make_admin,
    make_producer,
    read_topic,
)
from sevisflow.core.observability import serve_for
from sevisflow.core.serde import registry
from sevisflow.deploy.local.stack import free_port
from tests.helpers import http_get

pytestmark = pytest.mark.integration

LIMIT = 20_000
"""max.message.bytes of the small topics in these tests."""
BIG = random.Random(7).randbytes(3 * LIMIT)
"""Incompressible (the producer compresses with lz4: repeated bytes would fit)."""
HUGE = random.Random(8).randbytes(9 * 1024 * 1024)
"""Above the producer's own ``message.max.bytes`` (8 MiB): refused before it is queued."""


def _feed(kafka, topic, values, key=b"k"):
    producer = make_producer(kafka)
    for v in values:
        producer.produce(topic, key=key, value=v)
    assert producer.flush(30) == 0


def _wait(pred, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_a_failing_record_and_a_too_large_output_are_dead_lettered_and_the_stage_goes_on(kafka_stack, unique):
    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap)
    inp, out, dlq, state = f"dl.in.{unique}", f"dl.out.{unique}", f"dl.dlq.{unique}", f"dl.state.{unique}"
    ensure_topics(
        kafka,
        [
            TopicSpec(inp, 1, 1),
            TopicSpec(out, 1, 1, {"max.message.bytes": str(LIMIT)}),
            TopicSpec(dlq, 1, 1),
            TopicSpec(state, 1, 1, {"cleanup.policy": "compact"}),
        ],
    )

    def handler(msg, st):
        value = msg.value()
        n = int(st.get(msg.partition(), b"n") or b"0") + 1
        st.put(msg.partition(), b"n", str(n).encode())  # staged before the failure: must not survive it
        if value == b"boom":
            raise ValueError("cannot parse this record")
        if value == b"big":  # refused by the broker (above the topic's limit): the transaction is redone
            yield Output(out, msg.key(), BIG)
            return
        if value == b"huge":  # refused by the producer itself (above its message.max.bytes): replaced at once
            yield Output(out, msg.key(), HUGE)
            return
        yield Output(out, msg.key(), value + b"#" + str(n).encode())

    first = [f"a{i}".encode() for i in range(30)] + [b"boom"] + [f"b{i}".encode() for i in range(30)] + [b"big"]
    later = [f"c{i}".encode() for i in range(30)] + [b"huge", b"d0"]
    _feed(kafka, inp, first)
    loop = TransactionalLoop(
        kafka,
        f"dl-{unique}",
        [inp],
        handler,
        transactional_id=f"dl-{unique}-0",
        state_topic=state,
        dlq_topic=dlq,
        batch_size=25,
        retry_base_s=0.1,
    )
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    try:
        _wait(lambda: len(list(read_topic(kafka, out))) >= 60, 60, "the records around the bad ones")
        _feed(kafka, inp, later)
        outputs = _wait(lambda: (o := list(read_topic(kafka, out))) and len(o) >= 91 and o, 60, "the later records")
        dead = _wait(lambda: (d := list(read_topic(kafka, dlq))) and len(d) >= 3 and d, 30, "three dead letters")
        time.sleep(1.5)
        assert loop.health() == (True, "ok")
    finally:
        loop.stop()
        runner.join(30)
    assert not runner.is_alive()
    outputs = list(read_topic(kafka, out))
    dead = [registry().decode(m.value()) for m in read_topic(kafka, dlq)]
    values = Counter(m.value().split(b"#")[0] for m in outputs)
    expected = {v for v in first + later if v not in (b"boom", b"big", b"huge")}
    assert set(values) == expected and all(n == 1 for n in values.values()), "lost or duplicated outputs"
    # the failed record's staged state was dropped with it; the too-large output's record still counted
    counts = {m.value().split(b"#")[0]: int(m.value().split(b"#")[1]) for m in outputs}
    assert counts[b"b0"] == 31 and counts[b"c0"] == 62 and counts[b"d0"] == 93, counts
    assert len(dead) == 3, dead
    assert sorted(d["code"] for d in dead) == ["handler_failed", "output_too_large", "output_too_large"]
    failed = next(d for d in dead if d["code"] == "handler_failed")
    large, huge = [d for d in dead if d["code"] == "output_too_large"]
    assert (failed["source_topic"], failed["source_partition"], failed["source_offset"]) == (inp, 0, 30)
    assert failed["source_value"] == b"boom"
    assert "ValueError" in failed["reason"] and f"{inp}[0]@30" in failed["reason"]
    assert "cannot parse" not in failed["reason"], "the exception message may quote data; the reason must not"
    assert (large["source_topic"], large["source_offset"]) == (inp, 61)
    assert out in large["reason"] and f"({len(BIG) + 1} bytes)" in large["reason"]
    assert "max.message.bytes" in large["reason"]
    assert (huge["source_topic"], huge["source_offset"], huge["source_value"]) == (inp, 92, b"huge")
    assert f"({len(HUGE) + 1} bytes)" in huge["reason"]
    assert loop.dead_lettered == 3


def _set_limit(kafka, topic, value):
    admin = make_admin(kafka)
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("max.message.bytes", str(value), incremental_operation=AlterConfigOpType.SET)],
    )
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result(30)


@contextlib.contextmanager
def _loop_stuck_on_a_state_value(kafka, name: str, value: bytes, state_config: dict[str, str]):
    """A loop whose second input stages ``value`` as state, with ``/health`` served: yields (loop, port,
    output topic, state topic); stops the loop and the server after."""
    inp, out, state = f"{name}.in", f"{name}.out", f"{name}.state"
    ensure_topics(kafka, [TopicSpec(inp, 1, 1), TopicSpec(out, 1, 1), TopicSpec(state, 1, 1, state_config)])

    def handler(msg, st):
        if msg.value() == b"grow":
            st.put(msg.partition(), b"buffer", value)
        yield Output(out, msg.key(), msg.value())

    _feed(kafka, inp, [b"first", b"grow", b"after"])
    port = free_port()
    server = serve_for(port, "127.0.0.1")
    loop = TransactionalLoop(
        kafka,
        name,
        [inp],
        handler,
        transactional_id=f"{name}-0",
        state_topic=state,
        dlq_topic=f"{out}.dlq",
        batch_size=1,
        retry_base_s=0.2,
        retry_max_s=1.6,
    )
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    try:
        yield loop, port, out, state
    finally:
        loop.stop()
        runner.join(30)
        if server:
            server.stop()
    assert not runner.is_alive()


def _health_fails(port: int) -> str:
    _, body = _wait(lambda: (r := http_get(f"http://127.0.0.1:{port}/health"))[0] == 503 and r, 60, "/health to fail")
    return str(body)


def test_a_state_value_the_changelog_refuses_turns_health_false_backs_off_and_recovers(kafka_stack, unique):
    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap)
    config = {"cleanup.policy": "compact", "max.message.bytes": str(LIMIT)}
    with _loop_stuck_on_a_state_value(kafka, f"st-{unique}", BIG, config) as (loop, port, out, state):
        body = _health_fails(port)
        assert "non-retriable" in body and "state value" in body and state in body, body
        failures_then = loop._failures
        time.sleep(6)
        # backoff 0.2, 0.4, 0.8, 1.6, 1.6 …: at most ~6 more tries in 6 s (without it: hundreds)
        assert 1 <= loop._failures - failures_then <= 7, loop._failures - failures_then
        assert loop.retry_delay_s() == 1.6
        assert [m.value() for m in read_topic(kafka, out)] == [b"first"], "nothing after the stuck record yet"
        _set_limit(kafka, state, 8 * 1024 * 1024)  # the operator's fix
        _wait(lambda: len(list(read_topic(kafka, out))) >= 3, 60, "processing to resume")
        _, body = _wait(
            lambda: (r := http_get(f"http://127.0.0.1:{port}/health"))[0] == 200 and r, 30, "/health to recover"
        )
        assert loop.retry_delay_s() == 0.0, "the backoff is reset by a commit"
    assert [m.value() for m in read_topic(kafka, out)] == [b"first", b"grow", b"after"]


def test_a_state_value_above_the_producers_own_limit_says_so_and_backs_off(kafka_stack, unique):
    """Above the producer's ``message.max.bytes`` (8 MiB) a state value is refused before it is queued: the
    same clear reason on ``/health`` as a refusal by the broker (it was a bare "Message size too large"
    and counted as retriable), and the same backoff."""
    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap)
    with _loop_stuck_on_a_state_value(kafka, f"sh-{unique}", HUGE, {}) as (loop, port, out, state):
        body = _health_fails(port)
        assert "non-retriable" in body and f"state value of {len(HUGE) + 6} bytes" in body, body
        assert "must be split" in body and state in body, body
        failures_then = loop._failures
        time.sleep(4)
        assert 1 <= loop._failures - failures_then <= 6, loop._failures - failures_then
        assert [m.value() for m in read_topic(kafka, out)] == [b"first"], "nothing after the stuck record"


def test_an_io_error_in_the_handler_is_retried_with_backoff_not_dead_lettered(kafka_stack, unique):
    """The environment, not the record (e.g. the XML sink's disk is full): the batch is retried until it works."""
    import errno

    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap)
    inp, out, dlq = f"io.in.{unique}", f"io.out.{unique}", f"io.dlq.{unique}"
    ensure_topics(kafka, [TopicSpec(inp, 1, 1), TopicSpec(out, 1, 1), TopicSpec(dlq, 1, 1)])
    attempts: list[float] = []

    def handler(msg, st):
        if msg.value() == b"write":
            attempts.append(time.monotonic())
            if len(attempts) <= 4:
                raise OSError(errno.ENOSPC, "No space left on device")
        yield Output(out, msg.key(), msg.value())

    _feed(kafka, inp, [b"a", b"write", b"b"])
    loop = TransactionalLoop(
        kafka,
        f"io-{unique}",
        [inp],
        handler,
        transactional_id=f"io-{unique}-0",
        dlq_topic=dlq,
        retry_base_s=0.3,
        stall_after_s=1.5,
    )
    runner = threading.Thread(target=loop.run, daemon=True)
    seen: list = []
    watching = threading.Event()

    def watch():
        while not watching.is_set():
            seen.append(loop.health())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    runner.start()
    watcher.start()
    try:
        _wait(lambda: len(list(read_topic(kafka, out))) >= 3, 60, "the write to succeed on its fifth try")
        time.sleep(1)
        assert runner.is_alive() and loop.health() == (True, "ok")
    finally:
        watching.set()
        loop.stop()
        runner.join(30)
    # while it kept failing for longer than stall_after_s, /health said so (not "stalled": it was backing off)
    failing = [why for ok, why in seen if not ok]
    assert failing and all(w.startswith("no transaction committed for") for w in failing), set(seen)
    assert "I/O error in the handler: OSError [errno 28] No space left on device" in failing[-1]
    assert [m.value() for m in read_topic(kafka, out)] == [b"a", b"write", b"b"]
    assert list(read_topic(kafka, dlq)) == [], "an I/O error is not the record's fault"
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) == 5 and gaps[0] >= 0.25 and gaps[1] >= 0.55 and gaps[2] >= 1.15 and gaps[3] >= 2.35, gaps
