"""``python -m bench.connector``: WAL → Kafka throughput of the connector against the physical limit.

Starts its own PostgreSQL + Kafka (the local stack), then:

1. ``bench_person`` (11 columns like the reference SIS person/students table, REPLICA IDENTITY FULL)
   with ``--rows`` preloaded rows, a publication, and a *template* slot created just before the workload;
2. the workload: ``--changes`` changes in transactions of 100 statements, 40% INSERT, 50% UPDATE,
   10% DELETE (a PL/pgSQL procedure, so the client does not limit the write rate);
3. every measured run copies the template slot (``pg_copy_logical_replication_slot``), drains the
   copy to the workload's end and drops it — so every run decodes the identical WAL:
   * ``raw``: psycopg 3 CopyBoth reader, batch reads + 20 ms sleep when drained, no decoding (the
     walsender's streaming ceiling);
   * ``pg_recvlogical`` → /dev/null (reference only: it reads message by message);
   * ``connector``: the real connector (run_connector's task), timed until every event up to the
     workload's last commit is produced and Kafka acknowledged it (idempotent producer, acks=all; the
     producer's queue empty) — not until the slot is *confirmed*, which waits for the next offset flush
     (``offset.flush.interval.ms``) and made the figure land on either side of a flush; the time to
     the confirmation is reported apart — with ``--decoder both`` (the
     default) once with the C tuple decoder and once with the pure-Python one
     (``SEVISFLOW_PURE_PYTHON_DECODER=1``), the order alternating from repeat to repeat;
4. snapshot: ``bench_snap`` with ``--rows`` rows read by the connector (snapshot.mode=initial_only)
   into Kafka, acknowledged (per decoder, as the stream).

``python -m bench.connector.micro`` times the decode + envelope work alone, offline, per decoder.

Each connector/raw run is a child process (bench/connector/child.py): client CPU is its
getrusage (user+sys, librdkafka threads included), peak RSS its ru_maxrss.
Results: a Markdown table on stdout and raw JSON in bench/results/connector.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[2]

SCHEMA = """
DROP TABLE IF EXISTS bench_person, bench_snap;
CREATE TABLE bench_person (
    id bigint PRIMARY KEY, sevis_id text, first_name text, last_name text, birth_date date, citizenship char(2),
    visa_type text, email text, major_cip text, program_end date, updated_at timestamptz);
ALTER TABLE bench_person REPLICA IDENTITY FULL;
CREATE TABLE bench_snap (LIKE bench_person INCLUDING ALL);
ALTER TABLE bench_snap REPLICA IDENTITY FULL;
CREATE OR REPLACE FUNCTION bench_row(i bigint) RETURNS bench_person LANGUAGE sql IMMUTABLE AS $$
  SELECT i, 'N' || lpad(i::text, 10, '0'), 'First' || (i % 9973), 'Last' || (i % 7919),
         date '1990-01-01' + (i % 4000)::int, (ARRAY['IN','CN','BR','NG','DE','KR'])[1 + i % 6],
         (ARRAY['F-1','J-1','M-1'])[1 + i % 3], 'student' || i || '@example.edu',
         lpad((i % 99)::text, 2, '0') || '.' || lpad((i % 9999)::text, 4, '0'),
         date '2026-05-15' + (i % 900)::int, timestamptz '2026-01-01 00:00:00+00' + (i || ' seconds')::interval
$$;
CREATE OR REPLACE PROCEDURE bench_changes(n_tx int, rows_base bigint) LANGUAGE plpgsql AS $$
DECLARE
  ins bigint := 10000000; del bigint := rows_base; upd bigint := 0; j int; r bench_person;
BEGIN
  FOR t IN 1..n_tx LOOP
    FOR j IN 0..99 LOOP
      IF j % 10 IN (0, 3, 5, 8) THEN
        ins := ins + 1; r := bench_row(ins);
        INSERT INTO bench_person VALUES (r.*);
      ELSIF j % 10 = 9 THEN
        DELETE FROM bench_person WHERE id = del; del := del - 1;
      ELSE
        upd := upd + 7919;
        UPDATE bench_person SET email = 'u' || t || '.' || j || '@example.edu', updated_at = now()
          WHERE id = 1 + upd % (rows_base / 2);
      END IF;
    END LOOP;
    COMMIT;
  END LOOP;
END $$;
"""


def _lsn(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8").fetchone()[0])  # type: ignore[index]


def _child(kind: str, job: dict[str, Any], decoder: str | None = None, repo: Path = REPO) -> dict[str, Any]:
    """One measured run in a child process, of the connector code in ``repo`` (this checkout, or another
    copy for an A/B: its bench/connector/child.py runs, with its own sevisflow)."""
    env = dict(os.environ, PYTHONPATH=str(repo))
    env.pop("SEVISFLOW_PURE_PYTHON_DECODER", None)
    if decoder == "python":
        env["SEVISFLOW_PURE_PYTHON_DECODER"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.connector.child", kind],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=env,
        cwd=repo,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.connector", description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=500_000, help="row changes in the workload (multiple of 100)")
    ap.add_argument("--rows", type=int, default=500_000, help="preloaded rows (and snapshot table size)")
    ap.add_argument("--repeat", type=int, default=3, help="measured runs of each kind")
    ap.add_argument("--skip-snapshot", action="store_true")
    ap.add_argument(
        "--snapshot-only",
        action="store_true",
        help="only the snapshot runs: no change workload, no raw / pg_recvlogical / stream / Debezium runs",
    )
    ap.add_argument(
        "--snapshot-fetch-size",
        type=int,
        default=None,
        help="snapshot.fetch.size of the snapshot runs (rows per chunk; the connector's default when not given)",
    )
    ap.add_argument(
        "--snapshot-ab",
        type=Path,
        metavar="DIR",
        action="append",
        default=[],
        help="also run every snapshot with the connector code of another copy of the repository (e.g. the code "
        "before a change), alternating with this one in each repeat; reported side by side (repeatable)",
    )
    ap.add_argument(
        "--stream-ab",
        type=Path,
        metavar="DIR",
        action="append",
        default=[],
        help="also run every stream with the connector code of another copy of the repository (e.g. the code "
        "before a change), C decoder, alternating with this one in each repeat; reported side by side (repeatable)",
    )
    ap.add_argument(
        "--stream-compression",
        metavar="CODEC",
        action="append",
        default=[],
        help="also run every stream of this checkout with the producer's compression.type set to CODEC (none, "
        "lz4, zstd, …; the connector's own setting otherwise), interleaved; reported side by side (repeatable)",
    )
    ap.add_argument(
        "--results",
        default="connector.json",
        help="file name of the raw JSON under bench/results/ (default connector.json)",
    )
    ap.add_argument("--no-debezium", action="store_true", help="skip the Debezium 3.6.1 (Kafka Connect) comparison")
    ap.add_argument(
        "--decoder",
        choices=["c", "python", "both"],
        default="both",
        help="tuple decoder of the connector runs: the C extension, pure Python (forced with "
        "SEVISFLOW_PURE_PYTHON_DECODER=1), or both, alternating within each repeat",
    )
    args = ap.parse_args(argv)

    import signal

    from sevisflow.deploy.local.stack import find_pg_bin, start_stack, stop_stack

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below: stop the stack

    root = REPO / ".local" / "stacks"
    root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bench-connector-", dir=root))
    base.chmod(0o755)
    print("starting PostgreSQL + Kafka…", flush=True)
    info = start_stack(name="bench-connector", base=base, progress=lambda *_: None)
    results: dict[str, Any] = {
        "args": {k: [str(p) for p in v] if k in ("snapshot_ab", "stream_ab") else v for k, v in vars(args).items()},
        "runs": {},
        "loadavg_start": os.getloadavg(),
    }
    try:
        assert info.postgres and info.kafka
        dsn = info.postgres.dsn
        n_tx = 0 if args.snapshot_only else args.changes // 100
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
            conn.execute("ALTER SYSTEM SET logical_decoding_work_mem = '256MB'")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(SCHEMA)
            print(f"preloading {args.rows} rows…", flush=True)
            conn.execute(
                "INSERT INTO bench_person SELECT r.* FROM generate_series(1, %s) g, LATERAL bench_row(g) r",
                (args.rows,),
            )
            conn.execute("INSERT INTO bench_snap SELECT * FROM bench_person")
            conn.execute("VACUUM ANALYZE bench_person")
            conn.execute("VACUUM ANALYZE bench_snap")
            conn.execute("CREATE PUBLICATION bench_pub FOR TABLE bench_person")
            conn.execute("SELECT pg_create_logical_replication_slot('tmpl', 'pgoutput')")
            start_lsn = _lsn(conn)
            print(f"workload: {n_tx} transactions × 100 changes (40% I / 50% U / 10% D)…", flush=True)
            t0 = time.monotonic()
            conn.execute("SET synchronous_commit = off")
            if n_tx:
                conn.execute("CALL bench_changes(%s, %s)", (n_tx, args.rows))
            gen_s = time.monotonic() - t0
            end_lsn = _lsn(conn)
        results["workload"] = {
            "transactions": n_tx,
            "changes": n_tx * 100,
            "wal_bytes": end_lsn - start_lsn,
            "generate_s": round(gen_s, 1),
        }
        print(f"  {n_tx * 100} changes, {(end_lsn - start_lsn) / 1e6:.0f} MB WAL in {gen_s:.0f}s", flush=True)

        def copy_slot(name: str) -> None:
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("SELECT pg_copy_logical_replication_slot('tmpl', %s)", (name,))

        def drop_slot(name: str) -> None:
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (name,)
                )

        conninfo = f"host=127.0.0.1 port={info.postgres.port} dbname=sis user=postgres"
        runs: dict[str, list[dict[str, Any]]] = {
            "raw": [],
            "raw_python_receive": [],
            "raw_pg2": [],
            "pg_recvlogical": [],
            "connector": [],
            "snapshot": [],
            "debezium": [],
            "connector_python": [],
            "snapshot_python": [],
            **{f"snapshot_ab:{p.resolve()}": [] for p in args.snapshot_ab},
            **{f"stream_ab:{p.resolve()}": [] for p in args.stream_ab},
            **{f"stream_compression:{c}": [] for c in args.stream_compression},
        }
        decoders = ["c", "python"] if args.decoder == "both" else [args.decoder]

        def slot_state(name: str) -> tuple[bool, int]:
            with psycopg.connect(dsn, autocommit=True) as c:
                row = c.execute(
                    "SELECT active, (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots "
                    "WHERE slot_name = %s",
                    (name,),
                ).fetchone()
            return (bool(row[0]), int(row[1] or 0)) if row else (False, 0)

        bindir = find_pg_bin()
        for rep in range(args.repeat):
            if args.snapshot_only:
                _snapshot_runs(args, info, base, decoders, rep, runs)
                continue
            # the raw drain with read_batch's C loop, then with its Python loop (SEVISFLOW_PURE_PYTHON_DECODER=1
            # switches off the C one)
            for kind, decoder_choice, label in (
                ("raw", None, ""),
                ("raw_python_receive", "python", ", Python read loop"),
            ):
                slot = f"{kind}_{rep}"
                copy_slot(slot)
                job = {"conninfo": conninfo, "slot": slot, "publication": "bench_pub", "commits": n_tx}
                r = _child("raw", job, decoder_choice)
                drop_slot(slot)
                runs[kind].append(r)
                print(
                    f"  raw drain{label} #{rep + 1}: {n_tx * 100 / r['seconds']:,.0f} changes/s, "
                    f"{r['cpu_s'] / r['messages'] * 1e6:.2f} µs CPU/message",
                    flush=True,
                )

            slot = f"pg2_{rep}"
            copy_slot(slot)
            r = _child("raw_pg2", {"conninfo": conninfo, "slot": slot, "publication": "bench_pub", "commits": n_tx})
            drop_slot(slot)
            runs["raw_pg2"].append(r)
            print(f"  psycopg2 drain #{rep + 1}: {n_tx * 100 / r['seconds']:,.0f} changes/s", flush=True)

            slot = f"rl_{rep}"
            copy_slot(slot)
            t0 = time.monotonic()
            subprocess.run(
                [
                    str(bindir / "pg_recvlogical"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(info.postgres.port),
                    "-U",
                    "postgres",
                    "-d",
                    "sis",
                    "-S",
                    slot,
                    "--start",
                    "--no-loop",
                    "-f",
                    "/dev/null",
                    "-E",
                    f"{end_lsn >> 32:X}/{end_lsn & 0xFFFFFFFF:X}",
                    "-o",
                    "proto_version=1",
                    "-o",
                    "publication_names=bench_pub",
                ],
                check=True,
                capture_output=True,
                timeout=600,
            )
            rl_s = time.monotonic() - t0
            drop_slot(slot)
            runs["pg_recvlogical"].append({"seconds": rl_s})
            print(f"  pg_recvlogical #{rep + 1}: {n_tx * 100 / rl_s:,.0f} changes/s", flush=True)

            # every variant in every repeat, the order alternating, so that load drift hits all alike
            variants = _stream_variants(args, decoders)
            for key, dec, other, codec in variants if rep % 2 == 0 else variants[::-1]:
                tag = f"{rep}{'' if dec == 'c' else 'py'}{f'v{variants.index((key, dec, other, codec))}' if other or codec else ''}"
                slot = f"conn_{tag}"
                copy_slot(slot)
                offsets = base / f"offsets_{tag}"
                offsets.mkdir()
                name = f"bench{tag}"
                (offsets / f"{name}.{slot}.json").write_text(
                    json.dumps(
                        {
                            "slot_name": slot,
                            "snapshot_completed": True,
                            "snapshotted_tables": ["public.bench_person"],
                            "snapshot": None,
                        }
                    )
                )
                settings = {
                    "kafka": {"bootstrap_servers": info.kafka.bootstrap, "partitions": 3},
                    "postgres": {"host": "127.0.0.1", "port": info.postgres.port, "dbname": "sis"},
                    "connector": {
                        "name": name,
                        "slot_name": slot,
                        "topic_prefix": f"bench{tag}",
                        "publication_name": "bench_pub",
                        "table_include_list": ["public.bench_person"],
                        "offsets_dir": str(offsets),
                        "heartbeat_interval_ms": 0,
                    },
                }
                job = {"settings": settings, "end_lsn": end_lsn, "last_commit_lsn": runs["raw"][-1]["last_commit_lsn"]}
                if codec:
                    job["compression"] = codec
                r = _child("stream", job, dec, other or REPO)
                drop_slot(slot)
                r["raw_seconds"] = runs["raw"][-1]["seconds"]  # the raw drain just before, same repeat
                r["topic_bytes"] = _topic_bytes(Path(info.kafka.datadir), f"bench{tag}.")
                runs[key].append(r)
                print(
                    f"  connector ({r.get('decoder')} decoder{', ' + str(other) if other else ''}"
                    f"{', compression ' + codec if codec else ''}) #{rep + 1}: {n_tx * 100 / r['seconds']:,.0f} "
                    f"changes/s acked, {r['cpu_s'] / (n_tx * 100) * 1e6:.2f} µs CPU/change "
                    f"(task thread {(r.get('task_thread_cpu_s') or 0) / (n_tx * 100) * 1e6:.2f}, "
                    f"in read_batch {(r.get('read_batch_cpu_s') or 0) / (n_tx * 100) * 1e6:.2f}), "
                    f"peak RSS {r['maxrss_kb'] / 1024:.0f} MiB, topic {r['topic_bytes'] / 1e6:.1f} MB, "
                    f"receive {r.get('receive', '?')}, machine {(r.get('box_busy_s') or 0) / (n_tx * 100) * 1e6:.2f} "
                    f"µs CPU/change, by command {r.get('cpu_by_command_s')}",
                    flush=True,
                )

            if not args.no_debezium:
                from bench.connector import debezium_run

                slot = f"dbz_{rep}"
                copy_slot(slot)
                try:
                    r = debezium_run.run(
                        base / f"dbz_{rep}",
                        info.kafka.bootstrap,
                        info.postgres.port,
                        slot,
                        "bench_pub",
                        f"dbz{rep}",
                        end_lsn,
                        slot_state,
                    )
                    runs["debezium"].append(r)
                    print(
                        f"  Debezium {debezium_run.VERSION} #{rep + 1}: {n_tx * 100 / r['seconds']:,.0f} changes/s "
                        f"acked, {r['cpu_s'] / (n_tx * 100) * 1e6:.2f} µs CPU/change, "
                        f"peak RSS {r['maxrss_kb'] / 1024:.0f} MiB",
                        flush=True,
                    )
                except Exception as exc:  # noqa: BLE001 - report, keep the other figures
                    print(f"  Debezium run failed: {exc}", flush=True)
                    results.setdefault("debezium_errors", []).append(str(exc))
                finally:
                    drop_slot(slot)

            if not args.skip_snapshot:
                _snapshot_runs(args, info, base, decoders, rep, runs)
        results["runs"] = runs
        t0 = time.perf_counter()
        for _ in range(10_000_000):
            pass
        results["calibration_ms"] = (time.perf_counter() - t0) * 1000
        results["loadavg_end"] = os.getloadavg()
        _report(results)
        out = REPO / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / args.results).write_text(json.dumps(results, indent=1))
    finally:
        stop_stack(info, remove=True)
        shutil.rmtree(base, ignore_errors=True)
    return 0


def _stream_variants(args: argparse.Namespace, decoders: list[str]) -> list[tuple[str, str, Path | None, str | None]]:
    """(results key, decoder, other checkout or None, compression override or None) of one repeat's stream runs."""
    out: list[tuple[str, str, Path | None, str | None]] = [
        ("connector" if dec == "c" else "connector_python", dec, None, None) for dec in decoders
    ]
    out += [(f"stream_ab:{p.resolve()}", "c", p.resolve(), None) for p in args.stream_ab]
    out += [(f"stream_compression:{c}", "c", None, c) for c in args.stream_compression]
    return out


def _topic_bytes(log_dir: Path, prefix: str) -> int:
    """Bytes of the log segments the broker holds for the topics named ``prefix…`` (what compression changes)."""
    return sum(f.stat().st_size for d in log_dir.glob(f"{prefix}*") if d.is_dir() for f in d.glob("*.log"))


def _drop_slot(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (name,))


def _snapshot_runs(
    args: argparse.Namespace, info: Any, base: Path, decoders: list[str], rep: int, runs: dict[str, list[Any]]
) -> None:
    """One repeat of the snapshot runs: ``bench_snap`` read by the connector (snapshot.mode=initial_only), per
    decoder — and with ``--snapshot-ab``, per version too, the order alternating from repeat to repeat."""
    kinds: list[tuple[str, Path | None]] = [(dec, None) for dec in decoders]
    kinds += [("c", p.resolve()) for p in args.snapshot_ab]
    for dec, other in kinds if rep % 2 == 0 else kinds[::-1]:
        tag = f"{rep}{'' if dec == 'c' else 'py'}{f'ab{kinds.index((dec, other))}' if other else ''}"
        slot = f"snap_{tag}"
        offsets = base / f"snap_offsets_{tag}"
        settings = {
            "kafka": {"bootstrap_servers": info.kafka.bootstrap, "partitions": 3},
            "postgres": {"host": "127.0.0.1", "port": info.postgres.port, "dbname": "sis"},
            "connector": {
                "name": f"snap{tag}",
                "slot_name": slot,
                "topic_prefix": f"snap{tag}",
                "publication_name": f"snap_pub{tag}",
                "table_include_list": ["public.bench_snap"],
                "offsets_dir": str(offsets),
                "snapshot_mode": "initial_only",
                "heartbeat_interval_ms": 0,
                "provide_transaction_metadata": False,
                **({"snapshot_fetch_size": args.snapshot_fetch_size} if args.snapshot_fetch_size else {}),
            },
        }
        r = _child("snapshot", {"settings": settings}, dec, other or REPO)
        _drop_slot(info.postgres.dsn, slot)
        runs[f"snapshot_ab:{other}" if other else "snapshot" if dec == "c" else "snapshot_python"].append(r)
        print(
            f"  snapshot ({r.get('decoder')} decoder{', ' + str(other) if other else ''}) #{rep + 1}: {r['rows'] / r['seconds']:,.0f} rows/s "
            f"acked, {r['cpu_s'] / r['rows'] * 1e6:.2f} µs CPU/row, peak RSS {r['maxrss_kb'] / 1024:.0f} MiB, "
            f"{r.get('minor_faults', 0) / r['rows']:.2f} minor page faults/row",
            flush=True,
        )
        if r.get("phase_s"):
            print(
                f"    snapshot phase alone: {r['rows'] / r['phase_s']:,.0f} rows/s, "
                f"{r['phase_cpu_s'] / r['rows'] * 1e6:.2f} µs CPU/row; the whole machine "
                f"{r['phase_box_busy_s'] / r['rows'] * 1e6:.2f} µs CPU/row, "
                f"{r['phase_box_busy_s'] / r['phase_s']:.2f} of {r['box_cores']} cores busy; CPU s by command "
                f"{r.get('phase_cpu_by_command_s')}",
                flush=True,
            )


def _report(results: dict[str, Any]) -> None:
    n = results["workload"]["changes"]
    runs = results["runs"]

    def med_rate(rs: list[dict[str, Any]], count: float) -> tuple[float, float, float]:
        rates = sorted(count / r["seconds"] for r in rs)
        return rates[0], statistics.median(rates), rates[-1]

    calib = results.get("calibration_ms")
    print()
    la0, la1 = results.get("loadavg_start"), results.get("loadavg_end")
    if la0 and la1:
        print(
            f"load average (1/5/15 min): start {la0[0]:.2f} {la0[1]:.2f} {la0[2]:.2f}, end {la1[0]:.2f} {la1[1]:.2f} {la1[2]:.2f}"
        )
    if not runs.get("raw"):
        print("| what (snapshot only) | min | median | max |")
        print("|---|---|---|---|")
        _report_snapshots(runs, calib)
        return
    raw = med_rate(runs["raw"], n)
    rl = med_rate(runs["pg_recvlogical"], n)
    print(f"| what ({n:,} changes, {results['workload']['wal_bytes'] / 1e6:.0f} MB WAL) | min | median | max |")
    print("|---|---|---|---|")
    print(
        f"| physical limit: raw batch drain, no decode (changes/s) | {raw[0]:,.0f} | **{raw[1]:,.0f}** | {raw[2]:,.0f} |"
    )
    rcpu = statistics.median(r["cpu_s"] / r["messages"] * 1e6 for r in runs["raw"])
    print(f"| raw batch drain: client CPU per message (µs) | | {rcpu:.2f} | |")
    if runs.get("raw_python_receive"):
        rp = med_rate(runs["raw_python_receive"], n)
        rpcpu = statistics.median(r["cpu_s"] / r["messages"] * 1e6 for r in runs["raw_python_receive"])
        print(
            f"| raw batch drain with read_batch's Python loop (changes/s) | {rp[0]:,.0f} | {rp[1]:,.0f} "
            f"| {rp[2]:,.0f} |"
        )
        print(f"| raw batch drain with read_batch's Python loop: client CPU per message (µs) | | {rpcpu:.2f} | |")
    if runs.get("raw_pg2"):
        p2 = med_rate(runs["raw_pg2"], n)
        print(
            f"| psycopg2 LogicalReplicationConnection drain, no decode (changes/s) | {p2[0]:,.0f} | {p2[1]:,.0f} "
            f"| {p2[2]:,.0f} |"
        )
    print(f"| pg_recvlogical → /dev/null (changes/s) | {rl[0]:,.0f} | {rl[1]:,.0f} | {rl[2]:,.0f} |")
    con = (0.0, 0.0, 0.0)
    stream_kinds = [("connector", "C decoder"), ("connector_python", "pure-Python decoder")]
    stream_kinds += [(k, f"C decoder, {k.split(':', 1)[1]}") for k in runs if k.startswith("stream_ab:")]
    stream_kinds += [
        (k, f"C decoder, compression {k.split(':', 1)[1]}") for k in runs if k.startswith("stream_compression:")
    ]
    for key, label in stream_kinds:
        if not runs.get(key):
            continue
        con = med_rate(runs[key], n)
        cpus = sorted(r["cpu_s"] / n * 1e6 for r in runs[key])
        cpu = statistics.median(cpus)
        rss = max(r["maxrss_kb"] for r in runs[key]) / 1024
        print(
            f"| **connector ({label}), WAL → Kafka acknowledged (changes/s)** | {con[0]:,.0f} | **{con[1]:,.0f}** "
            f"| {con[2]:,.0f} |"
        )
        print(f"| connector ({label}) / physical limit | | **{con[1] / raw[1]:.2f}×** | |")
        pairs = sorted(r["seconds"] / c["seconds"] for r, c in zip(runs["raw"], runs[key]))
        print(
            f"| connector ({label}) / the raw drain just before it, per repeat "
            f"| {pairs[0]:.2f}× | {statistics.median(pairs):.2f}× | {pairs[-1]:.2f}× |"
        )
        if all("seconds_confirmed" in r for r in runs[key]):
            conf = med_rate([{"seconds": r["seconds_confirmed"]} for r in runs[key]], n)
            print(
                f"| connector ({label}) to the slot's confirmation at the next offset flush (changes/s; the "
                f"old stop condition) | {conf[0]:,.0f} | {conf[1]:,.0f} | {conf[2]:,.0f} |"
            )
        print(f"| connector ({label}) client CPU per change (µs) | {cpus[0]:.2f} | **{cpu:.2f}** | {cpus[-1]:.2f} |")
        if all(r.get("task_thread_cpu_s") for r in runs[key]):
            th = sorted(r["task_thread_cpu_s"] / n * 1e6 for r in runs[key])
            print(
                f"| connector ({label}) of which the task thread (µs per change, whole run) | {th[0]:.2f} "
                f"| {statistics.median(th):.2f} | {th[-1]:.2f} |"
            )
        if all(r.get("read_batch_cpu_s") for r in runs[key]):
            rb = sorted(r["read_batch_cpu_s"] / n * 1e6 for r in runs[key])
            print(
                f"| connector ({label}) of which receiving, in read_batch (µs per change) | {rb[0]:.2f} "
                f"| {statistics.median(rb):.2f} | {rb[-1]:.2f} |"
            )
        if all(r.get("box_busy_s") for r in runs[key]):
            box = sorted(r["box_busy_s"] / n * 1e6 for r in runs[key])
            busy = statistics.median(r["box_busy_s"] / r["seconds"] for r in runs[key])
            print(
                f"| connector ({label}) the whole machine's CPU per change (µs; PostgreSQL, Kafka, everything) / "
                f"cores busy (of {runs[key][0]['box_cores']}) | {box[0]:.2f} | {statistics.median(box):.2f} / "
                f"{busy:.2f} | {box[-1]:.2f} |"
            )
            for comm in ("java", "postgres"):
                per = sorted(r["cpu_by_command_s"].get(comm, 0.0) / n * 1e6 for r in runs[key])
                print(
                    f"| connector ({label}) {comm} CPU per change (µs) | {per[0]:.2f} | {statistics.median(per):.2f} "
                    f"| {per[-1]:.2f} |"
                )
        if all("topic_bytes" in r for r in runs[key]):
            tb = sorted(r["topic_bytes"] / 1e6 for r in runs[key])
            print(
                f"| connector ({label}) topic size on the broker (MB of log segments) | {tb[0]:.1f} | {statistics.median(tb):.1f} | {tb[-1]:.1f} |"
            )
        print(f"| connector ({label}) peak RSS (MiB, max of runs) | | **{rss:.0f}** | |")
    if runs.get("connector"):
        con = med_rate(runs["connector"], n)
    if runs.get("debezium"):
        dz = med_rate(runs["debezium"], n)
        dcpu = statistics.median(r["cpu_s"] / n * 1e6 for r in runs["debezium"])
        drss = max(r["maxrss_kb"] for r in runs["debezium"]) / 1024
        print(
            f"| Debezium 3.6.1.Final on Kafka Connect 4.3.0 standalone (broker 4.4.0), acknowledged (changes/s) | {dz[0]:,.0f} "
            f"| **{dz[1]:,.0f}** | {dz[2]:,.0f} |"
        )
        print(f"| Debezium JVM CPU per change (µs) / peak RSS (MiB) | | {dcpu:.2f} / {drss:.0f} | |")
        print(f"| connector / Debezium (median throughput) | | **{con[1] / dz[1]:.2f}×** | |")
    _report_snapshots(runs, calib)


def _med_rate(rs: list[dict[str, Any]], count: float) -> tuple[float, float, float]:
    rates = sorted(count / r["seconds"] for r in rs)
    return rates[0], statistics.median(rates), rates[-1]


def _report_snapshots(runs: dict[str, Any], calib: float | None) -> None:
    if calib:
        print(
            f"| machine load check: 10M empty Python loop iterations, ms (lower = less contended) | | {calib:.0f} | |"
        )
    med_rate = _med_rate
    kinds = [("snapshot", "C decoder")]
    kinds += [(k, f"C decoder, {k.split(':', 1)[1]}") for k in runs if k.startswith("snapshot_ab:")]
    for key, label in kinds + [("snapshot_python", "pure-Python decoder")]:
        snaps = runs.get(key) or []
        if not snaps:
            continue
        sn = med_rate(snaps, snaps[0]["rows"])
        srss = max(r["maxrss_kb"] for r in snaps) / 1024
        scpu = statistics.median(r["cpu_s"] / r["rows"] * 1e6 for r in snaps)
        print(
            f"| **snapshot ({label}) → Kafka acknowledged (rows/s)** | {sn[0]:,.0f} | **{sn[1]:,.0f}** | {sn[2]:,.0f} |"
        )
        print(f"| snapshot ({label}) client CPU per row (µs) / peak RSS (MiB) | | {scpu:.2f} / {srss:.0f} | |")
        if all(r.get("phase_s") for r in snaps):
            ph = med_rate([{"seconds": r["phase_s"]} for r in snaps], snaps[0]["rows"])
            pcpu = statistics.median(r["phase_cpu_s"] / r["rows"] * 1e6 for r in snaps)
            print(
                f"| snapshot ({label}), the snapshot phase alone (reading → acknowledged, rows/s) | {ph[0]:,.0f} "
                f"| **{ph[1]:,.0f}** | {ph[2]:,.0f} |"
            )
            print(f"| snapshot ({label}), the snapshot phase alone: client CPU per row (µs) | | {pcpu:.2f} | |")
            if all(r.get("phase_box_busy_s") is not None for r in snaps):
                bcpu = statistics.median(r["phase_box_busy_s"] / r["rows"] * 1e6 for r in snaps)
                busy = statistics.median(r["phase_box_busy_s"] / r["phase_s"] for r in snaps)
                print(
                    f"| snapshot ({label}), the snapshot phase alone: the whole machine's CPU per row (µs; PostgreSQL, "
                    f"Kafka and everything else running) / cores busy (of {snaps[0]['box_cores']}) | | {bcpu:.2f} / "
                    f"{busy:.2f} | |"
                )


if __name__ == "__main__":
    sys.exit(main())
