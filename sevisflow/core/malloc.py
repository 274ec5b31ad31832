"""Cap the C allocator's arenas of a long-running stage process, and hand its free memory back (glibc only).

glibc gives a thread that meets a locked arena a new one, up to 8 per core, and memory freed in an
arena is rarely handed back while anything else lives in it. A stage runs librdkafka's and RocksDB's
threads next to Python, so its resident memory also grows with how many arenas those threads spread
over, not only with what it holds. Measured on the 100,000-student snapshot (bench/README.md, "Scale",
"Allocator arenas"): normalize peaked under 500 MiB in 4 of 6 capped runs and in none of 3 uncapped ones
(its peak is bimodal, ≈450-470 or ≈515-560 MiB, either way), for 1-2 % more CPU with four arenas.

An operator's own ``MALLOC_ARENA_MAX`` (read by glibc at start-up) wins: the cap is set only when it is
not in the environment.

Free memory inside an arena stays resident until glibc trims it, which it does only at the top of the
main heap. A stage process therefore also runs :func:`keep_trimming`: ``malloc_trim(0)``, which returns
every free page of every arena to the OS, whenever the resident size grew by :data:`TRIM_AFTER_GROWTH_MIB`.
Measured on the same snapshot (bench/README.md, "Scale", "Trimming free memory"): normalize's peak was
397-427 MiB in 6 runs, against 481-552 MiB without. The snapshot's CPU: +5 and +11 % in two pairs of runs,
+0.4 % in a third.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable

M_ARENA_MAX = -8
"""mallopt's parameter number for the arena cap (glibc's malloc.h)."""
DEFAULT_ARENAS = 4
TRIM_EVERY_S = 1.0
"""How often a stage process looks at its resident size (one read of ``/proc/self/statm``)."""
TRIM_AFTER_GROWTH_MIB = 32
"""Trim when the resident size grew this much since the last trim. A trim walks every free chunk of every
arena and advises the kernel page by page (~13 ms on a fragmented 900 MB heap), and memory it returns that is
used again costs page faults: so not on a timer, only when the process grew."""


def cap_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Set glibc's arena cap to ``arenas`` unless ``MALLOC_ARENA_MAX`` is set; True when this call set it.

    Call it before the process starts its threads (librdkafka, RocksDB): arenas made before stay.
    Elsewhere (musl, macOS) there is no ``mallopt`` with this parameter and nothing is done.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _glibc()  # musl's mallopt ignores the parameter
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        libc.mallopt  # noqa: B018
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def free_memory_trimmer() -> Callable[[], bool] | None:
    """``malloc_trim(0)`` as a call that says whether memory went back to the OS; None off glibc."""
    libc = _glibc()
    if libc is None:
        return None
    trim = libc.malloc_trim
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: bool(trim(0))


def resident_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``; 0 where there is none): a cheap read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def keep_trimming(
    stop: threading.Event, every_s: float = TRIM_EVERY_S, grown_mib: int = TRIM_AFTER_GROWTH_MIB
) -> threading.Thread | None:
    """Hand the allocator's free memory back to the OS until ``stop`` is set (a daemon thread; None where there
    is no glibc): every ``every_s`` the thread reads the resident size and trims when it has grown by
    ``grown_mib`` since the last trim. What a stage frees in one arena is then not kept resident while another
    arena grows, and a process whose memory is flat pays nothing."""
    trim = free_memory_trimmer()
    if trim is None:
        return None
    grown = grown_mib << 20

    def run() -> None:
        last = 0  # resident size after the last trim: the first look trims
        while not stop.wait(every_s):
            if resident_bytes() - last >= grown:
                trim()
                last = resident_bytes()

    thread = threading.Thread(target=run, name="malloc-trim", daemon=True)
    thread.start()
    return thread
