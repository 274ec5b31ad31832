"""One SIS for several schools on the real stack: `public.person.school_code` of a `generate_vendor` SIS in
PostgreSQL goes through the connector (snapshot, then a streamed update) and normalize on Kafka to each
student view's `student.school_code` — NULL, a member's code, and a move from one school to another."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import pytest

from sevisflow.app.runner import Pipeline
from sevisflow.core.kafka_io import ensure_topics, read_topic
from sevisflow.core.serde import registry
from sevisflow.core.topics import all_topics
from sevisflow.deploy.sis.generator import generate_vendor
from sevisflow.deploy.sis.load import create_schema, load_school
from tests.helpers import REPO, connector_section, make_settings, wait_for
from tests.school_replay import TODAY

pytestmark = pytest.mark.integration

MAPPING_FILE = str(REPO / "deploy" / "sis" / "mapping.toml")
SCHOOLS: list[tuple[str | None, int]] = [(None, 6), ("NORTH", 5), ("SOUTH", 4)]


def _latest_codes(settings: Any) -> dict[str, str | None]:
    """student key → student.school_code of its latest view on the students topic."""
    out: dict[str, str | None] = {}
    for m in read_topic(settings.kafka, settings.topics.students):
        v = registry().decode(m.value() or b"")
        out[v["student_key"]] = orjson.loads(v["view_json"])["student"].get("school_code", "absent")
    return out


def _person_afters(settings: Any) -> list[dict[str, Any]]:
    """The `after` rows of the connector's public.person change events."""
    topic = f"{settings.connector.topic_prefix}.public.person"
    out = []
    for m in read_topic(settings.kafka, topic):
        if m.value() is None:  # a delete's tombstone
            continue
        value = orjson.loads(m.value() or b"")
        value = value.get("payload", value)
        if value.get("after"):
            out.append(value["after"])
    return out


@pytest.mark.timeout(300)
def test_school_code_reaches_the_student_views_through_connector_and_normalize(
    kafka_stack, fresh_db, unique, tmp_path
) -> None:
    school = generate_vendor(SCHOOLS, 0.5, 7, TODAY)
    want = {p["school_id"]: p["school_code"] for p in school["person"]}
    assert sorted(want.values(), key=str) == sorted([None] * 6 + ["NORTH"] * 5 + ["SOUTH"] * 4, key=str)
    settings = make_settings(
        kafka_stack,
        fresh_db,
        unique,
        connector=connector_section(unique, tmp_path),
        school={"mapping_file": MAPPING_FILE},
    )
    create_schema(fresh_db.dsn)
    load_school(fresh_db.dsn, school)
    ensure_topics(settings.kafka, all_topics(settings))
    mover = next(p for p in school["person"] if p["school_code"] == "NORTH")

    pipeline = Pipeline(settings, ["connector", "normalize"], serve_metrics=False).start()
    try:

        def all_views() -> dict[str, str | None] | None:
            codes = _latest_codes(settings)
            return codes if len(codes) == len(want) else None

        def moved_view() -> dict[str, str | None] | None:
            codes = _latest_codes(settings)
            return codes if codes.get(mover["school_id"]) == "SOUTH" else None

        got = wait_for("every student's snapshot view", all_views, 180, pipeline)
        assert got == want
        with psycopg.connect(fresh_db.dsn) as conn:
            conn.execute("UPDATE public.person SET school_code = 'SOUTH' WHERE person_id = %s", (mover["person_id"],))
        moved = wait_for("the moved student's new view", moved_view, 120, pipeline)
    finally:
        failed = pipeline.stop()
    assert not failed, [(f.name, f.error) for f in failed]
    assert moved == {**want, mover["school_id"]: "SOUTH"}
    # the connector captured the column itself, NULLs included, snapshot and stream
    afters = _person_afters(settings)
    assert all("school_code" in a for a in afters)
    assert {a["school_code"] for a in afters} == {None, "NORTH", "SOUTH"}
    assert len(afters) == len(want) + 1  # the snapshot, then the one update
    assert [a["school_code"] for a in afters if a["person_id"] == mover["person_id"]] == ["NORTH", "SOUTH"]
