"""The C tuple decoder (connectors/postgres/_pgtuple.c) against the pure-Python one — no services.

Every check runs the same input through both decoders (``decoder.using``) and requires the same
objects and byte-identical envelopes; where the stream's fast path applies, also byte-identical to
the generic decode + builder path.
"""

from __future__ import annotations

import struct
from datetime import date
from datetime import time as dtime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevisflow.connectors.postgres import convert as cv
from sevisflow.connectors.postgres import decoder, envelope, pgoutput, snapshot
from sevisflow.connectors.postgres.envelope import EventBuilder, TableMeta, TxContext
from sevisflow.connectors.postgres.pgoutput import UNCHANGED, DecodeError, Delete, Insert, Update, Value, decode, encode
from testkit.connector import table_meta

# (column, type oid, typmod): every type the reference SIS schema uses, and then some
SIS_COLUMNS: tuple[tuple[str, int, int], ...] = (
    ("id", cv.INT8, -1),
    ("small", cv.INT2, -1),
    ("n", cv.INT4, -1),
    ("amount", cv.NUMERIC, ((10 << 16) | 2) + 4),
    ("gpa", cv.NUMERIC, -1),
    ("name", cv.TEXT, -1),
    ("code", cv.BPCHAR, 6),
    ("active", cv.BOOL, -1),
    ("born", cv.DATE, -1),
    ("seen", cv.TIMESTAMP, -1),
    ("seen_ms", cv.TIMESTAMP, 3),
    ("at", cv.TIMESTAMPTZ, -1),
    ("at3", cv.TIMESTAMPTZ, 3),
    ("uid", cv.UUID, -1),
    ("doc", cv.JSONB, -1),
    ("tags", 1009, -1),
    ("nums", 1007, -1),
    ("ratio", cv.FLOAT8, -1),
    ("starts", cv.TIME, -1),
    ("notes", cv.TEXT, -1),
)


def _meta(columns: tuple[tuple[str, int, int], ...] = SIS_COLUMNS) -> TableMeta:
    return table_meta(columns)


ROW1: list[Value] = [
    "42",
    "-7",
    "2147483647",
    "12345.60",
    "3.875",
    "Zoë Ångström 李小龍 🎓",
    "F1    ",
    "t",
    "2001-02-03",
    "2024-05-01 12:00:00.123456",
    "2024-05-01 12:00:00.5",
    "2024-05-01 12:00:00+00",
    "2024-05-01 12:00:00.123456+00",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    '{"major": "Física", "n": [1, 2]}',
    '{alpha,"b c",NULL}',
    "{1,-2,NULL}",
    "3.25",
    "08:30:00",
    "x" * 300,
]
ROW2: list[Value] = [
    "42",
    None,
    "-9223372036854775808",
    "-0.01",
    None,
    "Ana",
    None,
    "f",
    "infinity",
    None,
    "1999-12-31 23:59:59",
    None,
    "1970-01-01 00:00:00+00",
    None,
    None,
    "{}",
    None,
    "-1e+100",
    None,
    None,
]


def _builder(schemas: bool = False, txmeta: bool = True) -> EventBuilder:
    b = EventBuilder(name="sis", db="d", version="v", schemas_enable=schemas, transaction_metadata=txmeta)
    b.now_us = 1_700_000_000_000_001
    return b


def _tx() -> TxContext:
    return TxContext(xid=700, commit_lsn=5000, ts_us=1_700_000_000_123_456, begin_lsn=4000)


def _records(builder: EventBuilder, meta: TableMeta, payload: bytes, tx: TxContext, lsn: int) -> list[Any]:
    """What the stream loop produces for one I/U/D payload: the fast path, else decode + builder."""
    fast = builder.fast_change(meta, payload, tx, lsn)
    if fast is not None:
        op, key, value = fast
        out: list[Any] = [(meta.topic, key, value, None)]
        if op == "d" and builder.tombstones_on_delete and key is not None:
            out.append((meta.topic, key, None, None))
        return out
    m = decode(payload)
    if isinstance(m, Insert):
        return builder.insert(meta, m.new, tx, lsn)
    if isinstance(m, Update):
        return builder.update(meta, m.old, m.old_kind, m.new, tx, lsn)
    assert isinstance(m, Delete)
    return builder.delete(meta, m.old, m.old_kind, tx, lsn)


def _both(fn: Any) -> tuple[Any, Any]:
    with decoder.using(True):
        c = fn()
    with decoder.using(False):
        py = fn()
    return c, py


def _outcome(fn: Any) -> Any:
    """fn()'s result, or its exception as (type, message): to compare raising paths too."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return (type(exc), str(exc))


def test_the_extension_is_built_and_chosen() -> None:
    assert decoder.c_module is not None, (
        "sevisflow.connectors.postgres._pgtuple is missing: run `pip install -e .` (needs gcc)"
    )
    assert decoder.forced_python or decoder.name() == "c"
    with decoder.using(False):
        assert decoder.name() == "python"
        assert envelope._fast_row is envelope._py_fast_row and envelope._c_read_row is None
        assert envelope._c_change_event is None and envelope._c_read_event is None
        assert snapshot._c_split_copy is None
    with decoder.using(True):
        assert decoder.name() == "c"
        assert envelope._fast_row is decoder.c_module.fast_row
        assert envelope._c_change_event is decoder.c_module.change_event
        assert envelope._c_read_event is decoder.c_module.read_event
        assert snapshot._c_split_copy is decoder.c_module.split_copy


MESSAGES = [
    Insert(1, ROW1),
    Insert(1, ROW2),
    Update(1, "O", ROW1, ROW2),
    Update(1, None, None, ROW1),
    Update(1, "O", ROW2, ROW2[:19] + [UNCHANGED]),  # unchanged TOAST, filled from the old row
    Update(1, None, None, ROW1[:19] + [UNCHANGED]),  # unchanged TOAST, placeholder
    Update(1, "K", ["42"] + [None] * 19, ROW1),
    Update(1, "O", ROW1, ["43"] + ROW1[1:]),  # 'K'; key change
    Delete(1, "O", ROW1),
    Delete(1, "K", ["42"] + [None] * 19),
    Insert(1, ["43"] + [None] * 19),
]


@pytest.mark.parametrize("schemas", [False, True])
def test_every_sis_type_gives_identical_envelopes(schemas: bool) -> None:
    meta = _meta()

    def run(generic: bool = False) -> list[Any]:
        b, tx, out = _builder(schemas), _tx(), []
        if generic:
            b.fast_change = lambda *a: None  # type: ignore[method-assign]
        for i, m in enumerate(MESSAGES):
            out.extend(_records(b, meta, encode(m), tx, 4100 + i))
        out.append(b.transaction_event("t", tx, "END"))
        return out

    c, py = _both(run)
    assert c == py
    assert c == run(generic=True)
    fast_hits, _ = _both(
        lambda: [_builder(schemas).fast_change(meta, encode(m), _tx(), 1) is not None for m in MESSAGES]
    )
    assert fast_hits == [True, True, True, True, False, False, False, False, True, False, True]


def test_decode_gives_the_same_objects_and_errors() -> None:
    payloads = [encode(m) for m in MESSAGES] + [encode(Insert(1, [b"\x00\xff", None, UNCHANGED, "é"]))]
    bad = [
        b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x09ab",  # value shorter than its length
        b"I\x00\x00\x00\x01N\x00\x02n",  # fewer values than announced
        b"I\x00\x00\x00\x01N\x00\x01x",  # unknown kind
        b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x01\xff",  # not UTF-8
        b"I\x00\x00\x00\x01N\x00",
    ]
    c, py = _both(lambda: [_outcome(lambda p=p: decode(p)) for p in payloads + bad])
    assert c == py
    assert all(isinstance(r, tuple) and r[0] is DecodeError for r in c[len(payloads) :])
    assert c[-6].new == [b"\x00\xff", None, UNCHANGED, "é"]


def test_snapshot_rows_are_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope.time, "time_ns", lambda: 1_700_000_000_000_000_123)
    meta = _meta()
    rows = [list(ROW1), list(ROW2), ["44"] + [None] * 19, tuple(ROW1)]
    tx = TxContext(xid=9, commit_lsn=None, ts_us=1000, snapshot="true")
    c, py = _both(lambda: _builder(True).read_values(meta, rows, tx, 77, "true"))
    assert c == py
    assert [v for _, v in c] == [_builder(True).read(meta, r, tx, 77, "true")[2] for r in rows]
    # a value that does not convert raises the same error either way
    c, py = _both(lambda: _outcome(lambda: _builder().read_values(meta, [["x"] + ROW2[1:]], tx, 77, "true")))
    assert c == py and c[0] is ValueError


def test_c_fast_row_matches_python_on_edge_integers_and_bools() -> None:
    cols = (("id", cv.INT8, -1), ("a", cv.INT2, -1), ("b", cv.BOOL, -1))
    fields = _meta(cols)._fields
    cases = [
        ["0", "-0", "t"],
        ["007", "+5", "f"],
        ["9" * 18, "1", "true"],
        ["-" + "9" * 19, "1", ""],
        ["1_000", " 2", "t"],
        ["٣", "1", "t"],
        ["-", "1", "t"],
        ["", "1", "t"],
        ["1.5", "1", "t"],
    ]
    for values in cases:
        buf = encode(Insert(1, values))
        c = decoder.c_module.fast_row(buf, 6, fields)  # type: ignore[union-attr]
        py = envelope._py_fast_row(buf, 6, fields)
        assert c == py and [type(v) for v in (c or ({}, 0))[0].values()] == [
            type(v) for v in (py or ({}, 0))[0].values()
        ], values


def test_c_dates_and_zoned_timestamps_match_python() -> None:
    """The two converters the C loop does itself, on their fast-path shapes and just outside them."""
    dates = [
        "2024-02-29",
        "2023-02-29",
        "2000-02-29",
        "1900-02-29",
        "0001-01-01",
        "0000-01-01",
        "9999-12-31",
        "1970-01-01",
        "1969-12-31",
        "2024-13-01",
        "2024-00-10",
        "2024-04-31",
        "2024-4-01",
        "20240101",
        "infinity",
        "-infinity",
        "0044-03-15 BC",
        "12345-01-01",
        "2024-01-01x",
        "2024-01-0١",
    ]
    stamps = [
        "2024-05-01 12:00:00+00",
        "2024-05-01 12:00:00.5+00",
        "2024-05-01 12:00:00.1234567+00",
        "2024-05-01 12:00:00.123456+00",
        "1999-12-31 23:59:59.000001+00",
        "2024-05-01 12:00:00+02",
        "2024-05-01 12:00:00+05:30",
        "infinity",
        "-infinity",
        "0044-03-15 12:00:00+00 BC",
        "12345-05-01 12:00:00+00",
        "2024-05-01T12:00:00+00",
        "2024-05-01 12:00:0١+00",
        "2024-05-01 1.2:00:00.5+00",
        "2024-05-01 12:00:00." + "9" * 40 + "+00",
    ]
    meta = _meta((("id", cv.INT8, -1), ("d", cv.DATE, -1), ("at", cv.TIMESTAMPTZ, -1)))
    for i in range(max(len(dates), len(stamps))):
        buf = encode(Insert(1, ["1", dates[i % len(dates)], stamps[i % len(stamps)]]))
        c = decoder.c_module.fast_row(buf, 6, meta._fields)  # type: ignore[union-attr]
        assert c == envelope._py_fast_row(buf, 6, meta._fields), (dates[i % len(dates)], stamps[i % len(stamps)])
    assert c is not None and decoder.c_module.fast_row(  # type: ignore[union-attr]
        encode(Insert(1, ["1", "2024-02-29", "2024-05-01 12:00:00.5+00"])), 6, meta._fields
    )[0] == {"id": 1, "d": 19782, "at": "2024-05-01T12:00:00.500000Z"}


# --------------------------------------------------------------------------- property tests

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
_VALUE: dict[str, st.SearchStrategy[str]] = {
    "id": st.integers(1, 5).map(str),
    "small": st.integers(-32768, 32767).map(str),
    "n": st.integers(-(2**31), 2**31 - 1).map(str),
    "amount": st.decimals(min_value=-(10**8) + 1, max_value=10**8 - 1, places=2).map(lambda d: f"{d:.2f}"),
    "gpa": st.one_of(st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str), st.just("NaN")),
    "name": _text,
    "code": _text,
    "notes": _text,
    "active": st.sampled_from(["t", "f"]),
    "born": st.one_of(st.dates().map(date.isoformat), st.sampled_from(["infinity", "-infinity", "0044-03-15 BC"])),
    "seen": st.datetimes().map(lambda d: d.isoformat(sep=" ")),
    "seen_ms": st.datetimes().map(lambda d: d.isoformat(sep=" ")),
    "at": st.datetimes().map(lambda d: d.isoformat(sep=" ") + "+00"),
    "at3": st.datetimes().map(lambda d: d.isoformat(sep=" ") + "+00"),
    "uid": st.uuids().map(str),
    "doc": st.dictionaries(st.sampled_from(["a", "é", "k"]), st.integers()).map(
        lambda d: "{" + ", ".join(f'"{k}": {v}' for k, v in d.items()) + "}"
    ),
    "tags": st.lists(st.from_regex(r"[a-z]{1,5}", fullmatch=True), max_size=4).map(lambda xs: "{" + ",".join(xs) + "}"),
    "nums": st.lists(st.one_of(st.integers(-(2**31), 2**31 - 1).map(str), st.just("NULL")), max_size=4).map(
        lambda xs: "{" + ",".join(xs) + "}"
    ),
    "ratio": st.floats(allow_nan=False, allow_infinity=False).map(repr),
    "starts": st.times().map(dtime.isoformat),
}


@st.composite
def _rows(draw: st.DrawFn, toast: bool = False) -> list[Value]:
    row: list[Value] = []
    for name, _, _ in SIS_COLUMNS:
        choice = draw(st.integers(0, 9))
        if name != "id" and choice == 0:
            row.append(None)
        elif toast and name == "notes" and choice == 1:
            row.append(UNCHANGED)
        elif choice == 2 and name in ("n", "born", "active"):
            row.append(draw(st.sampled_from(["x", "", "12345678901234567890123"])))  # conversion failures
        else:
            row.append(draw(_VALUE[name]))
    return row


@st.composite
def _messages(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["I", "U", "UO", "UK", "D", "DK"]))
    old, new = draw(_rows()), draw(_rows(toast=kind.startswith("U")))
    if kind == "I":
        return Insert(1, new)
    if kind == "U":
        return Update(1, None, None, new)
    if kind == "UO":
        return Update(1, "O", old, new)
    if kind == "UK":
        return Update(1, "K", [old[0]] + [None] * (len(old) - 1), new)
    return Delete(1, "O" if kind == "D" else "K", old)


_META = _meta()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_messages(), min_size=1, max_size=5), st.booleans())
def test_random_changes_give_identical_envelopes(msgs: list[Any], schemas: bool) -> None:
    def run(generic: bool = False) -> list[Any]:
        b, tx, out = _builder(schemas), _tx(), []
        if generic:
            b.fast_change = lambda *a: None  # type: ignore[method-assign]
        for i, m in enumerate(msgs):
            out.append(_outcome(lambda m=m, i=i: _records(b, _META, encode(m), tx, 4100 + i)))
        out.append(b.transaction_event("t", tx, "END"))
        return out

    c, py = _both(run)
    assert c == py
    assert c == run(generic=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.integers(0, 3))
def test_random_tuple_bytes_decode_alike(tail: bytes, ncols: int) -> None:
    """Arbitrary (mostly malformed) TupleData: the C loops agree with Python or hand over to it."""
    cols = (("id", cv.INT8, -1), ("name", cv.TEXT, -1), ("born", cv.DATE, -1))[: max(ncols, 1)]
    fields = _meta(cols)._fields
    buf = struct.pack(">H", ncols) + tail
    assert decoder.c_module.fast_row(buf, 0, fields) == envelope._py_fast_row(buf, 0, fields)  # type: ignore[union-attr]
    c = decoder.c_module.tuple_values(buf, 0)  # type: ignore[union-attr]
    if c is None:  # handed over: the Python decoder must then reject it
        with pytest.raises((DecodeError, IndexError, struct.error, UnicodeDecodeError)):
            pgoutput._py_tuple(buf, 0)
    else:
        assert c == pgoutput._py_tuple(buf, 0)
    payload = b"I\x00\x00\x00\x01N" + buf
    c2, py2 = _both(lambda: _outcome(lambda: decode(payload)))
    assert c2 == py2


@settings(max_examples=200, deadline=None)
@given(st.lists(_rows(), min_size=1, max_size=4))
def test_random_snapshot_rows_are_identical(rows: list[list[Value]]) -> None:
    tx = TxContext(xid=9, commit_lsn=None, ts_us=1000, snapshot="true")

    def run() -> Any:
        b = _builder()
        out = []
        for r in rows:
            res = _outcome(lambda r=r: list(b.iter_read_values(_META, [r], tx, 77, "true")))
            out.append(res if isinstance(res, tuple) else [(k, v[: v.index(b'"ts_ms"')]) for k, v in res])
        return out

    c, py = _both(run)
    assert c == py


def test_memo_is_shared_and_bounded() -> None:
    """The C loop fills the same per-column memo as Python and clears it at the same size."""
    meta = _meta((("id", cv.INT8, -1), ("seen", cv.TIMESTAMP, -1)))  # a memoised converter the C loop calls
    memo = meta._fields[1][2]
    for i in range(decoder.MEMO_SIZE + 3):
        d = date.fromordinal(date(2000, 1, 1).toordinal() + i)
        buf = encode(Insert(1, [str(i), f"{d.isoformat()} 12:00:00"]))
        decoder.c_module.fast_row(buf, 6, meta._fields)  # type: ignore[union-attr]
    assert len(memo) == 3 and decoder.MEMO_SIZE == envelope._MEMO_SIZE


def test_copy_text_splits_alike() -> None:
    chunks = [
        b"1\tAna\t\n",
        "2\tZo\u00eb \u674e \U0001f393\t\t\n3\t\t\n".encode(),
        b"\n",
        b"1\\N\n",
        b"1\t\\N\tx\\ty\n",
        b"\xff\tx\n",
        b"no newline",
        b"a\n\n",
        b"\t\t\n",
    ]
    for data in chunks:
        c, py = _both(lambda data=data: _outcome(lambda: snapshot.split_copy_text(data)))
        assert c == py, data
    assert snapshot._py_split_copy_text(chunks[1]) == [["2", "Zoë 李 🎓", "", ""], ["3", "", ""]]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.lists(st.one_of(_text, st.sampled_from(["\\N", "a\\tb", "\\\\"])), min_size=1, max_size=5),
        min_size=1,
        max_size=6,
    ),
    st.binary(max_size=3),
)
def test_random_copy_text_splits_alike(rows: list[list[str]], junk: bytes) -> None:
    data = "".join("\t".join(r) + "\n" for r in rows).encode()
    for d in (data, data + junk, junk + data):
        c, py = _both(lambda d=d: _outcome(lambda: snapshot.split_copy_text(d)))
        assert c == py


# --------------------------------------------------------------------------- the C event writer


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[bool]:
    """Wrap envelope.<name> (the C writer) to record whether each call wrote the record."""
    real, seen = getattr(envelope, name), []

    def spy(*a: Any) -> Any:
        r = real(*a)
        seen.append(r is not None)
        return r

    monkeypatch.setattr(envelope, name, spy)
    return seen


def _python_fast(fn: Any) -> Any:
    """fn() with the C tuple loops but without the C event writer: the Python envelope code."""
    with decoder.using(True):
        keep = envelope._c_change_event, envelope._c_read_event
        envelope._c_change_event = envelope._c_read_event = None
        try:
            return fn()
        finally:
            envelope._c_change_event, envelope._c_read_event = keep


@pytest.mark.parametrize("txmeta", [True, False])
def test_c_writer_takes_the_common_events_and_writes_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, txmeta: bool
) -> None:
    meta = _meta()

    def run() -> list[Any]:
        b, tx, out = _builder(txmeta=txmeta), _tx(), []
        for i, m in enumerate(MESSAGES):
            out.append(_records(b, meta, encode(m), tx, 4100 + i))
        out.append(b.transaction_event("t", tx, "END"))
        return out

    expected = _python_fast(run)
    with decoder.using(True):
        seen = _counting(monkeypatch, "_c_change_event")
        assert run() == expected
    # every event the fast path takes is written in C: insert, update (with and without the old row), delete
    assert seen == [True, True, True, True, False, False, False, False, True, False, True]
    assert expected == _both(run)[1]


def test_c_writer_escapes_text_as_orjson_does() -> None:
    cols = (("id", cv.INT8, -1), ("t", cv.TEXT, -1), ('"k\u00e9\n', cv.TEXT, -1))
    meta = TableMeta(
        schema="s",
        table="t",
        topic="x.s.t",
        columns=tuple(c for c, _, _ in cols),
        mappings=tuple(cv.column_mapping(o, m) for _, o, m in cols),
        key_columns=("id", '"k\u00e9\n'),
    )
    texts = ["".join(map(chr, range(1, 128))), 'a"b\\c', "Zoë 李 🎓 \u2028\u2029\ufeff\x7f", "", "x" * 5000]
    for t in texts:
        payload = encode(Insert(1, ["1", t, t]))
        ctx = (meta._fields, meta._c_names, meta._key_idx, True, b"{", b",", b"}", None, None, None, None)
        assert decoder.c_module.change_event(payload, ctx, 1, 0, 0, b"}") is not None  # type: ignore[union-attr]
        c, py = _both(lambda payload=payload: _builder().fast_change(meta, payload, _tx(), 9))
        assert c == py == _python_fast(lambda payload=payload: _builder().fast_change(meta, payload, _tx(), 9)), t


def test_c_writer_hands_over_what_it_cannot_write(monkeypatch: pytest.MonkeyPatch) -> None:
    meta = _meta((("id", cv.INT8, -1), ("name", cv.TEXT, -1), ("n", cv.INT8, -1)))
    not_utf8 = b"I\x00\x00\x00\x01N\x00\x03t\x00\x00\x00\x011t\x00\x00\x00\x01\xffn"
    huge = encode(Insert(1, ["1", "a", str(2**64)]))  # int() works, orjson refuses it
    for payload in (not_utf8, huge):
        with decoder.using(True):
            c_out = _outcome(lambda payload=payload: _builder().fast_change(meta, payload, _tx(), 9))
        ctx = (meta._fields, meta._c_names, meta._key_idx, True, b"", b"", b"", None, None, None, None)
        assert decoder.c_module.change_event(payload, ctx, 1, 0, 0, b"}") is None  # type: ignore[union-attr]
        assert c_out == _python_fast(
            lambda payload=payload: _outcome(lambda: _builder().fast_change(meta, payload, _tx(), 9))
        )
    # a source block that cannot be cut around the LSN (its commit LSN is the marker): the Python path, same bytes
    tx = TxContext(xid=1, commit_lsn=envelope._LSN_MARK, ts_us=5, begin_lsn=4)
    payload = encode(Insert(1, ["1", "a", "2"]))
    with decoder.using(True):
        seen = _counting(monkeypatch, "_c_change_event")
        c = _builder().fast_change(meta, payload, tx, 9)
    assert seen == [] and tx.c_contexts == {"sis.person": (meta, ())}
    assert c == _python_fast(
        lambda: _builder().fast_change(
            meta, payload, TxContext(xid=1, commit_lsn=envelope._LSN_MARK, ts_us=5, begin_lsn=4), 9
        )
    )
    # duplicate column names: a dict would merge them, so the C writer is not used
    dup = TableMeta(
        schema="s",
        table="t",
        topic="x",
        columns=("a", "a"),
        mappings=(cv.column_mapping(cv.TEXT, -1),) * 2,
        key_columns=(),
    )
    assert dup._c_names is None


def test_c_writer_follows_a_table_redefined_mid_transaction() -> None:
    """A Relation message inside a transaction replaces the table's meta: the next event uses the new one."""
    old = _meta((("id", cv.INT8, -1), ("v", cv.INT4, -1)))
    new = _meta((("id", cv.INT8, -1), ("v", cv.TEXT, -1)))

    def run() -> list[Any]:
        b, tx = _builder(), _tx()
        return [b.fast_change(m, encode(Insert(1, ["1", "7"])), tx, 10 + i) for i, m in enumerate((old, new, old))]

    c = _both(run)[0]
    assert c == _python_fast(run) and b'"v":7' in c[0][2] and b'"v":"7"' in c[1][2] and b'"v":7' in c[2][2]


def _stream_like(
    msgs: list[Any], txmeta: bool, tombstones: bool, fail_at: int | None, use_batch: bool
) -> tuple[list[Any], TxContext]:
    """The stream loop's produce sequence for ``msgs`` (None = a keepalive), with change_batch taking runs
    of changes (``use_batch``) or change by change (fast_change, else the generic path); ``fail_at``:
    the produce() call that finds the queue full."""
    meta = _meta()
    b = EventBuilder(name="sis", db="d", version="v", tombstones_on_delete=tombstones, transaction_metadata=txmeta)
    b.now_us = 1_700_000_000_000_001
    tx, out, calls = _tx(), [], [0]
    items = [(4100 + i, None if m is None else encode(m)) for i, m in enumerate(msgs)]

    def produce(topic: str, value: bytes | None, key: bytes | None) -> None:
        calls[0] += 1
        if calls[0] == fail_at:
            raise BufferError("queue full")
        out.append((topic, key, value, None))

    rels = {1: b.batch_entry(meta, tx)}
    i = 0
    while i < len(items):
        lsn, payload = items[i]
        if payload is None:
            i += 1
            continue
        if use_batch:
            nxt, _, _, _, pending = b.change_batch(items, i, rels, b.batch_tx(tx), b.batch_tail(), produce, tombstones)
            out.extend(pending or [])
            if nxt > i:
                i = nxt
                continue
        out.extend(_records(b, meta, payload, tx, lsn))
        i += 1
    return out, tx


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(_messages(), st.sampled_from(MESSAGES), st.none()), min_size=1, max_size=8),
    st.booleans(),
    st.booleans(),
    st.one_of(st.none(), st.integers(1, 6)),
)
def test_c_batch_produces_what_the_loop_produces(
    msgs: list[Any], txmeta: bool, tombstones: bool, fail_at: int | None
) -> None:
    def outcome(r: Any) -> Any:  # a value that does not convert raises, the same either way
        return (
            r
            if isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], type)
            else (r[0], r[1].total_order, r[1].per_table)
        )

    with decoder.using(True):
        assert envelope._c_change_batch is not None
        got = outcome(_outcome(lambda: _stream_like(msgs, txmeta, tombstones, fail_at, True)))
    want = outcome(_python_fast(lambda: _outcome(lambda: _stream_like(msgs, txmeta, tombstones, None, False))))
    assert got == want
    with decoder.using(False):
        assert outcome(_outcome(lambda: _stream_like(msgs, txmeta, tombstones, None, False))) == want


def test_c_batch_stops_where_it_must() -> None:
    meta = _meta()
    with decoder.using(True):
        b = _builder()
        tx = _tx()
        fast, slow = encode(Insert(1, ROW1)), encode(Update(1, None, None, ROW1[:19] + [UNCHANGED]))
        items = [(1, fast), (2, fast), (3, slow), (4, fast), (5, None), (6, encode(Insert(2, ROW1))), (7, b"B")]
        seen: list[Any] = []
        rels = {1: b.batch_entry(meta, tx)}
        run = b.change_batch
        assert run(items, 0, rels, tx, b.batch_tail(), lambda *a: seen.append(a), True)[:4] == (2, 2, 0, 0)
        assert run(items, 2, rels, tx, b.batch_tail(), lambda *a: seen.append(a), True)[0] == 2  # unchanged TOAST
        assert run(items, 3, rels, tx, b.batch_tail(), lambda *a: seen.append(a), True)[0] == 4  # keepalive
        assert run(items, 5, rels, tx, b.batch_tail(), lambda *a: seen.append(a), True)[0] == 5  # unknown relid
        assert run(items, 6, rels, tx, b.batch_tail(), lambda *a: seen.append(a), True)[0] == 6  # not I/U/D
        assert len(seen) == 3 and tx.total_order == 3
        with pytest.raises(ZeroDivisionError):  # produce()'s own errors propagate; the counters stay right
            run(items, 0, rels, tx, b.batch_tail(), lambda *a: 1 / 0, True)
        assert tx.total_order == 4
        assert _builder(schemas=True).change_batch is None
    with decoder.using(False):
        assert _builder().change_batch is None and _builder().batch_entry(meta, _tx()) is None


_KEYED: dict[str, TableMeta] = {
    "no key": TableMeta(
        schema="s",
        table="n",
        topic="x.s.n",
        columns=("a", "b"),
        mappings=(cv.column_mapping(cv.TEXT, -1), cv.column_mapping(cv.INT4, -1)),
        key_columns=(),
    ),
    "two keys": TableMeta(
        schema="s",
        table="k",
        topic="x.s.k",
        columns=("a", "b", "c"),
        mappings=(cv.column_mapping(cv.TEXT, -1), cv.column_mapping(cv.INT4, -1), cv.column_mapping(cv.FLOAT8, -1)),
        key_columns=("b", "a"),
    ),
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(_KEYED)),
    st.lists(
        st.tuples(
            st.sampled_from(["I", "UO", "U", "D"]),
            st.lists(st.one_of(st.none(), _text, st.integers(-3, 3).map(str)), min_size=3, max_size=3),
            st.lists(st.one_of(st.none(), _text, st.integers(-3, 3).map(str)), min_size=3, max_size=3),
        ),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
def test_random_keys_and_text_write_the_same_bytes(table: str, changes: list[Any], txmeta: bool) -> None:
    meta = _KEYED[table]
    n = len(meta.columns)

    def run() -> list[Any]:
        b, tx, out = _builder(txmeta=txmeta), _tx(), []
        for i, (kind, old, new) in enumerate(changes):
            m = (
                Insert(1, new[:n])
                if kind == "I"
                else Update(1, "O", old[:n], new[:n])
                if kind == "UO"
                else Update(1, None, None, new[:n])
                if kind == "U"
                else Delete(1, "O", old[:n])
            )
            out.append(_outcome(lambda m=m, i=i: _records(b, meta, encode(m), tx, 4100 + i)))
        out.append(b.transaction_event("t", tx, "END"))
        return out

    c, py = _both(run)
    assert c == py == _python_fast(run)


def test_c_snapshot_writer_takes_the_rows_and_writes_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope.time, "time_ns", lambda: 1_700_000_000_000_000_123)
    meta = _meta()
    rows = [list(ROW1), list(ROW2), ["44"] + [None] * 19, tuple(ROW1), ["45"] + ROW1[1:5] + ['\x01"\\ ü'] + ROW1[6:]]
    tx = TxContext(xid=9, commit_lsn=None, ts_us=1000, snapshot="true")
    expected = _python_fast(lambda: _builder().read_values(meta, rows, tx, 77, "true"))
    with decoder.using(True):
        seen = _counting(monkeypatch, "_c_read_event")
        assert _builder().read_values(meta, rows, tx, 77, "true") == expected
    assert seen == [True, True, True, False, True]  # a tuple row is the Python loop's
    assert expected == [(r[1], r[2]) for r in (_builder().read(meta, row, tx, 77, "true") for row in rows)]
    assert _both(lambda: _builder().read_values(meta, rows, tx, 77, "true"))[1] == expected
    # a failing conversion raises the Python loop's error
    bad = [["x"] + ROW2[1:]]
    with decoder.using(True):
        c = _outcome(lambda: _builder().read_values(meta, bad, tx, 77, "true"))
    assert c == _python_fast(lambda: _outcome(lambda: _builder().read_values(meta, bad, tx, 77, "true")))
    assert c[0] is ValueError


def test_the_choice_is_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(decoder.log, "info", lambda event, **fields: seen.append((event, fields)))
    for use_c in (True, False):
        monkeypatch.setattr(decoder, "_logged", False)
        with decoder.using(use_c):
            decoder.log_choice()
            decoder.log_choice()
    assert seen == [
        ("connector.decoder", {"decoder": "c", "reason": "active"}),
        (
            "connector.decoder",
            {
                "decoder": "python",
                "reason": decoder.FORCE_PYTHON_ENV if decoder.forced_python else "switched off (decoder.set_active)",
            },
        ),
    ]
