"""The replication read loop in C (``_pgtuple.receive``) against the Python one — no services.

Both loops run over the same scripted libpq: the C loop through a fake PQgetCopyData / PQfreemem
(ctypes callbacks handed to ``set_libpq``), the Python loop through a fake psycopg PGconn returning
the same messages. ``read_batch`` must return the same items and leave the same received_lsn and
reply_requested, and the C loop must free every buffer it was given exactly once. The real libpq is
handed back to the C module after each test. tests/integration/test_connector_receive.py compares
the two loops on a real PostgreSQL.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevisflow.connectors.postgres import decoder, replication
from sevisflow.connectors.postgres.replication import KEEPALIVE, ReplicationConnection
from sevisflow.core.errors import TransientError
from tests.fake_libpq import FakeLibpq, Script

pytestmark = pytest.mark.skipif(
    decoder.c_module is None or not hasattr(decoder.c_module, "receive"), reason="C extension not built"
)


def xlog(start: int, end: int, payload: bytes, send_time: int = 7) -> bytes:
    return b"w" + struct.pack(">QQq", start, end, send_time) + payload


def keepalive(end: int, reply: int = 0, send_time: int = 9) -> bytes:
    return b"k" + struct.pack(">QqB", end, send_time, reply)


class FakePGconn:
    """What read_batch and _end_of_copy use of psycopg's PGconn, over the same script (the Python loop)."""

    pgconn_ptr = 0x5EED

    def __init__(self, script: Script) -> None:
        self.script = list(script)

    def get_copy_data(self, async_: int) -> tuple[int, memoryview]:
        step = self.script.pop(0) if self.script else 0
        if isinstance(step, int):
            if step == -2:
                raise psycopg.OperationalError(f"receiving copy data failed: {self.get_error_message()}")
            return step, memoryview(b"")
        return len(step), memoryview(step)

    def get_error_message(self) -> str:
        return "server closed the connection unexpectedly"

    error_message = b"server closed the connection unexpectedly"

    def get_result(self) -> Any:
        class Result:
            error_message = b"ERROR: replication slot dropped"

        return Result()

    def consume_input(self) -> None:  # pragma: no cover - the socket never has data
        raise AssertionError("consume_input without data")


@pytest.fixture(autouse=True)
def real_libpq_afterwards() -> Iterator[None]:
    yield
    replication._hand_libpq_to_c()  # the fakes' addresses must not outlive the test


@pytest.fixture
def quiet_socket() -> Iterator[socket.socket]:
    """A socket with nothing to read: when libpq has no complete message, read_batch returns."""
    a, b = socket.socketpair()
    yield a
    a.close()
    b.close()


def _connection(sock: socket.socket, pgconn: Any, c_loop: bool) -> ReplicationConnection:
    conn = ReplicationConnection.__new__(ReplicationConnection)  # no server: the fakes stand in for it
    conn.pgconn, conn.sock, conn.streaming = pgconn, sock.fileno(), True
    conn.received_lsn, conn.reply_requested = 0, False
    assert decoder.c_module is not None
    conn._receive = decoder.c_module.receive if c_loop else None
    return conn


def _drain(script: Script, sock: socket.socket, c_loop: bool, max_items: int, calls: int) -> tuple[Any, ...]:
    """``calls`` read_batch calls over the script; their items (or the exception), received_lsn, reply_requested."""
    fake = FakeLibpq(script, FakePGconn.pgconn_ptr, 1)
    fake.install()
    conn = _connection(sock, FakePGconn(script), c_loop)
    batches: list[Any] = []
    try:
        for _ in range(calls):
            batches.append(conn.read_batch(max_items, 0.0))
    except Exception as exc:  # noqa: BLE001 - the error is part of what must match
        batches.append((type(exc), str(exc)))
    if c_loop:
        assert not fake.live and fake.freed == fake.handed, "the C loop must free every buffer exactly once"
    return batches, conn.received_lsn, conn.reply_requested, conn.streaming


def _both(script: Script, sock: socket.socket, max_items: int = 4000, calls: int = 1) -> tuple[Any, ...]:
    c = _drain(script, sock, True, max_items, calls)
    py = _drain(script, sock, False, max_items, calls)
    assert c == py
    return c


def test_data_and_keepalives_are_read_alike(quiet_socket: socket.socket) -> None:
    script: Script = [
        xlog(100, 200, b"B\x00\x01"),
        xlog(200, 150, b""),  # a WAL end below the highest seen does not lower received_lsn
        keepalive(300),
        b"x-unknown kind: skipped",
        xlog(2**64 - 1, 2**63, b"I" * 70_000),  # unsigned 64-bit positions, a payload above libpq's buffer
        keepalive(400, reply=1),
        0,
        xlog(500, 600, b"C"),
    ]
    batches, received, reply, streaming = _both(script, quiet_socket, calls=2)
    assert batches == [
        [(100, b"B\x00\x01"), (200, b""), (300, KEEPALIVE), (2**64 - 1, b"I" * 70_000), (400, KEEPALIVE)],
        [(500, b"C")],
    ]
    assert received == 2**63 and reply is True and streaming is True
    assert all(type(lsn) is int and (p is None or type(p) is bytes) for b in batches for lsn, p in b)


def test_a_full_batch_leaves_the_rest_for_the_next_call(quiet_socket: socket.socket) -> None:
    script: Script = [*(xlog(i, i + 1, bytes([i])) for i in range(10)), keepalive(99, reply=2)]
    batches, received, reply, _ = _both(script, quiet_socket, max_items=4, calls=4)
    assert [len(b) for b in batches] == [4, 4, 3, 0]
    assert received == 99 and reply is True


@pytest.mark.parametrize(
    "end, error",
    [
        (-1, (TransientError, "the server ended the replication stream ERROR: replication slot dropped")),
        (-2, (psycopg.OperationalError, "receiving copy data failed: server closed the connection unexpectedly")),
    ],
)
def test_the_end_of_the_stream_raises_alike(quiet_socket: socket.socket, end: int, error: tuple[Any, str]) -> None:
    batches, received, _, _ = _both([xlog(1, 5, b"B"), keepalive(8), end], quiet_socket)
    assert batches == [error] and received == 8


@pytest.mark.parametrize("short", [b"w" + bytes(23), b"k" + bytes(16)])
def test_a_short_message_raises_in_both(quiet_socket: socket.socket, short: bytes) -> None:
    c = _drain([short], quiet_socket, True, 10, 1)
    py = _drain([short], quiet_socket, False, 10, 1)
    assert c[0][0][0] is ValueError and issubclass(py[0][0][0], struct.error)


messages = st.one_of(
    st.builds(xlog, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=64)),
    st.builds(keepalive, st.integers(0, 2**64 - 1), st.integers(0, 255)),
    st.binary(min_size=1, max_size=8).filter(lambda m: m[0] not in b"wk"),
    st.just(0),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(messages, max_size=40), max_items=st.integers(1, 12))
def test_random_streams_are_read_alike(quiet_socket: socket.socket, script: Script, max_items: int) -> None:
    _both(script, quiet_socket, max_items=max_items, calls=6)


def test_the_c_loop_is_chosen_only_when_everything_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    class Conn:
        pgconn_ptr = None
        backend_pid = 1

    monkeypatch.setattr(replication, "_libpq_reason", None)
    with decoder.using(False):
        assert replication._c_receive_unusable(Conn()) == "the decoder is python"
    assert replication._c_receive_unusable(Conn()) == "psycopg's connection has no pgconn_ptr"
    monkeypatch.setattr(replication, "_libpq_reason", None)
    monkeypatch.setattr(replication, "_loaded_libpq", lambda: None)
    assert replication._c_receive_unusable(Conn()) == "psycopg's libpq not found among the loaded libraries"
    monkeypatch.setattr(replication, "_libpq_reason", None)
    monkeypatch.setattr(replication.pq, "__impl__", "python")
    assert replication._c_receive_unusable(Conn()).startswith("psycopg implementation 'python'")
    monkeypatch.setattr(replication, "_libpq_reason", None)
    monkeypatch.setattr(replication.decoder, "c_module", None)
    assert replication._c_receive_unusable(Conn()) == "extension built without receive"


def test_each_loops_choice_is_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(replication.log, "info", lambda event, **fields: seen.append((event, fields)))
    monkeypatch.setattr(replication, "_choices_logged", set())
    replication.log_c_choice("copy", "the decoder is python")
    replication.log_c_choice("copy", "")
    replication.log_c_choice("receive", "")
    assert seen == [
        ("connector.copy", {"copy": "python", "reason": "the decoder is python"}),
        ("connector.receive", {"receive": "c", "reason": "active"}),
    ]


def test_a_closed_connection_raises_psycopgs_error_without_entering_c(quiet_socket: socket.socket) -> None:
    """A closed PGconn has no pointer (psycopg's PQgetCopyData then fails with -2): the C loop must not
    be handed a freed PGconn, and the error is the one the Python loop raises."""
    fake = FakeLibpq([xlog(1, 2, b"B")], FakePGconn.pgconn_ptr, 1)
    fake.install()
    pgconn = FakePGconn([-2])
    pgconn.pgconn_ptr = None  # type: ignore[assignment]
    conn = _connection(quiet_socket, pgconn, c_loop=True)
    with pytest.raises(psycopg.OperationalError, match="receiving copy data failed"):
        conn.read_batch(10, 0.0)
    assert fake.handed == 0
