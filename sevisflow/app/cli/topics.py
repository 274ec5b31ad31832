"""``sevisflow topics list|create|apply|manifests``: the pipeline's Kafka topics as code.

``list`` shows the specs (no Kafka needed); ``create`` creates the missing pipeline topics
(idempotent, the original command); ``apply`` prints the diff between the specs and the
cluster — topics to create, partitions to add, config to change, and what it cannot change
(replication factor, extra partitions) — then applies it (``--dry-run`` stops after the diff);
``manifests`` prints Strimzi ``KafkaTopic`` resources made from the same specs.
"""

from __future__ import annotations

import argparse

from sevisflow.app.cli.common import add_json_flag, format_table, print_json, settings_from_args
from sevisflow.core.errors import SevisflowError
from sevisflow.core.kafka_io import TopicSpec, ensure_topics
from sevisflow.core.topics import all_topics, apply_topics, kafka_topic_resources, pipeline_topics, to_yaml


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "topics",
        help="manage the pipeline's Kafka topics (topics as code: deploy/topics.toml)",
        description="Topic specs: deploy/topics.toml (config, retention) + [kafka] settings "
        "(partitions, replication_factor, min_insync_replicas) + [topics] names.",
    )
    tsub = p.add_subparsers(dest="topics_command", metavar="ACTION", required=True)

    ls = tsub.add_parser("list", help="show every topic's spec (no Kafka needed)")
    ls.add_argument("--pipeline-only", action="store_true", help="only the topics between the stages")
    add_json_flag(ls)
    ls.set_defaults(func=cmd_list)

    c = tsub.add_parser("create", help="create missing pipeline topics (safe to repeat)")
    c.set_defaults(func=create)

    a = tsub.add_parser("apply", help="show the diff to the cluster, then apply it (idempotent; never deletes)")
    a.add_argument("--dry-run", action="store_true", help="only show the diff")
    a.add_argument(
        "--allow-partition-increase",
        action="store_true",
        help="also add partitions (moves keys: drain the stages first, see docs/OPERATIONS.md)",
    )
    a.add_argument(
        "--pipeline-only",
        action="store_true",
        help="only the topics between the stages (not change topics nor state changelogs)",
    )
    a.set_defaults(func=cmd_apply)

    m = tsub.add_parser("manifests", help="print Strimzi KafkaTopic resources (YAML) for every topic")
    m.add_argument("--cluster", default="sevisflow", help="the Strimzi Kafka resource's name (strimzi.io/cluster)")
    m.add_argument("--namespace", default="sevisflow")
    m.set_defaults(func=cmd_manifests)


def _specs(args: argparse.Namespace) -> list[TopicSpec]:
    settings = settings_from_args(args)
    return pipeline_topics(settings) if getattr(args, "pipeline_only", False) else all_topics(settings)


def cmd_list(args: argparse.Namespace) -> int:
    specs = _specs(args)
    if args.json:
        print_json(
            [
                {
                    "name": s.name,
                    "partitions": s.partitions,
                    "replication_factor": s.replication_factor,
                    "config": dict(s.config),
                }
                for s in specs
            ]
        )
        return 0
    print(
        format_table(
            ["TOPIC", "PARTITIONS", "RF", "CONFIG"],
            [
                [s.name, s.partitions, s.replication_factor, " ".join(f"{k}={v}" for k, v in sorted(s.config.items()))]
                for s in specs
            ],
        )
    )
    return 0


def create(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    created = ensure_topics(settings.kafka, pipeline_topics(settings))
    for spec in pipeline_topics(settings):
        print(f"{spec.name:28} {'created' if spec.name in created else 'exists'}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    specs = _specs(args)
    print(
        f"topics: {len(specs)} specs against {settings.kafka.bootstrap_servers}"
        + (" (dry run)" if args.dry_run else "")
    )
    plan = apply_topics(
        settings.kafka, specs, allow_partition_increase=args.allow_partition_increase, dry_run=args.dry_run, show=print
    )
    if args.dry_run:
        return 0
    if not plan.empty():
        print("applied")
    if plan.problems:
        raise SevisflowError(f"{len(plan.problems)} difference(s) apply did not change (lines with '!' above)")
    return 0


def cmd_manifests(args: argparse.Namespace) -> int:
    print(to_yaml(kafka_topic_resources(_specs(args), cluster=args.cluster, namespace=args.namespace)), end="")
    return 0
