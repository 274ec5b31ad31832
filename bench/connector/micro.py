"""``python -m bench.connector.micro``: offline µs per change of the connector's decode + envelope work.

No services: builds pgoutput payloads of the bench workload's shape (``bench_person``'s 11 columns,
40% INSERT / 50% UPDATE with the FULL old row / 10% DELETE) and COPY-text rows of the same table,
then times, in one process and interleaved so that machine load hits both alike:

* ``fast_change`` (the stream's hot path: pgoutput bytes → key + Debezium JSON) with the C decoder
  and with the pure-Python one, and the C decoder's ``change_batch`` (the stream loop's run of changes,
  calling a no-op ``produce``) — against a Python loop over ``fast_change`` making the same calls;
* ``iter_read_values`` (the snapshot's row → key + JSON) and ``split_copy_text`` (the snapshot's COPY
  text → rows) with both;
* the generic path (``decode`` + ``insert``/``update``/``delete``) for reference.

Figures are the best of ``--repeat`` rounds (the least disturbed by other processes), in µs per item.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from sevisflow.connectors.postgres import convert as cv
from sevisflow.connectors.postgres import decoder
from sevisflow.connectors.postgres import snapshot as snap
from sevisflow.connectors.postgres.envelope import EventBuilder, TableMeta, TxContext
from sevisflow.connectors.postgres.pgoutput import Delete, Insert, Update, Value, decode, encode
from testkit.connector import table_meta

COLUMNS = (
    ("id", cv.INT8, -1),
    ("sevis_id", cv.TEXT, -1),
    ("first_name", cv.TEXT, -1),
    ("last_name", cv.TEXT, -1),
    ("birth_date", cv.DATE, -1),
    ("citizenship", cv.BPCHAR, 6),
    ("visa_type", cv.TEXT, -1),
    ("email", cv.TEXT, -1),
    ("major_cip", cv.TEXT, -1),
    ("program_end", cv.DATE, -1),
    ("updated_at", cv.TIMESTAMPTZ, -1),
)


def _meta() -> TableMeta:
    return table_meta(COLUMNS, schema="public", table="bench_person", prefix="bench")


def bench_row(i: int) -> list[Value]:
    """The text values of bench/connector/__main__.py's ``bench_row(i)``."""
    return [
        str(i),
        f"N{i:010d}",
        f"First{i % 9973}",
        f"Last{i % 7919}",
        (date(1990, 1, 1) + timedelta(days=i % 4000)).isoformat(),
        ["IN", "CN", "BR", "NG", "DE", "KR"][i % 6],
        ["F-1", "J-1", "M-1"][i % 3],
        f"student{i}@example.edu",
        f"{i % 99:02d}.{i % 9999:04d}",
        (date(2026, 5, 15) + timedelta(days=i % 900)).isoformat(),
        f"2026-01-{1 + i // 86400 % 28:02d} {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}+00",
    ]


def payloads(n: int) -> list[bytes]:
    out = []
    for j in range(n):
        i = 1 + j * 7919 % 100_000
        if j % 10 in (0, 3, 5, 8):
            out.append(encode(Insert(1, bench_row(10_000_000 + j))))
        elif j % 10 == 9:
            out.append(encode(Delete(1, "O", bench_row(i))))
        else:
            old = bench_row(i)
            new = old[:7] + [f"u{j}.{j % 100}@example.edu"] + old[8:10] + ["2026-11-28 20:00:00.123456+00"]
            out.append(encode(Update(1, "O", old, new)))
    return out


def _best(fn: Callable[[], Any], n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.connector.micro", description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    if decoder.c_module is None:
        print("the C extension is not built (pip install -e .): only the Python figures are meaningful")
    meta, n = _meta(), args.changes
    msgs = payloads(n)
    rows = [bench_row(i) for i in range(1, n + 1)]
    copy_text = "".join("\t".join(r) + "\n" for r in rows).encode()  # type: ignore[arg-type]
    b = EventBuilder(name="bench", db="sis", version="v", transaction_metadata=True)
    b.now_us = 1_700_000_000_000_000

    def stream() -> None:
        tx = TxContext(xid=7, commit_lsn=9_000_000, ts_us=1_700_000_000_000_000, begin_lsn=8_000_000)
        fc = b.fast_change
        for lsn, p in enumerate(msgs):
            if fc(meta, p, tx, lsn) is None:
                raise SystemExit("a bench payload left the fast path")

    items = list(enumerate(msgs))

    def _produce(topic: str, value: bytes | None, key: bytes | None) -> None:
        pass

    def batch() -> None:
        tx = TxContext(xid=7, commit_lsn=9_000_000, ts_us=1_700_000_000_000_000, begin_lsn=8_000_000)
        run, rels, i = b.change_batch, {1: b.batch_entry(meta, tx)}, 0
        while i < len(items):
            nxt = run(items, i, rels, b.batch_tx(tx), b.batch_tail(), _produce, True)[0]
            if nxt <= i:
                raise SystemExit("a bench payload left the C batch")
            i = nxt

    def loop() -> None:
        tx = TxContext(xid=7, commit_lsn=9_000_000, ts_us=1_700_000_000_000_000, begin_lsn=8_000_000)
        fc, topic = b.fast_change, meta.topic
        for lsn, p in items:
            op, key, value = fc(meta, p, tx, lsn)  # type: ignore[misc]
            _produce(topic, value, key)
            if op == "d":
                _produce(topic, None, key)

    def generic() -> None:
        tx = TxContext(xid=7, commit_lsn=9_000_000, ts_us=1_700_000_000_000_000, begin_lsn=8_000_000)
        for lsn, p in enumerate(msgs):
            m = decode(p)
            if isinstance(m, Insert):
                b.insert(meta, m.new, tx, lsn)
            elif isinstance(m, Update):
                b.update(meta, m.old, m.old_kind, m.new, tx, lsn)
            else:
                b.delete(meta, m.old, m.old_kind, tx, lsn)  # type: ignore[union-attr]

    def snapshot() -> None:
        tx = TxContext(xid=7, commit_lsn=None, ts_us=1_700_000_000_000_000, snapshot="true")
        for _ in b.iter_read_values(meta, rows, tx, 5, "true"):
            pass

    res: dict[str, list[float]] = {}
    for _ in range(2):  # alternate the decoders twice; keep each one's best
        for use_c in [True, False] if decoder.c_module is not None else [False]:
            with decoder.using(use_c):
                tag = "c" if use_c else "python"
                res.setdefault(f"stream {tag}", []).append(_best(stream, n, args.repeat))
                res.setdefault(f"loop {tag}", []).append(_best(loop, n, args.repeat))
                if use_c:
                    res.setdefault("batch c", []).append(_best(batch, n, args.repeat))
                res.setdefault(f"snapshot {tag}", []).append(_best(snapshot, n, args.repeat))
                res.setdefault(f"split {tag}", []).append(
                    _best(lambda: snap.split_copy_text(copy_text), n, args.repeat)
                )
                res.setdefault(f"generic {tag}", []).append(_best(generic, n, max(2, args.repeat // 2)))
    t0 = time.perf_counter()
    for _ in range(10_000_000):
        pass
    calib = (time.perf_counter() - t0) * 1000
    best = {k: min(v) for k, v in res.items()}
    print(f"| µs per item, best of {args.repeat} × 2 ({n:,} items) | C decoder | pure Python | Python ÷ C |")
    print("|---|---|---|---|")
    for label, key in (
        ("stream `fast_change` (bytes → key + JSON)", "stream"),
        ("stream loop: per-change Python loop over `fast_change` + produce", "loop"),
        ("snapshot `iter_read_values` (text row → key + JSON)", "snapshot"),
        ("snapshot `split_copy_text` (COPY text → rows)", "split"),
        ("generic `decode` + builder (reference)", "generic"),
    ):
        c, py = best.get(f"{key} c"), best[f"{key} python"]
        print(f"| {label} | {c:.2f} | {py:.2f} | {py / c:.2f}× |" if c else f"| {label} | – | {py:.2f} | |")
    print(
        f"| stream loop: `change_batch` (C) + produce | {min(res['batch c']):.2f} | – | |" if "batch c" in res else ""
    )
    print(f"\nmachine load check: 10M empty Python loop iterations {calib:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
