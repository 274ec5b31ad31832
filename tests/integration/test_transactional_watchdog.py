"""The loop's watchdog: a transactional call that never returns (librdkafka #5456/#5511) is survived.

After a broker loss librdkafka's ``send_offsets_to_transaction`` can block forever, ignoring its
timeout. The test gives the loop a real producer whose first ``send_offsets_to_transaction`` blocks
the same way, on a real broker, and proves the loop fences that producer with a fresh one, redoes
the batch, and writes every input exactly once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from confluent_kafka import Producer

from sevisflow.core.config import KafkaSettings
from sevisflow.core.kafka_io import (
    Output,
    TopicSpec,
    TransactionalLoop,
    ensure_topics,
    make_producer,
    producer_config,
    read_topic,
)
from tests.integration.eos_support import EosWorld

pytestmark = pytest.mark.integration

TOTAL = 200


class HangingProducer(Producer):
    """A real transactional producer whose first ``send_offsets_to_transaction`` blocks until released."""

    entered = 0

    def __init__(self, conf: dict, release: threading.Event) -> None:
        super().__init__(conf)
        self.release = release

    def send_offsets_to_transaction(self, *args, **kwargs):  # type: ignore[override]
        HangingProducer.entered += 1
        self.release.wait()


def test_a_send_offsets_call_that_never_returns_is_fenced_and_every_input_written_once(kafka_stack, unique):
    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap)
    inp, out, group = f"wd.in.{unique}", f"wd.out.{unique}", f"wd-{unique}"
    ensure_topics(kafka, [TopicSpec(inp, 2, 1), TopicSpec(out, 2, 1)])
    feeder = make_producer(kafka)
    for i in range(TOTAL):
        feeder.produce(inp, key=f"k{i % 7}".encode(), value=f"m{i}".encode())
    assert feeder.flush(30) == 0

    release = threading.Event()
    made: list[str] = []

    def factory(transactional_id: str) -> Producer:
        made.append(transactional_id)
        conf = producer_config(kafka, transactional_id)
        return HangingProducer(conf, release) if len(made) == 1 else Producer(conf)

    def copy(msg, state):
        yield Output(out, msg.key(), msg.value())

    loop = TransactionalLoop(
        kafka,
        group,
        [inp],
        copy,
        transactional_id=f"{group}-0",
        batch_size=50,
        txn_timeout_s=2.0,
        producer_factory=factory,
    )
    runner = threading.Thread(target=loop.run, daemon=True)
    started = time.monotonic()
    runner.start()
    try:
        outputs: list = []
        # well below transaction.timeout.ms (60 s): the stuck producer's open transaction must have
        # been aborted by the fencing, or read_committed would still be stuck behind it
        deadline = started + 45
        while time.monotonic() < deadline:
            outputs = list(read_topic(kafka, out, timeout_s=10))
            if len(outputs) >= TOTAL:
                break
            time.sleep(0.5)
        time.sleep(2)  # anything written twice would show up now
        outputs = list(read_topic(kafka, out, timeout_s=10))
    finally:
        loop.stop()
        runner.join(30)
        release.set()
    assert not runner.is_alive(), "the loop did not stop"
    assert HangingProducer.entered == 1, "the injected hang was not reached"
    assert loop.producer_replacements == 1
    assert made == [f"{group}-0", f"{group}-0"], "the replacement must keep the transactional.id (that fences)"
    values = Counter(m.value() for m in outputs)
    assert len(outputs) == TOTAL, f"expected {TOTAL} outputs, got {len(outputs)}"
    assert set(values) == {f"m{i}".encode() for i in range(TOTAL)}
    assert all(n == 1 for n in values.values()), "an input was written twice"


class CommitsThenHangs(Producer):
    """A real transactional producer whose ``hang_on``-th ``commit_transaction`` commits on the broker
    and then blocks until released: the loop's deadline passes although the transaction landed."""

    hung = 0

    def __init__(self, conf: dict, hang_on: int, release: threading.Event) -> None:
        super().__init__(conf)
        self.hang_on = hang_on
        self.release = release
        self.commits = 0

    def commit_transaction(self, *args, **kwargs):  # type: ignore[override]
        self.commits += 1
        result = super().commit_transaction(*args, **kwargs)
        if self.commits == self.hang_on:
            CommitsThenHangs.hung += 1
            self.release.wait()
        return result


def _wait_outputs(kafka, topic, n, timeout_s):
    deadline = time.monotonic() + timeout_s
    outputs: list = []
    while time.monotonic() < deadline:
        outputs = list(read_topic(kafka, topic, timeout_s=10))
        if len(outputs) >= n:
            break
        time.sleep(0.5)
    return outputs


def test_a_commit_that_lands_but_outlives_its_deadline_rebuilds_state_from_the_changelog(
    kafka_stack, unique, monkeypatch
):
    """The broker committed, the loop only saw a deadline pass: it must take state and offsets from Kafka.

    Before the fix the loop dropped its staged state and kept its older in-memory state while the
    committed offsets had moved on: the next transaction wrote older counts back (a repeat per key).
    """
    import sevisflow.core.kafka_io as kio

    monkeypatch.setattr(kio, "TXN_CALL_GRACE_S", 1.0)
    world = EosWorld.create(kafka_stack.bootstrap, "uo", unique, keys=5)
    kafka, out, state, group = world.kafka, world.out, world.state, world.group

    release = threading.Event()
    made: list = []

    def factory(transactional_id: str) -> Producer:
        conf = producer_config(kafka, transactional_id)
        made.append(CommitsThenHangs(conf, 2, release) if not made else Producer(conf))
        return made[-1]

    def count(msg, st):
        n = int(st.get(msg.partition(), msg.key()) or b"0") + 1
        st.put(msg.partition(), msg.key(), str(n).encode())
        yield Output(out, msg.key(), msg.value() + b"#" + str(n).encode())

    CommitsThenHangs.hung = 0
    loop = TransactionalLoop(
        kafka,
        group,
        [world.inp],
        count,
        transactional_id=f"{group}-0",
        state_topic=state,
        batch_size=20,
        txn_timeout_s=8.0,
        producer_factory=factory,
        retry_base_s=0.1,
    )
    world.feed(150)
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while loop.rebuilds == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert loop.rebuilds >= 1, "the commit's unknown outcome was not handled by a rebuild"
        world.feed(150)  # processed on the rebuilt state
        outputs = _wait_outputs(kafka, out, 300, 60)
        time.sleep(2)  # anything written twice would show up now
        outputs = list(read_topic(kafka, out, timeout_s=10))
    finally:
        loop.stop()
        runner.join(30)
        release.set()
    assert CommitsThenHangs.hung == 1, "the injected hang after the commit was not reached"
    assert loop.producer_replacements >= 1 and len(made) >= 2
    world.assert_exactly_once(outputs)
