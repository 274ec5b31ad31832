"""``sevisflow topics create``: create the pipeline's topics that are missing (idempotent)."""

from __future__ import annotations

import argparse

from sevisflow.cli.common import settings_from_args
from sevisflow.kafka_io import ensure_topics
from sevisflow.topics import pipeline_topics


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("topics", help="manage the pipeline's Kafka topics")
    tsub = p.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    c = tsub.add_parser("create", help="create missing topics (safe to repeat)")
    c.set_defaults(func=create)


def create(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    created = ensure_topics(settings.kafka, pipeline_topics(settings))
    for spec in pipeline_topics(settings):
        print(f"{spec.name:28} {'created' if spec.name in created else 'exists'}")
    return 0
