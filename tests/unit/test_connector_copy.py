"""The snapshot's COPY receive in C (``_pgtuple.copy_out``) against the Python loop — no services.

The C loop runs over a scripted PQgetCopyData / PQfreemem (ctypes callbacks handed to ``set_libpq``),
the Python loop over a fake psycopg PGconn returning the same script. ``_receive_copy`` must return the
same bytes or raise the same error either way, and the C loop must free every row buffer exactly once.
The real libpq is handed back to the C module after each test. tests/integration/test_connector_copy.py
compares the two loops on a real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sevisflow.connectors.postgres import decoder, replication, snapshot
from tests.fake_libpq import FakeLibpq, Script

pytestmark = pytest.mark.skipif(
    decoder.c_module is None or not hasattr(decoder.c_module, "copy_out"), reason="C extension not built"
)

PGCONN_PTR = 0xC0FFEE
ERROR = "server closed the connection unexpectedly"


class FakePGconn:
    """What _receive_copy uses of psycopg's PGconn, over the same script (the Python loop)."""

    pgconn_ptr = PGCONN_PTR
    error_message = ERROR.encode()

    def __init__(self, script: Script) -> None:
        self.script = list(script)

    def get_copy_data(self, async_: int) -> tuple[int, memoryview]:
        step = self.script.pop(0)
        if isinstance(step, int):
            if step == -2:  # psycopg raises this itself
                raise psycopg.OperationalError(f"receiving copy data failed: {self.get_error_message()}")
            return step, memoryview(b"")
        return len(step), memoryview(step)

    def get_error_message(self) -> str:
        return ERROR


@pytest.fixture(autouse=True)
def real_libpq_afterwards() -> Iterator[None]:
    yield
    replication._hand_libpq_to_c()  # the fakes' addresses must not outlive the test


def _receive(script: Script, c_loop: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``_receive_copy`` over the script with one loop: its bytes, or the error's type and text."""
    fake = FakeLibpq(script, PGCONN_PTR, 0)
    assert decoder.c_module is not None
    fake.install()
    reason = "" if c_loop else "switched off by the test"
    monkeypatch.setattr(snapshot.replication, "c_libpq_unusable", lambda pgconn, c_name: reason)
    try:
        out: Any = snapshot._receive_copy(FakePGconn(script))
    except psycopg.Error as exc:
        out = (type(exc), str(exc))
    if c_loop:
        assert not fake.live and fake.freed == fake.handed, "the C loop must free every buffer exactly once"
        assert fake.handed == sum(isinstance(s, bytes) for s in script[: len(script) - len(fake.script)])
    return out


def _both(script: Script, monkeypatch: pytest.MonkeyPatch) -> Any:
    c = _receive(script, True, monkeypatch)
    py = _receive(script, False, monkeypatch)
    assert c == py
    return c


def test_rows_are_joined_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [b"1\tone\n", b"2\t\\N\n", "3\tdrei \u00fc\n".encode(), b"4\t" + b"x" * 200_000 + b"\n", b"5\t\n"]
    assert _both([*rows, -1], monkeypatch) == b"".join(rows)  # 200 KB: the buffer grows past its first 64 KB


def test_no_rows_give_empty_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _both([-1], monkeypatch) == b""


def test_a_failed_connection_raises_psycopgs_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """-2 after some rows: the C loop frees what it got and raises what psycopg's get_copy_data raises."""
    err = _both([b"1\n", b"2\n", -2, b"never read\n"], monkeypatch)
    assert err == (psycopg.OperationalError, f"receiving copy data failed: {ERROR}")


def test_a_status_libpq_should_not_give_in_blocking_mode_raises_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _both([b"1\n", 0], monkeypatch) == (psycopg.OperationalError, ERROR)


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.binary(min_size=1, max_size=3000), max_size=60), end=st.sampled_from([-1, -2]))
def test_random_scripts_read_alike(rows: list[bytes], end: int) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        out = _both([*rows, end], monkeypatch)
    assert out == (b"".join(rows) if end == -1 else (psycopg.OperationalError, f"receiving copy data failed: {ERROR}"))


def test_copy_out_refuses_a_closed_connection() -> None:
    assert decoder.c_module is not None
    with pytest.raises(ValueError, match="closed connection"):
        decoder.c_module.copy_out(0)


def test_the_c_loop_is_used_only_when_everything_is_there() -> None:
    """The shared check of replication.py, named for copy_out: no PGconn pointer, a Python decoder."""

    class Closed:
        pgconn_ptr = None
        backend_pid = 1

    assert replication.c_libpq_unusable(Closed(), "copy_out") == "psycopg's connection has no pgconn_ptr"
    assert replication.c_libpq_unusable(Closed(), "no_such_function") == "extension built without no_such_function"
    with decoder.using(False):
        assert replication.c_libpq_unusable(Closed(), "copy_out") == "the decoder is python"
