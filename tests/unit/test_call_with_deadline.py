"""call_with_deadline: the guard around librdkafka's transactional calls (pure threading, no Kafka)."""

from __future__ import annotations

import threading

import pytest

from sevisflow.core.kafka_io import ProducerStuck, call_with_deadline


def test_returns_what_the_call_returns():
    assert call_with_deadline("commit_transaction", lambda: 42, 5.0) == 42


def test_hands_back_the_calls_own_error():
    def boom():
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        call_with_deadline("commit_transaction", boom, 5.0)


def test_a_call_that_blocks_past_the_deadline_is_reported_stuck_and_left_behind():
    release = threading.Event()
    with pytest.raises(ProducerStuck) as info:
        call_with_deadline("send_offsets_to_transaction", release.wait, 0.2)
    assert info.value.call == "send_offsets_to_transaction"
    assert "did not return within" in str(info.value)
    release.set()
