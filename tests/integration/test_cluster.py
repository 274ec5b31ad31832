"""A three-node KRaft cluster: replicated topics, and a broker killed with SIGKILL under load.

Two exactly-once processors (``TransactionalLoop``, one consumer group, like
tests/integration/eos_worker.py) copy an input topic to an output topic and count per key
in a changelog; all topics have replication factor 3 and min.insync.replicas 2. While a
producer writes the input, the node that coordinates the processors' group is killed with
``kill -9`` and restarted 25 s later (as its supervisor would). Afterwards every input must
appear exactly once in the output and the per-key counts must run 1..n without a gap or a
repeat. The figures (records, duplicates, the longest processing stall after the kill, records
processed while the node was down, the time the restarted node needs to rejoin every ISR, the
stuck producers the loops' watchdog replaced) are printed and written to ``.local/cluster-figures.json``.

In about one run in four a processor used to hang inside librdkafka's send_offsets_to_transaction
after the kill (librdkafka issues #5456/#5511: the call ignores its timeout when the group
coordinator's broker is gone). ``TransactionalLoop``'s watchdog now fences such a producer with a
fresh one and redoes the batch; this test is what proves that path on a real cluster.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from sevisflow.core.config import KafkaSettings, Settings, settings_from_mapping
from sevisflow.core.kafka_io import (
    Output,
    StateStore,
    TopicSpec,
    TransactionalLoop,
    client_config,
    ensure_topics,
    make_producer,
    read_topic,
)
from sevisflow.core.topics import AUDIT_RETENTION_MS, apply_topics, pipeline_topics, plan_topics
from sevisflow.deploy.local.cluster import kill_node, restart_node
from sevisflow.deploy.local.stack import KafkaInfo
from tests.helpers import REPO

pytestmark = pytest.mark.integration

TOTAL = 4000
KEYS = 40
# The killed node comes back after this long, as under Kubernetes or systemd. Until then two nodes
# serve everything. (librdkafka 2.16 can block send_offsets_to_transaction until a broker changes
# state when the group coordinator dies — confluentinc/librdkafka#5456, #5511 — so a processor may
# wait for the restart; docs/OPERATIONS.md explains the liveness probe that covers it.)
RESTART_AFTER_S = 25


@pytest.fixture
def cluster(kafka_cluster: KafkaInfo) -> KafkaInfo:
    """The session's three-node cluster (tests/integration/conftest.py), also used by the pipeline's test."""
    return kafka_cluster


def _settings(cluster: KafkaInfo, unique: str) -> Settings:
    return settings_from_mapping(
        {
            "kafka": {**cluster.kafka_settings(), "replication_factor": 3, "min_insync_replicas": 2},
            "topics": {
                name: f"{default}.{unique}"
                for name, default in [
                    ("students", "sevisflow.students"),
                    ("events", "sevis.events"),
                    ("commands", "sevis.batch.commands"),
                    ("batches", "sevis.batches"),
                    ("results", "sevis.results"),
                    ("dlq", "sevisflow.dlq"),
                ]
            },
        },
        env={},
    )


def test_topics_apply_replicates_three_ways_and_shows_drift(cluster, unique):
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    settings = _settings(cluster, unique)
    specs = pipeline_topics(settings)
    admin = AdminClient(client_config(settings.kafka))
    dlq = settings.topics.dlq
    # drift made by hand before the first apply: too few partitions and replication factor 2
    ensure_topics(settings.kafka, [TopicSpec(dlq, 2, 2, {})])
    _wait_until_every_node_knows(cluster, dlq)

    shown: list[str] = []
    plan = apply_topics(settings.kafka, specs, show=shown.append)
    assert sorted(c.name for c in plan.creates) == sorted(s.name for s in specs if s.name != dlq)
    assert (dlq, 2, 3) in plan.partition_increases
    assert any(p.startswith(f"{dlq}: replication factor is 2, spec says 3") for p in plan.problems)
    assert any(p.startswith(f"{dlq}: partitions 2 -> 3 not applied") for p in plan.problems)
    assert f"+ create   {settings.topics.events}" in shown[0]

    md = admin.list_topics(timeout=30)
    for spec in specs:
        parts = md.topics[spec.name].partitions
        if spec.name != dlq:
            assert len(parts) == settings.kafka.partitions
            assert all(len(p.replicas) == 3 for p in parts.values()), spec.name
    res = ConfigResource(ConfigResource.Type.TOPIC, settings.topics.events)
    assert admin.describe_configs([res])[res].result()["min.insync.replicas"].value == "2"
    # the dlq's config keys were set by apply too
    assert _config_value(admin, dlq, "retention.ms", str(90 * 86400000)) == str(90 * 86400000)

    # someone shortens the retention of sevis.events by hand: apply shows it and puts it back
    alter = ConfigResource(
        ConfigResource.Type.TOPIC,
        settings.topics.events,
        incremental_configs=[ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)],
    )
    admin.incremental_alter_configs([alter])[alter].result()
    _config_value(admin, settings.topics.events, "retention.ms", "3600000")
    expected = [(settings.topics.events, "retention.ms", "3600000")]
    plan = _settled_plan(
        settings.kafka, specs, lambda p: [(c.topic, c.key, c.current) for c in p.config_changes] == expected
    )
    assert [(c.topic, c.key, c.current) for c in plan.config_changes] == expected
    apply_topics(settings.kafka, specs, allow_partition_increase=True)
    _config_value(admin, settings.topics.events, "retention.ms", AUDIT_RETENTION_MS)
    plan = _settled_plan(settings.kafka, specs, lambda p: p.empty())
    assert plan.empty(), plan.render()
    assert len(plan.problems) == 1 and "replication factor is 2" in plan.problems[0]


def _wait_until_every_node_knows(cluster: KafkaInfo, topic: str, timeout_s: float = 30) -> None:
    """Wait until each node's metadata has ``topic`` with a leader for every partition.

    A new topic reaches the nodes' metadata caches one after the other; ``ensure_topics`` waits
    for the node its own client asks, and ``apply_topics`` may ask another one. Without this wait
    apply sometimes planned to create the topic the test had just made.
    """
    deadline = time.monotonic() + timeout_s
    for node in cluster.nodes:
        while True:
            # a fresh client knowing one node: its only usable connection is to that node
            admin = AdminClient({"bootstrap.servers": node.bootstrap})
            tmd = admin.list_topics(topic, timeout=10).topics.get(topic)
            if (
                tmd is not None
                and tmd.error is None
                and tmd.partitions
                and all(p.leader >= 0 for p in tmd.partitions.values())
            ):
                break
            assert time.monotonic() < deadline, f"node {node.bootstrap} never had {topic} in its metadata"
            time.sleep(0.1)


def _settled_plan(kafka: KafkaSettings, specs, done, timeout_s: float = 20):  # type: ignore[no-untyped-def]
    """The plan once ``done(plan)`` holds or the time is up: a config change reaches the broker
    that answers DescribeConfigs a moment after the one that applied it."""
    deadline = time.monotonic() + timeout_s
    while True:
        plan = plan_topics(kafka, specs)
        if done(plan) or time.monotonic() > deadline:
            return plan
        time.sleep(0.5)


def _config_value(admin: AdminClient, topic: str, key: str, expect: str, timeout_s: float = 15) -> str:
    """A topic config value, waiting until every broker has the change (config updates propagate)."""
    from confluent_kafka.admin import ConfigResource

    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    deadline = time.monotonic() + timeout_s
    while True:
        value = admin.describe_configs([res])[res].result()[key].value
        if value == expect or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _restart(cluster: KafkaInfo, node_id: int, info: dict[str, float]) -> None:
    info["started"] = time.monotonic()
    restart_node(cluster, node_id)
    info["ready"] = time.monotonic()


def _coordinator(kafka: KafkaSettings, group: str) -> int:
    admin = AdminClient(client_config(kafka))
    deadline = time.monotonic() + 30
    while True:
        try:
            desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
            return int(desc.coordinator.id)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _wait_full_isr(kafka: KafkaSettings, topics: list[str], timeout_s: float) -> bool:
    admin = AdminClient(client_config(kafka))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=10)
        if all(len(p.isrs) == 3 for t in topics for p in md.topics[t].partitions.values()):
            return True
        time.sleep(0.5)
    return False


def test_kill_minus_9_one_broker_under_load_loses_and_duplicates_nothing(cluster, unique):
    kafka = _settings(cluster, unique).kafka
    inp, out, state, group = f"cl.in.{unique}", f"cl.out.{unique}", f"cl.state.{unique}", f"cl-{unique}"
    replicated = {"min.insync.replicas": "2"}
    ensure_topics(
        kafka,
        [
            TopicSpec(inp, 3, 3, replicated),
            TopicSpec(out, 3, 3, replicated),
            TopicSpec(state, 3, 3, {**replicated, "cleanup.policy": "compact"}),
        ],
    )

    def handler(msg, st: StateStore):
        count = int(st.get(msg.partition(), msg.key()) or b"0") + 1
        st.put(msg.partition(), msg.key(), str(count).encode())
        yield Output(out, msg.key(), msg.value() + b"#" + str(count).encode())

    loops = [
        TransactionalLoop(
            kafka, group, [inp], handler, transactional_id=f"{group}-{i}", state_topic=state, batch_size=100
        )
        for i in range(2)
    ]
    errors: list[BaseException] = []

    def run(loop: TransactionalLoop) -> None:
        try:
            loop.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(lp,), daemon=True) for lp in loops]
    for t in threads:
        t.start()

    progress: list[tuple[float, int]] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.is_set():
            progress.append((time.monotonic(), sum(lp.processed for lp in loops)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    producer = make_producer(kafka)
    sent: Counter[bytes] = Counter()
    delivery_errors: list[str] = []
    killed_at = 0.0
    victim = 0
    restart_info: dict[str, float] = {}
    restarter: threading.Timer | None = None
    try:
        for i in range(TOTAL):
            key = f"student-{i % KEYS}".encode()
            sent[key] += 1
            producer.produce(
                inp,
                key=key,
                value=f"m{i}".encode(),
                on_delivery=lambda err, msg: err and delivery_errors.append(err.str()),
            )
            producer.poll(0)
            if i % 100 == 99:
                time.sleep(0.25)  # ~400 records/s for ~10 s
            if i == TOTAL // 3:
                producer.flush(30)
                victim = _coordinator(kafka, group)
                killed_at = time.monotonic()
                kill_node(cluster, victim)
                # its supervisor (Kubernetes, systemd) brings the node back after a while
                restarter = threading.Timer(RESTART_AFTER_S, _restart, args=(cluster, victim, restart_info))
                restarter.daemon = True
                restarter.start()
        assert producer.flush(120) == 0
        assert not delivery_errors, delivery_errors[:3]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum(lp.processed for lp in loops) < TOTAL and not errors:
            time.sleep(0.2)
        done_at = time.monotonic()
        if sum(lp.processed for lp in loops) < TOTAL and not errors:
            import faulthandler
            import sys

            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)  # where the processors are stuck
    finally:
        for lp in loops:
            lp.stop()
        for t in threads:
            t.join(60)
        stop_sampling.set()
        sampler.join(5)

    assert not errors, f"a processor failed: {errors[0]!r}"
    outputs = list(read_topic(kafka, out, timeout_s=60))
    values = [m.value() for m in outputs]
    originals = Counter(v.split(b"#")[0] for v in values)
    duplicates = sum(n - 1 for n in originals.values() if n > 1)
    per_key: dict[bytes, list[int]] = {}
    for m in outputs:
        per_key.setdefault(m.key(), []).append(int(m.value().split(b"#")[1]))

    # the longest time after the kill during which no transaction committed
    after = [(t, n) for t, n in progress if t >= killed_at]
    stall, last_t, last_n = 0.0, killed_at, after[0][1] if after else 0
    for t, n in after:
        if n > last_n:
            stall = max(stall, t - last_t)
            last_t, last_n = t, n
    if restarter is not None:
        restarter.join(RESTART_AFTER_S + 120)
    rejoined = _wait_full_isr(kafka, [inp, out, state], 90)
    restarted_at = restart_info.get("started", killed_at + RESTART_AFTER_S)
    processed_while_down = max((n for t, n in progress if t < restarted_at), default=0) - max(
        (n for t, n in progress if t < killed_at), default=0
    )
    figures = {
        "records_sent": TOTAL,
        "records_out": len(values),
        "distinct_inputs_out": len(originals),
        "duplicates": duplicates,
        "killed_node": victim,
        "aborted_transactions": sum(lp.aborts for lp in loops),
        "stuck_producers_replaced": sum(lp.producer_replacements for lp in loops),
        "longest_stall_after_kill_s": round(stall, 2),
        "all_processed_s_after_kill": round(done_at - killed_at, 2),
        "node_down_s": round(restarted_at - killed_at, 2),
        "processed_while_node_down": processed_while_down,
        "killed_node_back_in_every_isr_s": round(time.monotonic() - restarted_at, 2) if rejoined else None,
    }
    print("cluster figures:", json.dumps(figures))
    out_file = Path(os.environ.get("SEVISFLOW_CLUSTER_FIGURES", REPO / ".local" / "cluster-figures.json"))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(figures, indent=2) + "\n")

    assert len(values) == TOTAL, figures
    assert duplicates == 0, figures
    assert len(originals) == TOTAL
    for key, counts in per_key.items():
        assert counts == list(range(1, sent[key] + 1)), key
    assert rejoined, "the restarted node did not rejoin every ISR within 90 s"
