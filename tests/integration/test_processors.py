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

from sevisflow.app.cli import main as cli_main
from sevisflow.core.kafka_io import read_topic
from sevisflow.core.serde import registry
from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.sevis_events.pure import PurePipeline
from testkit.school import feed_on_kafka
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
        f'results = "{t.results}"\ndlq = "{t.dlq}"\nstudents = "{t.students}"\n'
    )
    return path


def start(stage: str, config: Path, log: Path, state_dir: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "SEVISFLOW_CONFIG": str(config), "SEVISFLOW_INSTANCE": "it"}
    if state_dir is not None:  # [state] backend = "rocksdb", small cache and buffers; normalize's cache trimmed
        env.update(
            SEVISFLOW_STATE_BACKEND="rocksdb",
            SEVISFLOW_STATE_DIR=str(state_dir),  # to 20 values
            SEVISFLOW_STATE_BLOCK_CACHE_MB="8",
            SEVISFLOW_STATE_WRITE_BUFFER_MB="4",
            SEVISFLOW_STATE_CACHE_ENTRIES="20",
        )
    return subprocess.Popen(
        [sys.executable, "-m", f"sevisflow.processors.{stage}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab"),
    )


def _event_ids(settings) -> Counter:
    return Counter(registry().decode(m.value())["event_id"] for m in read_topic(settings.kafka, settings.topics.events))


def _all_events(settings, want: int) -> Counter:
    """The event ids on the events topic once there are ``want`` of them, 3 s later (a duplicate shows by then)."""
    got = _event_ids(settings)
    if sum(got.values()) >= want:
        time.sleep(3)
        got = _event_ids(settings)
    return got


def _stop_all(procs: dict[str, subprocess.Popen]) -> None:
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def _kill_and_restart(
    procs: dict[str, subprocess.Popen], victim: str, config: Path, log: Path, state_dir: Path | None = None
) -> None:
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait()
    procs[victim] = start(victim, config, log, state_dir)


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_kill_9_at_any_point_loses_nothing_and_duplicates_nothing(kafka_stack, unique, tmp_path, backend):
    state_dir = tmp_path / "state" if backend == "rocksdb" else None
    settings = make_settings(kafka_stack, unique=unique, school={"org_id": ORG})
    prefix = settings.connector.topic_prefix
    feed = SisFeed(prefix=prefix, primary_keys=PKS)
    school_history(feed, 40)
    expected = PurePipeline(MAPPING, org_id=ORG, tx_topic=f"{prefix}.transaction").feed(feed.records)
    want = Counter(e["event_id"] for e in expected.events)
    assert len(want) == len(expected.events) > 100
    feed_on_kafka(settings, feed, MAPPING.tables(), partitions=2)

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
                _kill_and_restart(procs, victim, config, tmp_path / f"{victim}.log", state_dir)
                kills += 1
                continue
            got = _all_events(settings, len(want))
            if sum(got.values()) >= len(want):
                break
    finally:
        _stop_all(procs)
    assert kills == 6
    assert [k for k, n in got.items() if n > 1] == []
    assert set(got) == set(want), (tmp_path / "normalize.log").read_text()[-3000:]
    if state_dir is not None:  # killed stages' folders were swept by their successors, the last ones removed
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
    feed, enrollments = big_school(prefix, students=200)
    big_transaction(feed, enrollments)
    assert len(enrollments) == 10_000
    expected = PurePipeline(MAPPING, org_id=ORG, tx_topic=f"{prefix}.transaction").feed(feed.records)
    want = {e["event_id"] for e in expected.events}
    assert Counter(e["kind"] for e in expected.events) == {"Registration": 200}
    feed_on_kafka(settings, feed, MAPPING.tables(), partitions=2)

    config = write_config(settings, tmp_path / "sevisflow.toml")
    procs = {s: start(s, config, tmp_path / f"{s}.log") for s in ("normalize", "sevis_events")}
    got: Counter = Counter()
    try:
        for pause in (4.0, 3.0, 3.0):
            time.sleep(pause)
            _kill_and_restart(procs, "normalize", config, tmp_path / "normalize.log")
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            time.sleep(2)
            got = _all_events(settings, len(want))
            if sum(got.values()) >= len(want):
                break
    finally:
        _stop_all(procs)
    assert [k for k, n in got.items() if n > 1] == []
    assert set(got) == want, (tmp_path / "normalize.log").read_text()[-3000:]
    # the buffer was committed in chunks while the transaction was incomplete: the restarts restored it
    state = [m.key() for m in read_topic(settings.kafka, f"sevisflow.normalize.state.{unique}")]
    chunk_keys = {k for k in state if k.startswith(b"t:") and k.count(b":") == 2}
    assert len(chunk_keys) >= 10_000 // 256, "the transaction buffer is written as chunks"


def test_kill_9_while_the_snapshot_is_released_slice_by_slice_loses_and_duplicates_nothing(
    kafka_stack, unique, tmp_path
):
    """A 120-student snapshot (then 30 streamed SIS transactions) released 60 rows per Kafka transaction:
    normalize ends itself like kill -9 before a slice, after a slice is applied but before its commit,
    and just after a slice's commit. Each restart restores the release's progress from the changelog and
    goes on: every student's snapshot view is published once, every event once, as the pure pipeline
    derives them."""
    from datetime import date

    from tests.crashing import ENV_VAR, EXIT_CODE
    from tests.normalize_support import generated_school_feed

    settings = make_settings(kafka_stack, unique=unique, school={"org_id": ORG})
    prefix = settings.connector.topic_prefix
    snap, streamed = generated_school_feed(prefix, students=120, activity=30, today=date(2026, 10, 5))
    expected = PurePipeline(MAPPING, org_id=ORG, tx_topic=f"{prefix}.transaction").feed(snap + streamed)
    want = Counter(e["event_id"] for e in expected.events)
    assert len(want) == len(expected.events) > 20 and any(e["kind"] == "Create" for e in expected.events)
    feed = SisFeed(prefix=prefix)
    feed.records = snap + streamed
    feed_on_kafka(settings, feed, MAPPING.tables(), partitions=2)
    config = write_config(settings, tmp_path / "sevisflow.toml")
    log = tmp_path / "normalize.log"
    env = {
        **{k: v for k, v in os.environ.items() if k != ENV_VAR},
        "SEVISFLOW_CONFIG": str(config),
        "SEVISFLOW_INSTANCE": "it",
        "SEVISFLOW_STATE_RELEASE_SLICE_ROWS": "60",
        "PYTHONPATH": str(REPO),
    }
    for armed in (
        "normalize.release_slice:3",
        "kafka.before_commit:2@normalize.release_slice",
        "kafka.after_commit:2@normalize.release_slice",
    ):
        with open(log, "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.crashing", "sevisflow.processors.normalize"],
                cwd=REPO,
                env={**env, ENV_VAR: armed},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            try:
                rc = proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError(
                    f"normalize armed at {armed} never reached it: {log.read_text()[-2000:]}"
                ) from None
        assert rc == EXIT_CODE, f"{armed}: exit {rc}\n{log.read_text()[-2000:]}"
    procs = {
        s: start(s, config, log if s == "normalize" else tmp_path / f"{s}.log") for s in ("normalize", "sevis_events")
    }
    got: Counter = Counter()
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            time.sleep(2)
            got = _all_events(settings, len(want))
            if sum(got.values()) >= len(want):
                break
    finally:
        _stop_all(procs)
    text = log.read_text()
    assert text.count('"point":"') == 3 and text.count("normalize.snapshot_release_started") == 1, text[-3000:]
    assert "normalize.snapshot_applied" in text
    assert [k for k, n in got.items() if n > 1] == []
    assert set(got) == set(want), text[-3000:]
    views = [registry().decode(m.value()) for m in read_topic(settings.kafka, settings.topics.students)]
    per_student = Counter(v["student_key"] for v in views if v["snapshot"])
    assert len(per_student) == 120 and set(per_student.values()) == {1}, per_student.most_common(3)
