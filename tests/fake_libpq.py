"""A scripted libpq for the connector's C loops over libpq (``_pgtuple.receive`` and ``copy_out``).

``PQgetCopyData`` and ``PQfreemem`` as ctypes callbacks over a script: each step is a message (handed
out in a fresh buffer) or what ``PQgetCopyData`` returns instead (0, -1, -2; 0 too once the script is
used up). Every buffer handed out must come back to ``PQfreemem`` exactly once. ``install`` hands the
two addresses to the C module; a test must hand the real libpq back afterwards
(``replication._hand_libpq_to_c()``).
"""

from __future__ import annotations

import ctypes
from typing import Any

from sevisflow.connectors.postgres import decoder

GET_COPY_DATA = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int)
FREEMEM = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

Script = list[bytes | int]


def address(fn: Any) -> int:
    """The C address of a ctypes function (a callback or a library's function)."""
    return ctypes.cast(fn, ctypes.c_void_p).value or 0


class FakeLibpq:
    """The script's libpq for the connection ``pgconn_ptr``, called in ``async_mode`` (1: the stream's
    non-blocking reads, 0: the snapshot's blocking COPY reads); other arguments fail the test."""

    def __init__(self, script: Script, pgconn_ptr: int, async_mode: int) -> None:
        self.script = list(script)
        self.pgconn_ptr = pgconn_ptr
        self.async_mode = async_mode
        self.live: dict[int, Any] = {}
        self.handed = self.freed = 0
        self.get_copy_data = GET_COPY_DATA(self._get_copy_data)
        self.freemem = FREEMEM(self._freemem)

    def _get_copy_data(self, conn: int, bufp: Any, async_: int) -> int:
        assert conn == self.pgconn_ptr and async_ == self.async_mode
        step = self.script.pop(0) if self.script else 0
        if isinstance(step, int):
            return step
        buf = ctypes.create_string_buffer(step, len(step))
        self.live[ctypes.addressof(buf)] = buf
        self.handed += 1
        bufp[0] = ctypes.addressof(buf)
        return len(step)

    def _freemem(self, addr: int) -> None:
        assert addr in self.live, "freed a buffer it was not handed, or twice"
        self.freed += 1
        del self.live[addr]

    def install(self) -> None:
        assert decoder.c_module is not None
        decoder.c_module.set_libpq(address(self.get_copy_data), address(self.freemem))
