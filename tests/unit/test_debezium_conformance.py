"""sevisflow's connector against RECORDED real Debezium 3.6.1 output, field by field.

``python -m bench.connector.record_debezium`` ran Debezium 3.6.1 (Kafka Connect 4.3.0, JsonConverter) and
sevisflow's connector side by side on one PostgreSQL database (made-up rows): snapshot rows of three tables,
insert/update/delete under REPLICA IDENTITY FULL and DEFAULT, primary-key changes (one on a three-column
key whose key order is neither column nor name order), column defaults, numeric/date/timestamp/timestamptz/
bool/text/varchar/bytea/uuid/json/jsonb/smallint/bigint/double values, a multi-table transaction — with
``schemas.enable`` true and false, on three-partition topics. The recordings are in tests/fixtures/debezium/.

Every record must be identical — topic, partition, exact key bytes, value, headers — except for the
differences in ``ALLOWED`` below, each with its reason (also in docs/ARCHITECTURE.md "Connector: differences
from Debezium"). ``debezium-aligned`` is Debezium with the two settings that remove two of those
differences (``extended.headers.enabled=false``, the converter's ``replace.null.with.default=false``).
A second group of tests builds the same pieces with today's EventBuilder / catalog code and compares them
with Debezium's recorded bytes, so a regression shows even before the recordings are refreshed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from sevisflow.connectors.postgres import convert as cv
from sevisflow.connectors.postgres.admin import compile_include_list, default_value, include_list_order
from sevisflow.connectors.postgres.envelope import NO_DEFAULT, EventBuilder, TableMeta, TxContext, build_schemas
from sevisflow.connectors.postgres.snapshot import snapshot_marker
from sevisflow.processors.normalize.changes import parse_change, parse_tx_marker

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium"

# Differences that remain on purpose: what each one is, and why.
ALLOWED = {
    "ts": "top-level ts_ms/ts_us/ts_ns: the time the connector processed the event, different in any two runs",
    "source.version": "the product version (Debezium's '3.6.1.Final' vs sevisflow's own)",
    "snapshot position": "a snapshot row's source.lsn/sequence/txId/ts_*: each connector reads at its own "
    "slot's consistent point, in its own snapshot transaction, at its own time",
    "source.sequence[0]": "Debezium writes the last commit LSN it had processed; sevisflow the commit LSN of the "
    "event's own transaction, a pure function of the WAL, identical after any restart",
    "context headers": "Debezium 3.6.1 adds __debezium.context.{connectorLogicalName,taskId,connectorName,runId} "
    "(extended.headers.enabled=true); runId is random per start, and nothing downstream "
    "reads them; Debezium with extended.headers.enabled=false writes none, as sevisflow",
    "null with default": "Debezium's JsonConverter writes a nullable column's default where the value is null "
    "(replace.null.with.default=true): a key-only old row (REPLICA IDENTITY DEFAULT) then "
    "shows made-up values; sevisflow writes null, as Debezium with "
    "value.converter.replace.null.with.default=false does",
}
CONTEXT_HEADERS = [
    "__debezium.context.connectorLogicalName",
    "__debezium.context.taskId",
    "__debezium.context.connectorName",
    "__debezium.context.runId",
]


def _load(name: str) -> list[dict[str, Any]]:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))["records"]


def _payload(value: Any, schemas: bool) -> Any:
    return value["payload"] if schemas and value is not None else value


def _defaults(schemas_on: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """(topic, column) → the column default Debezium put in its schema (from the schemas-on recording)."""
    out: dict[tuple[str, str], Any] = {}
    for r in schemas_on:
        if r["value"] is not None and r["topic"] != "sis.transaction":
            for f in r["value"]["schema"]["fields"][1]["fields"]:
                if "default" in f:
                    out[(r["topic"], f["field"])] = f["default"]
    return out


def _by_key(records: list[dict[str, Any]]) -> dict[tuple[str, str | None], list[dict[str, Any]]]:
    """Records per (topic, exact key text), in their partition's order — a key's records share a partition.
    (With schemas on, the key's schema name holds the topic prefix, which differs between the two recorded
    runs, so there the recorded partitions differ; with one prefix, as after a switch, the bytes are equal.)"""
    out: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: (r["topic"], r["key"] or "", r["partition"], r["offset"])):
        out.setdefault((r["topic"], r["key"]), []).append(r)
    return out


def _comparable(
    rec: dict[str, Any], schemas: bool, defaults: dict[tuple[str, str], Any], ours: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The record with every ALLOWED difference taken out (and nothing else)."""
    rec = copy.deepcopy(rec)
    del rec["partition"], rec["offset"]  # positions: compared on their own (see _by_key)
    rec["headers"] = [h for h in rec["headers"] if not h[0].startswith("__debezium.context.")]  # context headers
    p = _payload(rec["value"], schemas)
    if p is None or rec["topic"] == "sis.transaction":
        return rec
    for k in ("ts_ms", "ts_us", "ts_ns"):  # ts
        p.pop(k)
    src = p["source"]
    src.pop("version")  # source.version
    if p["op"] == "r":
        for k in ("lsn", "sequence", "txId", "ts_ms", "ts_us", "ts_ns"):  # snapshot position
            src.pop(k)
    else:
        src["sequence"] = json.loads(src["sequence"])[1]  # source.sequence[0]
    if ours is not None and p.get("before") is not None:  # null with default
        ob = _payload(ours["value"], schemas)["before"]
        for col, v in p["before"].items():
            if ob.get(col) is None and v is not None and defaults.get((rec["topic"], col)) == v:
                p["before"][col] = None
    return rec


@pytest.mark.parametrize("schemas", [False, True], ids=["schemas-off", "schemas-on"])
def test_every_record_matches_recorded_debezium_but_for_the_allowed_differences(schemas: bool) -> None:
    mode = "on" if schemas else "off"
    theirs, ours = _load(f"debezium-schemas-{mode}"), _load(f"sevisflow-schemas-{mode}")
    defaults = _defaults(_load("debezium-schemas-on"))
    assert len(ours) >= 40
    d_by_key, s_by_key = _by_key(theirs), _by_key(ours)
    # the same key bytes (so murmur2 picks the same partition), each with the same records in the same order
    assert list(d_by_key) == list(s_by_key)
    for k, d_recs in d_by_key.items():
        assert len(d_recs) == len(s_by_key[k]), k
        for d, s in zip(d_recs, s_by_key[k]):
            assert _comparable(d, schemas, defaults, s) == _comparable(s, schemas, defaults), d
    if not schemas:  # one topic prefix in both runs' key bytes: the real producers picked the same partitions
        assert [(r["topic"], r["key"], r["partition"]) for r in theirs] == [
            (r["topic"], r["key"], r["partition"]) for r in ours
        ]
    # the recording covers what it claims: every op, tombstones, PK-change headers, defaults, three partitions
    ops = {(_payload(r["value"], schemas) or {}).get("op") for r in ours if r["topic"] != "sis.transaction"}
    assert ops == {"r", "c", "u", "d", None}
    assert len({r["partition"] for r in ours}) == 3
    assert any(h[0] == "__debezium.newkey" for r in ours for h in r["headers"])
    assert len(defaults) >= 9


def test_debezium_with_the_two_alignment_settings_needs_no_header_or_null_allowance() -> None:
    aligned, ours = _load("debezium-aligned-schemas-off"), _load("sevisflow-schemas-off")
    assert [(r["topic"], r["key"], r["partition"]) for r in aligned] == [
        (r["topic"], r["key"], r["partition"]) for r in ours
    ]
    for d, s in zip(aligned, ours):
        assert d["headers"] == s["headers"]  # no context headers at all, and the same PK-change headers
        dv = _comparable(d, False, {})
        if dv["value"] is not None and dv["value"].get("source", {}).get("snapshot", "") is None:
            # replace.null.with.default=false shows Debezium's own null where its schema default says "false"
            dv["value"]["source"]["snapshot"] = "false"
        assert dv == _comparable(s, False, {})
    # Debezium (default settings) does add its four context headers to every change and tombstone
    for r in _load("debezium-schemas-off"):
        if r["topic"] != "sis.transaction":
            assert [h[0] for h in r["headers"] if h[0].startswith("__debezium.context.")] == CONTEXT_HEADERS


@pytest.mark.parametrize("mode", ["off", "on"])
def test_transaction_records_and_ids_as_debezium_writes_them(mode: str) -> None:
    schemas = mode == "on"
    theirs, ours = _load(f"debezium-schemas-{mode}"), _load(f"sevisflow-schemas-{mode}")
    tx_d = [r for r in theirs if r["topic"] == "sis.transaction"]
    tx_s = [r for r in ours if r["topic"] == "sis.transaction"]
    assert len(tx_s) >= 16 and tx_d == tx_s  # BEGIN and END: keys, ids, counts, commit time, schemas
    begins = {}
    for r in tx_s:
        v = _payload(r["value"], schemas)
        xid, lsn = (int(x) for x in v["id"].split(":"))
        if v["status"] == "BEGIN":
            begins[xid] = lsn
        else:  # END's id carries the commit record's end LSN, past every event of the transaction
            assert lsn > begins[xid]
            events = [
                _payload(e["value"], schemas)
                for e in ours
                if e["value"] is not None
                and e["topic"] != "sis.transaction"
                and _payload(e["value"], schemas)["source"]["txId"] == xid
                and _payload(e["value"], schemas)["op"] != "r"
            ]
            assert events and all(lsn > e["source"]["lsn"] for e in events)
            # normalize keys transactions by the xid part
            marker = parse_tx_marker(orjson.dumps(r["value"]))
            assert marker is not None and marker.tx_id == xid and marker.event_count == len(events)
    # an event's transaction.id is "<txId>:<its own LSN>" (Debezium 3.6.1), and normalize reads the txId
    for r in ours:
        v = _payload(r["value"], schemas)
        if v is not None and v.get("transaction"):
            assert v["transaction"]["id"] == f"{v['source']['txId']}:{v['source']['lsn']}"
            ch = parse_change(r["key"].encode(), orjson.dumps(r["value"]), r["topic"])
            assert ch is not None and ch.tx_id == v["source"]["txId"]


@pytest.mark.parametrize("who", ["debezium", "sevisflow"])
def test_snapshot_markers_follow_debezium_3s_rule(who: str) -> None:
    """first / first_in_data_collection / true / last_in_data_collection / last, tables in include-list order
    (the recording's table.include.list is rec_full, rec_default, rec_ckey — also their creation order; name
    order would put rec_ckey first)."""
    for mode in ("off", "on"):
        recs = _load(f"{who}-schemas-{mode}")
        rows = [
            (r["topic"], _payload(json.loads(r["key"]), mode == "on"), _payload(r["value"], mode == "on"))
            for r in recs
            if r["value"] is not None and _payload(r["value"], mode == "on").get("op") == "r"
        ]
        # rows of a table spread over partitions: both read a table in key order (the seed rows' order)
        rows.sort(key=lambda x: (x[0], list(x[1].values())))
        assert len(rows) == 6
        # the marker sequence per table tells its place: Debezium 3's rule, whole-snapshot ends first
        by_table: dict[str, list[str]] = {}
        for topic, _, v in rows:
            by_table.setdefault(topic, []).append(v["source"]["snapshot"])
        firsts = [t for t, m in by_table.items() if m[0] == "first"]
        lasts = [t for t, m in by_table.items() if m[-1] == "last"]
        assert firsts == ["sis.public.rec_full"] and lasts == ["sis.public.rec_ckey"]
        for t, marks in by_table.items():
            n = len(marks)
            expected = [
                snapshot_marker(t in firsts and i == 0, i == 0, i == n - 1, t in lasts and i == n - 1) for i in range(n)
            ]
            assert marks == expected, (who, mode, t)
        assert {m for ms in by_table.values() for m in ms} == {
            "first",
            "first_in_data_collection",
            "last_in_data_collection",
            "last",
        }


def test_snapshot_reads_tables_in_include_list_order() -> None:
    pats = compile_include_list(["public.rec_full", "public.rec_d.*", "public\\..*"])
    names = ["public.a", "public.rec_ckey", "public.rec_default", "public.rec_dz", "public.rec_full"]
    assert include_list_order(names, pats) == [
        "public.rec_full",
        "public.rec_default",
        "public.rec_dz",
        "public.a",
        "public.rec_ckey",
    ]


def test_snapshot_marker_rule() -> None:
    assert snapshot_marker(True, True, True, True) == "first"  # a one-row snapshot
    assert snapshot_marker(False, True, True, True) == "last"
    assert snapshot_marker(False, True, True, False) == "first_in_data_collection"
    assert snapshot_marker(False, False, True, False) == "last_in_data_collection"
    assert snapshot_marker(False, False, False, False) == "true"


# ---------------------------------------------------------------- today's code against Debezium's recorded bytes


def _ckey_meta(topic: str = "sis.public.rec_ckey") -> TableMeta:
    """public.rec_ckey of the recording: (m text, z integer, a date, note text DEFAULT 'n/a'), PK (z, a, m)."""
    mappings = (
        cv.column_mapping(cv.TEXT, -1),
        cv.column_mapping(cv.INT4, -1),
        cv.column_mapping(cv.DATE, -1),
        cv.column_mapping(cv.TEXT, -1),
    )
    defaults = tuple(default_value(e, m) for e, m in zip([None, None, None, "'n/a'::text"], mappings))
    return TableMeta(
        schema="public",
        table="rec_ckey",
        topic=topic,
        columns=("m", "z", "a", "note"),
        mappings=mappings,
        key_columns=("z", "a", "m"),
        optional=(False, False, False, True),
        defaults=defaults,
    )


def test_key_bytes_with_schemas_equal_debezium_so_the_partition_is_the_same() -> None:
    [rec] = [r for r in _load("debezium-schemas-on") if r["topic"] == "sis.public.rec_ckey"][:1]
    b = EventBuilder(name="sis", db="sis", version="x", schemas_enable=True)
    meta = _ckey_meta()
    payload = json.loads(rec["key"])["payload"]
    assert b.key_bytes(meta, payload) == rec["key"].encode()
    # and the value schema (member order, defaults, names) byte for byte
    build_schemas(meta)
    assert orjson.dumps(meta.value_schema) == orjson.dumps(rec["value"]["schema"])


def test_column_defaults_from_catalog_expressions() -> None:
    m = cv.column_mapping
    assert default_value("12.50", m(cv.NUMERIC, (10 << 16 | 2) + 4)) is not NO_DEFAULT
    assert default_value("'2026-08-15'::date", m(cv.DATE, -1)) == 20680
    assert default_value("true", m(cv.BOOL, -1)) is True
    assert default_value("'it''s'::character varying", m(cv.VARCHAR, 16)) == "it's"
    assert default_value("(-5)", m(cv.INT4, -1)) == -5
    for expr in ("now()", "nextval('s'::regclass)", "NULL::text", None):  # not constants: no default
        assert default_value(expr, m(cv.TEXT, -1)) is NO_DEFAULT


def test_transaction_records_with_schemas_equal_debezium_bytes() -> None:
    rec = [r for r in _load("debezium-schemas-on") if r["topic"] == "sis.transaction"]
    begin, end = rec[0], rec[1]
    b = EventBuilder(name="sis", db="sis", version="x", schemas_enable=True, transaction_metadata=True)
    xid, begin_lsn = (int(x) for x in begin["value"]["payload"]["id"].split(":"))
    end_lsn = int(end["value"]["payload"]["id"].split(":")[1])
    [table] = [d["data_collection"] for d in end["value"]["payload"]["data_collections"]]
    tx = TxContext(
        xid=xid,
        commit_lsn=end_lsn - 48,
        ts_us=begin["value"]["payload"]["ts_ms"] * 1000,
        begin_lsn=begin_lsn,
        per_table={table: 1},
        total_order=1,
    )
    _, key, value, _ = b.transaction_event("sis.transaction", tx, "BEGIN")
    assert key is not None and key.decode() == begin["key"] and orjson.loads(value) == begin["value"]  # type: ignore[arg-type]
    tx.end_lsn = end_lsn
    _, key, value, _ = b.transaction_event("sis.transaction", tx, "END")
    assert key is not None and key.decode() == end["key"] and orjson.loads(value) == end["value"]  # type: ignore[arg-type]


def test_pk_change_tombstone_carries_newkey_and_key_only_before_takes_not_null_defaults() -> None:
    theirs = [r for r in _load("debezium-aligned-schemas-off") if r["topic"] == "sis.public.rec_ckey"]
    [tomb] = [r for r in theirs if r["value"] is None and any(h[0] == "__debezium.newkey" for h in r["headers"])]
    b = EventBuilder(name="sis", db="sis", version="x", transaction_metadata=True)
    meta = _ckey_meta()
    tx = TxContext(xid=1, commit_lsn=10, ts_us=0, begin_lsn=5)
    out = b.update(meta, ["mm", "5", "2026-02-01", "first"], "O", ["mm", "7", "2026-02-01", "first"], tx, 8)
    assert [r[2] is None for r in out] == [False, True, False]
    assert out[1][1] is not None and out[1][1].decode() == tomb["key"]
    assert [(h, v.decode()) for h, v in out[1][3] or []] == [tuple(h) for h in tomb["headers"]]
    # REPLICA IDENTITY DEFAULT: the NOT NULL columns with a default get it (Debezium's schema forbids null there)
    d = [
        r
        for r in _load("debezium-aligned-schemas-off")
        if r["topic"] == "sis.public.rec_default" and r["value"] and r["value"]["op"] == "d"
    ][-1]
    full = TableMeta(
        schema="public",
        table="rec_default",
        topic="sis.public.rec_default",
        columns=("id", "amount", "active", "label"),
        mappings=(
            cv.column_mapping(cv.INT4, -1),
            cv.column_mapping(cv.NUMERIC, (10 << 16 | 2) + 4),
            cv.column_mapping(cv.BOOL, -1),
            cv.column_mapping(cv.TEXT, -1),
        ),
        key_columns=("id",),
        optional=(False, False, False, True),
    )
    full.defaults = tuple(default_value(e, m) for e, m in zip([None, "12.50", "true", "'none'::text"], full.mappings))
    [(_, _, v, _), _] = b.delete(full, ["2", None, None, None], "K", tx, 9)
    before = orjson.loads(v)["before"]  # type: ignore[arg-type]
    assert before == {k: d["value"]["before"][k] for k in before}
