"""normalize's edges on the real stack: the snapshot release on Kafka, and one SIS transaction too big for
one state record (20,000 rows) through PostgreSQL → connector → normalize → sevis_events, checked against
the pure re-derivation."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import pytest

from sevisflow.app.runner import Pipeline
from sevisflow.core import kafka_io
from sevisflow.core.kafka_io import (
    TopicSpec,
    delivery_raiser,
    ensure_topics,
    flush_or_raise,
    make_consumer,
    make_producer,
    produce,
    read_topic,
)
from sevisflow.core.serde import registry
from sevisflow.core.topics import all_topics, pipeline_topics, state_topic
from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.normalize.mapping import load_mapping
from sevisflow.processors.normalize.stage import NormalizeStage, NormalizeStore, normalize_topics
from sevisflow.processors.normalize.view import MAX_PARKED_PER_STUDENT_ID
from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline
from tests.helpers import REPO, connector_section, make_settings, settled, wait_for
from tests.normalize_support import (
    BIG_TRANSACTION_SQL,
    CONFIRMED,
    CURRENT,
    N_STUDENTS,
    N_TERMS,
    STATE_MESSAGE_LIMIT,
    as_debezium_snapshot,
    school_tables,
    snapshot_records,
    streamed_after_snapshot,
)
from tests.scenarios import MAPPING, PKS, TABLES, base_rows

pytestmark = pytest.mark.integration

MAPPING_FILE = str(REPO / "deploy" / "sis" / "mapping.toml")


def _produce_all(settings: Any, records: list[Any]) -> None:
    producer = make_producer(settings.kafka)
    errors: list = []
    for r in records:
        produce(producer, r.topic, r.key, r.value, on_delivery=delivery_raiser(errors))
    flush_or_raise(producer, errors)


def _topics_for(settings: Any, with_unmapped: bool) -> None:
    prefix = settings.connector.topic_prefix
    specs = [TopicSpec(f"{prefix}.{t}", 2, 1) for t in MAPPING.tables()] + [TopicSpec(f"{prefix}.transaction", 1, 1)]
    if with_unmapped:
        specs.append(TopicSpec(f"{prefix}.public.audit_log", 2, 1))
    ensure_topics(settings.kafka, pipeline_topics(settings) + normalize_topics(settings) + specs)


def _decoded(settings: Any, topic: str) -> list[dict[str, Any]]:
    """Every record of ``topic`` so far, decoded."""
    return [registry().decode(m.value()) for m in read_topic(settings.kafka, topic)]


def _events(settings: Any) -> list[dict[str, Any]]:
    return _decoded(settings, settings.topics.events)


def test_the_running_stage_releases_a_snapshot_whose_last_table_it_does_not_map(kafka_stack, unique):
    """The last snapshotted table is captured but not mapped, and the SIS stays idle after the snapshot:
    the only sign of the end is that table's "last" row, on a topic outside the mapping."""
    settings = make_settings(kafka_stack, unique=unique, school={"mapping_file": MAPPING_FILE})
    prefix = settings.connector.topic_prefix
    _topics_for(settings, with_unmapped=True)
    snap = snapshot_records("3", unmapped_last=True, prefix=prefix)
    assert snap[-1].topic == f"{prefix}.public.audit_log"
    _produce_all(settings, snap)

    pipeline = Pipeline(settings, ["normalize", "events"], serve_metrics=False).start()
    try:
        views = wait_for(
            "the snapshot's student view",
            lambda: _decoded(settings, settings.topics.students),
            90,
            pipeline,
        )
        assert [(v["student_key"], v["snapshot"]) for v in views] == [("S00000007", True)]
        # streaming goes on behind it, in order
        streamed = streamed_after_snapshot(prefix)
        _produce_all(settings, streamed)
        got = wait_for("the streamed changes' events", settled(lambda: len(_events(settings)), 2.0, 2), 90, pipeline)
        assert got == 2
    finally:
        failed = pipeline.stop()
    assert not failed, [(f.name, f.error) for f in failed]
    expected = PurePipeline(MAPPING, org_id=settings.school.org_id, tx_topic=f"{prefix}.transaction").feed(
        snap + streamed
    )
    assert sorted(e["event_id"] for e in _events(settings)) == sorted(e["event_id"] for e in expected.events)
    assert [e["kind"] for e in expected.events] == ["Program.Extension", "PersonalInfo"]


@pytest.mark.parametrize(
    "order",
    [
        "transaction_topic_first",
        "unmapped_topic_first",
        "unmapped_topic_last",
        "tables_first",
        "unmapped_topic_first_then_idle",
    ],
)
def test_the_stage_releases_the_snapshot_whatever_topic_it_reads_first(kafka_stack, unique, order):
    """The stage's handler fed real Kafka records in a chosen read order (a consumer of many topics may
    read any partition first), its watermarks read from the real broker."""
    settings = make_settings(kafka_stack, unique=unique, school={"mapping_file": MAPPING_FILE})
    prefix = settings.connector.topic_prefix
    _topics_for(settings, with_unmapped=True)
    snap = snapshot_records("2", unmapped_last=True, prefix=prefix)
    streamed = [] if order.endswith("idle") else streamed_after_snapshot(prefix)
    _produce_all(settings, snap + streamed)

    msgs = {t: list(read_topic(settings.kafka, t)) for t in {r.topic for r in snap + streamed}}
    tx_topic, unmapped = f"{prefix}.transaction", f"{prefix}.public.audit_log"
    tables = sorted(t for t in msgs if t not in (tx_topic, unmapped))
    if order == "transaction_topic_first":
        sequence = [tx_topic, unmapped, *tables]
    elif order.startswith("unmapped_topic_first"):
        sequence = [unmapped, tx_topic, *tables]
    elif order == "unmapped_topic_last":
        sequence = [*tables, tx_topic, unmapped]
    else:
        sequence = [*tables, unmapped, tx_topic]

    stage = NormalizeStage(settings, load_mapping(MAPPING_FILE), NormalizeStore())
    stage.consumer = make_consumer(settings.kafka, group_id=f"watermarks-{unique}")
    outputs = []
    try:
        for topic in sequence:
            for m in msgs.get(topic, []):
                outputs += stage.handle(m, stage.store)
        outputs += stage.on_idle(stage.store)
    finally:
        stage.consumer.close()
    assert stage.normalizer.snapshot_status() is None, "the snapshot was not released"
    views = [registry().decode(o.value) for o in outputs if o.topic == settings.topics.students]
    assert [v["snapshot"] for v in views] == [True] + [False] * len(
        {r.key for r in streamed if "transaction" in r.topic}
    )

    pure = PurePipeline(MAPPING, org_id=settings.school.org_id, tx_topic=tx_topic)
    expected = pure.feed(snap + streamed)
    assert [(v["student_key"], v["view_json"]) for v in views] == [
        (u.student_key, orjson.dumps(u.view).decode()) for u in expected.views
    ]
    derived = PureOutput()
    from sevisflow.processors.normalize.view import StudentUpdate

    replay = PurePipeline(MAPPING, org_id=settings.school.org_id)
    for v in views:
        replay.apply_view(
            StudentUpdate(v["student_key"], orjson.loads(v["view_json"]), v["lineage"], v["unit_id"], v["snapshot"]),
            derived,
        )
    assert sorted(e["event_id"] for e in derived.events) == sorted(e["event_id"] for e in expected.events)


def test_a_snapshot_with_more_rows_under_one_student_id_than_a_state_record_holds_is_released(
    kafka_stack, unique, monkeypatch
):
    """A snapshot in which 10,000 address rows name a placeholder person id 0 (no such student), the
    stage's producer taking records of at most 320 KiB (8 MiB in production: ~200,000 such rows). The
    held rows of one student id were one state value: past the limit the producer refused it, and
    normalize stopped applying anything for the whole school. Now the school's student comes through,
    the rows beyond what may wait for id 0 are dead letters, and the group is many small records."""
    limit = 320 * 1024
    plain = kafka_io.producer_config
    monkeypatch.setattr(
        kafka_io,
        "producer_config",
        lambda *a, **kw: {**plain(*a, **kw), "message.max.bytes": limit, "batch.size": limit // 2},
    )
    settings = make_settings(kafka_stack, unique=unique, school={"mapping_file": MAPPING_FILE})
    prefix = settings.connector.topic_prefix
    _topics_for(settings, with_unmapped=False)
    feed, rows = SisFeed(prefix=prefix, primary_keys=PKS), base_rows()
    for name, row in rows.items():
        feed.tx(("r", TABLES[name], None, row), snapshot=True)
    placeholder = 10_000
    for i in range(placeholder):
        feed.tx(("r", "public.address", None, {**rows["us"], "address_id": 700_000 + i, "person_id": 0}), snapshot=True)
    ids = [f'public.address:{{"address_id":{700_000 + i}}}' for i in range(placeholder)]
    assert len(orjson.dumps(ids)) > limit, "the premise: the group's row ids would not fit in one record"
    _produce_all(settings, as_debezium_snapshot(feed.records))

    pipeline = Pipeline(settings, ["normalize"], serve_metrics=False).start()
    try:
        views = wait_for(
            "the snapshot's student view",
            lambda: _decoded(settings, settings.topics.students),
            120,
            pipeline,
        )
        refused = placeholder - MAX_PARKED_PER_STUDENT_ID
        dead = wait_for(
            "the placeholder rows' dead letters",
            settled(lambda: len(list(read_topic(settings.kafka, settings.topics.dlq))), 2.0, refused),
            120,
            pipeline,
        )
    finally:
        failed = pipeline.stop()
    assert not failed, [(f.name, f.error) for f in failed]
    assert [v["student_key"] for v in views] == [rows["person"]["school_id"]]
    letters = _decoded(settings, settings.topics.dlq)
    assert dead == refused and Counter(d["code"] for d in letters) == {"orphan_limit": refused}
    sizes: dict[bytes, int] = {}
    for m in read_topic(settings.kafka, state_topic(settings, "normalize")):
        sizes[m.key()] = max(sizes.get(m.key(), 0), len(m.value() or b""))
    group = {k: n for k, n in sizes.items() if k.startswith(b"sg:0")}
    assert len(group) > 10 and max(group.values()) < 16 * 1024, "the group is many small records"
    assert max(sizes.values()) < limit  # the largest: the 500 rows waiting for id 0 (o:0), ~200 KB


def test_a_transaction_larger_than_a_state_record_flows_through_to_the_right_events(
    kafka_stack, fresh_db, unique, tmp_path
):
    """PostgreSQL → connector → normalize → sevis_events: a school of 400 students x 50 terms, then one
    UPDATE of all 20,000 enrollment rows in one commit. Before chunking, normalize's transaction buffer
    outgrew the message size and the stage retried forever; now every student gets its one Registration,
    exactly the events `sevisflow verify`'s pure re-derivation finds in the same change topics. The
    buffer the stage wrote to its changelog is measured: more than one record may hold (the premise)."""
    import psycopg

    from sevisflow.deploy.sis.load import create_schema, load_school

    settings = make_settings(
        kafka_stack,
        fresh_db,
        unique,
        connector=connector_section(unique, tmp_path, **{"snapshot.fetch.size": 5000}),
        school={"mapping_file": MAPPING_FILE},
    )
    create_schema(fresh_db.dsn)
    load_school(fresh_db.dsn, school_tables())
    ensure_topics(settings.kafka, all_topics(settings))
    t = settings.topics

    t0 = time.monotonic()
    pipeline = Pipeline(settings, ["connector", "normalize", "events"], serve_metrics=False).start()
    try:
        wait_for(
            "the snapshot's student views",
            settled(lambda: sum(1 for _ in read_topic(settings.kafka, t.students)), 3.0, N_STUDENTS),
            240,
            pipeline,
        )
        assert _events(settings) == [], "students already in SEVIS: the snapshot is the baseline"
        started = time.monotonic()
        with psycopg.connect(fresh_db.dsn) as conn:
            cur = conn.execute(BIG_TRANSACTION_SQL, {"current": CURRENT, "confirmed": CONFIRMED})
            assert cur.rowcount == N_STUDENTS * N_TERMS == 20_000
        wait_for(
            "one Registration per student", settled(lambda: len(_events(settings)), 3.0, N_STUDENTS), 240, pipeline
        )
        took, snapshot_s = time.monotonic() - started, started - t0
    finally:
        failed = pipeline.stop()
    assert not failed, [(f.name, f.error) for f in failed]

    events = _events(settings)
    assert Counter(e["kind"] for e in events) == {"Registration": N_STUDENTS}
    assert len({e["student_key"] for e in events}) == N_STUDENTS
    t1 = time.monotonic()
    assert {e["event_id"] for e in events} == set(_rederived(settings)), "verify's re-derivation differs"
    rederive_s = time.monotonic() - t1
    buffered = _buffer_bytes(settings)
    assert buffered > STATE_MESSAGE_LIMIT, f"the transaction's buffer ({buffered} bytes) fits in one record"
    print(
        f"snapshot of {N_STUDENTS * (N_TERMS + 6) + N_TERMS} rows: {snapshot_s:.1f} s; the "
        f"{N_STUDENTS * N_TERMS}-row transaction ({buffered} bytes buffered) through connector + normalize + "
        f"sevis_events: {took:.1f} s; verify's re-derivation: {rederive_s:.1f} s"
    )


def _buffer_bytes(settings: Any) -> int:
    """The size of the transaction buffers normalize wrote to its changelog, each chunk at its largest."""
    peak: dict[bytes, int] = {}
    for m in read_topic(settings.kafka, state_topic(settings, "normalize")):
        key, value = m.key() or b"", m.value()
        if key.startswith(b"t:") and value is not None:
            peak[key] = max(peak.get(key, 0), len(value))
    return sum(peak.values())


def _rederived(settings: Any) -> dict[str, Any]:
    """What `sevisflow verify` re-derives from the change topics the connector wrote."""
    from sevisflow.app.cli.verify import load_context

    ctx = load_context(settings, with_sources=True, timeout_s=60)
    assert ctx.transactions, "the transaction topic is read"
    return ctx.rederived_events()
