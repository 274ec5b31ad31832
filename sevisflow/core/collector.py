"""Keep Python's cyclic garbage collector off a stage's long-lived state.

CPython's collector runs a full pass over every tracked object (dicts, lists, ...) whenever the objects
that survived since the last full pass reach a quarter of those it found then. A stage keeps its state
decoded in memory: the batcher its whole open batch (about 7 tracked objects per record), normalize and
sevis_events their decoded caches. Replacing records makes new survivors, so full passes keep coming, and
each one walks the whole batch while every thread of the process waits (the GIL): measured on the batcher
with 80,000 open records (bench/batcher/big_open_batch.py, ``--gc``), each full pass took 1.0-1.4 s, two of
them came during 40,000 events, and they were a quarter of that CPU (bench/README.md, "Batcher").

:func:`keep_old_objects_frozen` moves what has lived for a while into the collector's permanent generation
(``gc.freeze()``, a constant-time list splice) every :data:`FREEZE_EVERY_S`, so the automatic passes walk only
what is newer. A stage's state is plain JSON-like data without reference cycles: reference counting frees it
the moment it is replaced, frozen or not. Only garbage in cycles (some library objects, tracebacks) cannot be
reclaimed while frozen, so every :data:`FULL_EVERY_S` the thread unfreezes everything and runs one full pass
(logged as ``gc.full_collection`` with what it took and found), and when the stages stop it unfreezes for good.

While it runs, the youngest generation is collected every :data:`YOUNG_THRESHOLD` new container objects
instead of Python's 700: a stage allocates and drops thousands of dicts per transaction, and with the old
objects frozen what is left of the collector's cost is those frequent young passes (5 % of normalize's thread
through Kafka in a py-spy profile). Garbage without cycles is freed by reference counting either way; only
cyclic garbage waits a little longer. Measured on the processors bench's pure path (+6 %; through Kafka the
change is inside that bench's noise): bench/README.md, "Processors".
"""

from __future__ import annotations

import gc
import threading
import time

from sevisflow.core.log import get_logger

log = get_logger(__name__)

FREEZE_EVERY_S = 1.0
"""How long an object lives, at most, before the automatic passes stop walking it."""
FULL_EVERY_S = 900.0
"""How often cyclic garbage that was frozen is reclaimed: one full pass (the pause the freezing otherwise avoids)."""
YOUNG_THRESHOLD = 20_000
"""New container objects between two passes over the youngest generation while the freezer runs (Python: 700)."""


def keep_old_objects_frozen(
    stop: threading.Event, every_s: float = FREEZE_EVERY_S, full_every_s: float = FULL_EVERY_S
) -> threading.Thread:
    """Freeze the objects that exist every ``every_s``, reclaim frozen cyclic garbage every ``full_every_s``,
    collect the youngest generation every :data:`YOUNG_THRESHOLD` objects, and undo all three when ``stop`` is
    set (a daemon thread)."""

    before = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, before[0]), *before[1:])

    def run() -> None:
        last_full = time.monotonic()
        try:
            while not stop.wait(every_s):
                if time.monotonic() - last_full >= full_every_s:
                    full_collection()
                    last_full = time.monotonic()
                gc.freeze()
        finally:
            gc.unfreeze()
            gc.set_threshold(*before)

    thread = threading.Thread(target=run, name="gc-freeze", daemon=True)
    thread.start()
    return thread


def full_collection() -> int:
    """Unfreeze, run one full pass and log it; returns the unreachable objects it found."""
    began = time.perf_counter()
    gc.unfreeze()
    found = gc.collect()
    log.info(
        "gc.full_collection",
        took_ms=round((time.perf_counter() - began) * 1000, 1),
        unreachable=found,
    )
    return found
