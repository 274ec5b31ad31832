"""librdkafka's own messages: a retry it performs itself is not a warning for the operator."""

from __future__ import annotations

import logging

import pytest

from sevisflow.core.kafka_io import LIBRDKAFKA_LOG


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> _Collect:
    handler = _Collect()
    LIBRDKAFKA_LOG.addHandler(handler)
    previous = LIBRDKAFKA_LOG.level
    yield handler
    LIBRDKAFKA_LOG.removeHandler(handler)
    LIBRDKAFKA_LOG.setLevel(previous)


RETRY = (
    "GETPID [rdkafka#producer-4] [thrd:main]: Failed to acquire idempotence PID from broker "
    "127.0.0.1:52029/1: Broker: Coordinator load in progress: retrying"
)


def test_a_self_retried_warning_is_dropped_at_the_default_warning_level(collected: _Collect) -> None:
    LIBRDKAFKA_LOG.setLevel(logging.WARNING)
    LIBRDKAFKA_LOG.warning(RETRY)
    assert collected.records == []


def test_a_self_retried_warning_shows_as_info_when_info_is_on(collected: _Collect) -> None:
    LIBRDKAFKA_LOG.setLevel(logging.INFO)
    LIBRDKAFKA_LOG.warning(RETRY)
    assert [(r.levelname, r.getMessage()) for r in collected.records] == [("INFO", RETRY)]


def test_any_other_librdkafka_warning_stays_a_warning(collected: _Collect) -> None:
    LIBRDKAFKA_LOG.setLevel(logging.WARNING)
    message = "FAIL [rdkafka#consumer-1] [thrd:x]: x: Connect to ipv4#127.0.0.1:1 failed: Connection refused"
    LIBRDKAFKA_LOG.warning(message)
    assert [(r.levelname, r.getMessage()) for r in collected.records] == [("WARNING", message)]
