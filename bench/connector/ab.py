"""Two versions of the connector's event writer (``envelope.py``) against each other, in one process.

``python -m bench.connector.ab OLD.py [NEW.py] [--items N] [--repeat R]``: loads both files as modules,
with the C decoder and with it forced off, and times ``fast_change`` and ``iter_read_values`` on
bench.connector.micro's workload, alternating the two versions (and which goes first) so that a loaded
machine slows both alike; prints the best of ``R`` per version. ``NEW`` defaults to today's module. An
older version: ``git show <rev>:connectors/postgres/envelope.py > /tmp/old_envelope.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.connector import micro
from sevisflow.connectors.postgres import convert as cv
from sevisflow.connectors.postgres import decoder, envelope

US = 1_700_000_000_000_000


def _load(path: Path, name: str) -> ModuleType:
    """``path`` as module ``name`` (its decoder functions picked now, under the active decoder)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _meta(mod: ModuleType) -> Any:
    return mod.TableMeta(
        schema="public",
        table="bench_person",
        topic="t",
        columns=tuple(c for c, _, _ in micro.COLUMNS),
        mappings=tuple(cv.column_mapping(o, m) for _, o, m in micro.COLUMNS),
        key_columns=("id",),
    )


def _stream(mod: ModuleType, msgs: list[bytes]) -> Callable[[], None]:
    b, meta = mod.EventBuilder(name="bench", db="sis", version="v", transaction_metadata=True), _meta(mod)
    b.now_us = US

    def run() -> None:
        tx = mod.TxContext(xid=7, commit_lsn=9_000_000, ts_us=US, begin_lsn=8_000_000)
        for lsn, p in enumerate(msgs):
            if b.fast_change(meta, p, tx, lsn) is None:
                raise SystemExit("a bench payload left the fast path")

    return run


def _snapshot(mod: ModuleType, rows: list[list[Any]]) -> Callable[[], None]:
    b, meta = mod.EventBuilder(name="bench", db="sis", version="v", transaction_metadata=True), _meta(mod)

    def run() -> None:
        tx = mod.TxContext(xid=7, commit_lsn=None, ts_us=US, snapshot="true")
        for _ in b.iter_read_values(meta, rows, tx, 5, "true"):
            pass

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.connector.ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path, nargs="?", default=Path(envelope.__file__))
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args(argv)
    msgs = micro.payloads(args.items)
    rows = [micro.bench_row(i) for i in range(1, args.items + 1)]
    print(f"| µs per item, best of {args.repeat} ({args.items:,} items) | old | new |\n|---|---|---|")
    for label, use_c in (("C", True), ("pure Python", False)):
        with decoder.using(use_c):
            old, new = _load(args.old, "bench_envelope_old"), _load(args.new, "bench_envelope_new")
            for what, make in (
                ("fast_change", lambda m: _stream(m, msgs)),
                ("iter_read_values", lambda m: _snapshot(m, rows)),
            ):
                fns, best = (make(old), make(new)), [float("inf"), float("inf")]
                for r in range(args.repeat):
                    for k in (0, 1) if r % 2 == 0 else (1, 0):
                        t0 = time.perf_counter()
                        fns[k]()
                        best[k] = min(best[k], time.perf_counter() - t0)
                print(f"| {label} `{what}` | {best[0] / args.items * 1e6:.2f} | {best[1] / args.items * 1e6:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
