"""A snapshot chunk kept as its COPY text (``snapshot.CopyChunk``) and produced by the C decoder's
``copy_batch``: the same records, in the same order, as the Python path that splits every row first.

The producer here is a recording stand-in that refuses some records with BufferError, as librdkafka
does when its queue is full (the snapshot then waits and hands the record over again); the real
producer and PostgreSQL's COPY are exercised by tests/integration/test_connector_snapshot*.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevisflow.connectors.postgres import convert as cv
from sevisflow.connectors.postgres import decoder, envelope, snapshot
from sevisflow.connectors.postgres.envelope import TableMeta, TxContext
from sevisflow.connectors.postgres.pgoutput import Value
from sevisflow.connectors.postgres.snapshot import CopyChunk
from testkit.connector import table_meta
from tests.snapshot_support import RecordingProducer, copy_text, snapshot_records, snapshot_task

pytestmark = pytest.mark.skipif(
    decoder.c_module is None or not hasattr(decoder.c_module, "copy_batch"), reason="C extension not built"
)

COLUMNS: tuple[tuple[str, int, int], ...] = (
    ("id", cv.INT8, -1),
    ("name", cv.TEXT, -1),
    ("born", cv.DATE, -1),
    ("active", cv.BOOL, -1),
    ("at", cv.TIMESTAMPTZ, -1),
    ("credits", cv.INT4, -1),
    ("gpa", cv.NUMERIC, -1),
    ("notes", cv.TEXT, -1),
)


def _meta() -> TableMeta:
    return table_meta(COLUMNS)


_awkward_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["tab\there", "line\nbreak", "back\\slash", "\\N", "é ü 漢字 🎉", "", 'quote"', "\x01\x7f"]),
)
_VALUE: dict[str, Any] = {
    "id": st.integers(-(2**62), 2**62).map(str),
    "name": _awkward_text,
    "born": st.one_of(st.dates().map(lambda d: d.isoformat()), st.just("infinity")),
    "active": st.sampled_from(["t", "f"]),
    "at": st.sampled_from(["2024-05-01 12:00:00+00", "2024-05-01 12:00:00.123456+00", "1970-01-01 00:00:00+00"]),
    "credits": st.integers(-(2**31), 2**31 - 1).map(str),
    "gpa": st.sampled_from(["3.875", "4", "-0.01", "NaN"]),
    "notes": _awkward_text,
}


@st.composite
def _row(draw: st.DrawFn) -> list[Value]:
    row: list[Value] = []
    for name, _, _ in COLUMNS:
        if name != "id" and draw(st.integers(0, 6)) == 0:
            row.append(None)
        else:
            row.append(draw(_VALUE[name]))
    return row


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope.time, "time_ns", lambda: 1_700_000_000_000_000_123)


def _counted_batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record (start, where it stopped) of every copy_batch call."""
    real, seen = snapshot._c_copy_batch, []
    assert real is not None

    def counted(*args: Any) -> Any:
        out = real(*args)
        seen.append((args[2], out[0]))
        return out

    monkeypatch.setattr(snapshot, "_c_copy_batch", counted)
    return seen


def _outcome(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - compared, type and message
        return (type(exc), str(exc))


def test_a_chunk_kept_as_text_has_the_rows_the_split_gives() -> None:
    rows = [["1", "Ana", None], ["2", "tab\there", "back\\slash"], ["3", "", "é 漢字"]]
    data = copy_text(rows)
    with decoder.using(True):
        chunk = snapshot.copy_rows_of(data)
        assert isinstance(chunk, CopyChunk)
        assert len(chunk) == 3 and chunk == rows and list(chunk) == rows
        assert chunk[0] == rows[0] and chunk[-1] == rows[-1]
        assert chunk[1:] == rows[1:] and chunk[:-1] == rows[:-1] and chunk[1:1] == [] and list(chunk[3:]) == []
        assert chunk[:-1][1:] == rows[1:2] and chunk[1:][-1] == rows[2]
        with pytest.raises(IndexError):
            chunk[3]
    with decoder.using(False):
        assert snapshot.copy_rows_of(data) == rows and not isinstance(snapshot.copy_rows_of(data), CopyChunk)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.lists(_row(), min_size=1, max_size=6), min_size=1, max_size=4),
    st.sets(st.integers(1, 40), max_size=6),
    st.booleans(),
)
def test_the_c_loop_produces_what_the_python_loop_produces(
    tmp_path: Path, fixed_clock: None, chunks: list[list[list[Value]]], refuse: set[int], octal: bool
) -> None:
    """Random rows with NULLs, escapes and non-ASCII, in chunks, some produce() calls refused: the records
    (keys, values, marks, order) equal the Python path's, and every row is counted once. With ``octal``
    one field is written as an octal escape, which the C loop leaves to the Python path."""
    meta = _meta()
    texts = [copy_text(rows) for rows in chunks]
    if octal:
        texts[0] = texts[0].replace(b"\t", b"\t\\101", 1)  # "A" + the second column, for the Python path
    with decoder.using(False):
        expected = _outcome(
            lambda: snapshot_records(
                snapshot_task(tmp_path), meta, [snapshot.copy_rows_of(t) for t in texts], RecordingProducer()
            )
        )
    with decoder.using(True):
        producer = RecordingProducer(refuse)
        got = _outcome(
            lambda: snapshot_records(snapshot_task(tmp_path), meta, [snapshot.copy_rows_of(t) for t in texts], producer)
        )
    assert got == expected
    if not isinstance(expected, tuple) or not isinstance(expected[0], type):
        records, counted = got
        assert counted == sum(len(rows) for rows in chunks) == len(records)
        assert producer.polls == len(refuse & set(range(1, producer.calls + 1)))  # a wait per refusal


def test_the_c_loop_takes_the_plain_rows_and_leaves_the_rest(
    tmp_path: Path, fixed_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = _meta()
    rows: list[list[Value]] = [
        ["1", "Ana", "2001-02-03", "t", "2024-05-01 12:00:00+00", "120", "3.875", None],
        ["2", "tab\there", None, "f", None, "-5", None, "é 漢字 🎉"],
        ["3", "x", "2001-02-03", "t", None, "7", None, None],
        ["4", "y", "2001-02-03", "t", None, "8", None, None],
        ["5", "z", "2001-02-03", "t", None, "9", None, None],
    ]
    text = copy_text(rows)
    lines = text.split(b"\n")
    lines[2] = lines[2].replace(b"\tx\t", b"\t\\170\t")  # "x" as an octal escape: the Python path's
    lines[3] = lines[3] + b"\textra"  # a field too many: the Python path's (it drops the extra value)
    text = b"\n".join(lines)
    with decoder.using(False):
        expected = snapshot_records(snapshot_task(tmp_path), meta, [snapshot.copy_rows_of(text)], RecordingProducer())
    with decoder.using(True):
        seen = _counted_batches(monkeypatch)
        got = snapshot_records(snapshot_task(tmp_path), meta, [snapshot.copy_rows_of(text)], RecordingProducer())
    assert got == expected and got[1] == 5
    # (first row index, where it stopped) per call: the "first" row; the body from row 1, stopping at the
    # octal row (2); after it, stopping at once at the row with a field too many (3). The held-back last row
    # is a single split row: the Python path's.
    assert seen == [(0, 1), (1, 2), (3, 3)]


def test_a_value_its_converter_refuses_raises_the_python_error(tmp_path: Path, fixed_clock: None) -> None:
    meta = _meta()
    rows: list[list[Value]] = [
        ["1", "Ana", "2001-02-03", "t", None, "120", None, None],
        ["2", "Bo", "not a date", "t", None, "120", None, None],
        ["3", "Cy", "2001-02-03", "t", None, "120", None, None],
    ]
    text = copy_text(rows)
    with decoder.using(False):
        expected = _outcome(
            lambda: snapshot_records(snapshot_task(tmp_path), meta, [snapshot.copy_rows_of(text)], RecordingProducer())
        )
    with decoder.using(True):
        producer = RecordingProducer()
        got = _outcome(lambda: snapshot_records(snapshot_task(tmp_path), meta, [snapshot.copy_rows_of(text)], producer))
    assert got == expected and got[0] is ValueError
    assert [r[1] for r in producer.records] == [b'{"id":1}']  # the row before it went out, as in Python


def test_every_refused_produce_is_handed_over_again_in_order(tmp_path: Path, fixed_clock: None) -> None:
    meta = _meta()
    rows = [[str(i), f"n{i}", None, "t", None, "1", None, None] for i in range(1, 21)]
    with decoder.using(True):
        producer = RecordingProducer(refuse={2, 3, 7, 21, 22})
        records, counted = snapshot_records(
            snapshot_task(tmp_path), meta, [snapshot.copy_rows_of(copy_text(rows))], producer
        )
    assert counted == 20 and producer.polls == 5
    assert [r[1] for r in records] == [b'{"id":%d}' % i for i in range(1, 21)]


def test_copy_lines_marks_every_line_and_refuses_text_without_a_final_newline() -> None:
    assert decoder.c_module is not None
    lines = decoder.c_module.copy_lines
    assert lines(b"a\tb\n\nc\n") == [0, 4, 5, 7]
    assert lines(b"") is None and lines(b"a\tb") is None and lines("a\n") is None


def _rows_iter(chunk: CopyChunk) -> Iterator[list[Value]]:
    for row in chunk:
        yield list(row)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_awkward_text.map(str), min_size=1, max_size=4), min_size=1, max_size=6), st.data())
def test_a_random_chunk_slices_like_a_list(rows: list[list[str]], data: st.DataObject) -> None:
    text = copy_text(rows)  # type: ignore[arg-type]
    with decoder.using(True):
        chunk = snapshot.copy_rows_of(text)
    assert isinstance(chunk, CopyChunk)
    a = data.draw(st.integers(-8, 8))
    b = data.draw(st.integers(-8, 8))
    assert list(_rows_iter(chunk[a:b])) == rows[a:b]
    assert len(chunk[a:b]) == len(rows[a:b])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.lists(
            st.one_of(st.binary(max_size=6), st.sampled_from([b"\\N", b"\\", b"\\x4", b"\\1", b"\xff", b"12"])),
            min_size=1,
            max_size=10,
        ),
        min_size=1,
        max_size=5,
    )
)
def test_hostile_copy_text_gives_the_python_path_s_records_or_its_error(
    tmp_path: Path, fixed_clock: None, lines: list[list[bytes]]
) -> None:
    """Bytes no PostgreSQL would send — wrong field counts, lone backslashes, octal and hex escapes, invalid
    UTF-8, stray carriage returns: the C loop never crashes. For valid UTF-8 it hands the producer exactly
    what the Python path hands it, and ends the same way (done, or the same error after the same rows). For
    invalid UTF-8 both fail the snapshot: the Python path decodes the whole chunk first and produces nothing
    of it; the C loop fails at the first row it cannot read, after the rows before it (which a resumed
    snapshot sends again, as after any row whose value cannot be converted)."""
    text = b"".join(b"\t".join(fields).replace(b"\n", b"") + b"\n" for fields in lines)
    meta = _meta()
    runs = {}
    for use_c in (False, True):
        producer = RecordingProducer()
        with decoder.using(use_c):
            outcome = _outcome(
                lambda p=producer: snapshot_records(snapshot_task(tmp_path), meta, [snapshot.copy_rows_of(text)], p)
            )
        runs[use_c] = (outcome, producer.records)
    (expected, py_records), (got, c_records) = runs[False], runs[True]
    try:
        text.decode()
    except UnicodeDecodeError:
        assert expected[0] is UnicodeDecodeError and py_records == []
        assert isinstance(got[0], type), got  # failed too
        assert len(c_records) < len(lines)
    else:
        assert got == expected and c_records == py_records


def test_copy_batch_refuses_line_offsets_that_do_not_fit_the_text() -> None:
    """Offsets past the end, backwards or not at a line's end: the C loop stops there (the Python path
    then reads the row) instead of reading outside the text."""
    assert decoder.c_module is not None
    meta = _meta()
    env = envelope.EventBuilder(name="sis", db="d", version="v").read_envelope(
        meta, TxContext(xid=9, commit_lsn=None, ts_us=1000, snapshot="true"), 77, "true"
    )
    assert env is not None
    data = copy_text([["1", "a", None, "t", None, "1", None, None]])
    producer = RecordingProducer()
    for starts in ([0, len(data) + 5], [5, 2], [0, len(data) - 1], [-3, len(data)]):
        out = decoder.c_module.copy_batch(data, starts, 0, 1, *env.c_args, producer.produce, meta.topic)
        assert out == (0, None), starts
    assert producer.records == []
    assert decoder.c_module.copy_batch(data, [0, len(data)], 0, 1, *env.c_args, producer.produce, meta.topic) == (
        1,
        None,
    )
    assert len(producer.records) == 1


def test_a_callback_shrinking_the_offsets_stops_the_loop_without_reading_past_them() -> None:
    assert decoder.c_module is not None
    meta = _meta()
    env = envelope.EventBuilder(name="sis", db="d", version="v").read_envelope(
        meta, TxContext(xid=9, commit_lsn=None, ts_us=1000, snapshot="true"), 77, "true"
    )
    assert env is not None
    data = copy_text([[str(i), "a", None, "t", None, "1", None, None] for i in range(1, 6)])
    starts = decoder.c_module.copy_lines(data)
    produced: list[bytes | None] = []

    def produce(topic: str, value: bytes, key: bytes | None) -> None:
        produced.append(key)
        del starts[2:]  # a hostile callback: where row 1 ends and every later offset are gone

    assert decoder.c_module.copy_batch(data, starts, 0, 5, *env.c_args, produce, meta.topic) == (1, None)
    assert produced == [b'{"id":1}']
