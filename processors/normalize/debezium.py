"""Build Debezium-format change records: for tests, benchmarks and demos that feed the processors
without a connector. Deterministic: positions and times come from counters, never a clock.

``SisFeed`` plays a PostgreSQL server: each :meth:`SisFeed.tx` is one transaction, its rows get
increasing LSNs, ``source.sequence`` carries ``[last commit lsn, lsn]`` as Debezium does, and the
transaction's BEGIN/END markers (with per-table counts) go to the transaction topic.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson

EPOCH = date(1970, 1, 1)


@dataclass
class Record:
    topic: str
    key: bytes | None
    value: bytes | None


def _debezium_value(v: Any, style: str) -> Any:
    """Python value → how Debezium's JsonConverter writes it (style 'debezium') or ISO strings ('iso')."""
    if isinstance(v, datetime):
        if style == "debezium":
            dt = v if v.tzinfo else v.replace(tzinfo=UTC)
            return (
                v.astimezone(UTC).isoformat().replace("+00:00", "Z")
                if v.tzinfo
                else int((dt - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000)
            )
        return v.isoformat()
    if isinstance(v, date):
        return (v - EPOCH).days if style == "debezium" else v.isoformat()
    if isinstance(v, Decimal):
        if style == "debezium":
            unscaled = int(v.scaleb(_scale(v)))
            n = max(1, (unscaled.bit_length() + 8) // 8)
            return base64.b64encode(unscaled.to_bytes(n, "big", signed=True)).decode()
        return str(v)
    return v


def _scale(d: Decimal) -> int:
    """Digits after the point of a finite decimal (the ``scale`` of Connect's Decimal)."""
    exponent = d.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(f"{d} is not a finite decimal: Connect's Decimal cannot carry it")
    return -exponent


def _schema_of(row: dict[str, Any], style: str) -> list[dict[str, Any]]:
    fields = []
    for k, v in row.items():
        f: dict[str, Any]
        if style != "debezium" and isinstance(v, (date, Decimal)):
            f = {"type": "string"}
        elif isinstance(v, bool):
            f = {"type": "boolean"}
        elif isinstance(v, int):
            f = {"type": "int64"}
        elif isinstance(v, datetime):
            f = (
                {"type": "string", "name": "io.debezium.time.ZonedTimestamp"}
                if v.tzinfo
                else {"type": "int64", "name": "io.debezium.time.MicroTimestamp"}
            )
        elif isinstance(v, date):
            f = {"type": "int32", "name": "io.debezium.time.Date"}
        elif isinstance(v, Decimal):
            f = {
                "type": "bytes",
                "name": "org.apache.kafka.connect.data.Decimal",
                "parameters": {"scale": str(_scale(v))},
            }
        else:
            f = {"type": "string"}
        fields.append({"field": k, "optional": True, **f})
    return fields


@dataclass
class SisFeed:
    """A fake source database that writes change records in Debezium's format."""

    prefix: str = "sis"
    schema_wrapper: bool = False
    style: str = "debezium"  # 'debezium' (int dates, base64 decimals) or 'iso'
    transactions: bool = True
    primary_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    lsn: int = 1_000_000
    tx_id: int = 500
    ts_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z, advanced 1 s per transaction
    last_commit: int = 0
    records: list[Record] = field(default_factory=list)

    @property
    def tx_topic(self) -> str:
        return f"{self.prefix}.transaction"

    def topic(self, table: str) -> str:
        return f"{self.prefix}.{table}"

    def _key(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        cols = self.primary_keys.get(table) or (next(iter(row)),)
        return {c: _debezium_value(row[c], self.style) for c in cols}

    def tx(self, *ops: tuple[str, str, dict[str, Any] | None, dict[str, Any] | None], snapshot: bool = False) -> None:
        """One transaction of ops ``(op, table, before, after)`` with op in c/u/d/r."""
        self.tx_id += 1
        self.ts_ms += 1000
        counts: dict[str, int] = {}
        out: list[Record] = []
        for op, table, before, after in ops:
            self.lsn += 16
            row = after if after is not None else before
            assert row is not None
            source = {
                "version": "2.7.0.Final",
                "connector": "postgresql",
                "name": self.prefix,
                "ts_ms": self.ts_ms,
                "snapshot": "true" if snapshot else "false",
                "db": "sis",
                "sequence": orjson.dumps([str(self.last_commit), str(self.lsn)]).decode(),
                "schema": table.split(".")[0],
                "table": table.split(".")[1],
                "txId": self.tx_id,
                "lsn": self.lsn,
                "xmin": None,
            }
            payload: dict[str, Any] = {
                "before": None if before is None else {k: _debezium_value(v, self.style) for k, v in before.items()},
                "after": None if after is None else {k: _debezium_value(v, self.style) for k, v in after.items()},
                "source": source,
                "op": op,
                "ts_ms": self.ts_ms + 5,
            }
            if self.transactions and not snapshot:
                counts[table] = counts.get(table, 0) + 1
                payload["transaction"] = {
                    "id": f"{self.tx_id}:{self.lsn}",
                    "total_order": sum(counts.values()),
                    "data_collection_order": counts[table],
                }
            value: Any = payload
            key: Any = self._key(table, row)
            if self.schema_wrapper:
                fields = _schema_of(row, self.style)
                value = {
                    "schema": {
                        "type": "struct",
                        "name": f"{self.prefix}.{table}.Envelope",
                        "fields": [
                            {"field": "before", "type": "struct", "optional": True, "fields": fields},
                            {"field": "after", "type": "struct", "optional": True, "fields": fields},
                            {"field": "source", "type": "struct", "fields": []},
                            {"field": "op", "type": "string"},
                            {"field": "ts_ms", "type": "int64", "optional": True},
                        ],
                    },
                    "payload": payload,
                }
                key = {"schema": {"type": "struct", "fields": []}, "payload": key}
            out.append(Record(self.topic(table), orjson.dumps(key), orjson.dumps(value)))
            if op == "d":
                out.append(Record(self.topic(table), orjson.dumps(key), None))
        if self.transactions and not snapshot:
            tx_key = orjson.dumps({"id": f"{self.tx_id}:{self.lsn}"})
            begin = {
                "status": "BEGIN",
                "id": f"{self.tx_id}:{self.lsn}",
                "event_count": None,
                "data_collections": None,
                "ts_ms": self.ts_ms,
            }
            end = {
                "status": "END",
                "id": f"{self.tx_id}:{self.lsn}",
                "event_count": sum(counts.values()),
                "data_collections": [{"data_collection": t, "event_count": n} for t, n in counts.items()],
                "ts_ms": self.ts_ms,
            }
            self.records.append(Record(self.tx_topic, tx_key, orjson.dumps(begin)))
            self.records.extend(out)
            self.records.append(Record(self.tx_topic, tx_key, orjson.dumps(end)))
        else:
            self.records.extend(out)
        self.lsn += 16
        self.last_commit = self.lsn

    def insert(self, table: str, row: dict[str, Any]) -> None:
        self.tx(("c", table, None, row))

    def update(self, table: str, old: dict[str, Any], **changes: Any) -> dict[str, Any]:
        new = {**old, **changes}
        self.tx(("u", table, old, new))
        return new

    def delete(self, table: str, row: dict[str, Any]) -> None:
        self.tx(("d", table, row, None))

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)
