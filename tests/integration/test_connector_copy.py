"""The snapshot's COPY receive in C (``_pgtuple.copy_out``) and the Python loop on a real PostgreSQL 15.

The same chunks are read three ways — the C receive with the C decoder, the Python receive with the C
decoder, everything in Python — and must be equal, and equal to what a plain SELECT of the values as
text returns (an independent reading of escapes, NULLs and non-ASCII). A COPY that fails part-way, one
cancelled while the server sleeps mid-stream, and one whose backend is terminated must end with the
same error on both loops. While the C loop waits for rows, other Python threads run (the GIL is
released). tests/unit/test_connector_copy.py checks the C loop over a scripted libpq.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sevisflow.connectors.postgres import convert as cv
from sevisflow.connectors.postgres import decoder, envelope, snapshot
from sevisflow.connectors.postgres.envelope import TableMeta
from sevisflow.connectors.postgres.pgoutput import Value
from tests.helpers import PgHandle
from tests.integration.connector_support import execute
from tests.snapshot_support import RecordingProducer, snapshot_records, snapshot_task

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        decoder.c_module is None or not hasattr(decoder.c_module, "copy_out"), reason="C extension not built"
    ),
]

# values COPY text has to escape (tab, newline, CR, backslash, other control characters), a value that
# is the two characters of COPY's NULL marker, non-ASCII, empty strings, and values larger than libpq's buffer
AWKWARD = [
    "tab\there",
    "line\nbreak",
    "cr\rlf\r\n",
    "back\\slash\\",
    "\\N",
    "bell\x07 vt\x0b ff\x0c bs\x08 esc\x1b",
    "é ü ß — 漢字 🎉",
    "",
    " leading and trailing ",
]
ROWS = 3000


def _fill(dsn: str) -> None:
    execute(dsn, "CREATE TABLE t (id int PRIMARY KEY, a text, b text, big text)")
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO t VALUES (%s, %s, %s, %s)",
            [
                (
                    i,
                    AWKWARD[i % len(AWKWARD)] + str(i),
                    None if i % 7 == 0 else AWKWARD[(i * 5) % len(AWKWARD)],
                    ("ÿ\t" * 60_000 + str(i)) if i % 500 == 3 else (f"plain {i}" if i % 3 else None),
                )
                for i in range(ROWS)
            ],
        )


def _meta() -> TableMeta:
    return TableMeta(
        schema="public",
        table="t",
        topic="x.public.t",
        columns=("id", "a", "b", "big"),
        mappings=(cv.column_mapping(cv.INT4, -1), *(cv.column_mapping(cv.TEXT, -1) for _ in range(3))),
        key_columns=("id",),
    )


@contextmanager
def _receive(way: str) -> Iterator[list[int]]:
    """``way``: c (C receive, C decoder), py_receive (Python receive, C decoder), python (all Python).
    Yields the list the C receive's calls are counted in."""
    calls: list[int] = []
    assert decoder.c_module is not None
    real = decoder.c_module.copy_out

    def counted(ptr: int) -> tuple[int, bytes]:
        calls.append(ptr)
        return real(ptr)

    mp = pytest.MonkeyPatch()
    mp.setattr(decoder.c_module, "copy_out", counted)
    if way == "py_receive":
        mp.setattr(snapshot.replication, "c_libpq_unusable", lambda pgconn, c_name: "switched off by the test")
    try:
        with decoder.using(way != "python"):
            yield calls
    finally:
        mp.undo()


def _read_all(dsn: str, way: str, chunk_rows: int) -> tuple[list[Sequence[Sequence[Value]]], int]:
    with psycopg.connect(dsn, autocommit=True) as conn, _receive(way) as calls:
        return list(snapshot.read_chunks(conn, _meta(), ["int4"], None, chunk_rows)), len(calls)


def test_both_receive_loops_read_the_same_chunks(fresh_db: PgHandle) -> None:
    _fill(fresh_db.dsn)
    c, c_calls = _read_all(fresh_db.dsn, "c", 700)
    py_receive, py_calls = _read_all(fresh_db.dsn, "py_receive", 700)
    python, python_calls = _read_all(fresh_db.dsn, "python", 700)

    assert (c_calls, py_calls, python_calls) == (len(c), 0, 0)  # one copy_out per chunk, and only on "c"
    assert [len(ch) for ch in c] == [700, 700, 700, 700, 200]
    assert c == py_receive == python
    with psycopg.connect(fresh_db.dsn) as conn:
        selected = conn.execute("SELECT id::text, a, b, big FROM t ORDER BY t.id").fetchall()
    assert [tuple(row) for ch in c for row in ch] == selected
    assert max(len(str(row[3] or "")) for ch in c for row in ch) > 100_000


def test_an_empty_result_and_a_resume_past_the_end(fresh_db: PgHandle) -> None:
    execute(fresh_db.dsn, "CREATE TABLE t (id int PRIMARY KEY, a text, b text, big text)")
    for way in ("c", "py_receive", "python"):
        with psycopg.connect(fresh_db.dsn, autocommit=True) as conn, _receive(way) as calls:
            assert list(snapshot.read_chunks(conn, _meta(), ["int4"], None, 10)) == []
            assert snapshot._copy_rows(conn, b"COPY (SELECT 1 WHERE false) TO STDOUT") == []
            assert list(snapshot.read_chunks(conn, _meta(), ["int4"], ["5"], 10)) == []
            assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)
        assert len(calls) == (3 if way == "c" else 0)


def _outcome(dsn: str, way: str, query: bytes, signal: str | None) -> tuple[Any, ...]:
    """What ``_copy_rows`` of ``query`` ends with: its rows or the error, then the connection's state.

    ``signal`` (pg_cancel_backend, pg_terminate_backend) is sent 1 s in by another backend that was asked
    beforehand: a thread of this process could not be relied on, since the Python loop holds the GIL
    while it waits for a row."""
    conn = psycopg.connect(dsn, autocommit=True)  # closed, not left by a with: that would COMMIT after an error
    other = psycopg.connect(dsn, autocommit=True)
    try:
        if signal:
            other.pgconn.send_query(f"SELECT {signal}({conn.info.backend_pid}) FROM pg_sleep(1)".encode())
        with _receive(way) as calls:
            try:
                result: Any = snapshot._copy_rows(conn, query)
            except psycopg.Error as exc:
                result = (type(exc), str(exc))
        if signal:
            res = other.pgconn.get_result()
            assert res is not None and res.get_value(0, 0) == b"t", "the signal was not sent"
        state = (conn.pgconn.status, conn.pgconn.transaction_status)
        try:
            after: Any = conn.execute("SELECT 'next query'").fetchone()
        except psycopg.Error as exc:
            after = type(exc)
        return result, state, len(calls), after
    finally:
        conn.close()
        other.close()


# the server sends ~100 KB of rows (more than its 8 KB output buffer, so they reach the client) and then
# sleeps: the client is waiting for the next row inside the receive loop when the signal comes
SLOW = b"COPY (SELECT i, repeat('x', 100), CASE WHEN i = 1000 THEN pg_sleep(30)::text END FROM generate_series(1, 2000) i) TO STDOUT"


@pytest.mark.parametrize(
    "query, signal, error",
    [
        (b"COPY (SELECT i, 1 / (i - 1500) FROM generate_series(1, 2000) i) TO STDOUT", None, "division by zero"),
        (SLOW, "pg_cancel_backend", "canceling statement due to user request"),
        (SLOW, "pg_terminate_backend", "terminating connection due to administrator command"),
    ],
    ids=["fails-part-way", "cancelled", "terminated"],
)
def test_a_failing_copy_ends_alike(fresh_db: PgHandle, query: bytes, signal: str | None, error: str) -> None:
    c = _outcome(fresh_db.dsn, "c", query, signal)
    py = _outcome(fresh_db.dsn, "py_receive", query, signal)
    assert c[:2] == py[:2]
    assert c[2] == 1 and py[2] == 0
    kind, message = c[0]
    assert issubclass(kind, psycopg.OperationalError) and error in message
    # the failed COPY leaves nothing pending: a connection the server kept takes the next query
    expected_next = psycopg.OperationalError if signal == "pg_terminate_backend" else ("next query",)
    assert c[3] == py[3] == expected_next


def test_a_copy_abandoned_part_way_leaves_the_connection_usable(fresh_db: PgHandle, monkeypatch: Any) -> None:
    """An exception while rows are still coming (here raised after the first row) must not leave the
    COPY open on the connection: the rest is read and dropped, and the next query runs."""

    def first_row_then_fail(pgconn: Any) -> bytes:
        n, _ = pgconn.get_copy_data(0)
        assert n > 0
        raise RuntimeError("the receiver failed")

    monkeypatch.setattr(snapshot, "_receive_copy", first_row_then_fail)
    with psycopg.connect(fresh_db.dsn, autocommit=True) as conn:
        with pytest.raises(RuntimeError, match="the receiver failed"):
            snapshot._copy_rows(conn, b"COPY (SELECT i FROM generate_series(1, 50000) i) TO STDOUT")
        assert conn.execute("SELECT count(*) FROM generate_series(1, 3)").fetchone() == (3,)


def _count_while(stop: threading.Event, counted: list[int]) -> None:
    while not stop.is_set():
        counted[0] += 1


def test_other_threads_run_while_the_c_loop_waits(fresh_db: PgHandle) -> None:
    """The server sleeps 1.5 s mid-COPY: a Python thread counting meanwhile must keep counting at a good
    part of the rate it counts at while this thread sleeps (a loop holding the GIL would stop it dead)."""
    query = SLOW.replace(b"pg_sleep(30)", b"pg_sleep(1.5)")
    stop, counted = threading.Event(), [0]
    counter = threading.Thread(target=_count_while, args=(stop, counted))
    with psycopg.connect(fresh_db.dsn, autocommit=True) as conn, _receive("c") as calls:
        counter.start()
        try:
            n0, t0 = counted[0], time.monotonic()
            time.sleep(0.5)
            idle_rate = (counted[0] - n0) / (time.monotonic() - t0)
            n0, t0 = counted[0], time.monotonic()
            rows = snapshot._copy_rows(conn, query)
            copy_s = time.monotonic() - t0
            copy_rate = (counted[0] - n0) / copy_s
        finally:
            stop.set()
            counter.join()
    assert len(rows) == 2000 and len(calls) == 1 and copy_s >= 1.5
    assert copy_rate > 0.3 * idle_rate, (copy_rate, idle_rate)


def test_the_c_loop_writes_real_copy_text_as_the_python_path_does(
    fresh_db: PgHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The awkward table read by PostgreSQL's own COPY and produced by the snapshot's loop: with the C decoder
    the chunks stay COPY text and ``copy_batch`` writes their records (escapes, NULLs, non-ASCII and
    120 KB values included), some produce() calls refused; the records equal the all-Python path's."""
    _fill(fresh_db.dsn)
    monkeypatch.setattr(envelope.time, "time_ns", lambda: 1_700_000_000_000_000_123)
    written = [0]

    def counted(*args: Any) -> Any:
        out = decoder.c_module.copy_batch(*args)  # type: ignore[union-attr]
        written[0] += out[0] - args[2]  # the rows it produced (a refused one included: it is handed over)
        return out

    results = {}
    for way in ("c", "python"):
        with psycopg.connect(fresh_db.dsn, autocommit=True) as conn, _receive(way):
            if way == "c":
                monkeypatch.setattr(snapshot, "_c_copy_batch", counted)  # after _receive picked the C hooks
            chunks = list(snapshot.read_chunks(conn, _meta(), ["int4"], None, 700))
            assert all(isinstance(ch, snapshot.CopyChunk) for ch in chunks) == (way == "c")
            results[way] = snapshot_records(snapshot_task(tmp_path), _meta(), chunks, RecordingProducer({5, 701}))
    assert results["c"] == results["python"]
    records, rows = results["c"]
    assert rows == len(records) == ROWS
    assert written[0] >= ROWS - 2 * len(chunks)  # all but the rows held back for their marks
