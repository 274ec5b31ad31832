"""``make demo``: the whole pipeline on a generated school, on a stack the demo starts itself.

Each step prints what it does and what it found; the first failing step stops the
demo with exit 1 and its reason, and the stack is always stopped at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

import psycopg

from deploy.local.stack import StackInfo, start_stack, stop_stack
from deploy.sis.generator import generate_school
from deploy.sis.load import create_schema, load_school
from sevisflow.config import Settings, settings_from_mapping
from sevisflow.errors import SevisflowError
from sevisflow.kafka_io import TopicSpec, ensure_topics, make_producer, read_topic
from sevisflow.topics import pipeline_topics

REPO = Path(__file__).resolve().parent.parent
DEMO_TODAY = date(2026, 10, 5)  # a fixed "today" so every demo run generates the same school


class DemoFailed(SevisflowError):
    """A demo step did not give the result it should."""


@dataclass
class DemoContext:
    students: int
    international_share: float
    seed: int
    xsd_dir: str
    stack: StackInfo | None = None
    settings: Settings | None = None
    facts: dict[str, object] = field(default_factory=dict)


def _say(msg: str) -> None:
    print(msg, flush=True)


def step_stack(ctx: DemoContext) -> str:
    ctx.stack = start_stack(name="demo", progress=lambda m: _say(f"    {m}"))
    assert ctx.stack.kafka and ctx.stack.postgres
    ctx.settings = settings_from_mapping({
        "kafka": {"bootstrap_servers": ctx.stack.kafka.bootstrap},
        "postgres": {"host": "127.0.0.1", "port": ctx.stack.postgres.port, "dbname": "sis", "user": "postgres"},
        "sevis": {"xsd_dir": ctx.xsd_dir, "outbox_dir": str(Path(ctx.stack.base) / "outbox")},
    }, env={})
    return f"Kafka {ctx.stack.kafka.bootstrap}, PostgreSQL 127.0.0.1:{ctx.stack.postgres.port}"


def step_sis(ctx: DemoContext) -> str:
    assert ctx.stack and ctx.stack.postgres
    dsn = ctx.stack.postgres.dsn
    create_schema(dsn)
    school = generate_school(ctx.students, ctx.international_share, ctx.seed, DEMO_TODAY)
    counts = load_school(dsn, school)
    ctx.facts["school"] = school
    return ", ".join(f"{t} {n}" for t, n in counts.items())


def step_topics(ctx: DemoContext) -> str:
    assert ctx.settings
    created = ensure_topics(ctx.settings.kafka, pipeline_topics(ctx.settings))
    return f"{len(created)} topics created: {', '.join(created)}"


def step_prove_slot(ctx: DemoContext) -> str:
    """A logical slot sees a committed change (the path the connector will use)."""
    assert ctx.stack and ctx.stack.postgres
    with psycopg.connect(ctx.stack.postgres.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('demo_probe', 'test_decoding')")
        try:
            conn.execute("UPDATE person SET email = email WHERE person_id = (SELECT min(person_id) FROM person)")
            changes = conn.execute("SELECT count(*) FROM pg_logical_slot_get_changes('demo_probe', NULL, NULL) "
                                   "WHERE data LIKE 'table public.person: UPDATE%'").fetchone()[0]
        finally:
            conn.execute("SELECT pg_drop_replication_slot('demo_probe')")
    if changes != 1:
        raise DemoFailed(f"the logical slot saw {changes} person updates, expected 1")
    return "a logical replication slot received the committed UPDATE"


def step_prove_kafka(ctx: DemoContext) -> str:
    """A message round-trips through the broker."""
    assert ctx.settings
    topic = "sevisflow.demo.probe"
    ensure_topics(ctx.settings.kafka, [TopicSpec(topic, 1, 1)])
    producer = make_producer(ctx.settings.kafka)
    producer.produce(topic, key=b"probe", value=b"hello")
    if producer.flush(30):
        raise DemoFailed("Kafka did not acknowledge the probe message")
    got = [m.value() for m in read_topic(ctx.settings.kafka, topic)]
    if got != [b"hello"]:
        raise DemoFailed(f"read back {got!r} instead of the probe")
    return "produced and read back one message"


STEPS: list[tuple[str, Callable[[DemoContext], str]]] = [
    ("start the local stack (real PostgreSQL + Apache Kafka)", step_stack),
    ("create the reference SIS and load a generated school", step_sis),
    ("create the pipeline topics", step_topics),
    ("prove logical replication", step_prove_slot),
    ("prove a Kafka round trip", step_prove_kafka),
]


def run_demo(students: int = 300, international_share: float = 0.35, seed: int = 7,
             xsd_dir: str | None = None, keep: bool = False) -> int:
    xsd = xsd_dir or str(REPO.parent / "shared" / "sevis" / "xsd")
    ctx = DemoContext(students=students, international_share=international_share, seed=seed, xsd_dir=xsd)
    started = time.monotonic()
    try:
        for number, (title, fn) in enumerate(STEPS, 1):
            _say(f"[{number}/{len(STEPS)}] {title}")
            t0 = time.monotonic()
            result = fn(ctx)
            _say(f"    ok ({time.monotonic() - t0:.1f}s): {result}")
    finally:
        if ctx.stack and not keep:
            _say("stopping the local stack")
            stop_stack(ctx.stack, remove=True)
    _say(f"demo finished in {time.monotonic() - started:.1f}s")
    return 0
