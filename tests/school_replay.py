"""The reference school replayed through the pure pipeline, shared by unit, integration and e2e tests.

What `make demo` loads (generate_school(300, 0.35, seed 7, today 2026-10-05) + 150 activity
transactions) as Debezium records: a snapshot, then one source transaction per activity
Transaction, with transaction metadata. A plain module (not a test module), so tests of any
kind can import it without pulling in another module's tests and fixtures.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from deploy.sis.activity import generate_activity
from deploy.sis.generator import generate_school
from deploy.sis.model import PRIMARY_KEYS, TABLE_ORDER, Transaction, World
from processors.normalize.debezium import SisFeed
from processors.normalize.mapping import load_mapping
from processors.sevis_events.pure import PureOutput, PurePipeline
from tests.helpers import REPO

MAPPING = load_mapping(REPO / "deploy/sis/mapping.toml")
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
            out.append(("u", table, before, {**before, **op.values}) if op.action == "update"
                       else ("d", table, before, None))
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
        self.feed.ts_ms = int(tx.at.timestamp() * 1000) - 1000   # the commit time is the activity's time
        self.feed.tx(*feed_ops(self.world, tx))
        return self.take()

    def visa(self, tx: Transaction) -> str | None:
        imm = self.world.immigration(tx.person_id)
        return imm["visa_type"] if imm else None
