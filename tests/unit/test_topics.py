"""Topics as code: specs from deploy/topics.toml + settings, and the plan `topics apply` shows."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from sevisflow.app.cli import main
from sevisflow.core.config import settings_from_mapping
from sevisflow.core.errors import ConfigError
from sevisflow.core.kafka_io import TopicSpec
from sevisflow.core.topics import (
    AUDIT_RETENTION_MS,
    DEFAULT_TOPICS_FILE,
    all_topics,
    change_topics,
    copartition_groups,
    kafka_topic_resources,
    pipeline_topics,
    plan_topics,
    to_yaml,
)


def _settings(**kafka):
    return settings_from_mapping({"kafka": kafka} if kafka else {}, env={})


def test_pipeline_topics_keep_their_names_and_take_replication_from_settings():
    local = {s.name: s for s in pipeline_topics(_settings())}
    assert list(local) == [
        "sevisflow.students",
        "sevis.events",
        "sevis.batch.commands",
        "sevis.batches",
        "sevis.results",
        "sevisflow.dlq",
        "sevis.batch.open",
        "sevis.worklist",
        "sevis.audit.ledger",
    ]
    assert all(s.partitions == 3 and s.replication_factor == 1 for s in local.values())
    assert local["sevisflow.students"].config["cleanup.policy"] == "compact"
    assert local["sevis.events"].config["retention.ms"] == AUDIT_RETENTION_MS
    assert local["sevisflow.dlq"].config["retention.ms"] == str(90 * 24 * 3600 * 1000)
    prod = pipeline_topics(_settings(replication_factor=3, min_insync_replicas=2, partitions=6))
    assert all(s.replication_factor == 3 and s.partitions == 6 and s.config["min.insync.replicas"] == "2" for s in prod)


def test_min_insync_above_replication_is_refused():
    with pytest.raises(ConfigError, match="min_insync_replicas"):
        pipeline_topics(_settings(replication_factor=1, min_insync_replicas=2))


def test_change_topics_match_what_the_connector_creates():
    s = _settings()
    names = [t.name for t in change_topics(s)]
    assert names == [f"sis.{t}" for t in s.connector.table_include_list] + ["sis.transaction"]
    # the connector creates change topics with kafka.partitions (the transaction topic: 1), delete,
    # AUDIT_RETENTION_MS (connectors/postgres/task.py)
    assert all(
        t.config == {"cleanup.policy": "delete", "retention.ms": AUDIT_RETENTION_MS, "min.insync.replicas": "1"}
        for t in change_topics(s)
    )
    assert [t.partitions for t in change_topics(s)] == [3] * len(s.connector.table_include_list) + [1]


def test_all_topics_have_unique_names_and_include_the_stage_state_topics():
    names = [t.name for t in all_topics(_settings())]
    assert len(names) == len(set(names))
    assert {"sevisflow.students", "sis.public.person", "sis.transaction"} <= set(names)


def test_copartitioned_topics_have_equal_partitions():
    s = _settings(partitions=6)
    by_name = {t.name: t for t in pipeline_topics(s)}
    groups = copartition_groups(s)
    assert set(groups["org"]) == {
        "sevis.events",
        "sevis.batch.commands",
        "sevis.batches",
        "sevis.results",
        "sevis.worklist",
    }
    for names in groups.values():
        assert len({by_name[n].partitions for n in names}) == 1


def test_a_custom_topics_file_is_checked_strictly(tmp_path: Path):
    text = DEFAULT_TOPICS_FILE.read_text()
    ok = tmp_path / "ok.toml"
    ok.write_text(text.replace("retention_days = 90", "retention_days = 400"))
    dlq = next(t for t in pipeline_topics(_settings(topics_file=str(ok))) if t.name == "sevisflow.dlq")
    assert dlq.config["retention.ms"] == str(400 * 24 * 3600 * 1000)
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('role = "dead letters', 'retension_days = 3\nrole = "dead letters'))
    with pytest.raises(ConfigError, match="retension_days"):
        pipeline_topics(_settings(topics_file=str(bad)))
    missing = tmp_path / "missing.toml"
    missing.write_text(text.replace("[pipeline.dlq]", "[other_dlq]"))
    with pytest.raises(ConfigError):
        pipeline_topics(_settings(topics_file=str(missing)))
    isr = tmp_path / "isr.toml"
    isr.write_text(
        text.replace(
            'config = { "cleanup.policy" = "delete", "max.message.bytes"',
            'config = { "min.insync.replicas" = "2", "cleanup.policy" = "delete", "max.message.bytes"',
        )
    )
    with pytest.raises(ConfigError, match=r"min\.insync\.replicas"):
        pipeline_topics(_settings(topics_file=str(isr)))


# --------------------------------------------------------------------------- the plan, on a fake admin client


@dataclass
class _Part:
    replicas: list[int]


@dataclass
class _TopicMd:
    partitions: dict[int, _Part]
    error: object = None


@dataclass
class _Md:
    brokers: dict[int, object]
    topics: dict[str, _TopicMd]


@dataclass
class _Entry:
    value: str


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


@dataclass
class FakeAdmin:
    brokers: int
    topics: dict[str, tuple[int, int, dict[str, str]]] = field(default_factory=dict)  # partitions, rf, config

    def list_topics(self, timeout=None):
        return _Md(
            {i: object() for i in range(self.brokers)},
            {
                n: _TopicMd({p: _Part(list(range(rf))) for p in range(parts)})
                for n, (parts, rf, _) in self.topics.items()
            },
        )

    def describe_configs(self, resources, request_timeout=None):
        defaults = {"cleanup.policy": "delete", "retention.ms": "604800000", "min.insync.replicas": "1"}
        return {r: _Done({k: _Entry(v) for k, v in {**defaults, **self.topics[r.name][2]}.items()}) for r in resources}


def test_plan_lists_creates_partitions_config_and_what_it_cannot_change():
    specs = [
        TopicSpec("new", 3, 3, {"cleanup.policy": "delete"}),
        TopicSpec("same", 3, 3, {"cleanup.policy": "compact,delete", "min.insync.replicas": "2"}),
        TopicSpec("grow", 6, 3, {}),
        TopicSpec("shrink", 3, 3, {}),
        TopicSpec("rf", 3, 3, {}),
        TopicSpec("cfg", 3, 3, {"retention.ms": "1000", "min.insync.replicas": "2"}),
    ]
    admin = FakeAdmin(
        brokers=3,
        topics={
            "same": (3, 3, {"cleanup.policy": "delete,compact", "min.insync.replicas": "2"}),
            "grow": (3, 3, {}),
            "shrink": (6, 3, {}),
            "rf": (3, 1, {}),
            "cfg": (3, 3, {"retention.ms": "5000"}),
        },
    )
    plan = plan_topics(None, specs, admin=admin)  # type: ignore[arg-type]
    assert [s.name for s in plan.creates] == ["new"]
    assert plan.partition_increases == [("grow", 3, 6)]
    assert {(c.topic, c.key, c.current, c.wanted) for c in plan.config_changes} == {
        ("cfg", "retention.ms", "5000", "1000"),
        ("cfg", "min.insync.replicas", "1", "2"),
    }
    assert any(p.startswith("shrink: has 6 partitions") for p in plan.problems)
    assert any(p.startswith("rf: replication factor is 1, spec says 3") and "cannot change" in p for p in plan.problems)
    assert plan.unchanged == ["same", "shrink", "rf"]
    text = plan.render()
    assert "+ create   new" in text and "~ partitions grow  3 -> 6" in text
    assert "~ config   cfg  retention.ms: 5000 -> 1000" in text and "! rf:" in text


def test_plan_refuses_a_replication_factor_the_cluster_cannot_hold():
    plan = plan_topics(None, [TopicSpec("x", 3, 3, {})], admin=FakeAdmin(brokers=1))  # type: ignore[arg-type]
    assert plan.creates == [] and "needs 3 brokers, the cluster has 1" in plan.problems[0]


def test_plan_of_a_cluster_that_matches_is_empty():
    specs = pipeline_topics(_settings())
    admin = FakeAdmin(brokers=1, topics={s.name: (s.partitions, s.replication_factor, dict(s.config)) for s in specs})
    plan = plan_topics(None, specs, admin=admin)  # type: ignore[arg-type]
    assert plan.empty() and not plan.problems
    assert plan.render().startswith("= nothing to change (9 topics")


# --------------------------------------------------------------------------- Strimzi resources and the CLI


def test_kafka_topic_resources_round_trip_through_yaml():
    specs = all_topics(_settings(replication_factor=3, min_insync_replicas=2))
    docs = list(yaml.safe_load_all(to_yaml(kafka_topic_resources(specs, "kafka", "ns"))))
    assert [d["spec"]["topicName"] for d in docs] == [s.name for s in specs]
    for d, s in zip(docs, specs):
        assert d["kind"] == "KafkaTopic" and d["metadata"]["labels"]["strimzi.io/cluster"] == "kafka"
        assert d["spec"]["replicas"] == 3 and d["spec"]["config"] == dict(s.config)
        assert d["metadata"]["name"].replace("-", "").isalnum() and d["metadata"]["name"].islower()


def test_cli_lists_topics_without_kafka(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["topics", "list", "--pipeline-only"]) == 0
    assert "sevis.events" in out.getvalue() and "retention.ms=" in out.getvalue()
