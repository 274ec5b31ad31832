"""The batcher handles a partition number only when it holds it on every input topic.

A member that joins before it knows one of its input topics (a topic just created: its metadata reaches the client
late) is assigned the others' partitions only; with two members the range assignor then gives that topic's partition
to the other one, and a school's close would be handled where its events and state are not (seen in CI: "revision 4
does not exist (the open batch is at revision 0)"). Here the batcher joins while sevis.results does not exist yet:
it must hold everything (paused, no state restored, nothing written) and carry on once the topic appears.
"""

from __future__ import annotations

import threading
import time

import pytest

from sevisflow.core.kafka_io import ensure_topics, split_numbers
from sevisflow.core.topics import pipeline_topics
from sevisflow.processors.batcher import batcher_topics
from sevisflow.processors.batcher.stage import build_loop
from testkit.batcher import event
from tests.batcher_support import FAST, batch_events, batcher_settings, send_events, wait_for

pytestmark = pytest.mark.integration


def test_split_numbers_are_those_missing_on_some_input_topic():
    topics = ["ev", "cmd", "res"]
    assert split_numbers(topics, [(t, p) for t in topics for p in (0, 1)]) == set()
    assert split_numbers(topics, [("ev", 0), ("ev", 1), ("cmd", 0), ("cmd", 1), ("res", 0)]) == {1}
    assert split_numbers(topics, [("ev", 2), ("cmd", 2)]) == {2}  # no partition of res at all


@pytest.mark.timeout(120)
def test_a_batcher_missing_an_input_topic_holds_its_partitions_until_the_topic_appears(kafka_stack, unique):
    settings = batcher_settings(kafka_stack, unique)
    results = settings.topics.results
    specs = pipeline_topics(settings) + batcher_topics(settings)
    ensure_topics(settings.kafka, [s for s in specs if s.name != results])
    loop, _ = build_loop(
        settings, instance="cp1", consumer_overrides={**FAST, "topic.metadata.refresh.interval.ms": 1000}
    )
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not loop.paused and time.monotonic() < deadline:
            time.sleep(0.1)
        held = {tp.topic for tp in loop.paused}
        assert held and results not in held, "the batcher should hold every partition number (no sevis.results yet)"
        send_events(settings, [event("S0001", n=1)])
        time.sleep(3)
        assert not [e for e in batch_events(settings) if e["type"] == "record_added"], "handled while held"
        ensure_topics(settings.kafka, [s for s in specs if s.name == results])
        evs = wait_for(settings, lambda evs: any(e["type"] == "record_added" for e in evs), timeout=60)
        assert len([e for e in evs if e["type"] == "record_added"]) == 1
        assert loop.paused == []
    finally:
        loop.stop()
        thread.join(30)
