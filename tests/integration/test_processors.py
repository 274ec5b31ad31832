"""normalize + sevis_events on a real Kafka: exactly-once under kill -9, dead letters, `sevisflow issues`."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.normalize.stage import normalize_topics
from sevisflow.processors.sevis_events.pure import PurePipeline
from sevisflow.processors.sevis_events.stage import events_topics
from sevisflow.app.cli import main as cli_main
from sevisflow.core.kafka_io import TopicSpec, delivery_raiser, ensure_topics, flush_or_raise, make_producer, produce, read_topic
from sevisflow.core.serde import registry
from sevisflow.core.topics import pipeline_topics
from tests.helpers import REPO, make_settings
from tests.scenarios import MAPPING, ORG, PKS, school_history

pytestmark = pytest.mark.integration


def write_config(settings, path: Path) -> Path:
    t = settings.topics
    path.write_text(
        f'[kafka]\nbootstrap_servers = "{settings.kafka.bootstrap_servers}"\npartitions = 3\n'
        f'[connector]\n"topic.prefix" = "{settings.connector.topic_prefix}"\n'
        f'[school]\norg_id = "{ORG}"\nmapping_file = "{REPO / "deploy/sis/mapping.toml"}"\n'
        f'[topics]\nevents = "{t.events}"\ncommands = "{t.commands}"\nbatches = "{t.batches}"\n'
        f'results = "{t.results}"\ndlq = "{t.dlq}"\nstudents = "{t.students}"\n')
    return path


def start(stage: str, config: Path, log: Path, state_dir: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "SEVISFLOW_CONFIG": str(config), "SEVISFLOW_INSTANCE": "it"}
    if state_dir is not None:   # [state] backend = "rocksdb", small cache and buffers
        env.update(SEVISFLOW_STATE_BACKEND="rocksdb", SEVISFLOW_STATE_DIR=str(state_dir),
                   SEVISFLOW_STATE_BLOCK_CACHE_MB="8", SEVISFLOW_STATE_WRITE_BUFFER_MB="4")
    return subprocess.Popen([sys.executable, "-m", f"processors.{stage}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_kill_9_at_any_point_loses_nothing_and_duplicates_nothing(kafka_stack, unique, tmp_path, backend):
    state_dir = tmp_path / "state" if backend == "rocksdb" else None
    settings = make_settings(kafka_stack, unique=unique, school={"org_id": ORG})
    prefix = settings.connector.topic_prefix
    change_topics = [TopicSpec(f"{prefix}.{t}", 2, 1) for t in MAPPING.tables()] + \
        [TopicSpec(f"{prefix}.transaction", 1, 1)]
    ensure_topics(settings.kafka, pipeline_topics(settings) + normalize_topics(settings) + events_topics(settings)
                  + change_topics)
    feed = SisFeed(prefix=prefix, primary_keys=PKS)
    school_history(feed, 40)
    expected = PurePipeline(MAPPING, org_id=ORG, tx_topic=f"{prefix}.transaction").feed(feed.records)
    want = Counter(e["event_id"] for e in expected.events)
    assert len(want) == len(expected.events) > 100

    producer = make_producer(settings.kafka)
    errors: list = []
    for r in feed.records:
        produce(producer, r.topic, r.key, r.value, on_delivery=delivery_raiser(errors))
    flush_or_raise(producer, errors)

    config = write_config(settings, tmp_path / "sevisflow.toml")
    procs = {s: start(s, config, tmp_path / f"{s}.log", state_dir) for s in ("normalize", "sevis_events")}
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 100
    got: Counter = Counter()
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.8, 2.0))
            if kills < 6:
                victim = rng.choice(sorted(procs))
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                kills += 1
                procs[victim] = start(victim, config, tmp_path / f"{victim}.log", state_dir)
                continue
            got = Counter(registry().decode(m.value())["event_id"] for m in read_topic(settings.kafka, settings.topics.events))
            if sum(got.values()) >= len(want):
                time.sleep(3)   # anything extra (a duplicate) would show up now
                got = Counter(registry().decode(m.value())["event_id"]
                              for m in read_topic(settings.kafka, settings.topics.events))
                break
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    assert kills == 6
    assert [k for k, n in got.items() if n > 1] == []
    assert set(got) == set(want), (tmp_path / "normalize.log").read_text()[-3000:]
    if state_dir is not None:   # killed stages' folders were swept by their successors, the last ones removed
        assert list(state_dir.iterdir()) == []
    # per student, events arrive in source order
    events = [registry().decode(m.value()) for m in read_topic(settings.kafka, settings.topics.events)]
    order = {e["event_id"]: i for i, e in enumerate(expected.events)}
    by_student: dict[str, list[int]] = {}
    for e in events:
        by_student.setdefault(e["student_key"], []).append(order[e["event_id"]])
    assert all(v == sorted(v) for v in by_student.values())

    # dead letters for the rejected names, listed by the DSO CLI
    code = cli_main(["--config", str(config), "issues", "--code", "name_rejected", "--json"])
    assert code == 0
    issues = [registry().decode(m.value()) for m in read_topic(settings.kafka, settings.topics.dlq)]
    rejected = {i["student_key"] for i in issues if i["code"] == "name_rejected"}
    assert rejected == {f"S{100 + i:08d}" for i in range(40) if i % 7 == 3}
    assert all(i["source_topic"] and i["source_offset"] is not None for i in issues)


def test_kill_9_while_a_big_transaction_is_buffered_loses_nothing(kafka_stack, unique, tmp_path):
    """One SIS transaction of 10,000 rows: normalize commits its buffer chunk by chunk as it reads the
    rows, and is killed -9 three times meanwhile. Each restart restores the chunks from the changelog;
    every student still gets exactly its one Registration, none twice."""
    from tests.normalize_support import big_school, big_transaction

    settings = make_settings(kafka_stack, unique=unique, school={"org_id": ORG})
    prefix = settings.connector.topic_prefix
    ensure_topics(settings.kafka, pipeline_topics(settings) + normalize_topics(settings) + events_topics(settings)
                  + [TopicSpec(f"{prefix}.{t}", 2, 1) for t in MAPPING.tables()]
                  + [TopicSpec(f"{prefix}.transaction", 1, 1)])
    feed, enrollments = big_school(prefix, students=200)
    big_transaction(feed, enrollments)
    assert len(enrollments) == 10_000
    expected = PurePipeline(MAPPING, org_id=ORG, tx_topic=f"{prefix}.transaction").feed(feed.records)
    want = {e["event_id"] for e in expected.events}
    assert Counter(e["kind"] for e in expected.events) == {"Registration": 200}

    producer = make_producer(settings.kafka)
    errors: list = []
    for r in feed.records:
        produce(producer, r.topic, r.key, r.value, on_delivery=delivery_raiser(errors))
    flush_or_raise(producer, errors)

    config = write_config(settings, tmp_path / "sevisflow.toml")
    procs = {s: start(s, config, tmp_path / f"{s}.log") for s in ("normalize", "sevis_events")}
    got: Counter = Counter()
    try:
        for pause in (4.0, 3.0, 3.0):
            time.sleep(pause)
            procs["normalize"].send_signal(signal.SIGKILL)
            procs["normalize"].wait()
            procs["normalize"] = start("normalize", config, tmp_path / "normalize.log")
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            time.sleep(2)
            got = Counter(registry().decode(m.value())["event_id"]
                          for m in read_topic(settings.kafka, settings.topics.events))
            if sum(got.values()) >= len(want):
                time.sleep(3)   # anything extra (a duplicate) would show up now
                got = Counter(registry().decode(m.value())["event_id"]
                              for m in read_topic(settings.kafka, settings.topics.events))
                break
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    assert [k for k, n in got.items() if n > 1] == []
    assert set(got) == want, (tmp_path / "normalize.log").read_text()[-3000:]
    # the buffer was committed in chunks while the transaction was incomplete: the restarts restored it
    state = [m.key() for m in read_topic(settings.kafka, f"sevisflow.normalize.state.{unique}")]
    chunk_keys = {k for k in state if k.startswith(b"t:") and k.count(b":") == 2}
    assert len(chunk_keys) >= 10_000 // 256, "the transaction buffer is written as chunks"
