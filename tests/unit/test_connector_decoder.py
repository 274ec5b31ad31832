"""The C tuple decoder (connectors/postgres/_pgtuple.c) against the pure-Python one — no services.

Every check runs the same input through both decoders (``decoder.using``) and requires the same
objects and byte-identical envelopes; where the stream's fast path applies, also byte-identical to
the generic decode + builder path.
"""

from __future__ import annotations

import struct
from datetime import date, time as dtime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from connectors.postgres import convert as cv, decoder, envelope, pgoutput, snapshot
from connectors.postgres.envelope import EventBuilder, TableMeta, TxContext
from connectors.postgres.pgoutput import UNCHANGED, DecodeError, Delete, Insert, Update, Value, decode, encode

# (column, type oid, typmod): every type the reference SIS schema uses, and then some
SIS_COLUMNS: tuple[tuple[str, int, int], ...] = (
    ("id", cv.INT8, -1), ("small", cv.INT2, -1), ("n", cv.INT4, -1),
    ("amount", cv.NUMERIC, ((10 << 16) | 2) + 4), ("gpa", cv.NUMERIC, -1),
    ("name", cv.TEXT, -1), ("code", cv.BPCHAR, 6), ("active", cv.BOOL, -1), ("born", cv.DATE, -1),
    ("seen", cv.TIMESTAMP, -1), ("seen_ms", cv.TIMESTAMP, 3), ("at", cv.TIMESTAMPTZ, -1),
    ("at3", cv.TIMESTAMPTZ, 3), ("uid", cv.UUID, -1), ("doc", cv.JSONB, -1), ("tags", 1009, -1),
    ("nums", 1007, -1), ("ratio", cv.FLOAT8, -1), ("starts", cv.TIME, -1), ("notes", cv.TEXT, -1),
)


def _meta(columns: tuple[tuple[str, int, int], ...] = SIS_COLUMNS) -> TableMeta:
    return TableMeta(schema="sis", table="person", topic="sis.sis.person",
                     columns=tuple(c for c, _, _ in columns),
                     mappings=tuple(cv.column_mapping(oid, mod) for _, oid, mod in columns), key_columns=("id",))


ROW1: list[Value] = ["42", "-7", "2147483647", "12345.60", "3.875", "Zoë Ångström 李小龍 🎓", "F1    ", "t",
                     "2001-02-03", "2024-05-01 12:00:00.123456", "2024-05-01 12:00:00.5", "2024-05-01 12:00:00+00",
                     "2024-05-01 12:00:00.123456+00", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                     '{"major": "Física", "n": [1, 2]}', '{alpha,"b c",NULL}', "{1,-2,NULL}", "3.25", "08:30:00",
                     "x" * 300]
ROW2: list[Value] = ["42", None, "-9223372036854775808", "-0.01", None, "Ana", None, "f", "infinity",
                     None, "1999-12-31 23:59:59", None, "1970-01-01 00:00:00+00", None, None, "{}", None,
                     "-1e+100", None, None]


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
    assert decoder.c_module is not None, "connectors.postgres._pgtuple is missing: run `pip install -e .` (needs gcc)"
    assert decoder.forced_python or decoder.name() == "c"
    with decoder.using(False):
        assert decoder.name() == "python"
        assert envelope._fast_row is envelope._py_fast_row and envelope._c_read_row is None
        assert snapshot._c_split_copy is None
    with decoder.using(True):
        assert decoder.name() == "c"
        assert envelope._fast_row is decoder.c_module.fast_row
        assert snapshot._c_split_copy is decoder.c_module.split_copy


MESSAGES = [
    Insert(1, ROW1), Insert(1, ROW2), Update(1, "O", ROW1, ROW2), Update(1, None, None, ROW1),
    Update(1, "O", ROW2, ROW2[:19] + [UNCHANGED]),            # unchanged TOAST, filled from the old row
    Update(1, None, None, ROW1[:19] + [UNCHANGED]),           # unchanged TOAST, placeholder
    Update(1, "K", ["42"] + [None] * 19, ROW1), Update(1, "O", ROW1, ["43"] + ROW1[1:]),   # 'K'; key change
    Delete(1, "O", ROW1), Delete(1, "K", ["42"] + [None] * 19), Insert(1, ["43"] + [None] * 19),
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
    fast_hits, _ = _both(lambda: [_builder(schemas).fast_change(meta, encode(m), _tx(), 1) is not None
                                  for m in MESSAGES])
    assert fast_hits == [True, True, True, True, False, False, False, False, True, False, True]


def test_decode_gives_the_same_objects_and_errors() -> None:
    payloads = [encode(m) for m in MESSAGES] + [encode(Insert(1, [b"\x00\xff", None, UNCHANGED, "é"]))]
    bad = [b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x09ab",     # value shorter than its length
           b"I\x00\x00\x00\x01N\x00\x02n",                        # fewer values than announced
           b"I\x00\x00\x00\x01N\x00\x01x",                        # unknown kind
           b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x01\xff",    # not UTF-8
           b"I\x00\x00\x00\x01N\x00"]
    c, py = _both(lambda: [_outcome(lambda p=p: decode(p)) for p in payloads + bad])
    assert c == py
    assert all(isinstance(r, tuple) and r[0] is DecodeError for r in c[len(payloads):])
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
    cases = [["0", "-0", "t"], ["007", "+5", "f"], ["9" * 18, "1", "true"], ["-" + "9" * 19, "1", ""],
             ["1_000", " 2", "t"], ["٣", "1", "t"], ["-", "1", "t"], ["", "1", "t"], ["1.5", "1", "t"]]
    for values in cases:
        buf = encode(Insert(1, values))
        c = decoder.c_module.fast_row(buf, 6, fields)  # type: ignore[union-attr]
        py = envelope._py_fast_row(buf, 6, fields)
        assert c == py and [type(v) for v in (c or ({}, 0))[0].values()] == \
            [type(v) for v in (py or ({}, 0))[0].values()], values


def test_c_dates_and_zoned_timestamps_match_python() -> None:
    """The two converters the C loop does itself, on their fast-path shapes and just outside them."""
    dates = ["2024-02-29", "2023-02-29", "2000-02-29", "1900-02-29", "0001-01-01", "0000-01-01", "9999-12-31",
             "1970-01-01", "1969-12-31", "2024-13-01", "2024-00-10", "2024-04-31", "2024-4-01", "20240101",
             "infinity", "-infinity", "0044-03-15 BC", "12345-01-01", "2024-01-01x", "2024-01-0١"]
    stamps = ["2024-05-01 12:00:00+00", "2024-05-01 12:00:00.5+00", "2024-05-01 12:00:00.1234567+00",
              "2024-05-01 12:00:00.123456+00", "1999-12-31 23:59:59.000001+00", "2024-05-01 12:00:00+02",
              "2024-05-01 12:00:00+05:30", "infinity", "-infinity", "0044-03-15 12:00:00+00 BC",
              "12345-05-01 12:00:00+00", "2024-05-01T12:00:00+00", "2024-05-01 12:00:0١+00",
              "2024-05-01 1.2:00:00.5+00", "2024-05-01 12:00:00." + "9" * 40 + "+00"]
    meta = _meta((("id", cv.INT8, -1), ("d", cv.DATE, -1), ("at", cv.TIMESTAMPTZ, -1)))
    for i in range(max(len(dates), len(stamps))):
        buf = encode(Insert(1, ["1", dates[i % len(dates)], stamps[i % len(stamps)]]))
        c = decoder.c_module.fast_row(buf, 6, meta._fields)  # type: ignore[union-attr]
        assert c == envelope._py_fast_row(buf, 6, meta._fields), (dates[i % len(dates)], stamps[i % len(stamps)])
    assert c is not None and decoder.c_module.fast_row(  # type: ignore[union-attr]
        encode(Insert(1, ["1", "2024-02-29", "2024-05-01 12:00:00.5+00"])), 6, meta._fields)[0] == \
        {"id": 1, "d": 19782, "at": "2024-05-01T12:00:00.500000Z"}


# --------------------------------------------------------------------------- property tests

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
_VALUE: dict[str, st.SearchStrategy[str]] = {
    "id": st.integers(1, 5).map(str),
    "small": st.integers(-32768, 32767).map(str),
    "n": st.integers(-2**31, 2**31 - 1).map(str),
    "amount": st.decimals(min_value=-10**8 + 1, max_value=10**8 - 1, places=2).map(lambda d: f"{d:.2f}"),
    "gpa": st.one_of(st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str), st.just("NaN")),
    "name": _text, "code": _text, "notes": _text,
    "active": st.sampled_from(["t", "f"]),
    "born": st.one_of(st.dates().map(date.isoformat), st.sampled_from(["infinity", "-infinity", "0044-03-15 BC"])),
    "seen": st.datetimes().map(lambda d: d.isoformat(sep=" ")),
    "seen_ms": st.datetimes().map(lambda d: d.isoformat(sep=" ")),
    "at": st.datetimes().map(lambda d: d.isoformat(sep=" ") + "+00"),
    "at3": st.datetimes().map(lambda d: d.isoformat(sep=" ") + "+00"),
    "uid": st.uuids().map(str),
    "doc": st.dictionaries(st.sampled_from(["a", "é", "k"]), st.integers()).map(
        lambda d: "{" + ", ".join(f'"{k}": {v}' for k, v in d.items()) + "}"),
    "tags": st.lists(st.from_regex(r"[a-z]{1,5}", fullmatch=True), max_size=4).map(lambda xs: "{" + ",".join(xs) + "}"),
    "nums": st.lists(st.one_of(st.integers(-2**31, 2**31 - 1).map(str), st.just("NULL")), max_size=4).map(
        lambda xs: "{" + ",".join(xs) + "}"),
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
            out.append(_outcome(lambda: _records(b, _META, encode(m), tx, 4100 + i)))
        out.append(b.transaction_event("t", tx, "END"))
        return out

    c, py = _both(run)
    assert c == py
    assert c == run(generic=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.integers(0, 3))
def test_random_tuple_bytes_decode_alike(tail: bytes, ncols: int) -> None:
    """Arbitrary (mostly malformed) TupleData: the C loops agree with Python or hand over to it."""
    cols = (("id", cv.INT8, -1), ("name", cv.TEXT, -1), ("born", cv.DATE, -1))[:max(ncols, 1)]
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
            res = _outcome(lambda: list(b.iter_read_values(_META, [r], tx, 77, "true")))
            out.append(res if isinstance(res, tuple) else [(k, v[:v.index(b'"ts_ms"')]) for k, v in res])
        return out

    c, py = _both(run)
    assert c == py


def test_memo_is_shared_and_bounded() -> None:
    """The C loop fills the same per-column memo as Python and clears it at the same size."""
    meta = _meta((("id", cv.INT8, -1), ("seen", cv.TIMESTAMP, -1)))   # a memoised converter the C loop calls
    memo = meta._fields[1][2]
    for i in range(decoder.MEMO_SIZE + 3):
        d = date.fromordinal(date(2000, 1, 1).toordinal() + i)
        buf = encode(Insert(1, [str(i), f"{d.isoformat()} 12:00:00"]))
        decoder.c_module.fast_row(buf, 6, meta._fields)  # type: ignore[union-attr]
    assert len(memo) == 3 and decoder.MEMO_SIZE == envelope._MEMO_SIZE


def test_copy_text_splits_alike() -> None:
    chunks = [b"1\tAna\t\n", "2\tZo\u00eb \u674e \U0001f393\t\t\n3\t\t\n".encode(), b"\n", b"1\\N\n",
              b"1\t\\N\tx\\ty\n", b"\xff\tx\n", b"no newline", b"a\n\n", b"\t\t\n"]
    for data in chunks:
        c, py = _both(lambda: _outcome(lambda: snapshot.split_copy_text(data)))
        assert c == py, data
    assert snapshot._py_split_copy_text(chunks[1]) == [["2", "Zoë 李 🎓", "", ""], ["3", "", ""]]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.one_of(_text, st.sampled_from(["\\N", "a\\tb", "\\\\"])), min_size=1, max_size=5),
                min_size=1, max_size=6), st.binary(max_size=3))
def test_random_copy_text_splits_alike(rows: list[list[str]], junk: bytes) -> None:
    data = "".join("\t".join(r) + "\n" for r in rows).encode()
    for d in (data, data + junk, junk + data):
        c, py = _both(lambda: _outcome(lambda: snapshot.split_copy_text(d)))
        assert c == py


def test_the_choice_is_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(decoder.log, "info", lambda event, **fields: seen.append((event, fields)))
    for use_c in (True, False):
        monkeypatch.setattr(decoder, "_logged", False)
        with decoder.using(use_c):
            decoder.log_choice()
            decoder.log_choice()
    assert seen == [("connector.decoder", {"decoder": "c", "reason": "active"}),
                    ("connector.decoder", {"decoder": "python", "reason": decoder.FORCE_PYTHON_ENV if decoder.forced_python
                                           else "switched off (decoder.set_active)"})]
