"""The reference school replayed through the pure pipeline, and how a real run's events compare to it.

A generated school (``generate_school``) and its activity (``generate_activity``) as Debezium
records — a snapshot, then one source transaction per activity Transaction, with transaction
metadata — fed to :class:`PurePipeline`. What a real pipeline run on the same school must put on
``sevis.events`` is what this gives. Shared by the tests (unit, integration, e2e) and the chaos
bench (bench/chaos), which must not import the tests.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from sevisflow.deploy.sis.activity import generate_activity
from sevisflow.deploy.sis.generator import generate_school
from sevisflow.deploy.sis.model import PRIMARY_KEYS, TABLE_ORDER, Transaction, World
from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.normalize.mapping import load_mapping
from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline

MAPPING = load_mapping(Path(__file__).resolve().parent / "mapping.toml")
TODAY = date(2026, 10, 5)
PKS = {f"public.{t}": cols for t, cols in PRIMARY_KEYS.items()}


def feed_ops(world: World, tx: Transaction) -> list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]]:
    """The activity's ops as Debezium (op, table, before, after), applying them to `world`."""
    out: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = []
    for op in tx.ops:
        table = f"public.{op.table}"
        if op.action == "insert":
            out.append(("c", table, None, dict(op.values)))
        else:
            before = dict(world.rows[op.table][tuple(op.key.values())])
            out.append(
                ("u", table, before, {**before, **op.values}) if op.action == "update" else ("d", table, before, None)
            )
        world.apply(op)
    return out


class Replay:
    """The school snapshotted into a pipeline, then each activity transaction with its own output."""

    def __init__(self, students: int = 300, share: float = 0.35, seed: int = 7, n_activity: int = 150) -> None:
        self.school = generate_school(students, share, seed, TODAY)
        self.activity = generate_activity(self.school, n_activity, seed, TODAY)
        self.world = World(self.school)
        self.feed = SisFeed(primary_keys=PKS)
        self.pipe = PurePipeline(MAPPING)
        for table in TABLE_ORDER:
            for row in self.school[table]:
                self.feed.tx(("r", f"public.{table}", None, row), snapshot=True)
        self.snapshot = self.take()

    def take(self) -> PureOutput:
        out = self.pipe.feed(self.feed.records)
        self.feed.records.clear()
        return out

    def play(self, tx: Transaction) -> PureOutput:
        self.feed.ts_ms = int(tx.at.timestamp() * 1000) - 1000  # the commit time is the activity's time
        self.feed.tx(*feed_ops(self.world, tx))
        return self.take()

    def visa(self, tx: Transaction) -> str | None:
        imm = self.world.immigration(tx.person_id)
        return imm["visa_type"] if imm else None


def replay_events(
    students: int, share: float, seed: int, activity: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(snapshot events, activity events) the pure pipeline derives for the school and its activity."""
    r = Replay(students=students, share=share, seed=seed, n_activity=activity)
    return list(r.snapshot.events), [e for tx in r.activity for e in r.play(tx).events]


def expected_events(students: int, share: float, seed: int, activity: int) -> tuple[list[dict[str, Any]], set[str]]:
    """(events, students with a snapshot Create) the pure pipeline derives for the school and its activity."""
    snapshot, later = replay_events(students, share, seed, activity)
    return snapshot + later, {e["student_key"] for e in snapshot if e["kind"] == "Create"}


def commit_date(lineage: list[dict[str, Any]]) -> str | None:
    """The (UTC) date of the latest source commit in ``lineage``."""
    ms = max((p.get("commit_ts_ms") or 0 for p in lineage or []), default=0)
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date().isoformat() if ms else None


def canonical_payload(payload: Any, lineage: list[dict[str, Any]]) -> bytes:
    """The payload as canonical JSON, with an I-20 issue date that is the commit date written as such.

    A Create without ``i20_issue_date`` in the SIS takes the source commit's date (derive.py): the pure
    feed commits at the activity's generated time, the real SIS at the wall clock; both must be *their*
    commit date, and everything else must be equal. The date is the commit's in the school's time zone,
    which is the UTC date or the day before or after it."""
    day = commit_date(lineage)
    days: set[str] = set()
    if day:
        d = date.fromisoformat(day)
        days = {(d + timedelta(days=n)).isoformat() for n in (-1, 0, 1)}

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: ("<commit date>" if k == "IssDate" and x in days else walk(x)) for k, x in v.items()}
        return [walk(x) for x in v] if isinstance(v, list) else v

    return orjson.dumps(walk(payload), option=orjson.OPT_SORT_KEYS)


def event_content(e: dict[str, Any]) -> tuple[Any, ...]:
    """What must agree between a real and a pure event (event ids and source positions differ)."""
    return (
        e["student_key"],
        e["kind"],
        e["coalesce_key"],
        canonical_payload(orjson.loads(e["payload_json"]), e["lineage"]),
        len(e["lineage"]),
    )


def compare_events(
    events: list[dict[str, Any]], expected: list[dict[str, Any]], snapshot_creates: set[str]
) -> dict[str, Any]:
    """Events of a real run against the pure pipeline's: counts of missing, unexpected and repeated ones.

    A snapshot Create is compared by student and kind only: its content depends on the order the
    snapshot rows arrive in (connector + normalize)."""

    def key(e: dict[str, Any]) -> tuple[Any, ...]:
        c = event_content(e)
        return c[:3] if e["kind"] == "Create" and e["student_key"] in snapshot_creates else c

    ids = Counter(e["event_id"] for e in events)
    got, want = Counter(map(key, events)), Counter(map(key, expected))
    return {
        "events_expected": len(expected),
        "events_on_topic": len(events),
        "duplicate_event_ids": sum(1 for n in ids.values() if n > 1),
        "events_missing": sum((want - got).values()),
        "events_unexpected": sum((got - want).values()),
        "events_missing_keys": [list(k[:3]) for k in want - got],
        "events_unexpected_keys": [list(k[:3]) for k in got - want],
    }
