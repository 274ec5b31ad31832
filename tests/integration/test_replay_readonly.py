"""``sevisflow replay`` against a real Kafka: read-only, bounded by time/offset, filtered by student."""

from __future__ import annotations

import stat

import orjson
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from sevisflow.app.cli import main
from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_admin, make_consumer, make_producer
from testkit.audit_scenario import OTHER, STUDENT, T0
from tests.audit_scenario import load_scenario, scenario_config
from tests.helpers import make_settings

pytestmark = pytest.mark.integration


def _committed(kafka, group: str, topic: str, parts: int) -> dict[int, int]:
    admin = make_admin(kafka)
    req = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(parts)])]
    res = admin.list_consumer_group_offsets(req)[group].result()
    return {tp.partition: tp.offset for tp in res.topic_partitions}


def _groups(kafka) -> set[str]:
    res = make_admin(kafka).list_consumer_groups().result(timeout=30)
    return {g.group_id for g in res.valid}


def test_replay_never_moves_committed_offsets_nor_creates_groups(kafka_stack, unique, tmp_path):
    settings = make_settings(kafka_stack, unique=unique)
    topic = f"audit.readonly.{unique}"
    ensure_topics(settings.kafka, [TopicSpec(topic, 3, 1)])
    producer = make_producer(settings.kafka)
    for i in range(60):
        producer.produce(topic, key=f"k{i}".encode(), value=orjson.dumps({"i": i}), partition=i % 3)
    assert producer.flush(30) == 0
    # a "pipeline" group that has processed part of the topic
    group = f"pipeline-{unique}"
    consumer = make_consumer(settings.kafka, group)
    consumer.commit(
        offsets=[TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 3), TopicPartition(topic, 2, 20)],
        asynchronous=False,
    )
    consumer.close()
    before = _committed(settings.kafka, group, topic, 3)
    assert before == {0: 7, 1: 3, 2: 20}
    groups_before = _groups(settings.kafka)

    cfg = scenario_config(tmp_path, kafka_stack.bootstrap, unique)
    out = tmp_path / "all.jsonl"
    assert main(["--config", str(cfg), "replay", topic, "--output", str(out)]) == 0
    assert (
        main(["--config", str(cfg), "replay", topic, "--from", "5", "--to", "0:10,1:9,2:8", "--format", "table"]) == 0
    )

    assert _committed(settings.kafka, group, topic, 3) == before
    assert _groups(settings.kafka) == groups_before  # replay joined and created no group
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(lines) == 60
    assert sorted(x["value"]["i"] for x in lines) == list(range(60))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_replay_by_time_offset_and_student(kafka_stack, unique, tmp_path, capsys):
    names = load_scenario(kafka_stack, unique)
    cfg = scenario_config(tmp_path, kafka_stack.bootstrap, unique)
    prefix = names["prefix"]

    def run(*args: str) -> list[dict]:
        capsys.readouterr()
        assert main(["--config", str(cfg), "replay", *args]) == 0
        return [orjson.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]

    # time bounds: --from inclusive, --to exclusive, by record timestamp
    events = run(names["events"], "--from", "2024-06-19T06:54:20.100Z", "--to", "2024-06-19T07:23:20.100Z")
    assert [e["value"]["event_id"] for e in events] == ["e-208", "e-308", "e-310"]
    assert events[0]["value"]["payload"]["FullName"] == {"LastName": "Exampel"}  # payload_json expanded
    # offsets
    assert [e["offset"] for e in run(names["events"], "--from", "1", "--to", "3")] == [1, 2]
    # student on a change topic: the person id is learned from the person topic
    addr = run(f"{prefix}.public.address", "--student", STUDENT)
    assert len(addr) == 1 and addr[0]["format"] == "debezium" and addr[0]["key"] == {"address_id": 420}
    assert run(f"{prefix}.public.enrollment", "--student", STUDENT) == []
    assert len(run(f"{prefix}.public.enrollment", "--student", "43")) == 1
    # student on sevis.batches: the closed batch narrowed to the student's record only
    batches = run(names["batches"], "--student", OTHER)
    closed = [b for b in batches if b["value"]["type"] == "closed"]
    assert len(closed) == 1 and [r["student_key"] for r in closed[0]["value"]["records"]] == [OTHER]
    assert not any(STUDENT in orjson.dumps(b).decode() for b in batches)
    assert T0 > 0


def test_replay_unknown_topic_is_a_clear_error(kafka_stack, unique, tmp_path, capsys):
    cfg = scenario_config(tmp_path, kafka_stack.bootstrap, unique)
    assert main(["--config", str(cfg), "replay", f"no.such.{unique}"]) == 1
    assert "does not exist" in capsys.readouterr().err
