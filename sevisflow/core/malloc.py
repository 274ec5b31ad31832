"""Cap the C allocator's arenas of a long-running stage process (glibc only).

glibc gives a thread that meets a locked arena a new one, up to 8 per core, and memory freed in an
arena is rarely handed back while anything else lives in it. A stage runs librdkafka's and RocksDB's
threads next to Python, so its resident memory also grows with how many arenas those threads spread
over, not only with what it holds. Measured on the 100,000-student snapshot (bench/README.md, "Scale",
"Allocator arenas"): normalize peaked under 500 MiB in 4 of 6 capped runs and in none of 3 uncapped ones
(its peak is bimodal, ≈450-470 or ≈515-560 MiB, either way), for 1-2 % more CPU with four arenas.

An operator's own ``MALLOC_ARENA_MAX`` (read by glibc at start-up) wins: the cap is set only when it is
not in the environment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8
"""mallopt's parameter number for the arena cap (glibc's malloc.h)."""
DEFAULT_ARENAS = 4


def cap_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Set glibc's arena cap to ``arenas`` unless ``MALLOC_ARENA_MAX`` is set; True when this call set it.

    Call it before the process starts its threads (librdkafka, RocksDB): arenas made before stay.
    Elsewhere (musl, macOS) there is no ``mallopt`` with this parameter and nothing is done.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl's mallopt ignores the parameter
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
