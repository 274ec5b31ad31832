"""CPU of the scale bench's SIS load: one-statement transactions sent alone (autocommit) or as BEGIN, statement, COMMIT.

``python -m bench.scale.writer_cpu [--rate 1000] [--writers 4] [--seconds 20] [--repeat 3] [--json-out FILE]``

Starts a throwaway PostgreSQL (deploy/local/stack.py) with a ``person`` table of 4,000 rows, then runs the scale
bench's own writer processes (:func:`bench.scale.harness.write_load`: e-mail changes, one row per commit) both
ways in turn, ``--repeat`` times. Measured per 1,000 row changes: the writers' CPU (their rusage, as children of
this process) and PostgreSQL's (the postmaster's own and its reaped backends' CPU from ``/proc``). No
replication slot is open, so the walsender's share is not in it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.scale.harness import write_load
from sevisflow.deploy.local.stack import PostgresService

PEOPLE = 4000


def postmaster_cpu_s(pid: int) -> float:
    """The postmaster's CPU plus that of the children it reaped (every backend that has exited)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def one_run(dsn: str, pid: int, alone: bool, rate: float, writers: int, seconds: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 3.0
    before, pg_before = resource.getrusage(resource.RUSAGE_CHILDREN), postmaster_cpu_s(pid)
    procs = [
        ctx.Process(
            target=write_load,
            args=(dsn, [], list(range(w, PEOPLE, writers)), f"w{w}", rate / writers, seconds, start_at, results, alone),
        )
        for w in range(writers)
    ]
    for p in procs:
        p.start()
    outs = [results.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    time.sleep(0.5)  # the backends exit with their connections; the postmaster reaps them
    after, pg_after = resource.getrusage(resource.RUSAGE_CHILDREN), postmaster_cpu_s(pid)
    ops = sum(o["committed_ops"] for o in outs)
    errors = [o["error"] for o in outs if o["error"]]
    if errors:
        raise RuntimeError(errors[0])
    writers_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"ops": ops, "writers_cpu_s": writers_s, "postgres_cpu_s": pg_after - pg_before}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale.writer_cpu", description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-writer-cpu-"))
    info = PostgresService(root).start()
    try:
        with psycopg.connect(info.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE person (person_id int PRIMARY KEY, email text, updated_at timestamptz)")
            conn.execute(
                "INSERT INTO person SELECT g, 'w@example.org', now() FROM generate_series(0, %s) g", (PEOPLE - 1,)
            )
        runs: dict[str, list[dict[str, Any]]] = {"alone": [], "begin_commit": []}
        for _ in range(args.repeat):  # interleaved
            for name in runs:
                runs[name].append(one_run(info.dsn, info.pid, name == "alone", args.rate, args.writers, args.seconds))
    finally:
        PostgresService.stop(info)
        shutil.rmtree(root, ignore_errors=True)
    summary = {
        name: {
            "writers_cpu_s_per_1000": statistics.median(r["writers_cpu_s"] / r["ops"] * 1000 for r in rs),
            "postgres_cpu_s_per_1000": statistics.median(r["postgres_cpu_s"] / r["ops"] * 1000 for r in rs),
            "runs": rs,
        }
        for name, rs in runs.items()
    }
    for name, s in summary.items():
        print(
            f"{name:>12}: writers {s['writers_cpu_s_per_1000']:.3f} CPU-s, PostgreSQL "
            f"{s['postgres_cpu_s_per_1000']:.3f} CPU-s per 1,000 row changes (medians of {args.repeat})"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), **summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
