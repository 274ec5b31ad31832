"""The replication-protocol client: a small CopyBoth loop on psycopg 3's libpq wrapper.

psycopg 3.3 runs ``START_REPLICATION`` on a ``replication=database`` connection and leaves the
connection in COPY_BOTH state; it has no replication API beyond that, so this module speaks the
protocol itself (PostgreSQL docs, "Streaming Replication Protocol"):

* server → client CopyData ``'w'`` XLogData: ``>QQq`` (data start, WAL end, send time) + pgoutput payload;
* server → client CopyData ``'k'`` keepalive: ``>QqB`` (WAL end, send time, reply requested);
* client → server CopyData ``'r'`` standby status update: ``>QQQqB`` (written, flushed, applied,
  client time, reply requested). *flushed* is what PostgreSQL records as the slot's
  ``confirmed_flush_lsn``: the caller passes only positions Kafka has acknowledged.

Reading pattern (see docs/ARCHITECTURE.md, "Connector: replication client"): drain everything
libpq has buffered and everything the socket has ready, and block only when both are empty.
libpq's ``consume_input`` reads at most its buffer (~16 KB), so before blocking we ask the socket
with a zero-timeout ``select`` whether more is ready. Reading in batches lets the walsender
coalesce its sends; reading message by message doubles its CPU.

Receiving: with the C extension active (see decoder.py) and psycopg's bundled libpq ("binary"
implementation), ``_pgtuple.receive`` runs the per-message loop — PQgetCopyData, the header parse, the
(lsn, payload) tuples — over the libpq psycopg loaded, whose function addresses are found once from the
process's loaded libraries (the extension links no libpq of its own: PGconn is opaque, another build may
lay it out differently). Otherwise the Python loop below does the same; both return identical items.
The snapshot's COPY reader (``_pgtuple.copy_out``) uses the same hand-over: :func:`c_libpq_unusable`.
:func:`log_c_choice` logs the choice once per process (``connector.receive``, ``receive=c|python``).
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq

from sevisflow.connectors.postgres import decoder
from sevisflow.connectors.postgres.convert import SESSION_OPTIONS
from sevisflow.connectors.postgres.errors import classify
from sevisflow.connectors.postgres.pgoutput import PG_EPOCH_UNIX_US, format_lsn, parse_lsn
from sevisflow.core.errors import ConfigError, TransientError
from sevisflow.core.log import get_logger

_XLOG = struct.Struct(">QQq").unpack_from
_KEEPALIVE = struct.Struct(">QqB").unpack_from
_STATUS = struct.Struct(">cQQQqB").pack

KEEPALIVE = None  # payload of a keepalive item in read_batch's output

log = get_logger(__name__)

# _pgtuple.receive(pgconn_ptr, out, max_items, received_lsn) -> (status, received_lsn, reply_requested)
Receive = Callable[[int, list[tuple[int, bytes | None]], int, int], tuple[int, int, bool]]


def _now_pg_us() -> int:
    return time.time_ns() // 1000 - PG_EPOCH_UNIX_US


class ReplicationConnection:
    """One walsender session: create slots, export snapshots, stream changes, confirm positions."""

    def __init__(self, conninfo: str, application_name: str = "sevisflow-connector") -> None:
        try:
            self.conn: psycopg.Connection[Any] = psycopg.connect(
                conninfo,
                replication="database",
                autocommit=True,
                options=SESSION_OPTIONS,
                application_name=application_name,
                connect_timeout=10,
            )
        except psycopg.Error as exc:
            raise classify(exc, "opening the replication connection") from exc
        self.streaming = False
        self.received_lsn = 0  # highest WAL position seen (XLogData or keepalive)
        self.reply_requested = False
        self.server_version = self.conn.info.server_version
        self._receive: Receive | None = None  # the C read loop, when start() could use it
        self.receive_path = "python"  # which read loop read_batch runs: c or python (set by start)

    # -- commands

    def create_slot(self, name: str, temporary: bool = False, export_snapshot: bool = True) -> tuple[int, str | None]:
        """Create a pgoutput slot; returns (consistent point LSN, exported snapshot name or None).

        The exported snapshot stays usable until this connection runs its next command: read the
        snapshot, then call :meth:`start` on the same connection.
        """
        temp = " TEMPORARY" if temporary else ""
        if self.server_version >= 150000:
            opt = "(SNAPSHOT 'export')" if export_snapshot else "(SNAPSHOT 'nothing')"
        else:
            opt = "EXPORT_SNAPSHOT" if export_snapshot else "NOEXPORT_SNAPSHOT"
        q = f'CREATE_REPLICATION_SLOT "{_slot_ident(name)}"{temp} LOGICAL pgoutput {opt}'
        try:
            row = self.conn.execute(q.encode()).fetchone()
        except psycopg.Error as exc:
            raise classify(exc, f"creating replication slot {name!r}") from exc
        assert row is not None
        return parse_lsn(row[1]), row[2]

    def start(self, slot: str, publication: str, start_lsn: int = 0) -> None:
        """START_REPLICATION from ``start_lsn`` (0 = the slot's confirmed_flush_lsn)."""
        pub = publication.replace("'", "''").replace('"', '""')
        q = (
            f'START_REPLICATION SLOT "{_slot_ident(slot)}" LOGICAL {format_lsn(start_lsn)} '
            f"(proto_version '1', publication_names '\"{pub}\"', messages 'true')"
        )
        try:
            self.conn.execute(q.encode())
        except psycopg.Error as exc:
            raise classify(exc, f"starting replication from slot {slot!r}") from exc
        pgconn = self.conn.pgconn
        self.pgconn = pgconn
        self.sock = pgconn.socket
        self.streaming = True
        reason = _c_receive_unusable(pgconn)
        self._receive = None if reason else getattr(decoder.c_module, "receive", None)
        self.receive_path = "c" if self._receive is not None else "python"
        log_c_choice("receive", reason)

    # -- streaming

    def read_batch(self, max_items: int, timeout_s: float) -> list[tuple[int, bytes | None]]:
        """Up to ``max_items`` (lsn, payload) pairs; payload None is a keepalive carrying the server's WAL end.

        Returns early with what is ready; waits up to ``timeout_s`` only when nothing is.
        """
        receive = self._receive
        if receive is None:
            return self._read_batch_py(max_items, timeout_s)
        pgconn = self.pgconn
        out: list[tuple[int, bytes | None]] = []
        waited = False
        while len(out) < max_items:
            # asked again after every wait: the select releases the GIL, and a PGconn closed meanwhile is freed
            ptr = getattr(pgconn, "pgconn_ptr", None)
            if ptr is None:
                pgconn.get_copy_data(1)  # raises psycopg's own "the connection is closed"
                raise psycopg.OperationalError("the connection is closed")
            n, self.received_lsn, reply = receive(ptr, out, max_items, self.received_lsn)
            if reply:
                self.reply_requested = True
            if n > 0:  # out is full
                continue
            if n == 0:
                if not self._wait(bool(out) or waited, timeout_s):
                    break
                waited = True
                continue
            if n == -2:  # what psycopg's get_copy_data raises in the Python loop
                raise psycopg.OperationalError(f"receiving copy data failed: {pgconn.get_error_message()}")
            self._end_of_copy(n)
        return out

    def _read_batch_py(self, max_items: int, timeout_s: float) -> list[tuple[int, bytes | None]]:
        """:meth:`read_batch` in Python: the reference for the C loop, and the fallback without it."""
        pgconn = self.pgconn
        out: list[tuple[int, bytes | None]] = []
        append = out.append
        waited = False
        while len(out) < max_items:
            n, data = pgconn.get_copy_data(1)
            if n > 0:
                kind = data[0]
                if kind == 119:  # 'w'
                    start, end, _ = _XLOG(data, 1)
                    append((start, bytes(data[25:])))
                    if end > self.received_lsn:
                        self.received_lsn = end
                elif kind == 107:  # 'k'
                    end, _, reply = _KEEPALIVE(data, 1)
                    if end > self.received_lsn:
                        self.received_lsn = end
                    if reply:
                        self.reply_requested = True
                    append((end, KEEPALIVE))
                continue
            if n == 0:
                if not self._wait(bool(out) or waited, timeout_s):
                    break
                waited = True
                continue
            self._end_of_copy(n)
        return out

    def _wait(self, nowait: bool, timeout_s: float) -> bool:
        """Read what the socket has into libpq's buffer; False when it had nothing (after ``timeout_s``,
        or at once with ``nowait``: something was read already, so return it rather than block)."""
        if not select.select([self.sock], [], [], 0 if nowait else timeout_s)[0]:
            return False
        try:
            self.pgconn.consume_input()
        except psycopg.Error as exc:
            self.streaming = False
            raise TransientError(f"replication connection lost: {_err(self.pgconn)}") from exc
        return True

    def _end_of_copy(self, n: int) -> None:
        self.streaming = False
        if n == -1:
            res = self.pgconn.get_result()
            msg = res.error_message.decode(errors="replace") if res is not None and res.error_message else ""
            raise TransientError(f"the server ended the replication stream {msg}".strip())
        raise TransientError(f"replication connection lost: {_err(self.pgconn)}")

    def send_status(self, flushed_lsn: int, reply: bool = False) -> None:
        """Tell the server what is durable (``flushed_lsn`` becomes confirmed_flush_lsn) and what we received."""
        written = max(self.received_lsn, flushed_lsn)
        msg = _STATUS(b"r", written, flushed_lsn, flushed_lsn, _now_pg_us(), 1 if reply else 0)
        try:
            self.pgconn.put_copy_data(msg)
            self.pgconn.flush()
        except psycopg.Error as exc:
            self.streaming = False
            raise TransientError(f"could not send the standby status update: {_err(self.pgconn)}") from exc
        self.reply_requested = False

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not hide the real error
            pass


_libpq_reason: str | None = None  # None: not looked for yet; "": the C module has the functions; else why not
_backend_pid: Any = None  # the loaded libpq's PQbackendPID: checks that a PGconn* is one it understands
_choices_logged: set[str] = set()  # the C loops whose choice was logged (log_c_choice)


def _c_receive_unusable(pgconn: Any) -> str:
    """Why the C read loop cannot serve ``pgconn`` ("" when it can)."""
    return c_libpq_unusable(pgconn, "receive")


def c_libpq_unusable(pgconn: Any, c_name: str) -> str:
    """Why the C module's ``c_name`` — a loop over the libpq psycopg loaded: ``receive`` here, ``copy_out``
    for the snapshot — cannot serve ``pgconn`` ("" when it can). The libpq is looked up once per process."""
    if decoder.active is None:
        return "the decoder is python"
    if getattr(decoder.c_module, c_name, None) is None:
        return f"extension built without {c_name}"
    global _libpq_reason
    if _libpq_reason is None:
        _libpq_reason = _hand_libpq_to_c()
    if _libpq_reason:
        return _libpq_reason
    ptr = getattr(pgconn, "pgconn_ptr", None)
    if ptr is None:
        return "psycopg's connection has no pgconn_ptr"
    if _backend_pid(ptr) != pgconn.backend_pid:  # a libpq that is not psycopg's would not read its PGconn
        return "the libpq found is not the one psycopg's connection uses"
    return ""


def _hand_libpq_to_c() -> str:
    """Pass the addresses of PQgetCopyData and PQfreemem of the libpq psycopg loaded to the C module;
    "" when done, else why not. RTLD_NOLOAD: the library already in the process or nothing, never a
    second copy."""
    global _backend_pid
    if pq.__impl__ != "binary":
        return f"psycopg implementation {pq.__impl__!r} (the C loop uses the binary one's bundled libpq)"
    path = _loaded_libpq()
    if path is None:
        return "psycopg's libpq not found among the loaded libraries"
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW)
        get_copy_data, freemem, backend_pid = lib.PQgetCopyData, lib.PQfreemem, lib.PQbackendPID
    except (OSError, AttributeError) as exc:
        return f"psycopg's libpq could not be opened ({exc})"
    backend_pid.argtypes, backend_pid.restype = [ctypes.c_void_p], ctypes.c_int
    assert decoder.c_module is not None
    decoder.c_module.set_libpq(_address(get_copy_data), _address(freemem))
    _backend_pid = backend_pid
    return ""


def _address(fn: Any) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value or 0


def _loaded_libpq() -> str | None:
    """The path of the libpq psycopg's binary implementation loaded (from psycopg_binary.libs), if mapped."""
    try:
        import psycopg_binary

        libs = Path(psycopg_binary.__file__).resolve().parent.parent / "psycopg_binary.libs"
        maps = Path("/proc/self/maps").read_text()
    except (ImportError, OSError, TypeError):
        return None
    found = set()
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6:
            path = Path(parts[5])
            if path.name.startswith("libpq") and path.parent == libs:
                found.add(str(path))
    return found.pop() if len(found) == 1 else None


def log_c_choice(loop: str, reason: str) -> None:
    """Log once per process whether the C loop ``loop`` (``receive``, ``copy``) runs, and why not when it
    does not (``connector.<loop>``, ``<loop>=c|python``; ``reason`` "" = it runs)."""
    if loop not in _choices_logged:
        _choices_logged.add(loop)
        log.info(f"connector.{loop}", **{loop: "python" if reason else "c"}, reason=reason or "active")


def _err(pgconn: Any) -> str:
    try:
        return (pgconn.error_message or b"").decode(errors="replace").strip() or "connection closed"
    except Exception:  # noqa: BLE001
        return "connection closed"


def _slot_ident(name: str) -> str:
    if not re.fullmatch(r"[a-z0-9_]{1,63}", name):
        raise ConfigError(
            f"slot.name {name!r} is not a valid replication slot name "
            "(lower-case letters, digits and underscores, at most 63)"
        )
    return name
