"""Debezium envelopes, keys, PK changes, TOAST placeholders, snapshot policy and COPY parsing — no services."""

from __future__ import annotations

import orjson
import pytest

from sevisflow.connectors.postgres import convert as cv
from sevisflow.connectors.postgres import decoder
from sevisflow.connectors.postgres.envelope import UNAVAILABLE, EventBuilder, TableMeta, TxContext
from sevisflow.connectors.postgres.pgoutput import UNCHANGED
from sevisflow.connectors.postgres.snapshot import (
    InitialOnlySnapshotter,
    InitialSnapshotter,
    NeverSnapshotter,
    SnapshotDecision,
    WhenNeededSnapshotter,
    chunk_query,
    parse_copy_line,
    snapshotter_for,
)
from sevisflow.core.errors import ConfigError, TerminalError


def _meta() -> TableMeta:
    return TableMeta(
        schema="public",
        table="person",
        topic="sis.public.person",
        columns=("id", "name", "born", "notes"),
        mappings=(
            cv.column_mapping(cv.INT8, -1),
            cv.column_mapping(cv.TEXT, -1),
            cv.column_mapping(cv.DATE, -1),
            cv.column_mapping(cv.TEXT, -1),
        ),
        key_columns=("id",),
    )


def _tx() -> TxContext:
    return TxContext(xid=700, commit_lsn=5000, ts_us=1_700_000_000_123_456)


def test_insert_envelope_fields_and_order() -> None:
    b = EventBuilder(name="sis", db="sisdb", version="0.1.0")
    [(topic, key, value, headers)] = b.insert(_meta(), ["1", "Ana", "1970-01-02", None], _tx(), 4000)
    assert topic == "sis.public.person" and headers is None
    assert orjson.loads(key) == {"id": 1}  # type: ignore[arg-type]
    ev = orjson.loads(value)  # type: ignore[arg-type]
    assert list(ev) == ["before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns"]
    assert ev["op"] == "c" and ev["before"] is None
    assert ev["after"] == {"id": 1, "name": "Ana", "born": 1, "notes": None}
    src = ev["source"]
    assert list(src) == [
        "version",
        "connector",
        "name",
        "ts_ms",
        "snapshot",
        "db",
        "sequence",
        "ts_us",
        "ts_ns",
        "schema",
        "table",
        "txId",
        "lsn",
        "xmin",
        "origin",
        "origin_lsn",
    ]
    assert src["connector"] == "postgresql" and src["snapshot"] == "false" and src["db"] == "sisdb"
    assert src["sequence"] == '["5000","4000"]' and src["lsn"] == 4000 and src["txId"] == 700
    assert src["ts_ms"] == 1_700_000_000_123 and src["ts_us"] == 1_700_000_000_123_456
    assert ev["transaction"] is None


def test_delete_then_tombstone_and_key_only_before() -> None:
    b = EventBuilder(name="sis", db="d", version="v")
    recs = b.delete(_meta(), ["1", "Ana", "1970-01-02", "x"], "O", _tx(), 4100)
    assert [r[2] is None for r in recs] == [False, True]
    assert recs[0][1] == recs[1][1] == b'{"id":1}'
    assert orjson.loads(recs[0][2])["before"]["name"] == "Ana"  # type: ignore[arg-type]
    keyonly = b.delete(_meta(), ["1", None, None, None], "K", _tx(), 4100)
    assert orjson.loads(keyonly[0][2])["before"] == {"id": 1, "name": None, "born": None, "notes": None}  # type: ignore[arg-type]
    no_tomb = EventBuilder(name="sis", db="d", version="v", tombstones_on_delete=False)
    assert len(no_tomb.delete(_meta(), ["1", None, None, None], "K", _tx(), 1)) == 1


def test_primary_key_change_is_delete_tombstone_create() -> None:
    b = EventBuilder(name="sis", db="d", version="v")
    recs = b.update(_meta(), ["1", "Ana", None, None], "O", ["2", "Ana", None, None], _tx(), 4200)
    ops = [orjson.loads(v)["op"] if v else None for _, _, v, _ in recs]
    assert ops == ["d", None, "c"]
    assert [k for _, k, _, _ in recs] == [b'{"id":1}', b'{"id":1}', b'{"id":2}']
    assert recs[0][3] == [("__debezium.newkey", b'{"id":2}')]
    assert recs[2][3] == [("__debezium.oldkey", b'{"id":1}')]


def test_unchanged_toast_filled_from_full_old_row_else_placeholder() -> None:
    b = EventBuilder(name="sis", db="d", version="v")
    [(_, _, v, _)] = b.update(_meta(), ["1", "Ana", None, "long text"], "O", ["1", "Bo", None, UNCHANGED], _tx(), 1)
    ev = orjson.loads(v)  # type: ignore[arg-type]
    assert ev["after"]["notes"] == "long text" and ev["before"]["notes"] == "long text"
    [(_, _, v2, _)] = b.update(_meta(), None, None, ["1", "Bo", None, UNCHANGED], _tx(), 1)
    ev2 = orjson.loads(v2)  # type: ignore[arg-type]
    assert ev2["before"] is None and ev2["after"]["notes"] == UNAVAILABLE == "__debezium_unavailable_value"


def test_schemas_enable_wraps_key_and_value() -> None:
    b = EventBuilder(name="sis", db="d", version="v", schemas_enable=True)
    [(_, key, value, _)] = b.insert(_meta(), ["1", "Ana", "1970-01-02", None], _tx(), 1)
    k = orjson.loads(key)  # type: ignore[arg-type]
    assert k["payload"] == {"id": 1}
    assert k["schema"]["fields"] == [{"type": "int64", "optional": False, "field": "id"}]
    v = orjson.loads(value)  # type: ignore[arg-type]
    assert v["schema"]["name"] == "sis.public.person.Envelope"
    after = next(f for f in v["schema"]["fields"] if f["field"] == "after")
    born = next(f for f in after["fields"] if f["field"] == "born")
    assert born == {"type": "int32", "name": "io.debezium.time.Date", "version": 1, "optional": True, "field": "born"}
    assert v["payload"]["after"]["born"] == 1


def test_transaction_metadata_counts() -> None:
    b = EventBuilder(name="sis", db="d", version="v", transaction_metadata=True)
    tx = _tx()
    b.insert(_meta(), ["1", "a", None, None], tx, 1)
    [(_, _, v, _)] = b.insert(_meta(), ["2", "b", None, None], tx, 2)
    # as Debezium 3.6.1: an event's id carries its own LSN, END's the commit record's end LSN
    assert orjson.loads(v)["transaction"] == {"id": "700:2", "total_order": 2, "data_collection_order": 2}  # type: ignore[arg-type]
    tx.end_lsn = 5200
    _, key, end, _ = b.transaction_event("sis.transaction", tx, "END")
    assert orjson.loads(key) == {"id": "700:5200"}  # type: ignore[arg-type]
    assert orjson.loads(end) == {
        "status": "END",
        "id": "700:5200",
        "event_count": 2,  # type: ignore[arg-type]
        "data_collections": [{"data_collection": "public.person", "event_count": 2}],
        "ts_ms": 1_700_000_000_123,
    }


def test_snapshot_read_event() -> None:
    b = EventBuilder(name="sis", db="d", version="v")
    tx = TxContext(xid=9, commit_lsn=None, ts_us=1000, snapshot="true")
    _, _, v, _ = b.read(_meta(), ["3", "c", None, None], tx, 777, "last")
    ev = orjson.loads(v)  # type: ignore[arg-type]
    assert ev["op"] == "r" and ev["source"]["snapshot"] == "last" and ev["source"]["sequence"] == '[null,"777"]'


@pytest.mark.parametrize(
    "cls,facts,expected",
    [
        (InitialSnapshotter, (False, False, False), SnapshotDecision(True, True)),
        (InitialSnapshotter, (True, False, True), SnapshotDecision(False, True)),
        (InitialSnapshotter, (False, True, True), SnapshotDecision(True, True)),
        (InitialOnlySnapshotter, (False, False, False), SnapshotDecision(True, False)),
        (InitialOnlySnapshotter, (True, False, True), SnapshotDecision(False, False)),
        (NeverSnapshotter, (False, False, False), SnapshotDecision(False, True)),
        (WhenNeededSnapshotter, (True, False, False), SnapshotDecision(True, True)),
        (WhenNeededSnapshotter, (True, False, True), SnapshotDecision(False, True)),
    ],
)
def test_snapshot_policy(cls: type, facts: tuple[bool, bool, bool], expected: SnapshotDecision) -> None:
    assert cls().decide(*facts) == expected


def test_initial_refuses_lost_slot_and_unknown_mode() -> None:
    with pytest.raises(TerminalError, match="when_needed"):
        InitialSnapshotter().decide(True, False, False)
    with pytest.raises(ConfigError):
        snapshotter_for("sometimes")


def test_copy_text_parsing() -> None:
    assert parse_copy_line("1\tAna\t\\N\t") == ["1", "Ana", None, ""]
    assert parse_copy_line("a\\tb\\\\c\\nd\t\\101") == ["a\tb\\c\nd", "A"]


def test_chunk_query_is_resumable_by_key() -> None:
    q = chunk_query(_meta(), ["bigint"], ["41"], 100).as_string(None)
    assert 'WHERE ("id") > (\'41\'::bigint) ORDER BY "id" LIMIT 100' in q
    assert q.startswith('COPY (SELECT "id", "name", "born", "notes" FROM "public"."person"')


# --------------------------------------------------------------------------- fast paths == generic paths


def _fast_vs_generic(schemas: bool, txmeta: bool, tombstones: bool) -> None:
    from sevisflow.connectors.postgres.pgoutput import Delete, Insert, Update, encode

    meta = TableMeta(
        schema="public",
        table="person",
        topic="sis.public.person",
        columns=("id", "name", "born", "notes", "at"),
        mappings=(
            cv.column_mapping(cv.INT8, -1),
            cv.column_mapping(cv.TEXT, -1),
            cv.column_mapping(cv.DATE, -1),
            cv.column_mapping(cv.TEXT, -1),
            cv.column_mapping(cv.TIMESTAMPTZ, -1),
        ),
        key_columns=("id",),
    )
    row1 = ["1", "Ana é", "1970-01-02", None, "2024-05-01 12:00:00.5+00"]
    row2 = ["1", "Ana", "1999-12-31", "n\tx\\y", "2024-05-01 12:00:00+00"]
    msgs = [
        Insert(1, row1),
        Update(1, "O", row1, row2),
        Update(1, None, None, row2),
        Delete(1, "O", row2),
        Insert(1, ["2", None, None, None, None]),
    ]
    fallbacks = [
        Update(1, "O", row1, ["3"] + row1[1:]),  # key change
        Update(1, "K", ["1", None, None, None, None], row2),
        Update(1, "O", row1, row1[:3] + [UNCHANGED, row1[4]]),
        Delete(1, "K", ["1", None, None, None, None]),
        Insert(1, row1[:4]),  # column count differs
        Insert(1, ["x"] + row1[1:]),
    ]  # conversion fails
    kw = {
        "name": "sis",
        "db": "d",
        "version": "v",
        "schemas_enable": schemas,
        "tombstones_on_delete": tombstones,
        "transaction_metadata": txmeta,
    }
    fast, slow = EventBuilder(**kw), EventBuilder(**kw)  # type: ignore[arg-type]
    fast.now_us = slow.now_us = 1_700_000_000_000_001
    ftx, stx = _tx(), _tx()
    ftx.begin_lsn = stx.begin_lsn = 4000
    for i, m in enumerate(msgs):
        lsn = 4100 + i
        got = fast.fast_change(meta, encode(m), ftx, lsn)
        assert got is not None
        if isinstance(m, Insert):
            want = slow.insert(meta, m.new, stx, lsn)
        elif isinstance(m, Update):
            want = slow.update(meta, m.old, m.old_kind, m.new, stx, lsn)
        else:
            want = slow.delete(meta, m.old, m.old_kind, stx, lsn)
        op, key, value = got
        assert (meta.topic, key, value, None) == want[0]
        ev = orjson.loads(value)
        assert op == (ev["payload"]["op"] if schemas else ev["op"])
        if op == "d":
            assert len(want) == (2 if tombstones else 1)
    for m in fallbacks:
        before = (ftx.total_order, dict(ftx.per_table))
        assert fast.fast_change(meta, encode(m), ftx, 9999) is None
        assert (ftx.total_order, dict(ftx.per_table)) == before
    assert fast.transaction_event("t", ftx, "END") == slow.transaction_event("t", stx, "END")

    rows = [row1[:3] + ["plain", row1[4]], row2, ["5", None, None, None, None]]
    stx2 = TxContext(xid=9, commit_lsn=None, ts_us=1000, snapshot="true")
    pairs = fast.read_values(meta, rows, stx2, 77, "true")
    for (key, value), r in zip(pairs, rows):
        _, wkey, wvalue, _ = slow.read(meta, r, stx2, 77, "true")
        assert key == wkey
        a, b = orjson.loads(value), orjson.loads(wvalue)
        pa, pb = (a["payload"], b["payload"]) if schemas else (a, b)
        for t in ("ts_ms", "ts_us", "ts_ns"):  # processing time: the only field allowed to differ
            pa.pop(t), pb.pop(t)
        assert a == b and list(pa) == list(pb)


@pytest.mark.parametrize("use_c", [True, False], ids=["c-decoder", "python-decoder"])
@pytest.mark.parametrize("schemas", [False, True])
@pytest.mark.parametrize("txmeta", [False, True])
@pytest.mark.parametrize("tombstones", [False, True])
def test_fast_paths_are_byte_identical_to_the_generic_ones(
    schemas: bool, txmeta: bool, tombstones: bool, use_c: bool
) -> None:
    assert not use_c or decoder.c_module is not None, "the C extension is not built: pip install -e ."
    with decoder.using(use_c):
        assert decoder.name() == ("c" if use_c else "python")
        _fast_vs_generic(schemas, txmeta, tombstones)


def test_copy_rows_without_escapes_split_like_parse_copy_line() -> None:
    lines = ["1\tAna\t1970-01-02", "2\tBo\t\t"]
    assert [line.split("\t") for line in lines] == [parse_copy_line(line) for line in lines]
