"""On real Kafka: the sevis_events stage refuses a value SEVIS cannot carry for that student's event only.

Two students change in the SIS at the same time: one address has a control character (pasted from another
program), the other is clean. The first student's e-mail change still goes out (without the address) and the
address is a dead letter for the DSO naming the field, not the value; the second student's event flows.
"""

from __future__ import annotations

import copy
import threading
import time

import orjson
import pytest

from sevisflow.processors.sevis_events.stage import events_topics
from sevisflow.core.kafka_io import delivery_raiser, ensure_topics, flush_or_raise, make_producer, produce, read_topic
from sevisflow.core.serde import registry
from sevisflow.core.topics import pipeline_topics
from tests.helpers import make_settings
from tests.scenarios import School

pytestmark = pytest.mark.integration

BASE = School().pipe.last_view["S00000007"]


def _view(key: str, n: int, changes: dict | None = None) -> dict:
    v = copy.deepcopy(BASE)
    v["student_key"] = key
    for (section, *path), value in (changes or {}).items():
        node = v[section]
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value
    return {"student_key": key, "exists": True, "international": True, "sevis_id": v["student"]["sevis_id"],
            "view_json": orjson.dumps(v).decode(), "unit_id": f"{500 + n}:{1000 + n}:{1000 + n}", "snapshot": False,
            "commit_ts_ms": 1_780_000_000_000 + n,
            "lineage": [{"topic": "sis.public.address", "partition": 0, "offset": n, "table": "public.address",
                         "lsn": 1000 + n, "sequence": None, "tx_id": 500 + n, "commit_ts_ms": 1_780_000_000_000 + n}],
            "processor_version": "test"}


def test_control_character_is_refused_in_the_events_stage_other_students_flow(kafka_stack, unique):
    settings = make_settings(kafka_stack, unique=unique)
    ensure_topics(settings.kafka, pipeline_topics(settings) + events_topics(settings))
    line = ("address", "us_physical", "line1")
    views = [_view("S1", 1), _view("S2", 2),  # baselines: no events
             _view("S1", 3, {line: "9 Elm\x1bSt", ("student", "email"): "s1@example.org"}),
             _view("S2", 4, {line: "9 Elm St"})]
    producer = make_producer(settings.kafka)
    errors: list = []
    for v in views:
        produce(producer, settings.topics.students, v["student_key"].encode(),
                registry().encode("sevisflow.students.StudentView", v), on_delivery=delivery_raiser(errors))
    flush_or_raise(producer, errors)

    from sevisflow.processors.sevis_events.stage import run

    stop = threading.Event()
    t = threading.Thread(target=run, args=(settings, stop), kwargs={"instance": "hyg"}, daemon=True)
    t.start()

    def events():
        return [registry().decode(m.value(), "sevisflow.events.SevisEvent")
                for m in read_topic(settings.kafka, settings.topics.events) if m.value()]

    try:
        deadline = time.monotonic() + 90
        while len(events()) < 2:
            assert time.monotonic() < deadline, "the events stage produced no events"
            time.sleep(0.5)
    finally:
        stop.set()
        t.join(40)
    got = {e["student_key"]: orjson.loads(e["payload_json"]) for e in events()}
    assert sorted(got) == ["S1", "S2"]
    assert "USAddress" not in got["S1"] and got["S1"]["Email"] == "s1@example.org"
    assert got["S2"]["USAddress"]["Address1"] == "9 Elm St"
    dead = [registry().decode(m.value(), "sevisflow.dlq.DeadLetter")
            for m in read_topic(settings.kafka, settings.topics.dlq) if m.value()]
    assert [(d["stage"], d["code"], d["student_key"], d["field"]) for d in dead] == [
        ("sevis_events", "invalid_character", "S1", "address.us_physical.line1")]
    assert "Elm" not in dead[0]["reason"] and "U+001B" in dead[0]["reason"]
