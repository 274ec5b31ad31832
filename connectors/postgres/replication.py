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
"""

from __future__ import annotations

import re
import select
import struct
import time
from typing import Any

import psycopg

from sevisflow.connectors.postgres.convert import SESSION_OPTIONS
from sevisflow.connectors.postgres.errors import classify
from sevisflow.connectors.postgres.pgoutput import PG_EPOCH_UNIX_US, format_lsn, parse_lsn
from sevisflow.core.errors import ConfigError, TransientError

_XLOG = struct.Struct(">QQq").unpack_from
_KEEPALIVE = struct.Struct(">QqB").unpack_from
_STATUS = struct.Struct(">cQQQqB").pack

KEEPALIVE = None  # payload of a keepalive item in read_batch's output


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

    # -- streaming

    def read_batch(self, max_items: int, timeout_s: float) -> list[tuple[int, bytes | None]]:
        """Up to ``max_items`` (lsn, payload) pairs; payload None is a keepalive carrying the server's WAL end.

        Returns early with what is ready; waits up to ``timeout_s`` only when nothing is.
        """
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
                ready = select.select([self.sock], [], [], 0 if (out or waited) else timeout_s)[0]
                if not ready:
                    break
                waited = True
                try:
                    pgconn.consume_input()
                except psycopg.Error as exc:
                    self.streaming = False
                    raise TransientError(f"replication connection lost: {_err(pgconn)}") from exc
                continue
            self._end_of_copy(n)
        return out

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
