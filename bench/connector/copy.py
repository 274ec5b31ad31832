"""``python -m bench.connector.copy``: the snapshot's COPY receive alone, C loop against Python loop.

Starts a PostgreSQL (no Kafka), fills ``bench_snap`` with ``--rows`` rows of the connector benchmark's
shape, then reads the whole table in chunks of ``--chunk`` rows the way the snapshot does
(snapshot.read_chunks: COPY ... ORDER BY pk LIMIT n), alternately with ``_pgtuple.copy_out`` and with
the Python ``get_copy_data`` loop, both with the C decoder's split. Per way it reports the reading
thread's CPU per row (time.thread_time: this process only, the server's work is not in it) for the
receive alone and for receive + split, and the wall-clock rows/s of the whole read; medians (and
minima) of ``--repeat`` interleaved rounds, so machine load hits both ways alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg

from bench.connector.__main__ import REPO, SCHEMA
from bench.connector.micro import _meta
from sevisflow.connectors.postgres import decoder, snapshot
from sevisflow.connectors.postgres.envelope import TableMeta

WAYS = ("c", "python")


@contextmanager
def _receive_way(way: str) -> Iterator[dict[str, float]]:
    """Time every _receive_copy call (thread CPU) while ``way`` receives; yields the running totals."""
    spent = {"receive_cpu_s": 0.0}
    real, check = snapshot._receive_copy, snapshot.replication.c_libpq_unusable

    def timed(pgconn: Any) -> bytes:
        t = time.thread_time()
        try:
            return real(pgconn)
        finally:
            spent["receive_cpu_s"] += time.thread_time() - t

    snapshot._receive_copy = timed
    if way == "python":
        snapshot.replication.c_libpq_unusable = lambda pgconn, c_name: "switched off by the benchmark"
    try:
        yield spent
    finally:
        snapshot._receive_copy = real
        snapshot.replication.c_libpq_unusable = check


def read_table(dsn: str, way: str, chunk: int) -> dict[str, float]:
    """One full read of bench_snap with ``way`` receiving."""
    with psycopg.connect(dsn, autocommit=True) as conn, _receive_way(way) as spent:
        rows = 0
        t0, c0 = time.monotonic(), time.thread_time()
        for rs in snapshot.read_chunks(conn, _meta_snap(), ["int8"], None, chunk):
            rows += len(rs)
        return {
            "rows": rows,
            "seconds": time.monotonic() - t0,
            "cpu_s": time.thread_time() - c0,
            "receive_cpu_s": spent["receive_cpu_s"],
        }


def _meta_snap() -> TableMeta:
    """bench_snap's: bench_person's columns (bench/connector/micro.py)."""
    return replace(_meta(), table="bench_snap", topic="bench.public.bench_snap")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.connector.copy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--chunk", type=int, default=10_000, help="rows per COPY (snapshot.fetch.size)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--results", default=None, help="file name of the raw JSON under bench/results/")
    args = ap.parse_args(argv)
    if decoder.active is None or not hasattr(decoder.active, "copy_out"):
        print("the C extension (with copy_out) is not active: nothing to compare", file=sys.stderr)
        return 2

    from sevisflow.deploy.local.stack import start_stack, stop_stack

    root = REPO / ".local" / "stacks"
    root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bench-copy-", dir=root))
    base.chmod(0o755)
    info = start_stack(name="bench-copy", base=base, kafka=False, progress=lambda *_: None)
    out: dict[str, Any] = {"args": vars(args), "loadavg_start": os.getloadavg(), "runs": {w: [] for w in WAYS}}
    try:
        assert info.postgres is not None
        dsn = info.postgres.dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute(
                "INSERT INTO bench_snap SELECT r.* FROM generate_series(1, %s) g, LATERAL bench_row(g) r", (args.rows,)
            )
            conn.execute("VACUUM ANALYZE bench_snap")
        read_table(dsn, "c", args.chunk)  # warm: the table in shared buffers, the code paths loaded
        for rep in range(args.repeat):
            for way in WAYS if rep % 2 == 0 else WAYS[::-1]:
                r = read_table(dsn, way, args.chunk)
                out["runs"][way].append(r)
                print(
                    f"  {way} #{rep + 1}: {r['rows'] / r['seconds']:,.0f} rows/s, receive "
                    f"{r['receive_cpu_s'] / r['rows'] * 1e6:.3f} µs CPU/row, receive + split "
                    f"{r['cpu_s'] / r['rows'] * 1e6:.3f} µs CPU/row",
                    flush=True,
                )
        out["loadavg_end"] = os.getloadavg()
    finally:
        stop_stack(info)
    print(f"load average (1/5/15 min): start {out['loadavg_start']}, end {out['loadavg_end']}")
    print(
        "| way | read rows/s (median / max) | receive µs CPU/row (median / min) | receive + split µs CPU/row (median / min) |"
    )
    print("|---|---|---|---|")
    for way in WAYS:
        rs = out["runs"][way]
        rate = [r["rows"] / r["seconds"] for r in rs]
        recv = [r["receive_cpu_s"] / r["rows"] * 1e6 for r in rs]
        both = [r["cpu_s"] / r["rows"] * 1e6 for r in rs]
        print(
            f"| {way} | {statistics.median(rate):,.0f} / {max(rate):,.0f} | {statistics.median(recv):.3f} / "
            f"{min(recv):.3f} | {statistics.median(both):.3f} / {min(both):.3f} |"
        )
    if args.results:
        (REPO / "bench" / "results" / args.results).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
