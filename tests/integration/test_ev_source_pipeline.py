"""J-1 sponsor records through the real stages: PostgreSQL → connector → normalize → sevis_events.

A small school with its J-1 scholars and students (generate_exchange) is loaded, the real connector captures
the exchange_* tables with the F/M ones, and a season of sponsor-side changes is played as real commits. What
reaches ``sevis.events`` must be what the pure pipeline derives from the same rows: every EV element, keyed and
addressed by the program number (never the school's code), and no "cannot send" dead letter for a configured
program's exchange visitor.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from datetime import date
from typing import Any

import orjson
import pytest

from sevisflow.app.runner import Pipeline
from sevisflow.core.config import ConnectorSettings, ExchangeProgram
from sevisflow.core.kafka_io import ensure_topics, read_topic
from sevisflow.core.serde import registry
from sevisflow.core.topics import all_topics
from sevisflow.deploy.sis.exchange import EXCHANGE_TABLES, generate_exchange_activity, with_exchange
from sevisflow.deploy.sis.generator import TABLE_ORDER, generate_school
from sevisflow.deploy.sis.load import create_schema, load_school, play_activity
from sevisflow.deploy.sis.model import World
from sevisflow.deploy.sis.replay import MAPPING, PKS, feed_ops
from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.sevis_events.pure import PurePipeline
from tests.helpers import REPO, connector_section, count, make_settings, settled, wait_for

pytestmark = pytest.mark.integration

TODAY = date(2026, 10, 5)
SEED = 11
PROGRAMS = {"RSCH": "P-1-54321", "STUD": "P-1-54322"}  # scholars and J-1 students: two sponsor programs


def _expected(school: dict[str, list[dict[str, Any]]], activity: list[Any]) -> list[dict[str, Any]]:
    """The EV events the pure pipeline derives: the snapshot's Creates, then the season's updates."""
    world, feed = World(school), SisFeed(primary_keys=PKS)
    feed.ts_ms = int(time.time() * 1000)  # the real commits happen now: birth dates are checked against them
    pipe = PurePipeline(MAPPING, ev_programs=PROGRAMS)
    for table in TABLE_ORDER:
        for row in school[table]:
            feed.tx(("r", f"public.{table}", None, row), snapshot=True)
    events = list(pipe.feed(feed.records).events)
    feed.records.clear()
    for tx in activity:
        feed.tx(*feed_ops(world, tx))
        events += pipe.feed(feed.records).events
        feed.records.clear()
    return [e for e in events if e["kind"].startswith("EV.")]


def _content(e: dict[str, Any]) -> tuple[Any, ...]:
    return (
        e["org_id"],
        e["student_key"],
        e["kind"],
        e["coalesce_key"],
        orjson.dumps(orjson.loads(e["payload_json"]), option=orjson.OPT_SORT_KEYS),
    )


def test_sponsor_records_reach_sevis_events_as_the_programs_ev_events(kafka_stack, fresh_db, unique, tmp_path):
    settings = make_settings(
        kafka_stack,
        fresh_db,
        unique,
        connector=connector_section(
            unique,
            tmp_path,
            **{"table.include.list": ConnectorSettings().table_include_list + [f"public.{t}" for t in EXCHANGE_TABLES]},
        ),
        school={"mapping_file": str(REPO / "deploy" / "sis" / "mapping.toml")},
    )
    settings = dataclasses.replace(
        settings,
        exchange_programs=tuple(
            ExchangeProgram(program_number=number, sis_program=code, ro_user_id="ROUSER0001")
            for code, number in PROGRAMS.items()
        ),
    )
    school = with_exchange(generate_school(30, 0.5, SEED, TODAY), SEED, TODAY, 6)
    activity = generate_exchange_activity(school, SEED, TODAY, 24)
    expected = _expected(school, activity)
    assert {e["kind"] for e in expected} >= {"EV.Create", "EV.Validate", "EV.Biographical"}
    create_schema(fresh_db.dsn)
    load_school(fresh_db.dsn, school)
    ensure_topics(settings.kafka, all_topics(settings))

    pipeline = Pipeline(settings, ["connector", "normalize", "events"]).start()
    try:
        t = settings.topics
        wait_for("the snapshot's views", settled(lambda: count(settings, t.students), 2.0), 90, pipeline)
        play_activity(fresh_db.dsn, activity)
        wait_for("the season's EV events", lambda: count(settings, t.events) >= len(expected), 120, pipeline)
        wait_for("nothing more", settled(lambda: count(settings, t.events), 3.0), 30, pipeline)
    finally:
        failed = pipeline.stop()
    assert not failed, [(f.name, f.error) for f in failed]

    msgs = list(read_topic(settings.kafka, settings.topics.events, timeout_s=30))
    got = [registry().decode(m.value()) for m in msgs]
    ev = [e for e in got if e["kind"].startswith("EV.")]
    got_c, want_c = Counter(map(_content, ev)), Counter(map(_content, expected))
    assert got_c == want_c, ([k[:3] for k in got_c - want_c], [k[:3] for k in want_c - got_c])
    sponsored = school["exchange_visitor"] + [
        op.values for tx in activity for op in tx.ops if op.table == "exchange_visitor" and op.action == "insert"
    ]
    numbers = {f"S{r['person_id']:08d}": PROGRAMS[r["sponsor_program"]] for r in sponsored}
    assert all(
        m.key() == e["org_id"].encode() == numbers[e["student_key"]].encode()
        for m, e in zip(msgs, got)
        if e["kind"].startswith("EV.")
    )
    assert len({e["event_id"] for e in ev}) == len(ev)
    j1 = set(numbers)
    letters = [registry().decode(m.value()) for m in read_topic(settings.kafka, settings.topics.dlq, timeout_s=10)]
    assert not [d for d in letters if d["code"] == "not_reported_visa" and d.get("student_key") in j1]
