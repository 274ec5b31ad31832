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


def test_a_restore_that_starts_while_a_commit_is_in_flight_holds_that_commits_state(kafka_stack):
    """The previous holder's last transaction is still being committed when the restore starts (as right after
    a rebalance: its markers are not written yet): the restore waits for it instead of ending before it."""
    kafka, topic = _changelog(kafka_stack)
    writer = make_producer(kafka, f"writer-{topic}")
    writer.init_transactions(30)
    writer.begin_transaction()
    writer.produce(topic, key=b"early", value=b"1", partition=0)
    writer.commit_transaction(30)
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
    done = make_producer(kafka, f"done-{topic}")
    done.init_transactions(30)
    done.begin_transaction()
    done.produce(topic, key=b"kept", value=b"committed", partition=0)
    done.commit_transaction(30)
    dead = make_producer(kafka, f"dead-{topic}")  # begins, writes, never commits: as if killed
    dead.init_transactions(30)
    dead.begin_transaction()
    dead.produce(topic, key=b"lost", value=b"never committed", partition=0)
    dead.flush(30)
    try:
        t0 = time.monotonic()
        restored = restore_partitions(kafka, topic, [0], timeout_s=30, pending_grace_s=2.0)[0]
        waited = time.monotonic() - t0
        assert restored == {b"kept": b"committed"}
        assert 2.0 <= waited < 20.0  # waited out the grace for markers, then took the committed part
    finally:
        dead.abort_transaction(30)
