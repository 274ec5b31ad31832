"""A minimal, generic crash hook for fault-injection tests.

Why: exactly-once claims are only believable if a test can kill the real process at the
exact side-effect boundary (just before / just after a Kafka commit, an outbox state move,
an HTTP post, ...). A signal sent from outside cannot hit such a point reliably, so the
product calls :func:`crash_point` at each boundary and a test arms one of them through
the environment:

    SEVISFLOW_CRASH_AT=<point>[:<nth>]

``<point>`` is the name passed to :func:`crash_point` (e.g. ``kafka.before_commit``);
``<nth>`` (default 1) says which call of that point crashes — the process ends with
``os._exit(137)`` (what kill -9 looks like to a supervisor): no ``finally``, no flush, no
atexit. Several points may be armed at once, separated by commas. When the variable is
unset (production), :func:`crash_point` is a dictionary lookup and returns.
"""

from __future__ import annotations

import os
import sys
import threading

ENV_VAR = "SEVISFLOW_CRASH_AT"
EXIT_CODE = 137

_lock = threading.Lock()
_counts: dict[str, int] = {}
_armed_cache: tuple[str | None, dict[str, int]] = (None, {})


def _armed() -> dict[str, int]:
    """Parse ``SEVISFLOW_CRASH_AT`` (re-parsed only when the variable changes)."""
    global _armed_cache
    raw = os.environ.get(ENV_VAR)
    if raw == _armed_cache[0]:
        return _armed_cache[1]
    points: dict[str, int] = {}
    for part in (raw or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, nth = part.partition(":")
        try:
            points[name.strip()] = int(nth) if nth.strip() else 1
        except ValueError:
            raise ValueError(
                f"{ENV_VAR}={raw!r}: {part!r} is not <point>[:<nth>] with an integer nth; fix or unset it"
            ) from None
    _armed_cache = (raw, points)
    return points


def crash_point(name: str) -> None:
    """Exit the process at once (code 137) if ``name`` is armed and this is its nth call.

    A no-op unless ``SEVISFLOW_CRASH_AT`` names this point. Calls are counted per
    process, so ``kafka.after_commit:3`` crashes right after the third commit.
    """
    points = _armed()
    if name not in points:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        hit = _counts[name] == points[name]
    if hit:
        try:
            sys.stderr.write(f'{{"event":"crash_point","point":"{name}","exit":{EXIT_CODE}}}\n')
            sys.stderr.flush()
        finally:
            os._exit(EXIT_CODE)
