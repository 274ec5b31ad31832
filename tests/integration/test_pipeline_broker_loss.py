"""The whole pipeline on a three-node KRaft cluster while one broker is killed with ``kill -9``.

PostgreSQL (the reference SIS: 60 students, 35 % international) → connector → normalize →
sevis_events → batcher, all in one process (``runner.Pipeline``), on a local three-node Kafka
with every topic at replication factor 3 and min.insync.replicas 2 (the transaction topic keeps
its single partition, deploy/topics.toml). After the snapshot, 60 SIS transactions are committed
at a steady pace; after a third of them the broker leading the connector's transaction topic is
killed with SIGKILL and started again 20 s later with the same data — what Kubernetes or systemd
does with a crashed broker; the pipeline itself is not touched. Then a DSO closes the batch with
``sevisflow batch close --dso …``.

What must hold: no stage fails (a stage that hits a transient Kafka error is restarted by the
runner and that is counted, not hidden); ``sevis.events`` holds exactly the events the pure
pipeline (``PurePipeline`` over ``SisFeed``, the same school and activity) derives — none
missing, none twice; and the closed batch equals what the pure batcher core closes from those
events: the same records with the same content, each made of the same number of events and
source changes, no event id in two places. Figures are printed and written to
``.local/pipeline-cluster-figures.json``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from sevisflow.app.runner import Pipeline
from sevisflow.core.config import Settings, settings_from_mapping
from sevisflow.core.kafka_io import client_config, ensure_topics
from sevisflow.core.topics import all_topics
from sevisflow.deploy.local.cluster import kill_node, restart_node
from sevisflow.deploy.local.stack import KafkaInfo
from sevisflow.deploy.sis.load import create_schema, load_school, play_activity
from tests.helpers import REPO, count, settled, wait_for
from tests.pipeline_support import (
    close_with_cli,
    compare_with_pure,
    decoded,
    expected_outcome,
    pipeline_raw,
    write_config,
)

pytestmark = pytest.mark.integration

STUDENTS, SHARE, SEED, ACTIVITY = 60, 0.35, 7, 60
RESTART_AFTER_S = 20  # the supervisor (Kubernetes, systemd) brings the killed broker back
PACE_S = 0.3  # one SIS commit every 0.3 s: the load runs before, during and after the kill
STAGES = ["connector", "normalize", "events", "batcher"]


@pytest.fixture
def cluster(kafka_cluster: KafkaInfo) -> KafkaInfo:
    """The session's three-node cluster (tests/integration/conftest.py), shared with tests/integration/test_cluster.py."""
    return kafka_cluster


class Progress:
    """Samples the high watermarks of the student view topic (normalize's output) every 0.25 s."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.consumer = Consumer(
            {**client_config(settings.kafka), "group.id": "progress-probe", "enable.auto.commit": False}
        )
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.tps = [TopicPartition(topic, p) for p in parts]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                n = sum(self.consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)[1] for tp in self.tps)
                self.samples.append((time.monotonic(), n))
            except Exception:  # noqa: BLE001 - a partition without a leader for a moment
                pass
            self.stop.wait(0.25)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.consumer.close()

    def longest_stall_after(self, t0: float, until: float) -> float:
        """Longest time in [t0, until] during which the watermark did not move."""
        pts = [(t, n) for t, n in self.samples if t0 <= t <= until]
        stall, last_t, last_n = 0.0, t0, pts[0][1] if pts else 0
        for t, n in pts:
            if n != last_n:
                stall, last_t, last_n = max(stall, t - last_t), t, n
        return round(max(stall, (pts[-1][0] - last_t) if pts else 0.0), 2)


def producers_replaced() -> dict[str, int]:
    """Transactional producers the loops' watchdog replaced, by stage (librdkafka #5456/#5511)."""
    from sevisflow.core.observability import process_registry

    found: dict[str, int] = {}
    for family in process_registry().collect():
        for sample in family.samples:
            if sample.name == "sevisflow_transactions_total" and sample.labels.get("outcome") == "producer_replaced":
                found[sample.labels["stage"]] = found.get(sample.labels["stage"], 0) + int(sample.value)
    return found


def leader_of(settings: Settings, topic: str, partition: int = 0) -> int:
    from confluent_kafka.admin import AdminClient

    md = AdminClient(client_config(settings.kafka)).list_topics(topic, timeout=10)
    return int(md.topics[topic].partitions[partition].leader)


def test_broker_killed_during_sis_activity_every_change_in_the_batch_exactly_once(
    cluster, fresh_db, unique, tmp_path, capsys
):
    from sevisflow.deploy.sis.activity import generate_activity
    from sevisflow.deploy.sis.generator import generate_school
    from tests.school_replay import TODAY

    t_start = time.monotonic()
    raw = pipeline_raw(
        {**cluster.kafka_settings(), "replication_factor": 3, "min_insync_replicas": 2}, fresh_db, unique, tmp_path
    )
    settings = settings_from_mapping(raw, env={})
    config = write_config(raw, tmp_path / "sevisflow.toml")
    t = settings.topics
    tx_topic = f"{settings.connector.topic_prefix}.transaction"

    create_schema(fresh_db.dsn)
    school = generate_school(STUDENTS, SHARE, SEED, TODAY)
    load_school(fresh_db.dsn, school)
    activity = generate_activity(school, ACTIVITY, SEED, TODAY)
    specs = all_topics(settings)
    ensure_topics(settings.kafka, specs)
    by_name = {s.name: s for s in specs}
    assert by_name[tx_topic].partitions == 1 and all(s.replication_factor == 3 for s in specs)
    assert all(s.config.get("min.insync.replicas") == "2" for s in specs)

    expected_events, expected_records, snapshot_creates = expected_outcome(
        settings.school.org_id, int(time.time() * 1000), STUDENTS, SHARE, SEED, ACTIVITY
    )
    replaced_before = producers_replaced()
    pipeline = Pipeline(settings, STAGES, restart_base_s=1.0, restart_max_s=5.0, serve_metrics=False).start()
    progress: Progress | None = None
    restarter: threading.Timer | None = None
    restart: dict[str, float] = {}
    figures: dict[str, Any] = {}
    try:
        wait_for("the snapshot's student views", settled(lambda: count(settings, t.students), 3.0), 90, pipeline)
        progress = Progress(settings, t.students)
        victim = leader_of(settings, tx_topic)
        killed_at = 0.0
        for i, tx in enumerate(activity):
            play_activity(fresh_db.dsn, [tx])
            if i == ACTIVITY // 3:
                killed_at = time.monotonic()
                kill_node(cluster, victim)

                def bring_back() -> None:
                    restart["started"] = time.monotonic()
                    restart_node(cluster, victim)
                    restart["ready"] = time.monotonic()

                restarter = threading.Timer(RESTART_AFTER_S, bring_back)
                restarter.daemon = True
                restarter.start()
            time.sleep(PACE_S)
        activity_done = time.monotonic()
        n_expected = len(expected_events)
        wait_for(
            f"all {n_expected} SEVIS events",
            settled(lambda: count(settings, t.events), 3.0, n_expected),
            150,
            pipeline,
            every_s=1.0,
        )
        caught_up = time.monotonic()
        # the batcher has taken in every event once its open batch holds what the pure batcher holds
        from sevisflow.app.cli.batch import load_view

        want_open = {r["record_id"] for r in expected_records}
        wait_for(
            "the open batch to hold every expected record",
            lambda: (
                want_open
                <= {
                    r["record_id"]
                    for r in load_view(settings, settings.school.org_id).open_records()
                    if r["status"] == "open"
                }
            ),
            60,
            pipeline,
        )
        batch_ids = close_with_cli(config, capsys)
        if restarter is not None:
            restarter.join(RESTART_AFTER_S + 120)
        figures = {
            "sis_transactions": ACTIVITY,
            "killed_node": victim,
            "node_down_s": round(restart.get("started", killed_at) - killed_at, 1),
            "node_back_s_after_restart": round(restart.get("ready", 0) - restart.get("started", 0), 1),
            "activity_ended_s_after_kill": round(activity_done - killed_at, 1),
            "all_events_s_after_kill": round(caught_up - killed_at, 1),
            "longest_view_stall_after_kill_s": progress.longest_stall_after(killed_at, caught_up),
            "stage_restarts": pipeline.restarts(),
            "restart_errors": {th.name: th.last_transient for th in pipeline.threads if th.last_transient},
            "stuck_producers_replaced": {
                stage: n - replaced_before.get(stage, 0)
                for stage, n in producers_replaced().items()
                if n > replaced_before.get(stage, 0)
            },
        }
    finally:
        if progress is not None:
            progress.close()
        failed = pipeline.stop(60)
    assert not failed, [(f.name, f.error) for f in failed]
    assert restart.get("ready"), "the killed broker did not come back"

    events = decoded(settings, t.events)
    closed = [e for e in decoded(settings, t.batches) if e["type"] == "closed"]
    assert [e["batch_id"] for e in closed] == batch_ids
    records = [r for e in closed for r in orjson.loads(e["records_json"])]
    figures.update(compare_with_pure(events, records, expected_events, expected_records, snapshot_creates))
    figures["test_s"] = round(time.monotonic() - t_start, 1)
    print("pipeline cluster figures:", json.dumps(figures))
    out = Path(os.environ.get("SEVISFLOW_PIPELINE_CLUSTER_FIGURES", REPO / ".local" / "pipeline-cluster-figures.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    assert figures["ok"], figures
