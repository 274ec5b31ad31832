"""The one-student reference SIS of the event scenarios, shared by unit and integration tests.

A `School` that replays transactions through the pure pipeline, on the rows of
:mod:`testkit.school` (one F-1 student's `base_rows`, their tables, `school_history`: n students over
a term, also used by bench/). A plain module (not a test module), so importing it pulls in no other
module's tests and no pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.normalize.mapping import load_mapping
from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline
from testkit.school import ORG, PKS, TABLES, base_rows, school_history  # noqa: F401 - for the tests
from tests.helpers import REPO

MAPPING = load_mapping(REPO / "deploy/sis/mapping.toml")


class School:
    """The reference SIS with one student, seeded, and a pipeline that has seen it all."""

    def __init__(self, **kw: Any) -> None:
        self.rows = base_rows(**kw)
        self.feed = SisFeed(primary_keys=PKS)
        self.pipe = PurePipeline(MAPPING)
        self.feed.tx(*[("c", TABLES[n], None, r) for n, r in self.rows.items()])
        self.seed_out = self.pipe.feed(self.feed)
        self.feed.records.clear()

    def tx(self, *ops: tuple[str, str, dict[str, Any]]) -> PureOutput:
        """ops: ("u", name, changes) | ("c", name, row) | ("d", name, {})."""
        out = []
        for op, name, data in ops:
            if op == "u":
                old = self.rows[name]
                new = {**old, **data}
                out.append(("u", TABLES[name], old, new))
                self.rows[name] = new
            elif op == "c":
                self.rows[name] = data
                out.append(("c", TABLES[name.split(":")[0]], None, data))
            else:
                out.append(("d", TABLES[name], self.rows.pop(name), None))
        self.feed.tx(*out)
        res = self.pipe.feed(self.feed)
        self.feed.records.clear()
        return res


def payload(out: PureOutput, kind: str) -> dict[str, Any]:
    return orjson.loads(next(e for e in out.events if e["kind"] == kind)["payload_json"])


@dataclass
class Case:
    """One table-driven scenario: SIS ops (after optional ``pre`` transactions) → expected event kinds."""

    name: str
    ops: list[tuple[str, str, Any]]
    kinds: list[str]
    check: Callable[[PureOutput], None] | None = None
    issues: list[str] = field(default_factory=list)
    pre: list[list[tuple[str, str, Any]]] = field(default_factory=list)
    school: dict[str, Any] = field(default_factory=dict)
