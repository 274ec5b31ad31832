"""Named checkpoints at the side-effect boundaries: a no-op unless a test registers a handler.

Why: the delivery guarantees are only believable if a test can stop the real process at the
exact boundary of a side effect (just before / just after a Kafka commit, an LSN
acknowledgement, an outbox rename, an HTTP POST, ...); a signal sent from outside cannot hit
such a point reliably. So the product calls :func:`checkpoint` with a stable name at each
boundary (``kafka.before_commit``, ``connector.after_lsn_ack``, ``sevis.before_post``, ...), and
does nothing else there. A fault-injection harness — the tests' own, never product code —
registers a handler with :func:`set_handler`; the handler may end the process, sleep or
record the name. Without one (production), a checkpoint is one global read.

The names are an interface for tests: renaming one breaks the crash test that arms it.
"""

from __future__ import annotations

from collections.abc import Callable

Handler = Callable[[str], None]

_handler: Handler | None = None


def set_handler(handler: Handler | None) -> Handler | None:
    """Register ``handler`` for every checkpoint of this process (None removes it); returns the previous one."""
    global _handler
    previous, _handler = _handler, handler
    return previous


def checkpoint(name: str) -> None:
    """Pass the checkpoint ``name``: calls the registered handler, if any (see the module docstring)."""
    handler = _handler
    if handler is not None:
        handler(name)
