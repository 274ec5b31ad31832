"""A stage restoring its state from a changelog right after the previous holder's commit gets that commit.

``commit_transaction`` returns before the broker has written the commit markers, so for a moment a
read_committed client is told a last stable offset that stands before the transaction just committed. A
restore that ended there lost the transaction's state while the input offsets committed with it held. Real
broker, real transactions.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_producer, restore_partitions
from testkit.settings import make_settings

pytestmark = pytest.mark.integration


def _changelog(kafka_stack) -> tuple[object, str]:
    settings = make_settings(kafka_stack)
    topic = f"restore-after-commit-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings.kafka, [TopicSpec(topic, 1, 1, {"cleanup.policy": "compact"})])
    return settings.kafka, topic


def _write(kafka, name: str, topic: str, key: bytes, value: bytes, commit: bool = True):
    """A transactional writer ``name`` that writes ``key`` = ``value`` in a transaction, committed or left open
    (flushed, so the record is in the log while its transaction is not finished)."""
    producer = make_producer(kafka, f"{name}-{topic}")
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=key, value=value, partition=0)
    if commit:
        producer.commit_transaction(30)
    else:
        producer.flush(30)
    return producer


def test_a_restore_that_starts_while_a_commit_is_in_flight_holds_that_commits_state(kafka_stack):
    """The previous holder's last transaction is still being committed when the restore starts (as right after
    a rebalance: its markers are not written yet): the restore waits for it instead of ending before it."""
    kafka, topic = _changelog(kafka_stack)
    writer = _write(kafka, "writer", topic, b"early", b"1")
    writer.begin_transaction()
    writer.produce(topic, key=b"last", value=b"2", partition=0)
    writer.flush(30)  # written, not yet committed: the restore's read_committed view ends before it
    box: dict[str, dict[bytes, bytes]] = {}
    restore = threading.Thread(
        target=lambda: box.update(restored=restore_partitions(kafka, topic, [0], timeout_s=30)[0]), daemon=True
    )
    restore.start()
    time.sleep(1.5)
    writer.commit_transaction(30)
    restore.join(40)
    assert box["restored"] == {b"early": b"1", b"last": b"2"}


def test_a_transaction_its_dead_writer_left_open_is_left_out_after_the_grace(kafka_stack):
    kafka, topic = _changelog(kafka_stack)
    _write(kafka, "done", topic, b"kept", b"committed")
    dead = _write(kafka, "dead", topic, b"lost", b"never committed", commit=False)  # as if killed mid-transaction
    try:
        t0 = time.monotonic()
        restored = restore_partitions(kafka, topic, [0], timeout_s=30, pending_grace_s=2.0)[0]
        waited = time.monotonic() - t0
        assert restored == {b"kept": b"committed"}
        assert 2.0 <= waited < 20.0  # waited out the grace for markers, then took the committed part
    finally:
        dead.abort_transaction(30)
