"""The batcher on real Kafka, for the integration tests of the batcher and the DSO CLI.

Settings and topics of a per-test batcher, sending events and commands, reading sevis.batches back,
and `Batcher` (the batcher in a thread of the test process). A plain module (not a test module), so
importing it pulls in no other module's tests; the `env` fixture is in tests/integration/conftest.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from sevisflow.app.cli import main as cli_main
from sevisflow.core.kafka_io import delivery_raiser, ensure_topics, flush_or_raise, make_producer, produce, read_topic
from sevisflow.core.serde import registry
from sevisflow.core.topics import pipeline_topics
from sevisflow.processors.batcher import batcher_topics
from sevisflow.processors.batcher import run as run_batcher
from sevisflow.processors.batcher.view import BatchView, build_view
from testkit.batcher import ORG
from tests.helpers import make_settings

DSO = "DSOUSER001"
ORG2 = "XYZ214F00001000"
FAST = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def batcher_settings(kafka_stack, unique, schools=(), **school):
    """A per-test batcher's settings: [school] ORG (America/Chicago), plus member schools ([[schools]] tables)."""
    return make_settings(
        kafka_stack,
        unique=unique,
        school={"org_id": ORG, "timezone": "America/Chicago", **school},
        schools=list(schools),
    )


def setup_topics(settings) -> None:
    ensure_topics(settings.kafka, pipeline_topics(settings) + batcher_topics(settings))


def write_config(settings, path: Path, school_extra: str = "") -> Path:
    """The DSO's sevisflow.toml for the CLI (``school_extra``: more [school] lines, e.g. default_dso)."""
    t = settings.topics
    path.write_text(
        f'[kafka]\nbootstrap_servers = "{settings.kafka.bootstrap_servers}"\n'
        f'[school]\norg_id = "{settings.school.org_id}"\ntimezone = "{settings.school.timezone}"\n{school_extra}'
        f'[sevis]\nxsd_dir = "{settings.sevis.xsd_dir}"\n'
        f'[topics]\nevents = "{t.events}"\ncommands = "{t.commands}"\nbatches = "{t.batches}"\n'
        f'results = "{t.results}"\ndlq = "{t.dlq}"\nstudents = "{t.students}"\n'
        f'open_batches = "{t.open_batches}"\nworklist = "{t.worklist}"\n'
    )
    return path


def send(settings, topic: str, schema: str, records: list[dict[str, Any]]) -> None:
    producer = make_producer(settings.kafka)
    errors: list[Any] = []
    for r in records:
        produce(
            producer, topic, r["org_id"].encode(), registry().encode(schema, r), on_delivery=delivery_raiser(errors)
        )
    flush_or_raise(producer, errors)


def send_events(settings, events) -> None:
    send(settings, settings.topics.events, "sevisflow.events.SevisEvent", events)


def send_command(settings, cmd) -> None:
    send(settings, settings.topics.commands, "sevisflow.commands.BatchCommand", [cmd])


def batch_events(settings) -> list[dict[str, Any]]:
    return [
        registry().decode(m.value(), "sevisflow.batches.BatchEvent")
        for m in read_topic(settings.kafka, settings.topics.batches)
        if m.value() is not None
    ]


def wait_for(settings, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 40.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        evs = batch_events(settings)
        if pred(evs):
            return evs
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last types: {[e['type'] for e in evs][-10:]}")
        time.sleep(0.3)


def view_of(settings, org: str = ORG) -> BatchView:
    return build_view(org, batch_events(settings))


def closed_of(evs, org: str = ORG) -> list[dict[str, Any]]:
    return [e for e in evs if e["type"] == "closed" and e["org_id"] == org]


def records_of(closed_event) -> list[dict[str, Any]]:
    return orjson.loads(closed_event["records_json"])


class Batcher:
    """The batcher in a thread of the test process."""

    def __init__(self, settings, instance: str = "t1") -> None:
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

        def target() -> None:
            try:
                run_batcher(settings, self.stop_event, instance=instance, consumer_overrides=FAST)
            except BaseException as exc:  # noqa: BLE001 - reported by stop()
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error


def cli(capsys, cfg, *argv):
    """`sevisflow --config cfg *argv` in-process: (exit code, stdout, stderr)."""
    code = cli_main(["--config", str(cfg), *argv])
    out = capsys.readouterr()
    return code, out.out, out.err
