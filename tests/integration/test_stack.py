"""The local stack itself: real Kafka and PostgreSQL behave as the pipeline needs."""

from __future__ import annotations

import subprocess
import time
import uuid

import psycopg
import pytest
from confluent_kafka import TopicPartition

from sevisflow.core.config import KafkaSettings
from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_consumer, make_producer, read_topic
from sevisflow.deploy.local.stack import port_open, stacks_root, start_stack, stop_stack

pytestmark = pytest.mark.integration


def _kafka(kafka_stack) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_stack.bootstrap)


def test_produce_consume_round_trip(kafka_stack, unique):
    kafka = _kafka(kafka_stack)
    topic = f"roundtrip.{unique}"
    ensure_topics(kafka, [TopicSpec(topic, 3, 1)])
    producer = make_producer(kafka)
    sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(30)}
    for k, v in sent.items():
        producer.produce(topic, key=k, value=v)
    assert producer.flush(30) == 0
    got = {m.key(): m.value() for m in read_topic(kafka, topic)}
    assert got == sent


def test_transactional_write_invisible_to_read_committed_until_commit(kafka_stack, unique):
    kafka = _kafka(kafka_stack)
    topic = f"txn.{unique}"
    ensure_topics(kafka, [TopicSpec(topic, 1, 1)])
    producer = make_producer(kafka, transactional_id=f"test-{unique}")
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"pending")
    producer.flush(30)

    consumer = make_consumer(kafka, f"g-{unique}")
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        seen_before = [m for m in (consumer.poll(1.0) for _ in range(3)) if m is not None and not m.error()]
        assert seen_before == []

        producer.commit_transaction(30)
        deadline = time.monotonic() + 20
        seen_after = []
        while not seen_after and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is not None and not m.error():
                seen_after.append(m.value())
        assert seen_after == [b"pending"]
    finally:
        consumer.close()


def test_aborted_transaction_never_visible(kafka_stack, unique):
    kafka = _kafka(kafka_stack)
    topic = f"abort.{unique}"
    ensure_topics(kafka, [TopicSpec(topic, 1, 1)])
    producer = make_producer(kafka, transactional_id=f"abort-{unique}")
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"aborted")
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed")
    producer.commit_transaction(30)
    assert [m.value() for m in read_topic(kafka, topic)] == [b"committed"]


def test_logical_slot_receives_insert(fresh_db, unique):
    with psycopg.connect(fresh_db.dsn, autocommit=True) as conn:
        assert conn.execute("SHOW wal_level").fetchone()[0] == "logical"
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (f"s_{unique}",))
        conn.execute("INSERT INTO t VALUES (1, 'committed row')")
        rows = conn.execute("SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL)", (f"s_{unique}",)).fetchall()
        conn.execute("SELECT pg_drop_replication_slot(%s)", (f"s_{unique}",))
    changes = [r[0] for r in rows]
    assert any("INSERT" in c and "committed row" in c for c in changes), changes


def test_postgres_runs_in_odd_timezone_and_not_as_root(pg_stack):
    with psycopg.connect(pg_stack.dsn_for("postgres")) as conn:
        assert conn.execute("SHOW timezone").fetchone()[0] == "Pacific/Pago_Pago"
        assert int(conn.execute("SHOW max_replication_slots").fetchone()[0]) >= 10


def test_two_stacks_at_once_then_nothing_left_behind():
    first = start_stack(name=f"t1-{uuid.uuid4().hex[:6]}", progress=lambda *_: None)
    second = start_stack(name=f"t2-{uuid.uuid4().hex[:6]}", progress=lambda *_: None)
    try:
        ports = {first.kafka.port, first.postgres.port, second.kafka.port, second.postgres.port}
        assert len(ports) == 4
        assert first.base != second.base
        for s in (first, second):
            assert port_open(s.kafka.port) and port_open(s.postgres.port)
    finally:
        stop_stack(first)
        stop_stack(second)
    pids = [first.kafka.pid, first.postgres.pid, second.kafka.pid, second.postgres.pid]
    for port in ports:
        assert not port_open(port), f"port {port} still open after stop"
    for pid in pids:
        out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
        assert out == "" or out.startswith("Z"), f"process {pid} still running ({out})"
    assert not any(
        p.name.startswith(("t1-", "t2-")) and p.name.endswith(first.name[-6:]) for p in stacks_root().iterdir()
    )
