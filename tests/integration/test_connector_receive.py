"""The replication read loop in C (``_pgtuple.receive``) and the Python one on a real PostgreSQL 15.

Two copies of one slot (``pg_copy_logical_replication_slot``) hold the identical WAL; one is drained
with each loop and the items must match one for one: every XLogData payload and position and the
keepalives between them (the one the walsender sends as it starts). After the last change, when the
keepalives arrive depends on timing (the walsender's "caught up" one may come before or after the one
asked for with a reply request, or both in one), and their WAL position on other activity on the
server, so that tail is only required to hold a keepalive at or past the workload's end. tests/unit/test_connector_receive.py compares the loops on scripted streams.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from sevisflow.connectors.postgres import decoder
from sevisflow.connectors.postgres.replication import KEEPALIVE, ReplicationConnection
from tests.helpers import PgHandle
from tests.integration.connector_support import current_lsn, execute

pytestmark = pytest.mark.integration

TRANSACTIONS = 60


def _workload(dsn: str) -> None:
    """Small and large transactions, INSERT / UPDATE / DELETE, and values larger than libpq's 16 KB buffer."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in range(TRANSACTIONS):
            with conn.transaction():
                for j in range(1 + t % 7 * 20):
                    i = t * 1000 + j
                    conn.execute("INSERT INTO t VALUES (%s, %s)", (i, f"v{i}" * (1 + j % 5)))
                    if j % 3 == 0:
                        conn.execute("UPDATE t SET v = v || 'u' WHERE id = %s", (i,))
                    if j % 4 == 1:
                        conn.execute("DELETE FROM t WHERE id = %s", (i,))
                if t % 10 == 0:
                    conn.execute("INSERT INTO t VALUES (%s, md5(%s::text) || repeat('x', 90000))", (-t - 1, t))


def _drain(dsn: str, slot: str, publication: str, use_c: bool) -> tuple[str, list[tuple[int, bytes | None]]]:
    """Every item up to the workload's last Commit, then the keepalive the server sends when asked for a reply."""
    with decoder.using(use_c):
        repl = ReplicationConnection(dsn)
        try:
            repl.start(slot, publication, 0)
            items: list[tuple[int, bytes | None]] = []
            commits, deadline = 0, time.monotonic() + 60
            while commits < TRANSACTIONS:
                assert time.monotonic() < deadline, f"drained only {commits} of {TRANSACTIONS} commits"
                batch = repl.read_batch(50, 0.5)  # small batches: many returns to Python mid-stream
                items += batch
                commits += sum(1 for _, p in batch if p is not None and p[:1] == b"C")
            mark = len(items)
            repl.send_status(0, reply=True)  # 0 confirms nothing; the server answers with a keepalive
            while not any(p is KEEPALIVE for _, p in items[mark:]):
                assert time.monotonic() < deadline, "no keepalive after the reply request"
                items += repl.read_batch(50, 0.5)
            first = next(i for i in range(mark, len(items)) if items[i][1] is KEEPALIVE)
            return repl.receive_path, items[: first + 1]
        finally:
            repl.close()


@pytest.mark.skipif(decoder.c_module is None, reason="C extension not built")
def test_both_read_loops_return_the_same_items(fresh_db: PgHandle, unique: str) -> None:
    dsn, slot, publication = fresh_db.dsn, f"recv_{unique}", f"recv_pub_{unique}"
    execute(
        dsn,
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "ALTER TABLE t REPLICA IDENTITY FULL",
        f"CREATE PUBLICATION {publication} FOR TABLE t",
        f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')",
    )
    _workload(dsn)
    end = current_lsn(dsn)
    for copy in ("c", "py"):
        execute(dsn, f"SELECT pg_copy_logical_replication_slot('{slot}', '{slot}_{copy}')")

    path_c, c_items = _drain(dsn, f"{slot}_c", publication, use_c=True)
    path_py, py_items = _drain(dsn, f"{slot}_py", publication, use_c=False)

    assert (path_c, path_py) == ("c", "python")
    stream_c, tail_c = _split_at_last_change(c_items)
    stream_py, tail_py = _split_at_last_change(py_items)
    assert stream_c == stream_py
    data = [p for _, p in stream_c if p is not None]
    assert sum(p[:1] == b"C" for p in data) == TRANSACTIONS and max(len(p) for p in data) > 90_000
    assert any(p is KEEPALIVE for _, p in stream_c)  # keepalives in the stream are compared too
    for tail in (tail_c, tail_py):
        assert tail and all(p is KEEPALIVE and lsn >= end for lsn, p in tail)
    assert all(type(lsn) is int and (p is None or type(p) is bytes) for lsn, p in c_items)


def _split_at_last_change(
    items: list[tuple[int, bytes | None]],
) -> tuple[list[tuple[int, bytes | None]], list[tuple[int, bytes | None]]]:
    last = max(i for i, (_, p) in enumerate(items) if p is not None)
    return items[: last + 1], items[last + 1 :]


def test_without_the_c_loop_the_python_one_streams(fresh_db: PgHandle, unique: str) -> None:
    """The fallback: with the C extension off (as when it is not built), read_batch runs the Python loop."""
    dsn, slot, publication = fresh_db.dsn, f"recv_{unique}", f"recv_pub_{unique}"
    execute(
        dsn,
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
        f"CREATE PUBLICATION {publication} FOR TABLE t",
        f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')",
    )
    execute(dsn, "INSERT INTO t VALUES (1, 'one')")
    with decoder.using(False):
        repl = ReplicationConnection(dsn)
        try:
            repl.start(slot, publication, 0)
            assert repl.receive_path == "python" and repl._receive is None
            payloads: list[bytes] = []
            deadline = time.monotonic() + 30
            while not any(p[:1] == b"C" for p in payloads):
                assert time.monotonic() < deadline, "no Commit"
                payloads += [p for _, p in repl.read_batch(100, 0.5) if p is not None]
        finally:
            repl.close()
    assert [p[:1] for p in payloads] == [b"B", b"R", b"I", b"C"]
