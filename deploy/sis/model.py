"""The SIS as data: tables, rows, and row changes (Op) grouped into commits (Transaction).

Shared by the generator (rows), the activity (changes) and the loader (SQL). `World` applies
changes to rows in memory, so tests can compare a database with what the changes should give.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Row = dict[str, Any]
School = dict[str, list[Row]]

# Load order: parents before children (foreign keys).
TABLE_ORDER: tuple[str, ...] = (
    "person",
    "immigration",
    "address",
    "term",
    "program",
    "enrollment",
    "finance",
    "dependent",
    "student_authorization",
    "exchange_visitor",
    "exchange_funding",
    "exchange_site",
    "exchange_dependent",
)
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "person": ("person_id",),
    "immigration": ("person_id",),
    "address": ("address_id",),
    "term": ("term_id",),
    "program": ("program_id",),
    "enrollment": ("enrollment_id",),
    "finance": ("person_id",),
    "dependent": ("dependent_id",),
    "student_authorization": ("authorization_id",),
    "exchange_visitor": ("person_id",),
    "exchange_funding": ("person_id",),
    "exchange_site": ("site_id",),
    "exchange_dependent": ("dependent_id",),
}
INTERNATIONAL_VISAS = frozenset({"F-1", "M-1", "J-1"})
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_PERSON_TABLES = (
    "address",
    "program",
    "enrollment",
    "dependent",
    "student_authorization",
    "exchange_site",
    "exchange_dependent",
)


def empty_school() -> School:
    """A school with every table present and no rows."""
    return {table: [] for table in TABLE_ORDER}


def is_international(immigration_row: Mapping[str, Any] | None) -> bool:
    """True for F-1, M-1 and J-1 students: the ones SEVIS must hear about."""
    return immigration_row is not None and immigration_row.get("visa_type") in INTERNATIONAL_VISAS


def merge(into: School, part: School) -> None:
    """Append the rows of `part` to `into`, table by table."""
    for table, rows in part.items():
        into.setdefault(table, []).extend(rows)


@dataclass(frozen=True)
class Op:
    """One row change. `key`: primary-key columns (update/delete); `values`: the row or the changes."""

    action: str  # 'insert' | 'update' | 'delete'
    table: str
    key: Mapping[str, Any]
    values: Mapping[str, Any]

    def sql(self) -> tuple[str, tuple[Any, ...]]:
        """(statement with %s placeholders, parameters) for psycopg."""
        for name in (self.table, *self.key, *self.values):
            if not _IDENTIFIER.match(name):
                raise ValueError(f"not a plain identifier: {name!r}")
        table = f'public."{self.table}"'
        where = " AND ".join(f'"{c}" = %s' for c in self.key)
        if self.action == "insert":
            cols = ", ".join(f'"{c}"' for c in self.values)
            marks = ", ".join(["%s"] * len(self.values))
            return f"INSERT INTO {table} ({cols}) VALUES ({marks})", tuple(self.values.values())
        if self.action == "update":
            sets = ", ".join(f'"{c}" = %s' for c in self.values)
            return (f"UPDATE {table} SET {sets} WHERE {where}", (*self.values.values(), *self.key.values()))
        if self.action == "delete":
            return f"DELETE FROM {table} WHERE {where}", tuple(self.key.values())
        raise ValueError(f"unknown action {self.action!r}")


@dataclass(frozen=True)
class Transaction:
    """One SIS commit: what happened (kind, note), to whom, when, and its row changes in order."""

    kind: str
    person_id: int
    international: bool
    at: datetime
    ops: tuple[Op, ...]
    note: str = ""

    @property
    def tables(self) -> frozenset[str]:
        """Tables this commit touches."""
        return frozenset(op.table for op in self.ops)

    def statements(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The SQL of every op, in order."""
        return [op.sql() for op in self.ops]


def _pk(table: str, row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row[c] for c in PRIMARY_KEYS[table])


class World:
    """In-memory copy of the SIS that the activity changes as it goes."""

    def __init__(self, school: School) -> None:
        self.rows: dict[str, dict[tuple[Any, ...], Row]] = {
            t: {_pk(t, r): dict(r) for r in school.get(t, [])} for t in TABLE_ORDER
        }
        self.by_person: dict[str, dict[int, list[tuple[Any, ...]]]] = {t: defaultdict(list) for t in _PERSON_TABLES}
        for table in _PERSON_TABLES:
            for key, row in self.rows[table].items():
                self.by_person[table][row["person_id"]].append(key)
        self.international: list[int] = []
        self.domestic: list[int] = []
        for (pid,) in sorted(self.rows["person"]):
            self._classify(pid)

    def _classify(self, pid: int) -> None:
        (self.international if is_international(self.immigration(pid)) else self.domestic).append(pid)

    def apply(self, op: Op) -> None:
        """Record `op` as done."""
        rows = self.rows[op.table]
        if op.action == "insert":
            key = _pk(op.table, op.values)
            if key in rows:
                raise ValueError(f"duplicate key {op.table}{key}")
            rows[key] = dict(op.values)
            if op.table in self.by_person:
                self.by_person[op.table][op.values["person_id"]].append(key)
            if op.table == "immigration" and is_international(op.values):
                self.international.append(op.values["person_id"])
        elif op.action == "update":
            rows[tuple(op.key.values())].update(op.values)
        else:
            row = rows.pop(tuple(op.key.values()))
            if op.table in self.by_person:
                self.by_person[op.table][row["person_id"]].remove(tuple(op.key.values()))

    def person(self, pid: int) -> Row:
        """The person row."""
        return self.rows["person"][(pid,)]

    def immigration(self, pid: int) -> Row | None:
        """The immigration row, if any."""
        return self.rows["immigration"].get((pid,))

    def finance(self, pid: int) -> Row | None:
        """The finance row, if any."""
        return self.rows["finance"].get((pid,))

    def of(self, table: str, pid: int) -> list[Row]:
        """Rows of a per-person table that belong to `pid`."""
        return [self.rows[table][k] for k in self.by_person[table].get(pid, [])]

    def address(self, pid: int, kind: str) -> Row | None:
        """The person's address of `kind`, if any."""
        return next((a for a in self.of("address", pid) if a["kind"] == kind), None)

    def program(self, pid: int) -> Row | None:
        """The current programme, if any."""
        return next((p for p in self.of("program", pid) if p["is_current"]), None)

    def enrollment(self, pid: int, term_id: str) -> Row | None:
        """The enrollment of `pid` in `term_id`, if any."""
        return next((e for e in self.of("enrollment", pid) if e["term_id"] == term_id), None)
