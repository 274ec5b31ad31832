"""Parse change events as this project's connector and a real Debezium PostgreSQL connector write them.

Accepted (docs/MAPPING.md, "Input formats"):

* JSON values with or without the JsonConverter ``{"schema": …, "payload": …}`` wrapper;
* with the wrapper, Debezium's logical types are decoded from the schema: ``io.debezium.time.Date``
  (int days since epoch) → ISO date, ``…Timestamp`` (ms) / ``…MicroTimestamp`` (µs) /
  ``…NanoTimestamp`` (ns) → ISO timestamp, ``org.apache.kafka.connect.data.Decimal`` (base64
  big-endian bytes with ``scale``) and ``io.debezium.data.VariableScaleDecimal`` → decimal string;
* without it, values stay as sent and the canonical field type decides (an int date is days, an int
  timestamp microseconds; a base64 NUMERIC needs ``scale`` in the mapping, or
  ``decimal.handling.mode=string|double`` on the connector);
* tombstones (null value) are skipped; ``op`` c/u/d/r; ``t`` (truncate) is reported, not applied.

The commit position of a change is ``(commit_order, lsn)``: ``commit_order`` is the first element
of ``source.sequence`` (Debezium's last commit LSN, which only grows in commit order) or the lsn
when there is no sequence. Row changes are applied in that order, and a change whose position is not
after the last one applied to its row is a duplicate (the connector is at-least-once).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

EPOCH_DT = datetime(1970, 1, 1, tzinfo=UTC)


class ChangeFormatError(Exception):
    """The record is not a change event this stage understands (→ dead letter ``bad_change_event``)."""


@dataclass(init=False)
class RowChange:
    """One row change, decoded, with everything needed to find it again. Not changed once made.

    The ``__init__`` is written out, not generated: compiled by mypyc, a dataclass's generated ``__init__`` still
    runs as Python (2 µs for these fields, twice per row change: parsed, and again from a transaction's buffer);
    this one is compiled with the class. Equality and ``repr`` stay the dataclass's.
    """

    table: str  # schema.table
    op: str  # c | u | d | r
    key: Any  # primary-key struct (dict) or None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    position: tuple[int, int]  # (commit_order, lsn)
    lsn: int | None
    sequence: str | None
    tx_id: int | None
    commit_ts_ms: int | None
    snapshot: bool
    topic: str
    partition: int
    offset: int
    in_tx: bool  # carries Debezium's "transaction" block: an END marker will follow
    snapshot_mark: str | None  # source.snapshot as sent: "first" | "true" | "last" | "incremental" …
    # row_id's cache, set on first use. Not ``functools.cached_property``: on Python 3.11 its first access takes
    # a per-class RLock (~1 µs of each row change normalize applies), and a compiled class has no __dict__.
    _row_id: str = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        table: str,
        op: str,
        key: Any,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        position: tuple[int, int],
        lsn: int | None,
        sequence: str | None,
        tx_id: int | None,
        commit_ts_ms: int | None,
        snapshot: bool,
        topic: str = "",
        partition: int = 0,
        offset: int = 0,
        in_tx: bool = False,
        snapshot_mark: str | None = None,
    ) -> None:
        self.table = table
        self.op = op
        self.key = key
        self.before = before
        self.after = after
        self.position = position
        self.lsn = lsn
        self.sequence = sequence
        self.tx_id = tx_id
        self.commit_ts_ms = commit_ts_ms
        self.snapshot = snapshot
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.in_tx = in_tx
        self.snapshot_mark = snapshot_mark
        self._row_id = ""

    @property
    def row_id(self) -> str:
        """The row's identity in normalize's state (table + primary key); asked several times per change."""
        if not self._row_id:
            k = self.key if self.key is not None else (self.after or self.before)
            self._row_id = self.table + ":" + orjson.dumps(k, option=orjson.OPT_SORT_KEYS).decode()
        return self._row_id

    def lineage(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "table": self.table,
            "lsn": self.lsn,
            "sequence": self.sequence,
            "tx_id": self.tx_id,
            "commit_ts_ms": self.commit_ts_ms,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.table,
            "op": self.op,
            "k": self.key,
            "b": self.before,
            "a": self.after,
            "pos": list(self.position),
            "lsn": self.lsn,
            "seq": self.sequence,
            "tx": self.tx_id,
            "ts": self.commit_ts_ms,
            "snap": self.snapshot,
            "topic": self.topic,
            "p": self.partition,
            "o": self.offset,
            "tx_b": self.in_tx,
            "sm": self.snapshot_mark,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RowChange:
        return cls(
            d["t"],
            d["op"],
            d["k"],
            d["b"],
            d["a"],
            (d["pos"][0], d["pos"][1]),
            d["lsn"],
            d["seq"],
            d["tx"],
            d["ts"],
            d["snap"],
            d["topic"],
            d["p"],
            d["o"],
            d.get("tx_b", False),
            d.get("sm"),
        )


def _unwrap(obj: Any) -> tuple[Any, dict[str, Any] | None]:
    if isinstance(obj, dict) and "payload" in obj and "schema" in obj and len(obj) == 2:
        return obj["payload"], obj["schema"]
    return obj, None


def _field_schemas(schema: dict[str, Any] | None, name: str) -> dict[str, dict[str, Any]]:
    """The field schemas of the envelope's ``name`` struct (before/after), by column."""
    if not schema:
        return {}
    for f in schema.get("fields", []):
        if f.get("field") == name:
            return {c.get("field"): c for c in f.get("fields", [])}
    return {}


def _b64_decimal(text: str, scale: int) -> str:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ChangeFormatError("a Decimal field is not base64") from exc
    return str(Decimal(int.from_bytes(data, "big", signed=True)).scaleb(-scale))


def decode_logical(value: Any, fs: dict[str, Any] | None) -> Any:
    """Decode one column value using its Kafka Connect field schema (when there is one)."""
    if value is None or not fs:
        return value
    name = fs.get("name") or ""
    try:
        if name == "io.debezium.time.Date" and isinstance(value, int):
            return (EPOCH_DT + timedelta(days=value)).date().isoformat()
        if name == "io.debezium.time.Timestamp" and isinstance(value, int):
            return (EPOCH_DT + timedelta(milliseconds=value)).isoformat().replace("+00:00", "Z")
        if name == "io.debezium.time.MicroTimestamp" and isinstance(value, int):
            return (EPOCH_DT + timedelta(microseconds=value)).isoformat().replace("+00:00", "Z")
        if name == "io.debezium.time.NanoTimestamp" and isinstance(value, int):
            return (EPOCH_DT + timedelta(microseconds=value // 1000)).isoformat().replace("+00:00", "Z")
        if name == "org.apache.kafka.connect.data.Decimal" and isinstance(value, str) and fs.get("type") == "bytes":
            scale = int((fs.get("parameters") or {}).get("scale", 0))
            return _b64_decimal(value, scale)
        if name == "io.debezium.data.VariableScaleDecimal" and isinstance(value, dict):
            return _b64_decimal(value.get("value", ""), int(value.get("scale", 0)))
    except (OverflowError, ValueError) as exc:
        raise ChangeFormatError(f"column of type {name} has an out-of-range value") from exc
    return value


def _decode_row(row: Any, schemas: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    if row is None:
        return None
    if not isinstance(row, dict):
        raise ChangeFormatError("before/after is not an object")
    if not schemas:
        return dict(row)
    return {k: decode_logical(v, schemas.get(k)) for k, v in row.items()}


def _int_or_none(v: Any) -> int | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def commit_order(sequence: str | None, lsn: int | None) -> int:
    if sequence:
        try:
            seq = orjson.loads(sequence)
            if isinstance(seq, list) and seq and seq[0] is not None:
                return int(seq[0])
        except (orjson.JSONDecodeError, TypeError, ValueError):
            pass
    return lsn or 0


def parse_change(
    key_bytes: bytes | None, value_bytes: bytes | None, topic: str = "", partition: int = 0, offset: int = 0
) -> RowChange | None:
    """Decode one change-topic record; None for tombstones. Raises :class:`ChangeFormatError`."""
    if value_bytes is None:
        return None
    try:
        raw = orjson.loads(value_bytes)
    except orjson.JSONDecodeError as exc:
        raise ChangeFormatError("value is not JSON") from exc
    payload, schema = _unwrap(raw)
    if not isinstance(payload, dict) or "op" not in payload:
        raise ChangeFormatError("value is not a Debezium change envelope (no 'op')")
    op = payload.get("op")
    if op not in ("c", "u", "d", "r", "t"):
        raise ChangeFormatError(f"unknown op {op!r}")
    source = payload.get("source") or {}
    if not isinstance(source, dict):
        raise ChangeFormatError("'source' is not an object")
    schema_name, table_name = source.get("schema"), source.get("table")
    if not schema_name or not table_name:
        parts = topic.split(".")
        if len(parts) >= 3:
            schema_name, table_name = parts[-2], parts[-1]
        else:
            raise ChangeFormatError("source has no schema/table and the topic name does not say")
    key: Any = None
    if key_bytes is not None:
        try:
            key, _ = _unwrap(orjson.loads(key_bytes))
        except orjson.JSONDecodeError as exc:
            raise ChangeFormatError("key is not JSON") from exc
    before = _decode_row(payload.get("before"), _field_schemas(schema, "before"))
    after = _decode_row(payload.get("after"), _field_schemas(schema, "after"))
    lsn = _int_or_none(source.get("lsn"))
    sequence = source.get("sequence")
    if sequence is not None and not isinstance(sequence, str):
        sequence = orjson.dumps(sequence).decode()
    tx_id = _int_or_none(source.get("txId"))
    if tx_id is None and isinstance(payload.get("transaction"), dict):
        tx_id = _int_or_none(str(payload["transaction"].get("id", "")).split(":")[0])
    snap = source.get("snapshot")
    snapshot = op == "r" or (snap not in (None, False, "false", "incremental"))
    mark = ("true" if snap else "false") if isinstance(snap, bool) else (str(snap) if snap is not None else None)
    ts = _int_or_none(source.get("ts_ms")) or _int_or_none(payload.get("ts_ms"))
    if op in ("c", "r", "u") and after is None:
        raise ChangeFormatError(f"op {op} without 'after'")
    if op == "d" and before is None and key is None:
        raise ChangeFormatError("delete without 'before' or key")
    return RowChange(
        f"{schema_name}.{table_name}",
        op,
        key,
        before,
        after,
        (commit_order(sequence, lsn), lsn or 0),
        lsn,
        sequence,
        tx_id,
        ts,
        snapshot,
        topic,
        partition,
        offset,
        isinstance(payload.get("transaction"), dict),
        mark,
    )


@dataclass(init=False)
class TxMarker:
    """A BEGIN/END record of the transaction metadata topic. Not changed once made (``__init__`` written out
    for mypyc, as :class:`RowChange`'s)."""

    status: str
    tx_id: int | None
    event_count: int
    counts: dict[str, int]
    lsn: int | None  # the LSN in Debezium's "txId:LSN" transaction id, when present

    def __init__(
        self, status: str, tx_id: int | None, event_count: int, counts: dict[str, int], lsn: int | None = None
    ) -> None:
        self.status = status
        self.tx_id = tx_id
        self.event_count = event_count
        self.counts = counts
        self.lsn = lsn


def parse_tx_marker(value_bytes: bytes | None) -> TxMarker | None:
    if value_bytes is None:
        return None
    try:
        raw, _ = _unwrap(orjson.loads(value_bytes))
    except orjson.JSONDecodeError as exc:
        raise ChangeFormatError("transaction record is not JSON") from exc
    if not isinstance(raw, dict) or raw.get("status") not in ("BEGIN", "END"):
        raise ChangeFormatError("not a transaction BEGIN/END record")
    id_parts = str(raw.get("id", "")).split(":")
    tx_id = _int_or_none(id_parts[0])
    id_lsn = _int_or_none(id_parts[1]) if len(id_parts) > 1 else None
    counts = {}
    for dc in raw.get("data_collections") or []:
        if isinstance(dc, dict) and dc.get("data_collection"):
            counts[str(dc["data_collection"])] = _int_or_none(dc.get("event_count")) or 0
    return TxMarker(raw["status"], tx_id, _int_or_none(raw.get("event_count")) or 0, counts, id_lsn)
