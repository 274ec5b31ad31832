"""Debezium change events as Kafka Connect's JsonConverter writes them — pure functions.

One :class:`TableMeta` per captured table holds what the events of that table need
(topic, column names and converters, primary-key columns, Connect schemas);
:class:`EventBuilder` turns decoded rows into ``Record`` s (topic, key bytes, value bytes,
headers). Nothing here does I/O, so snapshot, stream and tests share it.

Envelope (value), Debezium 3.x field order::

    {"before": {...}|null, "after": {...}|null,
     "source": {"version", "connector": "postgresql", "name", "ts_ms", "snapshot", "db", "sequence",
                "ts_us", "ts_ns", "schema", "table", "txId", "lsn", "xmin": null, "origin": null,
                "origin_lsn": null},
     "transaction": {"id": "<txId>:<lsn>", "total_order", "data_collection_order"}|null,
     "op": "r|c|u|d|t", "ts_ms", "ts_us", "ts_ns"}

Positions. ``source.lsn`` is the LSN of the change record; ``source.sequence`` is the JSON
string ``["<commit lsn>","<lsn>"]`` (decimal LSNs, as Debezium writes them). We fill the first
element with the commit LSN of the event's own transaction (pgoutput's Begin.final_lsn)
rather than "the last commit before it": both grow in commit order, but ours is a pure
function of the WAL, so a change re-sent after a crash carries exactly the same sequence and
(commit lsn, lsn) orders every event of the stream. Snapshot events carry the slot's
consistent point as ``lsn`` and ``[null,"<lsn>"]``.

Unchanged TOAST values. When an UPDATE leaves a large (TOASTed) value untouched, pgoutput does
not send it. With REPLICA IDENTITY FULL the server sends the whole old row, detoasted, so we copy
the old value into ``after`` — the event is then complete and correct. Without an old row we emit
Debezium's placeholder ``__debezium_unavailable_value`` (base64 of its bytes for bytea), exactly
what Debezium does, and consumers must treat it as "unchanged".
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from sevisflow.connectors.postgres import convert as cv
from sevisflow.connectors.postgres import decoder as _decoder
from sevisflow.connectors.postgres.columns import TablePolicy
from sevisflow.connectors.postgres.convert import ColumnMapping
from sevisflow.connectors.postgres.pgoutput import UNCHANGED, Value

UNAVAILABLE = "__debezium_unavailable_value"
UNAVAILABLE_BYTES = base64.b64encode(UNAVAILABLE.encode()).decode()

# (topic, key, value, headers)
Record = tuple[str, bytes | None, bytes | None, list[tuple[str, str | bytes | None]] | None]

# pure converters returning immutable values, worth memoising in the fast paths
_MEMO_CONVERTERS = frozenset(
    {
        cv.to_date_days,
        cv.to_zoned_timestamp,
        cv.to_micro_timestamp,
        cv.to_milli_timestamp,
        cv.to_micro_time,
        cv.to_milli_time,
    }
)

NO_DEFAULT = object()  # a column without a constant default (TableMeta.defaults)

# Kafka Connect's JsonConverter writes a schema's members in this order (asJsonSchema, then "field"):
# the key's bytes, and so its murmur2 partition, depend on it
_CONNECT_ORDER = (
    "type",
    "fields",
    "items",
    "keys",
    "values",
    "optional",
    "name",
    "version",
    "doc",
    "parameters",
    "default",
    "field",
)


def connect_order(schema: Any) -> Any:
    """``schema`` with every member in JsonConverter's order (recursively), so our bytes equal Debezium's."""
    if isinstance(schema, list):
        return [connect_order(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    known = {
        k: connect_order(schema[k]) if k in ("fields", "items", "keys", "values") else schema[k]
        for k in _CONNECT_ORDER
        if k in schema
    }
    known.update((k, v) for k, v in schema.items() if k not in known)
    return known


SNAPSHOT_ALLOWED = "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"


@dataclass
class TableMeta:
    """Everything about one captured table that its events need."""

    schema: str
    table: str
    topic: str
    columns: tuple[str, ...]
    mappings: tuple[ColumnMapping, ...]
    key_columns: tuple[str, ...]  # primary key, in key order; empty = no key (null Kafka key)
    optional: tuple[bool, ...] = ()  # per column: nullable (for schemas.enable)
    relid: int = 0
    policy: TablePolicy | None = None  # columns excluded or hash-masked (connectors/postgres/columns.py)
    defaults: tuple[Any, ...] = ()  # per column: its constant default, converted, or NO_DEFAULT
    _key_idx: tuple[int, ...] = field(default=(), init=False)
    _convs: tuple[Any, ...] = field(default=(), init=False)
    _conv_items: tuple[Any, ...] = field(default=(), init=False)
    _placeholders: tuple[str, ...] = field(default=(), init=False)
    _fields: tuple[tuple[str, Any, Any], ...] = field(default=(), init=False)  # (name, converter, memo)
    _conv_memo_items: tuple[tuple[int, str, Any, Any], ...] = field(default=(), init=False)
    _full_name: str = field(default="", init=False)
    _fast_keys: bool = field(default=False, init=False)  # converted key values compare like their text
    _c_names: tuple[bytes, ...] | None = field(default=None, init=False)  # b'"column":' each, for the C writer
    value_schema: dict[str, Any] | None = field(default=None, init=False)
    key_schema: dict[str, Any] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        pos = {c: i for i, c in enumerate(self.columns)}
        missing = [k for k in self.key_columns if k not in pos]
        if missing:
            raise ValueError(f"{self.schema}.{self.table}: key columns {missing} not among the columns")
        self._key_idx = tuple(pos[k] for k in self.key_columns)
        self._convs = tuple(m.convert for m in self.mappings)
        self._conv_items = tuple(
            (i, c, m.convert) for i, (c, m) in enumerate(zip(self.columns, self.mappings)) if m.convert is not None
        )
        self._placeholders = tuple(
            UNAVAILABLE_BYTES if m.schema.get("type") == "bytes" else UNAVAILABLE for m in self.mappings
        )
        if not self.optional:
            self.optional = tuple(c not in self.key_columns for c in self.columns)
        # the fast paths memoise the costlier pure converters (dates and times repeat, and an update's old
        # and new row share most values): (name, converter, cache) with cache None for text and integers
        self._fields = tuple(
            (c, conv, {} if conv in _MEMO_CONVERTERS else None) for c, conv in zip(self.columns, self._convs)
        )
        self._conv_memo_items = tuple(
            (i, c, conv, memo) for i, (c, conv, memo) in enumerate(self._fields) if conv is not None
        )
        self._full_name = f"{self.schema}.{self.table}"
        # the fast path detects a primary-key change on converted values: only exact for converters that
        # map distinct text to distinct values (text itself, integers); other key types take the generic path
        self._fast_keys = all(self._convs[i] is None or self._convs[i] is int for i in self._key_idx)
        # the C event writer emits every column and key column in order: only right when names are unique
        # (a dict would merge duplicates)
        # (a table with excluded or masked columns takes the generic path: the C writer emits every column as is)
        if (
            len(set(self.columns)) == len(self.columns)
            and len(set(self.key_columns)) == len(self.key_columns)
            and self.policy is None
        ):
            self._c_names = tuple(orjson.dumps(c) + b":" for c in self.columns)

    @property
    def full_name(self) -> str:
        return f"{self.schema}.{self.table}"

    def row(
        self, values: Sequence[Value], old: Sequence[Value] | None = None, old_row: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Column name → JSON value. ``old`` (the FULL old row) fills unchanged TOAST values of an update;
        ``old_row`` (``old`` already converted) saves converting the columns an update left equal."""
        out = dict(zip(self.columns, values))
        if old_row and old is not None:
            for i, name, conv in self._conv_items:
                v = values[i]
                if v is not None and v is not UNCHANGED:
                    out[name] = old_row[name] if v == old[i] else conv(v)
        else:
            for i, name, conv in self._conv_items:
                v = values[i]
                if v is not None and v is not UNCHANGED:
                    out[name] = conv(v)
        if old_row is not None and UNCHANGED in values:  # only an update's new row can hold 'u' values
            for i, name in enumerate(self.columns):
                if out[name] is UNCHANGED:
                    ov = old[i] if old is not None and i < len(old) else UNCHANGED
                    if ov is UNCHANGED:
                        out[name] = self._placeholders[i]
                    else:
                        conv = self._convs[i]
                        out[name] = None if ov is None else (conv(ov) if conv else ov)
        return out

    def key_only_row(self) -> dict[str, Any]:
        """The ``before`` of an old row that has only its key columns (REPLICA IDENTITY DEFAULT), before the
        key goes in: null for every column, except that a NOT NULL column with a constant default gets the
        default — what Debezium writes, since its Connect schema does not allow null there."""
        out: dict[str, Any] = dict.fromkeys(self.columns)
        if self.defaults:
            for c, opt, d in zip(self.columns, self.optional, self.defaults):
                if not opt and d is not NO_DEFAULT:
                    out[c] = d
        return out

    def key_of(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The key struct, taken from an already converted row."""
        if not self.key_columns:
            return None
        return {k: row[k] for k in self.key_columns}

    def key(self, values: Sequence[Value]) -> dict[str, Any] | None:
        if not self._key_idx:
            return None
        out = {}
        for i in self._key_idx:
            v = values[i]
            conv = self._convs[i]
            out[self.columns[i]] = v if (v is None or conv is None or v is UNCHANGED) else conv(v)
        return out

    def key_text(self, values: Sequence[Value]) -> tuple[Value, ...]:
        """The primary-key values as text (for comparing old and new keys, and snapshot chunking)."""
        return tuple(values[i] for i in self._key_idx)


def _field(schema: dict[str, Any], name: str, optional: bool, default: Any = NO_DEFAULT) -> dict[str, Any]:
    out = {**schema, "optional": optional}
    if default is not NO_DEFAULT and default is not None:
        out["default"] = default  # the column's constant default, as Debezium puts it in the Connect schema
    out["field"] = name
    return out


def source_schema() -> dict[str, Any]:
    s = "string"
    return {
        "type": "struct",
        "name": "io.debezium.connector.postgresql.Source",
        "version": 1,
        "optional": False,
        "field": "source",
        "fields": [
            {"type": s, "optional": False, "field": "version"},
            {"type": s, "optional": False, "field": "connector"},
            {"type": s, "optional": False, "field": "name"},
            {"type": "int64", "optional": False, "field": "ts_ms"},
            {
                "type": s,
                "optional": True,
                "name": "io.debezium.data.Enum",
                "version": 1,
                "parameters": {"allowed": SNAPSHOT_ALLOWED},
                "default": "false",
                "field": "snapshot",
            },
            {"type": s, "optional": False, "field": "db"},
            {"type": s, "optional": True, "field": "sequence"},
            {"type": "int64", "optional": True, "field": "ts_us"},
            {"type": "int64", "optional": True, "field": "ts_ns"},
            {"type": s, "optional": False, "field": "schema"},
            {"type": s, "optional": False, "field": "table"},
            {"type": "int64", "optional": True, "field": "txId"},
            {"type": "int64", "optional": True, "field": "lsn"},
            {"type": "int64", "optional": True, "field": "xmin"},
            {"type": s, "optional": True, "field": "origin"},
            {"type": "int64", "optional": True, "field": "origin_lsn"},
        ],
    }


def transaction_block_schema() -> dict[str, Any]:
    return {
        "type": "struct",
        "name": "event.block",
        "version": 1,
        "optional": True,
        "field": "transaction",
        "fields": [
            {"type": "string", "optional": False, "field": "id"},
            {"type": "int64", "optional": False, "field": "total_order"},
            {"type": "int64", "optional": False, "field": "data_collection_order"},
        ],
    }


_S, _I = "string", "int64"
# the Connect schemas of the transaction topic's records, as Debezium 3.6.1 writes them (schemas.enable=true)
TX_KEY_SCHEMA = {
    "type": "struct",
    "fields": [{"type": _S, "optional": False, "field": "id"}],
    "optional": False,
    "name": "io.debezium.connector.common.TransactionMetadataKey",
    "version": 1,
}
TX_VALUE_SCHEMA = {
    "type": "struct",
    "fields": [
        {"type": _S, "optional": False, "field": "status"},
        {"type": _S, "optional": False, "field": "id"},
        {"type": _I, "optional": True, "field": "event_count"},
        {
            "type": "array",
            "items": {
                "type": "struct",
                "fields": [
                    {"type": _S, "optional": False, "field": "data_collection"},
                    {"type": _I, "optional": False, "field": "event_count"},
                ],
                "optional": True,
                "name": "event.collection",
                "version": 1,
            },
            "optional": True,
            "field": "data_collections",
        },
        {"type": _I, "optional": False, "field": "ts_ms"},
    ],
    "optional": False,
    "name": "io.debezium.connector.common.TransactionMetadataValue",
    "version": 1,
}


def build_schemas(meta: TableMeta) -> None:
    """Fill ``meta.value_schema`` / ``meta.key_schema`` (Connect JSON schemas) once per table version."""
    dropped = meta.policy.excluded if meta.policy is not None else frozenset()
    defaults = meta.defaults or (NO_DEFAULT,) * len(meta.columns)
    row_fields = [
        _field(m.schema, c, o, d)
        for c, m, o, d in zip(meta.columns, meta.mappings, meta.optional, defaults)
        if c not in dropped
    ]
    row_name = f"{meta.topic}.Value"
    meta.value_schema = connect_order(
        {
            "type": "struct",
            "optional": False,
            "name": f"{meta.topic}.Envelope",
            "version": 2,
            "fields": [
                {"type": "struct", "fields": row_fields, "optional": True, "name": row_name, "field": "before"},
                {"type": "struct", "fields": row_fields, "optional": True, "name": row_name, "field": "after"},
                source_schema(),
                transaction_block_schema(),
                {"type": "string", "optional": False, "field": "op"},
                {"type": "int64", "optional": True, "field": "ts_ms"},
                {"type": "int64", "optional": True, "field": "ts_us"},
                {"type": "int64", "optional": True, "field": "ts_ns"},
            ],
        }
    )
    if meta.key_columns:
        idx = {c: i for i, c in enumerate(meta.columns)}
        meta.key_schema = connect_order(
            {
                "type": "struct",
                "optional": False,
                "name": f"{meta.topic}.Key",
                "fields": [_field(meta.mappings[idx[k]].schema, k, False) for k in meta.key_columns],
            }
        )


@dataclass
class TxContext:
    """The transaction an event belongs to, as the stream (or snapshot) knows it."""

    xid: int | None
    commit_lsn: int | None  # None for snapshot events
    ts_us: int  # commit time (stream) / snapshot start time
    snapshot: str = "false"
    begin_lsn: int | None = None  # LSN of the Begin message: Debezium's BEGIN id is "<txId>:<begin lsn>"
    end_lsn: int | None = None  # end of the commit record, once the Commit came: the END record's id
    total_order: int = 0
    per_table: dict[str, int] = field(default_factory=dict)
    source_bases: dict[tuple[str, str | None], dict[str, Any]] = field(default_factory=dict)
    c_contexts: dict[str, tuple[Any, tuple[Any, ...]]] = field(default_factory=dict)  # table → (meta, _c_context)

    @property
    def id(self) -> str:
        return f"{self.xid}:{self.begin_lsn if self.begin_lsn is not None else self.commit_lsn}"


@dataclass(frozen=True, slots=True)
class ReadEnvelope:
    """A run of read events' common parts for the C decoder's batch loop (:meth:`EventBuilder.read_envelope`):
    the events' time, and ``c_args`` = (fields, names, key_idx, head, tail) as ``copy_batch`` takes them."""

    now_us: int
    c_args: tuple[Any, ...]


class EventBuilder:
    """Builds the change records of one connector (its name, database and converter options)."""

    def __init__(
        self,
        name: str,
        db: str,
        version: str,
        schemas_enable: bool = False,
        tombstones_on_delete: bool = True,
        transaction_metadata: bool = False,
    ) -> None:
        self.name = name
        self.db = db
        self.version = version
        self.schemas_enable = schemas_enable
        self.tombstones_on_delete = tombstones_on_delete
        self.transaction_metadata = transaction_metadata
        self._read_sources: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._now_us = 0  # see now_us
        self._tail = b""  # b',"ts_ms":…,"ts_us":…,"ts_ns":…}' of now_us: the envelope's end, for the C writer

    # -- serialisation

    def _value_bytes(
        self, meta: TableMeta | None, payload: dict[str, Any], schema: dict[str, Any] | None = None
    ) -> bytes:
        if not self.schemas_enable:
            return orjson.dumps(payload)
        if schema is None and meta is not None:
            if meta.value_schema is None:
                build_schemas(meta)
            schema = meta.value_schema
        return orjson.dumps({"schema": schema, "payload": payload})

    def row_key(self, meta: TableMeta, row: dict[str, Any]) -> bytes | None:
        """The key bytes of a converted row (None for a table without a key): every path's keys come from here."""
        key_columns = meta.key_columns
        if not key_columns:
            return None
        key = {k: row[k] for k in key_columns}
        return self.key_bytes(meta, key) if self.schemas_enable else _dumps(key)

    def key_bytes(self, meta: TableMeta, key: dict[str, Any] | None) -> bytes | None:
        if key is None:
            return None
        if not self.schemas_enable:
            return orjson.dumps(key)
        if meta.value_schema is None:
            build_schemas(meta)
        return orjson.dumps({"schema": meta.key_schema, "payload": key})

    # -- the stream's fast path: pgoutput bytes → (op, key, value) in one pass

    def fast_change(
        self, meta: TableMeta, buf: bytes, tx: TxContext, lsn: int
    ) -> tuple[str, bytes | None, bytes] | None:
        """The record of an Insert/Update/Delete payload in the common case, byte-identical to
        :meth:`insert` / :meth:`update` / :meth:`delete` on the decoded message.

        Returns None — with no side effect — whenever the generic path must handle the message:
        unchanged-TOAST or binary values, a column count that differs from ``meta``, key-only ('K')
        old tuples, a changed primary key (delete + tombstone + create), anything malformed.
        A delete's tombstone (``tombstones_on_delete`` and a key) is the caller's to produce.

        With the C decoder and without ``schemas.enable`` the whole record is written in C
        (``_pgtuple.change_event``): the same bytes as the dicts below through orjson, with the source
        block serialised once per transaction and table (:meth:`_c_context`) and only its LSNs
        written per event. Whatever it declines runs the Python code below.
        """
        if meta.policy is not None:
            return None
        c_event = _c_change_event
        if c_event is not None:
            ctx = self._c_ctx(meta, tx)
            if ctx:
                name = meta._full_name
                tail = self._tail if self._now_us else self._clock_tail()
                if self.transaction_metadata:  # the counters move only once the event is written (as _count,
                    per_table = tx.per_table  # inlined: this is the measured path)
                    n = per_table.get(name, 0) + 1
                    rec = c_event(buf, ctx, lsn, tx.total_order + 1, n, tail)
                    if rec is not None:
                        tx.total_order += 1
                        per_table[name] = n
                        return rec
                else:
                    rec = c_event(buf, ctx, lsn, 0, 0, tail)
                    if rec is not None:
                        return rec
        rows = _fast_rows(meta, buf)
        if rows is None:
            return None
        payload_before, payload_after, op, key_row = rows
        # from here on nothing returns None: the transaction counters below are updated exactly once
        key = self.row_key(meta, key_row)
        payload = _payload(
            payload_before,
            payload_after,
            self.source(meta, tx, lsn),
            self._tx_block(meta, tx, lsn),
            op,
            self._now_us or time.time_ns() // 1000,
        )
        if self.schemas_enable:
            return op, key, self._value_bytes(meta, payload)
        return op, key, _dumps(payload)

    # -- the stream loop's batch: _pgtuple.change_batch over a run of read-batch items

    @property
    def change_batch(self) -> Any:
        """``_pgtuple.change_batch`` when the C decoder writes this builder's events (else None): the stream
        loop hands it runs of changes; see :meth:`batch_entry`, :meth:`batch_tx`, :meth:`batch_tail`."""
        return _c_change_batch if not self.schemas_enable else None

    def batch_entry(self, meta: TableMeta, tx: TxContext) -> tuple[str, str, tuple[Any, ...]] | None:
        """``change_batch``'s entry for ``meta`` in ``tx`` — (topic, table name, change_event context) — or
        None when the C writer cannot take this table's events (the stream loop then uses fast_change)."""
        if _c_change_batch is None:
            return None
        ctx = self._c_ctx(meta, tx)
        return (meta.topic, meta._full_name, ctx) if ctx else None

    def batch_tx(self, tx: TxContext) -> TxContext | None:
        """The TxContext whose counters change_batch moves: with transaction metadata only."""
        return tx if self.transaction_metadata else None

    def batch_tail(self) -> bytes:
        """The envelope's end (timestamps) for this read batch's events."""
        return self._tail if self._now_us else self._clock_tail()

    def _c_ctx(self, meta: TableMeta, tx: TxContext) -> tuple[Any, ...]:
        name = meta._full_name
        entry = tx.c_contexts.get(name)
        if entry is None or entry[0] is not meta:  # a Relation message may replace meta mid-transaction
            entry = tx.c_contexts[name] = (meta, self._c_context(meta, tx))
        return entry[1]

    def _c_context(self, meta: TableMeta, tx: TxContext) -> tuple[Any, ...]:
        """What ``_pgtuple.change_event`` needs for the events of ``meta`` in ``tx``: the table's fields,
        JSON column names and key, the source block as JSON cut around its two LSNs (the one inside
        ``sequence`` and ``lsn``) and the transaction block cut around its two counters (None without
        transaction metadata). Both are serialised from :meth:`source` / :meth:`_tx_block`'s own fields,
        so the bytes cannot drift from the Python path. () — the Python path — with ``schemas.enable``,
        for a table the C writer cannot take, or if a block cannot be cut (a marker collides)."""
        if self.schemas_enable or meta._c_names is None or tx.commit_lsn is None:
            return ()
        mark = b"%d" % _LSN_MARK
        src = tuple(_dumps(self.source(meta, tx, _LSN_MARK)).split(mark))
        if len(src) != 3:
            return ()
        txb: tuple[Any, ...] = (None, None, None, None)
        if self.transaction_metadata:
            txb = tuple(
                _dumps(
                    {"id": f"{tx.xid}:{_LSN_MARK}", "total_order": _LSN_MARK, "data_collection_order": _LSN_MARK}
                ).split(mark)
            )
            if len(txb) != 4:
                return ()
        return (meta._fields, meta._c_names, meta._key_idx, meta._fast_keys, *src, *txb)

    @property
    def now_us(self) -> int:
        """Processing time for ``ts_ms``; the stream loop sets it once per read batch (0 = the clock)."""
        return self._now_us

    @now_us.setter
    def now_us(self, value: int) -> None:
        self._now_us = value
        self._tail = self._tail_for(value) if value else b""

    @staticmethod
    def _tail_for(now_us: int) -> bytes:
        """The envelope's end after ``op`` (its three timestamps) as JSON, for the C writer."""
        return b',"ts_ms":%d,"ts_us":%d,"ts_ns":%d}' % (now_us // 1000, now_us, now_us * 1000)

    def _read_tail(self, src: dict[str, Any], now_us: int) -> bytes:
        """A read event's JSON after its row: the source block, no transaction, op "r" and the timestamps."""
        return b',"source":%b,"transaction":null,"op":"r"%b' % (_dumps(src), self._tail_for(now_us))

    def _clock_tail(self) -> bytes:
        return self._tail_for(time.time_ns() // 1000)

    def read_values(
        self, meta: TableMeta, rows: Sequence[Sequence[Value]], tx: TxContext, lsn: int, snapshot: str
    ) -> list[tuple[bytes | None, bytes]]:
        """(key, value) of many snapshot rows of one table, byte-identical to :meth:`read` row by row."""
        return list(self.iter_read_values(meta, rows, tx, lsn, snapshot))

    def read_envelope(self, meta: TableMeta, tx: TxContext, lsn: int, snapshot: str) -> ReadEnvelope | None:
        """What the C decoder needs to write whole read events of ``meta`` for one run of rows (the envelope
        around "after" is the same for every row of the run, serialised once); None when it cannot write
        them (no C decoder, ``schemas.enable``, a table whose fields it does not take)."""
        if _c_read_event is None or self.schemas_enable or meta._c_names is None:
            return None
        now_us = time.time_ns() // 1000
        src = self._read_source(meta, tx, lsn, snapshot)
        tail = self._read_tail(src, now_us)
        return ReadEnvelope(now_us, (meta._fields, meta._c_names, meta._key_idx, _READ_HEAD, tail))

    def iter_read_values(
        self,
        meta: TableMeta,
        rows: Sequence[Sequence[Value]],
        tx: TxContext,
        lsn: int,
        snapshot: str,
        now_us: int | None = None,
    ) -> Iterator[tuple[bytes | None, bytes]]:
        """:meth:`read_values` one row at a time. Produce each pair before taking the next: holding a
        chunk's worth of fresh ~600-byte values costs new memory pages (measured: about 2× the CPU per row
        on the bench box), while producing at once lets the allocator reuse the same memory. ``now_us``:
        the events' ``ts_ms``/``ts_us`` time (a row the C batch loop left takes its run's)."""
        src = self._read_source(meta, tx, lsn, snapshot)
        columns = meta.columns
        conv_items = meta._conv_memo_items
        schemas = self.schemas_enable
        dumps = _dumps
        if now_us is None:
            now_us = time.time_ns() // 1000
        c_read_row, fields = _c_read_row, meta._fields  # the C decoder's row loop, or None
        policy = meta.policy
        # the C decoder writes the whole record (without schemas): the envelope around "after" is the same
        # for every row of this call, serialised once
        c_read_event = _c_read_event if not schemas and meta._c_names is not None else None
        names, key_idx = meta._c_names, meta._key_idx
        head = _READ_HEAD
        tail = self._read_tail(src, now_us) if c_read_event is not None else b""
        for values in rows:
            if c_read_event is not None:
                rec = c_read_event(values, fields, names, key_idx, head, tail)
                if rec is not None:
                    yield rec
                    continue
            after = c_read_row(values, fields) if c_read_row is not None else None
            if after is None:
                after = dict(zip(columns, values))
                for i, name, conv, memo in conv_items:
                    v = values[i]
                    if v is not None:
                        if memo is None:
                            after[name] = conv(v)
                        else:
                            r = memo.get(v, _MISS)
                            after[name] = _remember(memo, conv, v) if r is _MISS else r
            key = self.row_key(meta, after)
            if policy is not None:
                after = policy.apply(after)
            payload = _payload(None, after, src, None, "r", now_us)
            yield key, (self._value_bytes(meta, payload) if schemas else dumps(payload))

    # -- pieces

    def source(
        self, meta: TableMeta | None, tx: TxContext, lsn: int | None, snapshot: str | None = None
    ) -> dict[str, Any]:
        """The ``source`` block: the transaction's per-table template (built once) with this event's positions.
        Every path (the stream's fast path included) builds it here, so their bytes cannot drift apart."""
        base_key = (meta._full_name if meta else "", snapshot)
        base = tx.source_bases.get(base_key)
        if base is None:
            ts_us = tx.ts_us
            base = tx.source_bases[base_key] = {
                "version": self.version,
                "connector": "postgresql",
                "name": self.name,
                "ts_ms": ts_us // 1000,
                "snapshot": snapshot or tx.snapshot,
                "db": self.db,
                "sequence": None,
                "ts_us": ts_us,
                "ts_ns": ts_us * 1000,
                "schema": meta.schema if meta else "",
                "table": meta.table if meta else "",
                "txId": tx.xid,
                "lsn": None,
                "xmin": None,
                "origin": None,
                "origin_lsn": None,
            }
        src = base.copy()
        commit = tx.commit_lsn
        if lsn is not None:
            src["sequence"] = f'["{commit}","{lsn}"]' if commit is not None else f'[null,"{lsn}"]'
        else:
            src["sequence"] = f'["{commit}",null]' if commit is not None else "[null,null]"
        src["lsn"] = lsn
        return src

    def _read_source(self, meta: TableMeta, tx: TxContext, lsn: int, snapshot: str) -> dict[str, Any]:
        """The source block of a snapshot row: the same for every row of a table, so built once and shared."""
        ck = (meta.topic, tx.xid, tx.ts_us, lsn, snapshot)
        src = self._read_sources.get(ck)
        if src is None:
            if len(self._read_sources) > 64:
                self._read_sources.clear()
            src = self._read_sources[ck] = self.source(meta, tx, lsn, snapshot)
        return src

    def _tx_block(self, meta: TableMeta, tx: TxContext, lsn: int | None) -> dict[str, Any] | None:
        """The ``transaction`` block, counting the event in its transaction (total and per-table order);
        None without transaction metadata and for snapshot events. Shared by every path. Its id is
        ``<txId>:<this event's LSN>``, as Debezium 3.6.1 writes it (the xid part names the transaction)."""
        if not self.transaction_metadata or tx.commit_lsn is None:
            return None
        n = _count(tx, meta._full_name)
        return {"id": f"{tx.xid}:{lsn}", "total_order": tx.total_order, "data_collection_order": n}

    def _envelope(
        self,
        meta: TableMeta,
        op: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        tx: TxContext,
        lsn: int | None,
        snapshot: str | None = None,
    ) -> bytes:
        if meta.policy is not None:
            before, after = meta.policy.apply(before), meta.policy.apply(after)
        payload = _payload(
            before,
            after,
            self.source(meta, tx, lsn, snapshot),
            self._tx_block(meta, tx, lsn),
            op,
            self.now_us or time.time_ns() // 1000,
        )
        return self._value_bytes(meta, payload)

    # -- events

    def read(self, meta: TableMeta, values: Sequence[Value], tx: TxContext, lsn: int, snapshot: str) -> Record:
        """A snapshot row (op ``r``). Its source block is the same for every row of a table: built once."""
        after = meta.row(values)
        key = self.row_key(meta, after)
        payload = _payload(
            None,
            meta.policy.apply(after) if meta.policy is not None else after,
            self._read_source(meta, tx, lsn, snapshot),
            None,
            "r",
            time.time_ns() // 1000,
        )
        return (meta.topic, key, self._value_bytes(meta, payload), None)

    def insert(self, meta: TableMeta, new: Sequence[Value], tx: TxContext, lsn: int) -> list[Record]:
        after = meta.row(new)
        key = self.key_bytes(meta, meta.key_of(after))
        return [(meta.topic, key, self._envelope(meta, "c", None, after, tx, lsn), None)]

    def update(
        self,
        meta: TableMeta,
        old: Sequence[Value] | None,
        old_kind: str | None,
        new: Sequence[Value],
        tx: TxContext,
        lsn: int,
    ) -> list[Record]:
        """An update; a changed primary key becomes delete + tombstone + create, as in Debezium."""
        full_old = old if old_kind == "O" else None
        before = meta.row(full_old) if full_old is not None else None
        after = meta.row(new, full_old, before if before is not None else {})
        # a changed primary key whose new value is fully sent (a 'K' tuple has every column, non-key ones null)
        if (
            old is not None
            and meta.key_columns
            and any(old[i] != new[i] for i in meta._key_idx)
            and UNCHANGED not in meta.key_text(new)
        ):
            old_key = self.key_bytes(meta, meta.key(old))
            new_key = self.key_bytes(meta, meta.key(new))
            if before is None:  # only the key columns were sent ('K')
                before = meta.key_only_row()
                before.update(meta.key(old) or {})
            # the headers hold the other key as Connect's SimpleHeaderConverter writes a struct: plain
            # JSON, without the schema wrapper even with schemas.enable (as Debezium's do)
            new_hdr: list[tuple[str, str | bytes | None]] = [("__debezium.newkey", orjson.dumps(meta.key(new)))]
            out: list[Record] = [(meta.topic, old_key, self._envelope(meta, "d", before, None, tx, lsn), new_hdr)]
            if self.tombstones_on_delete:  # Debezium puts the newkey header on the tombstone too
                out.append((meta.topic, old_key, None, list(new_hdr)))
            out.append(
                (
                    meta.topic,
                    new_key,
                    self._envelope(meta, "c", None, after, tx, lsn),
                    [("__debezium.oldkey", orjson.dumps(meta.key(old)))],
                )
            )
            return out
        key = self.key_bytes(meta, meta.key_of(after))
        return [(meta.topic, key, self._envelope(meta, "u", before, after, tx, lsn), None)]

    def delete(self, meta: TableMeta, old: Sequence[Value], old_kind: str, tx: TxContext, lsn: int) -> list[Record]:
        if old_kind == "O":
            before = meta.row(old)
        else:  # key only: the other columns are unknown
            before = meta.key_only_row()
            before.update(meta.key(old) or {})
        key = self.key_bytes(meta, meta.key_of(before))
        out: list[Record] = [(meta.topic, key, self._envelope(meta, "d", before, None, tx, lsn), None)]
        if self.tombstones_on_delete and key is not None:
            out.append((meta.topic, key, None, None))
        return out

    def truncate(self, meta: TableMeta, tx: TxContext, lsn: int) -> Record:
        return (meta.topic, None, self._envelope(meta, "t", None, None, tx, lsn), None)

    def message(self, topic: str, prefix: str, content: bytes, tx: TxContext, lsn: int) -> Record:
        """A logical decoding message (``pg_logical_emit_message``) on ``<prefix>.message``, op ``m``."""
        now_us = time.time_ns() // 1000
        payload = {
            "op": "m",
            "ts_ms": now_us // 1000,
            "source": self.source(None, tx, lsn),
            "message": {"prefix": prefix, "content": base64.b64encode(content).decode()},
        }
        key = orjson.dumps({"prefix": prefix})
        if self.schemas_enable:
            return (topic, key, orjson.dumps({"schema": None, "payload": payload}), None)
        return (topic, key, orjson.dumps(payload), None)

    def transaction_event(self, topic: str, tx: TxContext, status: str) -> Record:
        """BEGIN / END on ``<prefix>.transaction`` (key: the transaction id). As Debezium 3.6.1 writes them,
        BEGIN's id is ``<txId>:<LSN of the Begin message>`` and END's ``<txId>:<end LSN of the commit
        record>`` (pgoutput's Commit.end_lsn; the BEGIN id without it)."""
        end = status == "END"
        tid = f"{tx.xid}:{tx.end_lsn}" if end and tx.end_lsn is not None else tx.id
        payload = {
            "status": status,
            "id": tid,
            "event_count": tx.total_order if end else None,
            "data_collections": [{"data_collection": k, "event_count": v} for k, v in tx.per_table.items()]
            if end
            else None,
            "ts_ms": tx.ts_us // 1000,
        }
        if self.schemas_enable:
            return (
                topic,
                orjson.dumps({"schema": TX_KEY_SCHEMA, "payload": {"id": tid}}),
                orjson.dumps({"schema": TX_VALUE_SCHEMA, "payload": payload}),
                None,
            )
        return (topic, orjson.dumps({"id": tid}), orjson.dumps(payload), None)


_dumps = orjson.dumps
_READ_HEAD = b'{"before":null,"after":'  # a read event's JSON up to its row
_MISS = object()
_LSN_MARK = 7_394_512_840_193_846_271  # stands for the LSN in the serialised source block (_source_parts)
_MEMO_SIZE = 8192


def _payload(
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    source: dict[str, Any],
    transaction: dict[str, Any] | None,
    op: str,
    now_us: int,
) -> dict[str, Any]:
    """The Debezium envelope's fields in their order (the C writer writes the same from ``_c_context``)."""
    return {
        "before": before,
        "after": after,
        "source": source,
        "transaction": transaction,
        "op": op,
        "ts_ms": now_us // 1000,
        "ts_us": now_us,
        "ts_ns": now_us * 1000,
    }


def _count(tx: TxContext, table: str) -> int:
    """Count one more event in its transaction (total and per table); its per-table order."""
    tx.total_order += 1
    n = tx.per_table[table] = tx.per_table.get(table, 0) + 1
    return n


def _remember(memo: dict[Any, Any], conv: Any, v: Any) -> Any:
    """A converter's value for ``v``, kept in its per-column memo (cleared when full): the fast paths' cache miss."""
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    r = memo[v] = conv(v)
    return r


_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from


def _fast_rows(
    meta: TableMeta, buf: bytes
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str, dict[str, Any]] | None:
    """An Insert/Update/Delete payload's (before, after, op, row holding the key), decoded by the fast row loop;
    None — with no side effect — for anything the generic path must handle (see ``fast_change``)."""
    fields = meta._fields
    kind = buf[0]
    before = None
    if kind == 73:  # 'I'
        if buf[5] != 78:
            return None
        after = _fast_row(buf, 6, fields)
        if after is None:
            return None
        row = after[0]
        return None, row, "c", row
    if kind == 85:  # 'U'
        marker = buf[5]
        pos = 6
        if marker == 79:  # 'O': the whole old row (REPLICA IDENTITY FULL)
            old = _fast_row(buf, 6, fields)
            if old is None:
                return None
            before, pos = old
            marker = buf[pos]
            pos += 1
        if marker != 78:
            return None
        new = _fast_row(buf, pos, fields)
        if new is None:
            return None
        row = new[0]
        if before is not None and meta.key_columns:
            if not meta._fast_keys:
                return None
            for k in meta.key_columns:
                if before[k] != row[k]:
                    return None
        return before, row, "u", row
    if kind == 68:  # 'D'
        if buf[5] != 79:
            return None
        old = _fast_row(buf, 6, fields)
        if old is None:
            return None
        row = old[0]
        return row, None, "d", row
    return None


def _fast_row(buf: bytes, pos: int, fields: tuple[tuple[str, Any, Any], ...]) -> tuple[dict[str, Any], int] | None:
    """pgoutput TupleData at ``pos`` straight into column name → JSON value, or None when the tuple holds
    anything but text and null values, has another column count, is malformed or fails to convert (the
    generic path then decodes it again and raises the proper error)."""
    try:
        if _U16(buf, pos)[0] != len(fields):
            return None
        pos += 2
        out: dict[str, Any] = {}
        u32 = _U32
        for name, conv, memo in fields:
            kind = buf[pos]
            if kind == 116:  # 't'
                end = pos + 5 + u32(buf, pos + 1)[0]
                v = buf[pos + 5 : end].decode()
                pos = end
                if conv is None:
                    out[name] = v
                elif memo is None:
                    out[name] = conv(v)
                else:
                    r = memo.get(v, _MISS)
                    out[name] = _remember(memo, conv, v) if r is _MISS else r
            elif kind == 110:  # 'n'
                out[name] = None
                pos += 1
            else:
                return None
    except Exception:  # noqa: BLE001 - side-effect free: the generic path redoes it and raises the proper error
        return None
    if pos > len(buf):
        return None
    return out, pos


# The C decoder (connectors/postgres/decoder.py) replaces the per-value loops above when it is built and
# not disabled: same results, or None where the Python code must run. decoder.set_active switches at runtime.
_py_fast_row = _fast_row
_fast_row = _decoder.pick(_py_fast_row, "fast_row")
_c_read_row = _decoder.pick(None, "read_row")
_c_change_event = _decoder.pick(None, "change_event")
_c_read_event = _decoder.pick(None, "read_event")
_c_change_batch = _decoder.pick(None, "change_batch")
