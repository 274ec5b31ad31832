"""Bring your own Debezium: the real Debezium 3.6.1 PostgreSQL connector, configured with the shipped
deploy/debezium/sevisflow-sis.properties, feeds normalize → sevis_events the same SEVIS events as
sevisflow's own connector reading the same SIS database at the same time.

Both connectors snapshot a generated school (each at its own slot's consistent point), then stream the
same season of SIS activity. Every event must be identical in content, and each streamed one must come
from the same SIS transaction; event ids differ, as they hash each connector's own source positions.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sevisflow.app.audit.replay import read_all
from sevisflow.app.audit.verify import rederive_events
from sevisflow.core.config import Settings
from sevisflow.deploy.local.debezium import ConnectStandalone, connector_properties
from sevisflow.deploy.sis.activity import generate_activity
from sevisflow.deploy.sis.generator import generate_school
from sevisflow.deploy.sis.load import PUBLICATION, create_schema, load_school, play_activity
from sevisflow.processors.normalize.mapping import load_mapping
from sevisflow.processors.normalize.stage import input_topics, mapping_path
from tests.helpers import KafkaHandle, PgHandle
from tests.integration.connector_support import (
    RunningConnector,
    connector_settings,
    wait_caught_up,
    wait_streaming,
    wait_until,
)
from tests.school_replay import TODAY

pytestmark = pytest.mark.integration


def _slot_active(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return bool(row and row[0])


def _derived(settings: Settings, prefix: str) -> dict[str, dict[str, Any]]:
    s = settings.replace(connector={"topic_prefix": prefix})
    mapping = load_mapping(mapping_path(s))
    topics, tx_topic = input_topics(s, mapping)
    changes = [d for t in topics if t != tx_topic for d in read_all(s.kafka, t)]
    txs = read_all(s.kafka, tx_topic) if tx_topic else []
    assert changes and txs, f"nothing on {prefix}'s topics"
    return rederive_events(changes, mapping, s.school.org_id, tx_topic, txs, topics, s.school.timezone)


def _content(e: dict[str, Any]) -> tuple[Any, ...]:
    return (
        e["student_key"],
        e["kind"],
        e["coalesce_key"],
        e["payload_json"],
        e["before_json"],
        e["after_json"],
        tuple(e.get("problems") or ()),
    )


def test_debezium_feeds_normalize_the_same_sevis_events_as_our_connector(
    kafka_stack: KafkaHandle, fresh_db: PgHandle, unique: str, tmp_path: Path
) -> None:
    create_schema(fresh_db.dsn)
    school = generate_school(40, 0.5, 7, TODAY)
    load_school(fresh_db.dsn, school)
    ours_prefix, dbz_prefix = f"sf{unique}", f"dbz{unique}"
    s = connector_settings(
        kafka_stack,
        fresh_db,
        unique,
        tmp_path,
        **{
            "topic.prefix": ours_prefix,
            "publication.name": PUBLICATION,
            "publication.autocreate.mode": "disabled",
            "table.include.list": [
                "public.person",
                "public.immigration",
                "public.address",
                "public.program",
                "public.term",
                "public.enrollment",
                "public.finance",
                "public.dependent",
                "public.student_authorization",
            ],
        },
    )
    dbz_slot = f"dbz_{unique}"
    dbz = ConnectStandalone(
        tmp_path / "debezium",
        kafka_stack.bootstrap,
        connector_properties(fresh_db.port, fresh_db.dbname, dbz_slot, dbz_prefix),
    )
    try:
        with RunningConnector(s):
            wait_streaming(s, timeout=90)
            wait_until(
                lambda: _slot_active(fresh_db.dsn, dbz_slot) or not dbz.running(),
                180,
                "Debezium to finish its snapshot and stream",
                interval=0.5,
            )
            assert dbz.running(), dbz.log_tail()
            played = play_activity(fresh_db.dsn, generate_activity(school, 60, 7, TODAY))
            assert played >= 50
            wait_caught_up(fresh_db.dsn, s.connector.slot_name, timeout=90)
            wait_caught_up(fresh_db.dsn, dbz_slot, timeout=120)
    finally:
        dbz.stop()

    ours, theirs = _derived(s, ours_prefix), _derived(s, dbz_prefix)
    assert len(ours) > 40, "too few events to compare"
    # the same events in content — snapshot creates and streamed updates alike
    assert Counter(map(_content, ours.values())) == Counter(map(_content, theirs.values()))

    # every streamed SIS transaction is reported by both, from the same SIS transaction (txId in the lineage);
    # the event ids themselves differ: they hash the source position, and Debezium's source.sequence puts the
    # previous transaction's commit LSN first where sevisflow's connector puts the event's own (docs/OPERATIONS.md)
    def streamed_txs(events: dict[str, dict[str, Any]]) -> Counter[tuple[Any, ...]]:
        def snapshot_row(x: dict[str, Any]) -> bool:  # snapshot rows have no commit LSN: [null,"<lsn>"]
            return str(x.get("sequence") or "").startswith("[null")

        return Counter(
            (e["student_key"], e["kind"], tuple(sorted({x["tx_id"] for x in e["lineage"]})))
            for e in events.values()
            if e["lineage"] and not any(map(snapshot_row, e["lineage"]))
        )

    assert len(streamed_txs(ours)) >= 20 and streamed_txs(ours) == streamed_txs(theirs)
