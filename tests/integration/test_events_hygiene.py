"""On real Kafka: the sevis_events stage refuses a value SEVIS cannot carry for that student's event only.

Two students change in the SIS at the same time: one address has a control character (pasted from another
program), the other is clean. The first student's e-mail change still goes out (without the address) and the
address is a dead letter for the DSO naming the field, not the value; the second student's event flows.
"""

from __future__ import annotations

import orjson
import pytest

from tests.helpers import make_settings
from tests.integration.events_support import decoded, run_events_stage, view

pytestmark = pytest.mark.integration


def test_control_character_is_refused_in_the_events_stage_other_students_flow(kafka_stack, unique):
    settings = make_settings(kafka_stack, unique=unique)
    line = ("address", "us_physical", "line1")
    views = [
        view("S1", 1),
        view("S2", 2),  # baselines: no events
        view("S1", 3, {line: "9 Elm\x1bSt", ("student", "email"): "s1@example.org"}),
        view("S2", 4, {line: "9 Elm St"}),
    ]

    def events():
        return decoded(settings, settings.topics.events, "sevisflow.events.SevisEvent")

    run_events_stage(settings, views, "hyg", lambda: len(events()) >= 2, "the two students' events")
    got = {e["student_key"]: orjson.loads(e["payload_json"]) for e in events()}
    assert sorted(got) == ["S1", "S2"]
    assert "USAddress" not in got["S1"] and got["S1"]["Email"] == "s1@example.org"
    assert got["S2"]["USAddress"]["Address1"] == "9 Elm St"
    dead = decoded(settings, settings.topics.dlq, "sevisflow.dlq.DeadLetter")
    assert [(d["stage"], d["code"], d["student_key"], d["field"]) for d in dead] == [
        ("sevis_events", "invalid_character", "S1", "address.us_physical.line1")
    ]
    assert "Elm" not in dead[0]["reason"] and "U+001B" in dead[0]["reason"]
