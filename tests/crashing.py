"""Crash a real process at a named checkpoint, like kill -9: the crash tests' fault injector.

Run a stage (or any module) as ``python -m tests.crashing <module> [args…]`` — exactly what
``python -m <module> [args…]`` does, with a handler on
:func:`sevisflow.core.checkpoints.checkpoint` armed by the environment::

    SEVISFLOW_CRASH_AT=<point>[:<nth>][@<after>][,<point>…]

``<point>`` is a checkpoint's name (e.g. ``kafka.before_commit``); ``<nth>`` (default 1) says
which call of that point ends the process; ``@<after>`` counts only the calls made after the
checkpoint ``<after>`` was passed (``kafka.before_commit@batcher.closed``: the first commit of
a transaction that holds a closed batch). The process ends with ``os._exit(137)`` — what kill
-9 looks like to a supervisor: no ``finally``, no flush, no atexit — after one JSON line on
stderr (``{"event":"crash_point","point":…}``) that the tests look for. A test that runs its
own worker calls :func:`install` instead. Unset, nothing is installed.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
from dataclasses import dataclass

from sevisflow.core import checkpoints

ENV_VAR = "SEVISFLOW_CRASH_AT"
EXIT_CODE = 137


@dataclass
class _Armed:
    nth: int
    after: str | None
    calls: int = 0
    open: bool = False  # ``after`` was passed (always open without one)


def parse(raw: str) -> dict[str, _Armed]:
    """``SEVISFLOW_CRASH_AT``'s value → point → what arms it."""
    points: dict[str, _Armed] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        spec, _, after = part.partition("@")
        name, _, nth = spec.partition(":")
        try:
            count = int(nth) if nth.strip() else 1
        except ValueError:
            raise ValueError(
                f"{ENV_VAR}={raw!r}: {part!r} is not <point>[:<nth>][@<after>] with an integer nth; fix or unset it"
            ) from None
        points[name.strip()] = _Armed(count, after.strip() or None, open=not after.strip())
    return points


def handler_for(points: dict[str, _Armed]) -> checkpoints.Handler:
    """A checkpoint handler that ends the process at the armed call of an armed point."""
    lock = threading.Lock()

    def crash(name: str) -> None:
        with lock:
            for armed in points.values():
                if armed.after == name:
                    armed.open = True
            armed = points.get(name)
            if armed is None or not armed.open:
                return
            armed.calls += 1
            if armed.calls != armed.nth:
                return
        try:
            sys.stderr.write(f'{{"event":"crash_point","point":"{name}","exit":{EXIT_CODE}}}\n')
            sys.stderr.flush()
        finally:
            os._exit(EXIT_CODE)

    return crash


def install(environ: dict[str, str] | None = None) -> bool:
    """Install the handler when ``SEVISFLOW_CRASH_AT`` is set; True when it did."""
    raw = (os.environ if environ is None else environ).get(ENV_VAR, "")
    points = parse(raw)
    if not points:
        return False
    checkpoints.set_handler(handler_for(points))
    return True


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m tests.crashing <module> [args…]")
    install()
    sys.argv = argv[:]
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
