"""A stage's own work done between polls (``on_idle``: normalize releasing its held snapshot slice by slice)
must not wait one poll timeout per slice: after a turn that did work the loop polls again without waiting,
and once the work is done it waits again (no busy loop). Proved on a real broker with a spy on the loop's
consumer that logs each poll's timeout next to each ``on_idle`` turn."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from sevisflow.core.config import KafkaSettings
from sevisflow.core.kafka_io import Output, TopicSpec, TransactionalLoop, ensure_topics, read_topic

pytestmark = pytest.mark.integration

POLL_TIMEOUT_S = 1.5
SLICES = 5


class ConsumeSpy:
    """The loop's real consumer, with every ``consume`` timeout written to a shared log."""

    def __init__(self, consumer: Any, events: list[tuple[str, Any]]) -> None:
        self._consumer = consumer
        self._events = events

    def consume(self, num_messages: int, timeout: float) -> Any:
        self._events.append(("poll", timeout))
        return self._consumer.consume(num_messages, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def test_idle_work_in_slices_polls_without_waiting_then_waits_again(kafka_stack, unique):
    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap)
    inp, out, state = f"idle.in.{unique}", f"idle.out.{unique}", f"idle.state.{unique}"
    ensure_topics(
        kafka, [TopicSpec(inp, 1, 1), TopicSpec(out, 1, 1), TopicSpec(state, 1, 1, {"cleanup.policy": "compact"})]
    )
    events: list[tuple[str, Any]] = []
    left = [SLICES]

    def on_idle(st):
        if not left[0]:
            events.append(("idle", False))
            return []
        left[0] -= 1
        events.append(("idle", True))
        return [Output(out, b"slice", f"slice {SLICES - left[0]}".encode())]

    loop = TransactionalLoop(
        kafka,
        f"idle-{unique}",
        [inp],
        lambda msg, st: [],
        transactional_id=f"idle-{unique}-0",
        state_topic=state,
        batch_timeout_s=POLL_TIMEOUT_S,
        on_idle=on_idle,
    )
    loop.consumer = ConsumeSpy(loop.consumer, events)
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(1 for e in events if e == ("idle", False)) < 3:
            time.sleep(0.2)
    finally:
        loop.stop()
        runner.join(30)
    assert not runner.is_alive()

    assert sorted(m.value() for m in read_topic(kafka, out)) == [f"slice {i}".encode() for i in range(1, SLICES + 1)]
    # each on_idle turn and the poll right after it
    turns = [(events[i][1], events[i + 1][1]) for i in range(len(events) - 1) if events[i][0] == "idle"]
    assert all(events[i + 1][0] == "poll" for i in range(len(events) - 1) if events[i][0] == "idle")
    after_work = [timeout for did, timeout in turns if did]
    after_nothing = [timeout for did, timeout in turns if not did]
    assert len(after_work) == SLICES
    assert after_work == [0] * SLICES  # the next slice at once
    assert after_nothing and set(after_nothing) == {POLL_TIMEOUT_S}  # then an idle stage waits again
