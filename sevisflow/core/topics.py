"""The pipeline's topics as code: what exists, with which partitions, replication and config.

Specs come from three places, each with one job:

* ``deploy/topics.toml`` (or ``kafka.topics_file``): each topic's role, cleanup policy,
  retention and other topic-level config;
* :class:`~sevisflow.core.config.KafkaSettings`: partitions, replication factor and
  ``min.insync.replicas`` (1/1 on a laptop, 3/2 in production), so one file serves both;
* :class:`~sevisflow.core.config.TopicSettings` / connector settings: the names.

:func:`pipeline_topics` gives the topics between the stages, :func:`change_topics` the
connector's, :func:`stage_topics` the processors' own state changelogs, :func:`all_topics` all
of them. Each stage's consumer group and state changelog name (:func:`stage_group`,
:func:`state_topic`) are declared here too, because ACLs, manifests and ``topics apply`` must know
them without importing the stages; each stage reads its own names from these functions. :func:`plan_topics` compares specs with
the cluster and :func:`apply_topics` carries out the plan, which never deletes a topic,
never removes partitions, only adds partitions when told to (it moves keys), and only
sets the config keys a spec names.

Audit topics keep their history for ``AUDIT_RETENTION_MS`` (7 × 365 days): SEVIS records must
be kept for the student's whole stay plus the record-keeping period.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sevisflow.core import PACKAGE_ROOT
from sevisflow.core.config import KafkaSettings, Settings
from sevisflow.core.errors import ConfigError, TerminalError, UnreachableError
from sevisflow.core.kafka_io import TopicSpec, _wait_for_metadata, make_admin
from sevisflow.core.log import get_logger

log = get_logger(__name__)

DAY_MS = 24 * 3600 * 1000
AUDIT_RETENTION_MS = str(7 * 365 * DAY_MS)
DLQ_RETENTION_MS = str(90 * DAY_MS)
DEFAULT_TOPICS_FILE = PACKAGE_ROOT / "deploy" / "topics.toml"

PIPELINE_KEYS = ("students", "events", "commands", "batches", "results", "dlq", "open_batches", "worklist", "ledger")

# Each stage's own names. A deployment's names carry the suffix of its pipeline topics (tests run many
# deployments on one broker: ``sevisflow.students.<unique>`` → ``sevisflow-normalize-<unique>``).
STAGE_GROUPS = {
    "normalize": "sevisflow-normalize",
    "events": "sevisflow-events",
    "batcher": "sevisflow-batcher",
    "sink-xml": "sevisflow-sink-xml",
}
STATE_TOPICS = {
    "normalize": "sevisflow.normalize.state",
    "events": "sevisflow.events.state",
    "batcher": "sevisflow.batcher.state",
}
# the batcher's closes must be compactable at once (a closed batch replaces the open one)
_STATE_TOPIC_EXTRA = {"batcher": {"min.compaction.lag.ms": "0"}}
# the pipeline topic whose suffix names the stage's group and state topic
_SUFFIX_FROM = {
    "normalize": ("students", "sevisflow.students"),
    "events": ("students", "sevisflow.students"),
    "batcher": ("batches", "sevis.batches"),
    "sink-xml": ("batches", "sevis.batches"),
}


def stage_suffix(settings: Settings, stage: str) -> str:
    """The deployment suffix of ``stage``'s names: "" for the default topic names."""
    key, default = _SUFFIX_FROM[stage]
    name = getattr(settings.topics, key)
    return name[len(default) + 1 :] if name.startswith(default + ".") else ""


def _suffixed(name: str, settings: Settings, stage: str) -> str:
    sfx = stage_suffix(settings, stage)
    return f"{name}-{sfx}" if sfx and name in STAGE_GROUPS.values() else (f"{name}.{sfx}" if sfx else name)


def stage_group(settings: Settings, stage: str) -> str:
    """The consumer group of a transactional stage (``normalize``, ``events``, ``batcher``, ``sink-xml``)."""
    return _suffixed(STAGE_GROUPS[stage], settings, stage)


def state_topic(settings: Settings, stage: str) -> str:
    """The compacted state changelog of a processor (``normalize``, ``events``, ``batcher``)."""
    return _suffixed(STATE_TOPICS[stage], settings, stage)


# --------------------------------------------------------------------------- specs from the file


@dataclass(frozen=True)
class TopicDef:
    """One entry of topics.toml: the parts of a topic that do not depend on the environment."""

    key: str
    role: str
    config: Mapping[str, str]
    copartition: str = ""
    partitions: int | None = None


def _topic_def(key: str, raw: Mapping[str, Any], where: str) -> TopicDef:
    known = {"role", "config", "retention_days", "copartition", "partitions"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} in [{key}] (known: {', '.join(sorted(known))})")
    config = raw.get("config", {})
    if not isinstance(config, dict) or not all(isinstance(v, (str, int)) for v in config.values()):
        raise ConfigError(f"{where}: [{key}].config must be a table of strings")
    cfg = {str(k): str(v) for k, v in config.items()}
    if "retention_days" in raw:
        days = raw["retention_days"]
        if not isinstance(days, int) or isinstance(days, bool) or days < -1:
            raise ConfigError(f"{where}: [{key}].retention_days must be a whole number of days (-1 = forever)")
        cfg["retention.ms"] = str(days * DAY_MS if days >= 0 else -1)
    if "min.insync.replicas" in cfg:
        raise ConfigError(f"{where}: [{key}] sets min.insync.replicas; it comes from kafka.min_insync_replicas")
    partitions = raw.get("partitions")
    if partitions is not None and (not isinstance(partitions, int) or partitions < 1):
        raise ConfigError(f"{where}: [{key}].partitions must be a positive whole number")
    return TopicDef(
        key=key,
        role=str(raw.get("role", "")),
        config=cfg,
        copartition=str(raw.get("copartition", "")),
        partitions=partitions,
    )


@lru_cache(maxsize=8)
def _load_file(path: str) -> dict[str, TopicDef]:
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"topics file {file} does not exist (kafka.topics_file)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    unknown = set(raw) - {"pipeline", "change", "transaction"}
    if unknown:
        raise ConfigError(f"{file}: unknown table [{sorted(unknown)[0]}] (known: pipeline, change, transaction)")
    defs: dict[str, TopicDef] = {}
    pipeline = raw.get("pipeline", {})
    missing = [k for k in PIPELINE_KEYS if k not in pipeline]
    if missing:
        raise ConfigError(f"{file}: no [pipeline.{missing[0]}] (every pipeline topic must be declared)")
    for key, value in pipeline.items():
        if key not in PIPELINE_KEYS:
            raise ConfigError(f"{file}: [pipeline.{key}] is not a pipeline topic (known: {', '.join(PIPELINE_KEYS)})")
        defs[key] = _topic_def(f"pipeline.{key}", value, str(file))
    for key in ("change", "transaction"):
        defs[key] = _topic_def(key, raw.get(key, {}), str(file))
    return defs


def topic_defs(settings: Settings) -> dict[str, TopicDef]:
    """The entries of the topics file in use (``kafka.topics_file`` or deploy/topics.toml)."""
    return _load_file(str(Path(settings.kafka.topics_file) if settings.kafka.topics_file else DEFAULT_TOPICS_FILE))


def _check_kafka(k: KafkaSettings) -> None:
    if k.replication_factor < 1 or k.partitions < 1 or k.min_insync_replicas < 1:
        raise ConfigError("kafka.partitions, kafka.replication_factor and kafka.min_insync_replicas must be ≥ 1")
    if k.min_insync_replicas > k.replication_factor:
        raise ConfigError(
            f"kafka.min_insync_replicas = {k.min_insync_replicas} is more than kafka.replication_factor = "
            f"{k.replication_factor}: no write could ever succeed"
        )


def _spec(name: str, d: TopicDef, k: KafkaSettings) -> TopicSpec:
    return TopicSpec(
        name,
        d.partitions or k.partitions,
        k.replication_factor,
        {**d.config, "min.insync.replicas": str(k.min_insync_replicas)},
    )


def pipeline_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic between the stages (names from [topics], values from the topics file and [kafka])."""
    _check_kafka(settings.kafka)
    defs = topic_defs(settings)
    return [_spec(getattr(settings.topics, key), defs[key], settings.kafka) for key in PIPELINE_KEYS]


def change_topics(settings: Settings) -> list[TopicSpec]:
    """The connector's change topics ``<prefix>.<schema>.<table>`` and ``<prefix>.transaction``."""
    _check_kafka(settings.kafka)
    defs, c = topic_defs(settings), settings.connector
    specs = [_spec(f"{c.topic_prefix}.{table}", defs["change"], settings.kafka) for table in c.table_include_list]
    if c.provide_transaction_metadata:
        specs.append(_spec(f"{c.topic_prefix}.transaction", defs["transaction"], settings.kafka))
    return specs


def state_topic_spec(settings: Settings, stage: str) -> TopicSpec:
    """A processor's state changelog: compacted, every partition (the loop restores the partitions it is
    assigned on its inputs), large messages allowed (a view or a batch is one record)."""
    k = settings.kafka
    return TopicSpec(
        state_topic(settings, stage),
        k.partitions,
        k.replication_factor,
        {
            "cleanup.policy": "compact",
            "min.insync.replicas": str(k.min_insync_replicas),
            "max.message.bytes": str(8 * 1024 * 1024),
            **_STATE_TOPIC_EXTRA.get(stage, {}),
        },
    )


def stage_topics(settings: Settings) -> list[TopicSpec]:
    """The processors' own topics (state changelogs)."""
    return [state_topic_spec(settings, stage) for stage in STATE_TOPICS]


def all_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic a sevisflow deployment uses: change topics, pipeline topics, stage state topics."""
    seen: dict[str, TopicSpec] = {}
    for spec in change_topics(settings) + pipeline_topics(settings) + stage_topics(settings):
        seen.setdefault(spec.name, spec)
    return list(seen.values())


def copartition_groups(settings: Settings) -> dict[str, list[str]]:
    """Topic names that must keep equal partition counts, by group (from the topics file)."""
    groups: dict[str, list[str]] = {}
    for key, d in topic_defs(settings).items():
        if d.copartition and key in PIPELINE_KEYS:
            groups.setdefault(d.copartition, []).append(getattr(settings.topics, key))
    return groups


# --------------------------------------------------------------------------- plan and apply


@dataclass(frozen=True)
class ConfigChange:
    topic: str
    key: str
    current: str | None
    wanted: str


@dataclass
class TopicPlan:
    """What :func:`apply_topics` would do, and what it cannot do (``problems``)."""

    creates: list[TopicSpec] = field(default_factory=list)
    partition_increases: list[tuple[str, int, int]] = field(default_factory=list)
    config_changes: list[ConfigChange] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        """Nothing to change (problems aside)."""
        return not (self.creates or self.partition_increases or self.config_changes)

    def render(self) -> str:
        """The diff, one line per change, for people (``sevisflow topics apply`` prints it first)."""
        lines: list[str] = []
        for s in self.creates:
            cfg = ", ".join(f"{k}={v}" for k, v in sorted(s.config.items()))
            lines.append(f"+ create   {s.name}  partitions={s.partitions} replication={s.replication_factor}  {cfg}")
        for name, have, want in self.partition_increases:
            lines.append(f"~ partitions {name}  {have} -> {want}")
        for c in self.config_changes:
            lines.append(
                f"~ config   {c.topic}  {c.key}: {c.current if c.current is not None else '(unset)'} -> {c.wanted}"
            )
        for p in self.problems:
            lines.append(f"! {p}")
        if not lines:
            lines.append(f"= nothing to change ({len(self.unchanged)} topics as specified)")
        elif self.unchanged:
            lines.append(f"= {len(self.unchanged)} topics already as specified")
        return "\n".join(lines)


def _norm(key: str, value: str | None) -> str | None:
    if value is None:
        return None
    if key == "cleanup.policy":
        return ",".join(sorted(v.strip() for v in value.split(",")))
    return value.strip()


def plan_topics(
    kafka: KafkaSettings, specs: Sequence[TopicSpec], admin: Any = None, timeout_s: float = 30.0
) -> TopicPlan:
    """Compare ``specs`` with the cluster: topics to create, partitions to add, config to set, problems."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ConfigResource

    admin = admin or make_admin(kafka)
    try:
        md = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise UnreachableError(f"Kafka at {kafka.bootstrap_servers} is not reachable: {exc}") from exc
    brokers = len(md.brokers)
    plan = TopicPlan()
    existing = []
    for spec in specs:
        tmd = md.topics.get(spec.name)
        if tmd is None or (tmd.error is not None and not tmd.partitions):
            if spec.replication_factor > brokers:
                plan.problems.append(
                    f"{spec.name}: replication factor {spec.replication_factor} needs "
                    f"{spec.replication_factor} brokers, the cluster has {brokers}; not created "
                    f"(lower kafka.replication_factor or add brokers)"
                )
            else:
                plan.creates.append(spec)
            continue
        existing.append(spec)
        have = len(tmd.partitions)
        if have < spec.partitions:
            plan.partition_increases.append((spec.name, have, spec.partitions))
        elif have > spec.partitions:
            plan.problems.append(
                f"{spec.name}: has {have} partitions, spec says {spec.partitions}; Kafka cannot remove "
                f"partitions and apply never deletes a topic: left as it is (raise kafka.partitions "
                f"to {have} to match)"
            )
        rfs = {len(p.replicas) for p in tmd.partitions.values()}
        if rfs != {spec.replication_factor}:
            shown = "/".join(str(r) for r in sorted(rfs))
            plan.problems.append(
                f"{spec.name}: replication factor is {shown}, spec says {spec.replication_factor}; "
                f"apply cannot change it (the admin API cannot reassign replicas safely on its own): "
                f"use kafka-reassign-partitions (or Strimzi/Cruise Control) — see docs/OPERATIONS.md"
            )
    if existing:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in existing]
        futures = admin.describe_configs(resources, request_timeout=timeout_s)
        for spec, res in zip(existing, resources):
            try:
                current = futures[res].result()
            except KafkaException as exc:
                raise UnreachableError(f"could not read the config of {spec.name}: {exc.args[0].str()}") from exc
            same = True
            for key, wanted in sorted(spec.config.items()):
                entry = current.get(key)
                have_v = entry.value if entry is not None else None
                if _norm(key, have_v) != _norm(key, wanted):
                    plan.config_changes.append(ConfigChange(spec.name, key, have_v, wanted))
                    same = False
            if same and not any(n == spec.name for n, _, _ in plan.partition_increases):
                plan.unchanged.append(spec.name)
    return plan


def apply_topics(
    kafka: KafkaSettings,
    specs: Sequence[TopicSpec],
    allow_partition_increase: bool = False,
    dry_run: bool = False,
    timeout_s: float = 30.0,
    show: Callable[[str], None] | None = None,
) -> TopicPlan:
    """Make the cluster match ``specs``, as far as that is safe; return the plan that was carried out.

    The order:

    1. plan (:func:`plan_topics`) and hand the rendered diff to ``show``;
    2. stop here when ``dry_run``;
    3. create the missing topics, wait until every partition has a leader;
    4. set changed config keys with incremental alter-configs (other keys stay as they are);
    5. add partitions only with ``allow_partition_increase`` — adding partitions moves keys to
       other partitions, which breaks per-key order at the switch and the copartitioning of
       state changelogs, so it is a planned operation (docs/OPERATIONS.md), never a side effect.

    Replication factor differences and extra partitions are reported in ``plan.problems``, never "fixed".
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewPartitions,
        NewTopic,
    )

    admin = make_admin(kafka)
    plan = plan_topics(kafka, specs, admin=admin, timeout_s=timeout_s)
    if not allow_partition_increase and plan.partition_increases:
        for name, have, want in plan.partition_increases:
            plan.problems.append(
                f"{name}: partitions {have} -> {want} not applied: adding partitions moves keys; "
                f"drain the stages and pass --allow-partition-increase (docs/OPERATIONS.md)"
            )
    if show:
        show(plan.render())
    if dry_run or plan.empty():
        return plan

    def wait(futures: Mapping[Any, Any], what: str, ignore: tuple[int, ...] = ()) -> None:
        for name, fut in futures.items():
            try:
                fut.result()
            except KafkaException as exc:
                if exc.args[0].code() not in ignore:
                    raise TerminalError(f"could not {what} {getattr(name, 'name', name)}: {exc.args[0].str()}") from exc

    from confluent_kafka import KafkaError

    if plan.creates:
        wait(
            admin.create_topics(
                [
                    NewTopic(
                        s.name,
                        num_partitions=s.partitions,
                        replication_factor=s.replication_factor,
                        config=dict(s.config),
                    )
                    for s in plan.creates
                ],
                operation_timeout=timeout_s,
            ),
            "create topic",
            (KafkaError.TOPIC_ALREADY_EXISTS,),
        )
        _wait_for_metadata(admin, [s.name for s in plan.creates], timeout_s)
        log.info("topics.created", topics=[s.name for s in plan.creates])
    if plan.config_changes:
        by_topic: dict[str, list[ConfigEntry]] = {}
        for c in plan.config_changes:
            by_topic.setdefault(c.topic, []).append(
                ConfigEntry(c.key, c.wanted, incremental_operation=AlterConfigOpType.SET)
            )
        resources = [
            ConfigResource(ConfigResource.Type.TOPIC, t, incremental_configs=entries) for t, entries in by_topic.items()
        ]
        wait(admin.incremental_alter_configs(resources, request_timeout=timeout_s), "change the config of")
        log.info("topics.config_changed", changes=len(plan.config_changes), topics=sorted(by_topic))
    if allow_partition_increase and plan.partition_increases:
        wait(
            admin.create_partitions(
                [NewPartitions(n, want) for n, _, want in plan.partition_increases], operation_timeout=timeout_s
            ),
            "add partitions to",
        )
        log.info("topics.partitions_added", topics=[n for n, _, _ in plan.partition_increases])
    return plan


# --------------------------------------------------------------------------- Strimzi KafkaTopic resources


def kafka_topic_resources(specs: Sequence[TopicSpec], cluster: str, namespace: str) -> list[dict[str, Any]]:
    """Strimzi ``KafkaTopic`` resources for ``specs`` (Kubernetes object names must be DNS-1123)."""
    out = []
    for s in specs:
        out.append(
            {
                "apiVersion": "kafka.strimzi.io/v1",
                "kind": "KafkaTopic",
                "metadata": {
                    "name": k8s_name(s.name),
                    "namespace": namespace,
                    "labels": {"strimzi.io/cluster": cluster, "app.kubernetes.io/part-of": "sevisflow"},
                },
                "spec": {
                    "topicName": s.name,
                    "partitions": s.partitions,
                    "replicas": s.replication_factor,
                    "config": {k: s.config[k] for k in sorted(s.config)},
                },
            }
        )
    return out


def k8s_name(topic: str) -> str:
    """A topic name as a Kubernetes object name: lower case, dots and underscores become dashes."""
    return topic.lower().replace(".", "-").replace("_", "-")


def to_yaml(docs: Sequence[Any]) -> str:
    """A small YAML writer for manifests made of dicts, lists, strings and numbers (no PyYAML needed)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def emit(v: Any, indent: int) -> list[str]:
        pad = "  " * indent
        lines: list[str] = []
        if isinstance(v, dict):
            for k, item in v.items():
                if isinstance(item, (dict, list)) and item:
                    lines.append(f"{pad}{k}:")
                    lines.extend(emit(item, indent + 1))
                else:
                    lines.append(
                        f"{pad}{k}: {scalar(item) if not isinstance(item, (dict, list)) else '{}' if isinstance(item, dict) else '[]'}"
                    )
        else:
            for item in v:
                if isinstance(item, (dict, list)) and item:
                    sub = emit(item, indent + 1)
                    lines.append(f"{pad}- {sub[0].strip()}")
                    lines.extend(sub[1:])
                else:
                    lines.append(f"{pad}- {scalar(item)}")
        return lines

    return "".join("---\n" + "\n".join(emit(d, 0)) + "\n" for d in docs)
