"""The sevis_events stage on real Kafka, fed student views directly (no SIS, no normalize): the views,
the feeding, and a run of the real stage until what the test waits for is on its topics."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from sevisflow.core.config import Settings
from sevisflow.core.kafka_io import delivery_raiser, ensure_topics, flush_or_raise, make_producer, produce, read_topic
from sevisflow.core.serde import registry
from sevisflow.core.topics import pipeline_topics
from sevisflow.processors.sevis_events.stage import events_topics, run
from tests.scenarios import School

BASE = School().pipe.last_view["S00000007"]


def view(key: str, n: int, changes: dict | None = None) -> dict:
    """A StudentView record of the reference student under ``key`` with ``changes`` ((section, …, field) → value)."""
    v = copy.deepcopy(BASE)
    v["student_key"] = key
    for (section, *path), value in (changes or {}).items():
        node = v[section]
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value
    return {
        "student_key": key,
        "exists": True,
        "international": True,
        "sevis_id": v["student"]["sevis_id"],
        "view_json": orjson.dumps(v).decode(),
        "unit_id": f"{500 + n}:{1000 + n}:{1000 + n}",
        "snapshot": False,
        "commit_ts_ms": 1_780_000_000_000 + n,
        "lineage": [
            {
                "topic": "sis.public.address",
                "partition": 0,
                "offset": n,
                "table": "public.address",
                "lsn": 1000 + n,
                "sequence": None,
                "tx_id": 500 + n,
                "commit_ts_ms": 1_780_000_000_000 + n,
            }
        ],
        "processor_version": "test",
    }


def decoded(settings: Settings, topic: str, schema: str) -> list[dict[str, Any]]:
    return [registry().decode(m.value(), schema) for m in read_topic(settings.kafka, topic) if m.value()]


def run_events_stage(
    settings: Settings, views: list[dict], instance: str, done: Callable[[], bool], what: str, timeout_s: float = 90
) -> None:
    """Put ``views`` on the students topic, run the real stage until ``done()`` (or fail naming ``what``), stop it."""
    ensure_topics(settings.kafka, pipeline_topics(settings) + events_topics(settings))
    producer = make_producer(settings.kafka)
    errors: list = []
    for v in views:
        produce(
            producer,
            settings.topics.students,
            v["student_key"].encode(),
            registry().encode("sevisflow.students.StudentView", v),
            on_delivery=delivery_raiser(errors),
        )
    flush_or_raise(producer, errors)
    stop = threading.Event()
    t = threading.Thread(target=run, args=(settings, stop), kwargs={"instance": instance}, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, f"the events stage did not produce {what}"
            time.sleep(0.5)
    finally:
        stop.set()
        t.join(40)
