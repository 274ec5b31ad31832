"""On real Kafka: what the sevis_events stage alters or cannot send reaches the dead-letter topic for the DSO.

Three students change at once: one's legal name is spelled differently for SEVIS (the PersonalInfo goes out
with both spellings in its problems, and a ``name_altered`` dead letter names the field and how, not the name);
one's visa is changed to a non-F/M/J status while SEVIS holds the record as active (no event, a
``status_left_fmj`` dead letter); one's programme row is removed (no event, ``missing_field``).
"""

from __future__ import annotations

import orjson
import pytest

from sevisflow.processors.sevis_events.derive import SPELLING
from tests.helpers import make_settings
from tests.integration.events_support import decoded, run_events_stage, view

pytestmark = pytest.mark.integration


def _top(rec: dict, **top: object) -> dict:
    """The StudentView record with top-level view keys changed (``international``) or sections dropped (None)."""
    v = orjson.loads(rec["view_json"])
    for k, value in top.items():
        if value is None:
            v.pop(k, None)
        else:
            v[k] = value
    return {**rec, "international": bool(v.get("international")), "view_json": orjson.dumps(v).decode()}


def test_altered_left_and_incomplete_students_reach_the_dead_letter_topic(kafka_stack, unique):
    settings = make_settings(kafka_stack, unique=unique)
    views = [
        view("S1", 1, {("student", "last_name"): "Smith"}),
        view("S2", 2),
        view("S3", 3),  # baselines
        view("S1", 4),  # back to "O'Brien-Müller"
        _top(view("S2", 5, {("student", "visa_type"): "H-1B"}), international=False),
        _top(view("S3", 6), program=None),
    ]

    def dead() -> list[dict]:
        return decoded(settings, settings.topics.dlq, "sevisflow.dlq.DeadLetter")

    run_events_stage(
        settings,
        views,
        "silent",
        lambda: len({d["student_key"] for d in dead()}) >= 3,
        "dead letters for the three students",
    )
    events = decoded(settings, settings.topics.events, "sevisflow.events.SevisEvent")
    assert [(e["student_key"], e["kind"]) for e in events] == [("S1", "PersonalInfo")]
    assert orjson.loads(events[0]["payload_json"])["FullName"]["LastName"] == "OBrien Muller"
    notes = [p for p in events[0]["problems"] if p.startswith(SPELLING)]
    assert any('SIS "O\'Brien-Müller" → sent "OBrien Muller"' in n for n in notes), notes
    got = sorted((d["stage"], d["student_key"], d["code"], d["field"]) for d in dead())
    assert got == [
        ("sevis_events", "S1", "name_altered", "student.first_name"),
        ("sevis_events", "S1", "name_altered", "student.last_name"),
        ("sevis_events", "S2", "status_left_fmj", "student.visa_type"),
        ("sevis_events", "S3", "missing_field", "program.status"),
    ]
    for d in dead():
        assert not any(x in d["reason"] for x in ("O'Brien", "Müller", "Zoë", "Zoe")), d["reason"]
    # what changed in the SIS travels with the letter (never in its reason): `sevisflow todo` shows it
    from sevisflow.app.cli.todo import read_letters
    from sevisflow.core.worklist.items import dead_letter_items

    left = next(d for d in read_letters(settings) if d["code"] == "status_left_fmj")
    assert left["changes"]["student.visa_type"][1] == "H-1B"
    [item] = dead_letter_items([left])
    assert any(line.startswith("in the SIS: student.visa_type:") and line.endswith("→ H-1B") for line in item.detail)
