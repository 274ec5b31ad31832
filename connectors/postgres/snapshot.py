"""Snapshot policy (one tiny class per ``snapshot.mode``) and the chunked COPY reader.

Policy. Each mode answers two questions from three facts — does a completed offset exist, was a
snapshot interrupted, does the slot exist — "snapshot data?" and "stream afterwards?":

=============  ===================================================  ===========
mode           snapshot when                                        stream
=============  ===================================================  ===========
initial        no completed offset, or a snapshot was interrupted   yes
initial_only   same as initial                                      no
never          never                                                yes
when_needed    as initial, and also when the slot is gone           yes
=============  ===================================================  ===========

``initial`` refuses to start when the offset says "done" but the slot is gone: streaming from a
new slot would silently miss the changes in between (use ``when_needed`` to re-snapshot).

Consistency. The snapshot reads inside ``REPEATABLE READ`` with ``SET TRANSACTION SNAPSHOT`` of the
snapshot exported when the slot was created, i.e. exactly the database state at the slot's
consistent point; streaming then starts at that point, so every change is either in the snapshot
or in the stream, never both, never neither. A snapshot that resumes after a crash (or one for a
table newly added to the include list) uses a snapshot exported by a *temporary* slot created
for the purpose; its rows carry that slot's consistent point as ``source.lsn``, while the stream
still replays everything after the main slot's position, so the final state per key is exact
(a consumer ordering by source position sees no regression).

Reading. ``COPY (SELECT cols FROM t WHERE (pk) > (last) ORDER BY pk LIMIT n) TO STDOUT`` in text
format: values stay in PostgreSQL's text form, the same form pgoutput streams, so one converter
serves both and a row gives identical JSON from snapshot and stream. Tables without a primary
key are read in one piece (they cannot resume mid-table). PostgreSQL sends one CopyData message per
row; the C decoder's ``copy_out`` receives them all with the GIL released (see :func:`_receive_copy`).
With the C decoder a chunk then stays that text (:class:`CopyChunk`), and its records are written from it
and produced in C (``copy_batch``); otherwise it is split into rows of text values.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import psycopg
from psycopg import pq, sql

from sevisflow.connectors.postgres import decoder as _decoder
from sevisflow.connectors.postgres import replication
from sevisflow.connectors.postgres.envelope import ReadEnvelope, TableMeta
from sevisflow.connectors.postgres.pgoutput import Value
from sevisflow.core.errors import ConfigError, TerminalError


@dataclass(frozen=True)
class SnapshotDecision:
    snapshot: bool
    stream: bool


class Snapshotter(ABC):
    """What a snapshot mode decides; pure, so every combination is unit-tested."""

    mode: str

    @abstractmethod
    def decide(self, offset_exists: bool, snapshot_in_progress: bool, slot_exists: bool) -> SnapshotDecision: ...

    def snapshot_new_tables(self) -> bool:
        """Whether a table newly added to the include list gets its own snapshot."""
        return False


class InitialSnapshotter(Snapshotter):
    mode = "initial"

    def decide(self, offset_exists: bool, snapshot_in_progress: bool, slot_exists: bool) -> SnapshotDecision:
        if offset_exists and not slot_exists and not snapshot_in_progress:
            raise TerminalError(
                "the connector's offset says the snapshot is done, but the replication slot is gone: changes "
                "since then cannot be streamed. Restart with snapshot.mode=when_needed to take a new snapshot"
            )
        return SnapshotDecision(snapshot=not offset_exists or snapshot_in_progress, stream=True)

    def snapshot_new_tables(self) -> bool:
        return True


class InitialOnlySnapshotter(InitialSnapshotter):
    mode = "initial_only"

    def decide(self, offset_exists: bool, snapshot_in_progress: bool, slot_exists: bool) -> SnapshotDecision:
        return SnapshotDecision(snapshot=not offset_exists or snapshot_in_progress, stream=False)


class NeverSnapshotter(Snapshotter):
    mode = "never"

    def decide(self, offset_exists: bool, snapshot_in_progress: bool, slot_exists: bool) -> SnapshotDecision:
        return SnapshotDecision(snapshot=False, stream=True)


class WhenNeededSnapshotter(Snapshotter):
    mode = "when_needed"

    def decide(self, offset_exists: bool, snapshot_in_progress: bool, slot_exists: bool) -> SnapshotDecision:
        return SnapshotDecision(snapshot=not offset_exists or snapshot_in_progress or not slot_exists, stream=True)

    def snapshot_new_tables(self) -> bool:
        return True


SNAPSHOTTERS: dict[str, type[Snapshotter]] = {
    c.mode: c for c in (InitialSnapshotter, InitialOnlySnapshotter, NeverSnapshotter, WhenNeededSnapshotter)
}


def snapshotter_for(mode: str) -> Snapshotter:
    try:
        return SNAPSHOTTERS[mode]()
    except KeyError:
        raise ConfigError(f"snapshot.mode={mode!r}; use one of {', '.join(SNAPSHOTTERS)}") from None


# --------------------------------------------------------------------------- COPY text reading

_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
_ESC_RE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))")


def _unescape_match(m: re.Match[str]) -> str:
    if m.group(1):
        return chr(int(m.group(1), 8))
    if m.group(2):
        return chr(int(m.group(2), 16))
    c = m.group(3)
    return _ESCAPES.get(c, c)


def parse_copy_line(line: str) -> list[Value]:
    """One line of COPY text output (without its newline) → text values, None for ``\\N``."""
    fields: list[Value] = line.split("\t")  # type: ignore[assignment]
    for i, f in enumerate(fields):
        if "\\" in f:  # type: ignore[operator]
            fields[i] = None if f == "\\N" else _ESC_RE.sub(_unescape_match, f)  # type: ignore[arg-type]
    return fields


def begin_snapshot_transaction(
    conn: psycopg.Connection[Any], snapshot_name: str, tables: Sequence[str] = (), lock_timeout_ms: int = 10_000
) -> int | None:
    """Open the REPEATABLE READ, READ ONLY transaction that sees exactly the exported snapshot.

    Returns the snapshot's xmin (used as source.txId of snapshot events).
    """
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
    if tables:
        # TRUNCATE and table rewrites are not MVCC-safe: hold ACCESS SHARE until the snapshot ends so
        # none can commit while we read (one committed between slot creation and here would still
        # empty the table for us; its 't' event then follows in the stream).
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms")))
        conn.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                sql.SQL(", ").join(sql.Identifier(*t.split(".", 1)) for t in tables)
            )
        )
    row = conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8").fetchone()
    return int(row[0]) if row and row[0] is not None else None


def chunk_query(
    meta: TableMeta, key_types: Sequence[str], after_key: Sequence[Value] | None, limit: int | None
) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in meta.columns)
    q = sql.SQL("SELECT {} FROM {}").format(cols, sql.Identifier(meta.schema, meta.table))
    if meta.key_columns:
        keys = sql.SQL(", ").join(sql.Identifier(k) for k in meta.key_columns)
        if after_key is not None:
            vals = sql.SQL(", ").join(
                sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(t)) for v, t in zip(after_key, key_types)
            )
            q = sql.SQL("{} WHERE ({}) > ({})").format(q, keys, vals)
        q = sql.SQL("{} ORDER BY {}").format(q, keys)
        if limit:
            q = sql.SQL("{} LIMIT {}").format(q, sql.Literal(limit))
    return sql.SQL("COPY ({}) TO STDOUT").format(q)


def read_chunks(
    conn: psycopg.Connection[Any],
    meta: TableMeta,
    key_types: Sequence[str],
    after_key: Sequence[Value] | None,
    chunk_rows: int,
) -> Iterator[Sequence[Sequence[Value]]]:
    """Chunks of rows (text values) of one table in primary-key order, starting after ``after_key``."""
    while True:
        limit = chunk_rows if meta.key_columns else None
        rows = _copy_rows(conn, chunk_query(meta, key_types, after_key, limit).as_bytes(conn))
        if rows:
            yield rows
        if not meta.key_columns or len(rows) < chunk_rows:
            return
        after_key = meta.key_text(rows[-1])


def _copy_rows(conn: psycopg.Connection[Any], query: bytes) -> Sequence[Sequence[Value]]:
    """Run a ``COPY … TO STDOUT`` on the libpq connection directly (no per-row Python generator).

    PostgreSQL sends one CopyData per row; we still split on newlines in case a server does not. However
    the COPY ends, every result of the query is read before this returns or raises, so the connection
    takes the next query (an error left unread would make it refuse with "another command is already in
    progress").
    """
    pgconn = conn.pgconn
    pgconn.send_query(query)
    try:
        res = pgconn.get_result()
        if res is None or res.status != pq.ExecStatus.COPY_OUT:
            msg = (res.error_message if res is not None else pgconn.error_message) or b"COPY did not start"
            raise psycopg.OperationalError(msg.decode(errors="replace"))
        data = _receive_copy(pgconn)
        res = pgconn.get_result()
        if res is not None and res.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.OperationalError((res.error_message or b"COPY failed").decode(errors="replace"))
    finally:
        _drain_results(pgconn)
    if not data:
        return []
    return copy_rows_of(data)


def _drain_results(pgconn: Any) -> None:
    """Read what is left of the current query's results; stop on a connection that is gone.

    A COPY left part-way (an exception while receiving) is read to its end first: libpq answers every
    ``get_result`` with COPY_OUT until then."""
    while pgconn.status == pq.ConnStatus.OK:
        res = pgconn.get_result()
        if res is None:
            return
        if res.status == pq.ExecStatus.COPY_OUT:
            while pgconn.get_copy_data(0)[0] > 0:
                pass


def _receive_copy(pgconn: Any) -> bytes:
    """Every row of the COPY OUT in progress on ``pgconn``, joined; returns at its end (get_result is next).

    With the C decoder and psycopg's bundled libpq, ``_pgtuple.copy_out`` runs the per-row loop over that
    libpq with the GIL released; otherwise :func:`_receive_copy_py` does. Both return the same bytes and
    raise the same errors."""
    reason = replication.c_libpq_unusable(pgconn, "copy_out")
    replication.log_c_choice("copy", reason)
    if reason:
        return _receive_copy_py(pgconn)
    assert _decoder.c_module is not None
    n, data = _decoder.c_module.copy_out(pgconn.pgconn_ptr)
    if n == -1:
        return data
    if n == -2:  # what psycopg's get_copy_data raises in the Python loop
        raise psycopg.OperationalError(f"receiving copy data failed: {pgconn.get_error_message()}")
    raise psycopg.OperationalError(pgconn.error_message.decode(errors="replace"))


def _receive_copy_py(pgconn: Any) -> bytes:
    """:func:`_receive_copy` in Python, one ``get_copy_data`` per row: the reference and the fallback."""
    parts: list[bytes] = []
    get = pgconn.get_copy_data
    while True:
        n, data = get(0)
        if n > 0:
            parts.append(bytes(data))
        elif n == -1:
            return b"".join(parts)
        else:
            raise psycopg.OperationalError(pgconn.error_message.decode(errors="replace"))


def split_copy_text(data: bytes) -> list[list[Value]]:
    """COPY text output (rows ending in newlines) → rows of text values, None for ``\\N``."""
    if _c_split_copy is not None:  # the C decoder: the same lists, made straight from the bytes
        rows = _c_split_copy(data)
        if rows is not None:
            return rows
    return _py_split_copy_text(data)


def _py_split_copy_text(data: bytes) -> list[list[Value]]:
    text = data.decode()
    lines = text[:-1].split("\n")
    if "\\" not in text:  # no escapes and no \N anywhere: every value is its text as is
        return [line.split("\t") for line in lines]  # type: ignore[misc]
    return [parse_copy_line(line) for line in lines]


def copy_rows_of(data: bytes) -> Sequence[Sequence[Value]]:
    """A COPY chunk's rows: kept as its text (:class:`CopyChunk`) with the C decoder, split otherwise."""
    starts = _c_copy_lines(data) if _c_copy_lines is not None else None
    if starts is None:
        return split_copy_text(data)
    return CopyChunk(data, starts, 0, len(starts) - 1)


class CopyChunk(Sequence[Sequence[Value]]):
    """Rows ``lo`` to ``hi - 1`` of a COPY chunk, kept as the text PostgreSQL sent (``starts``: where each
    line starts, the text's length last).

    The snapshot produces a chunk's rows with the C decoder's ``copy_batch`` (:meth:`produce_events`),
    which writes each record from the text without a str per value or a list per row. A row asked for on
    its own (the row held back for its mark, the resume key) or by iterating is split as
    :func:`split_copy_text` splits it; a slice is another view of the same text."""

    __slots__ = ("data", "hi", "lo", "starts")

    def __init__(self, data: bytes, starts: list[int], lo: int, hi: int) -> None:
        self.data, self.starts, self.lo, self.hi = data, starts, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    @overload
    def __getitem__(self, i: int) -> Sequence[Value]: ...
    @overload
    def __getitem__(self, i: slice) -> CopyChunk: ...
    def __getitem__(self, i: int | slice) -> Sequence[Value] | CopyChunk:
        n = self.hi - self.lo
        if isinstance(i, slice):
            lo, hi, step = i.indices(n)
            if step != 1:
                raise ValueError("a CopyChunk slice takes consecutive rows")
            return CopyChunk(self.data, self.starts, self.lo + lo, self.lo + max(lo, hi))
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("CopyChunk index out of range")
        return split_copy_text(self.data[self.starts[self.lo + i] : self.starts[self.lo + i + 1]])[0]

    def __iter__(self) -> Iterator[Sequence[Value]]:
        if self.hi == self.lo:
            return iter(())
        return iter(split_copy_text(self.data[self.starts[self.lo] : self.starts[self.hi]]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and [list(r) for r in self] == [list(r) for r in other]

    __hash__ = None  # type: ignore[assignment]

    def produce_events(
        self, start: int, envelope: ReadEnvelope, produce: Callable[..., Any], topic: str
    ) -> tuple[int, tuple[bytes | None, bytes] | None]:
        """Produce the read events of rows ``start`` on through ``produce(topic, value, key)``, in C. Returns
        where it stopped and what is pending: at the end, or before a row the Python path must take
        (pending None), or after a row ``produce`` had no room for (pending: its (key, value))."""
        assert _c_copy_batch is not None
        nxt, pending = _c_copy_batch(self.data, self.starts, self.lo + start, self.hi, *envelope.c_args, produce, topic)
        return nxt - self.lo, pending


# the C decoder's functions (connectors/postgres/decoder.py), or None: the Python code above
_c_split_copy = _decoder.pick(None, "split_copy")
_c_copy_lines = _decoder.pick(None, "copy_lines")
_c_copy_batch = _decoder.pick(None, "copy_batch")


def snapshot_marker(first: bool, first_in_table: bool, last_in_table: bool, last: bool) -> str:
    """``source.snapshot`` of a snapshot row, as Debezium 3 sets it (the snapshot's ends win over a table's)."""
    if first:
        return "first"
    if last:
        return "last"
    if first_in_table:
        return "first_in_data_collection"
    if last_in_table:
        return "last_in_data_collection"
    return "true"


Run = tuple[TableMeta, Sequence[Sequence[Value]], str]
"""Rows of one table to produce now, all with the same ``source.snapshot`` mark."""


class SnapshotMarks:
    """Debezium 3's ``source.snapshot`` marks over the snapshot's chunks: ``first`` / ``last`` on the
    snapshot's first / last row, ``first_in_data_collection`` / ``last_in_data_collection`` on each
    other table's first / last row, ``true`` between.

    Whether a row is the last of its table (or of the snapshot) is known only once the next row
    (or the end) is, so the last row of every chunk is held back until the next chunk or
    :meth:`finish`. Pure: the caller produces the runs and keeps the progress.
    """

    def __init__(self, first: bool, resumed_table: str | None = None) -> None:
        self._first = first  # the snapshot's first row is still to come
        self._resumed = resumed_table  # a table resumed mid-way: its first row was produced before
        self._table: str | None = None  # the table of the last chunk taken
        self._held: tuple[TableMeta, Sequence[Value], bool, bool] | None = None  # row, first overall, first in table

    @property
    def held_table(self) -> str | None:
        """The table whose row is held back (not finished on Kafka yet, whatever the reader says)."""
        return self._held[0].full_name if self._held is not None else None

    def runs(self, meta: TableMeta, chunk: Sequence[Sequence[Value]]) -> Iterator[Run]:
        """The runs to produce for a non-empty ``chunk`` of ``meta``'s rows (the row held back before it first);
        the chunk's last row is held back in turn."""
        name = meta.full_name
        table_first = name != self._table and name != self._resumed
        self._table = name
        if self._held is not None:
            hmeta, hrow, hfirst, htab = self._held
            yield hmeta, [hrow], snapshot_marker(hfirst, htab, hmeta.full_name != name, False)
        first, body = self._first, chunk[:-1]
        if body and (first or table_first):
            yield meta, body[:1], snapshot_marker(first, table_first, False, False)
            first = table_first = False
            body = body[1:]
        if body:
            yield meta, body, "true"
        self._held = (meta, chunk[-1], first, table_first)
        self._first = False

    def finish(self) -> Iterator[Run]:
        """The held-back row: the snapshot's last."""
        if self._held is not None:
            hmeta, hrow, hfirst, htab = self._held
            self._held = None
            yield hmeta, [hrow], snapshot_marker(hfirst, htab, True, True)
