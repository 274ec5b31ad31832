"""``make bench``: run every benchmark suite in bench/ one after the other.

Each suite is a package ``bench/<name>/`` with a ``__main__`` (or a module, e.g. ``processors.boundaries``); it starts the services it needs
(the same local stack as the tests), prints its table, and writes its raw results under
bench/results/. The tables in bench/README.md are copied from these runs.
Run one suite alone with ``python -m bench.<name>``; choose suites with ``python -m bench.run NAME…``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

SUITES = [
    "connector",
    "processors",
    "processors.boundaries",
    "state",
    "batcher",
    "sinks",
    "audit",
    "chaos",
    "review",
    "scale",
    "vendor",
]


def main(argv: list[str]) -> int:
    chosen = argv or SUITES
    failed = []
    for name in chosen:
        if importlib.util.find_spec(f"bench.{name}") is None:
            print(f"== bench.{name}: not present, skipped")
            continue
        print(f"== bench.{name}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, "-m", f"bench.{name}"])
        print(f"== bench.{name}: exit {rc} in {time.monotonic() - t0:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed suites: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
