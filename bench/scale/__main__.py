"""Scale: a generated school through the real pipeline — snapshot time, peak memory per stage, steady-state latency.

``python -m bench.scale [--students 100000] [--share 0.35] [--rate 1000] [--duration 300]
[--modes separate,together] [--steady-in separate] [--backend rocksdb] [--kafka BOOTSTRAP --pg DSN]``

Per mode, on a fresh SIS database and fresh topics: the reference school (sevisflow.deploy.sis) is
COPY-loaded into PostgreSQL, then the connector, normalize, sevis_events and the batcher start — each in
its own process (mode ``separate``: ``python -m sevisflow connector run``, ``… process normalize`` …) or
all in one ``sevisflow run`` (mode ``together``). Measured:

* snapshot: seconds from the start of the processes until every student view the pure pipeline derives
  from the school is on ``sevisflow.students``, every Create on ``sevis.events``, and every Create in the
  open batch (folded from ``sevis.batches``); the peak RSS (VmHWM) of each process, sampled from /proc;
* steady state (the modes in ``--steady-in``): SIS commits at ``--rate`` row changes per second for
  ``--duration`` seconds — the school's generated activity first (``--activity`` transactions: admits,
  registrations, moves, …; generating more is slow at 100,000 students), then e-mail changes of every
  person in turn; p50/p99 latency from the SIS commit
  (the record's source commit time) to the record in the open batch, as received by a reader; each
  process's RSS over time (start, end, max of the window); where that latency goes, per hop (connector,
  then each stage's wait and commit: bench/scale/hops.py), with the CPU each stage and the box used.

Without ``--kafka``/``--pg`` it starts a throwaway local Kafka and PostgreSQL. Raw results go to
``--json-out`` (default bench/results/scale.json). The correctness check (every expected view and Create
arrived, no unexpected Create) is part of the result; the targets are not checked here (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo

from bench.scale.harness import (
    SEPARATE,
    TOGETHER,
    Driver,
    Expected,
    Stages,
    Tail,
    create_database,
    drop_database,
    expected_snapshot,
    run_settings,
    write_config,
)
from bench.scale.hops import HopLog, SourceTimes, hop_breakdown
from sevisflow.core.kafka_io import ensure_topics
from sevisflow.core.topics import all_topics
from sevisflow.deploy.sis.activity import generate_activity
from sevisflow.deploy.sis.generator import generate_school
from sevisflow.deploy.sis.load import create_schema, load_school
from sevisflow.deploy.sis.replay import TODAY

REPO = Path(__file__).resolve().parents[2]
OPS_PER_TX = 1.41  # row changes per generated activity transaction (measured on the generator's output)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--students", type=int, default=100_000)
    p.add_argument("--share", type=float, default=0.35, help="international share (default 0.35)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, default=1000.0, help="steady state: SIS row changes per second")
    p.add_argument("--duration", type=float, default=300.0, help="steady state: seconds of load (0 = none)")
    p.add_argument(
        "--activity",
        type=int,
        default=10_000,
        help="steady state: how many generated activity "
        "transactions (admits, registrations, moves, …) come first; then e-mail changes (default 10000)",
    )
    p.add_argument("--writers", type=int, default=4, help="steady state: SIS writer processes (default 4)")
    p.add_argument(
        "--modes",
        default="separate,together",
        help="separate (a process per stage), together (one `sevisflow run`), or both",
    )
    p.add_argument("--steady-in", default="separate", help="the modes that also run the steady state")
    p.add_argument(
        "--backend",
        default="rocksdb",
        help="[state] backend: rocksdb, memory, or both side by side in one run (rocksdb,memory)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=1200.0,
        help="seconds the snapshot may take before the run is reported incomplete",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="after the load: seconds without a new open-batch record that end the run (default 30)",
    )
    p.add_argument(
        "--drain-max",
        type=float,
        default=300.0,
        help="after the load: wait at most this long for the open batch to go quiet (default 300 s)",
    )
    p.add_argument(
        "--rss-limit",
        type=float,
        default=12_000,
        help="MiB: a stage process above it stops the run (reported as a failure; default 12000, 0 = none)",
    )
    p.add_argument("--sample", type=float, default=1.0, help="seconds between RSS samples")
    p.add_argument("--kafka", help="bootstrap servers of a running Kafka (with --pg; default: start a local stack)")
    p.add_argument(
        "--pg",
        help="libpq conninfo of a PostgreSQL with wal_level=logical (the bench makes and drops a database per mode)",
    )
    p.add_argument("--work-dir", help="folder for the runs' state, logs and settings (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep each run's folder (logs, settings, state) for a look")
    p.add_argument("--json-out", default=str(REPO / "bench" / "results" / "scale.json"))
    return p


@contextmanager
def services(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(Kafka bootstrap, PostgreSQL conninfo): the given ones, or a local stack started for the run."""
    if args.kafka and args.pg:
        yield args.kafka, args.pg
        return
    from sevisflow.deploy.local.stack import start_stack, stop_stack

    info = start_stack(name="bench-scale", progress=lambda *_: None)
    assert info.kafka and info.postgres
    try:
        yield info.kafka.bootstrap, info.postgres.dsn
    finally:
        stop_stack(info, remove=True)


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _code_version() -> dict[str, Any]:
    """The commit the stages ran from, and the stage files changed since (a shared working tree moves)."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "changed": git("status", "--short", "--", "sevisflow", "connectors", "processors").splitlines(),
    }


def _load_avg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole box since boot (/proc/stat): busy = all but idle and iowait."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def _busy_share(start: tuple[int, int], end: tuple[int, int]) -> float:
    """The share of the box's CPU time that was busy between two :func:`_cpu_ticks` readings."""
    total = end[1] - start[1]
    return round((end[0] - start[0]) / total, 3) if total else 0.0


def wait_snapshot(tail: Tail, stages: Stages, exp: Expected, timeout_s: float) -> dict[str, Any]:
    """Seconds (after the processes started) until every expected view, Create event and open-batch Create
    arrived; the peak RSS of each process by then."""
    marks: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    why = ""
    while time.monotonic() < deadline:
        why = stages.failed() or (f"the reader failed: {tail.error}" if tail.error else "")
        if why:
            break
        now = time.monotonic() - stages.t0
        if "views" not in marks and exp.views <= tail.views:
            marks["views"] = now
        if "create_events" not in marks and exp.creates <= tail.create_events:
            marks["create_events"] = now
        if "open_batch" not in marks and exp.creates <= tail.open_creates():
            marks["open_batch"] = now
        if len(marks) == 3:
            break
        time.sleep(0.5)
    stages.sample_once()
    got = tail.open_creates()
    return {
        "complete": len(marks) == 3,
        "failure": why[-3000:],
        "seconds": marks,
        "views_expected": len(exp.views),
        "views_seen": len(exp.views & tail.views),
        "creates_expected": len(exp.creates),
        "creates_in_open_batch": len(exp.creates & got),
        "creates_unexpected": len(got - exp.creates),
        "creates_unexpected_keys": sorted(got - exp.creates)[:20],
        "open_batch_records": tail.open_records(),
        "peak_rss_mib": dict(stages.peak_mib),
        "cpu_s": dict(stages.cpu_s),
        "load_avg": _load_avg(),
    }


def _window(series: list[tuple[float, float]], start: float, end: float) -> dict[str, float]:
    """A memory series (RSS, or the state stores') over [start, end]: the median of its first and last tenth,
    and the maximum (MiB)."""
    vals = [rss for t, rss in series if start <= t <= end]
    if not vals:
        return {}
    tenth = max(1, len(vals) // 10)
    return {
        "start_mib": statistics.median(vals[:tenth]),
        "end_mib": statistics.median(vals[-tenth:]),
        "max_mib": max(vals),
        "samples": len(vals),
    }


def _percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else float("nan")


def _behind_s(tail: Tail, last_commit_ms: int, since_ms: int) -> float | None:
    """Seconds between the last SIS commit of the load and the newest commit whose record reached the open
    batch: 0 when the pipeline kept up, growing when it fell behind."""
    newest = max((at for at, _ in list(tail.latencies) if at >= since_ms), default=None)
    return None if newest is None else max(0.0, (last_commit_ms - newest) / 1000)


def run_steady(
    args: argparse.Namespace, dsn: str, school: Any, activity: list[Any], tail: Tail, stages: Stages
) -> dict[str, Any]:
    """The activity, then e-mail changes, committed at ``--rate`` for ``--duration``; then wait until the open
    batch is quiet for ``--settle`` seconds (at most ``--drain-max``)."""
    begin = time.monotonic() - stages.t0
    load_avg_start = _load_avg()
    stages.sample_once()
    cpu_at_start, ticks_at_start, read_at = dict(stages.cpu_s), _cpu_ticks(), time.monotonic()
    people = [row["person_id"] for row in school.get("person", [])]
    hop_log = HopLog(since_ms=int(time.time() * 1000))
    source = SourceTimes(tail.settings, hop_log).start()
    tail.hops = hop_log
    driver = Driver(dsn, activity, people, args.rate, args.duration, args.writers).run()
    load_end = time.monotonic() - stages.t0
    stages.sample_once()
    busy_during_load = _busy_share(ticks_at_start, _cpu_ticks())
    read_s = time.monotonic() - read_at  # the load, and the writers' 3 s start
    cores_during_load = {n: round((cpu - cpu_at_start.get(n, 0.0)) / read_s, 2) for n, cpu in stages.cpu_s.items()}
    load_avg_at_load_end = _load_avg()
    last_commit_ms = driver.started_ms + int(driver.elapsed_s * 1000)
    behind_at_load_end = _behind_s(tail, last_commit_ms, driver.started_ms)
    seen, quiet_since, give_up = -1, time.monotonic(), time.monotonic() + args.drain_max
    while time.monotonic() < give_up and time.monotonic() - quiet_since < args.settle:
        if len(tail.latencies) != seen:
            seen, quiet_since = len(tail.latencies), time.monotonic()
        if stages.failed():
            break
        time.sleep(0.5)
    end = time.monotonic() - stages.t0
    stages.sample_once()
    source.stop()
    tail.hops = None
    hops = hop_breakdown(hop_log)
    hops.update(source_reader_cpu_s=round(source.cpu_s, 2), source_reader_error=source.error)
    lat = [ms for at, ms in list(tail.latencies) if at >= driver.started_ms]
    return {
        "rate_target": args.rate,
        "duration_target_s": args.duration,
        "writers": args.writers,
        "committed_tx": driver.committed_tx,
        "committed_row_changes": driver.committed_ops,
        "load_s": round(driver.elapsed_s, 1),
        "rate_achieved": driver.committed_ops / driver.elapsed_s if driver.elapsed_s else 0.0,
        "missed_ops": driver.missed_ops,
        "kinds": driver.kinds,
        "driver_error": driver.error,
        "failure": stages.failed()[-3000:],
        "records": len(lat),
        "p50_ms": _percentile(lat, 0.50),
        "p99_ms": _percentile(lat, 0.99),
        "max_ms": max(lat) if lat else None,
        "behind_at_load_end_s": behind_at_load_end,
        "behind_at_end_s": _behind_s(tail, last_commit_ms, driver.started_ms),
        "drain_s": round(end - load_end, 1),
        "hops": hops,
        "rss": {n: _window(s, begin, end) for n, s in stages.series.items()},
        "state_store_mib": {n: _window(s, begin, end) for n, s in stages.state_series.items()},
        "peak_rss_mib": dict(stages.peak_mib),
        "cpu_s": dict(stages.cpu_s),
        "cpu_s_at_start": cpu_at_start,
        "cores_during_load": cores_during_load,
        "box_busy_during_load": busy_during_load,
        "load_avg_start": load_avg_start,
        "load_avg_at_load_end": load_avg_at_load_end,
        "load_avg": _load_avg(),
    }


def run_mode(
    mode: str,
    backend: str,
    args: argparse.Namespace,
    bootstrap: str,
    server: str,
    school: Any,
    exp: Expected,
    activity: list[Any],
) -> dict[str, Any]:
    """One mode on its own database and topics: load, start the processes, snapshot, maybe steady state."""
    unique = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix=f"scale-{mode}-", dir=args.work_dir))
    pg = create_database(server, f"scale_{unique}")
    stages: Stages | None = None
    tail: Tail | None = None
    try:
        dsn = make_conninfo(**pg)
        create_schema(dsn)
        t0 = time.perf_counter()
        load_school(dsn, school)
        load_s = time.perf_counter() - t0
        settings, config = write_config(run_settings(bootstrap, pg, unique, work, backend), work / "sevisflow.toml")
        ensure_topics(settings.kafka, all_topics(settings))
        _say(f"{mode}/{backend}: SIS loaded in {load_s:.1f}s; starting the stage processes")
        stages = Stages(config, work, every_s=args.sample, rss_limit_mib=args.rss_limit).start(
            SEPARATE if mode == "separate" else TOGETHER
        )
        tail = Tail(settings, t0=stages.t0).start()
        out: dict[str, Any] = {
            "mode": mode,
            "backend": backend,
            "sis_load_s": round(load_s, 1),
            "snapshot": wait_snapshot(tail, stages, exp, args.timeout),
        }
        _say(f"{mode}/{backend}: snapshot {json.dumps(out['snapshot'])}")
        if mode in args.steady_in.split(",") and args.duration > 0 and out["snapshot"]["complete"]:
            out["steady"] = run_steady(args, dsn, school, activity, tail, stages)
            _say(f"{mode}/{backend}: steady {json.dumps({k: v for k, v in out['steady'].items() if k != 'rss'})}")
        out["rss_series"] = stages.series
        out["state_store_series"] = stages.state_series
        return out
    finally:
        if stages:
            stages.stop()
        if tail:
            tail.stop()
        drop_database(pg)
        if args.keep:
            _say(f"{mode}/{backend}: logs and state kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in ("separate", "together") for m in modes):
        raise SystemExit(f"--modes: choose from separate, together (got {args.modes!r})")
    backends = [b for b in args.backend.split(",") if b]
    if not backends or any(b not in ("rocksdb", "memory") for b in backends):
        raise SystemExit(f"--backend: choose from rocksdb, memory (got {args.backend!r})")
    t0 = time.perf_counter()
    school = generate_school(args.students, args.share, args.seed, TODAY)
    gen_s = time.perf_counter() - t0
    exp = expected_snapshot(school)
    steady = args.duration > 0 and any(m in args.steady_in.split(",") for m in modes)
    n_tx = min(args.activity, int(args.rate * args.duration / OPS_PER_TX)) if steady else 0
    activity = generate_activity(school, n_tx, args.seed, TODAY) if n_tx > 0 else []
    _say(
        f"{args.students} students generated in {gen_s:.1f}s; expected {len(exp.views)} views, "
        f"{len(exp.creates)} Creates (pure pipeline, {exp.seconds:.1f}s); {len(activity)} activity transactions"
    )
    result: dict[str, Any] = {
        "students": args.students,
        "share": args.share,
        "seed": args.seed,
        "backend": args.backend,
        "rows": sum(len(v) for v in school.values()),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_avg_start": _load_avg(),
        "code": _code_version(),
        "cpus": len(__import__("os").sched_getaffinity(0)),
        "modes": {},
    }
    with services(args) as (bootstrap, server):
        for mode in modes:
            for backend in backends:  # side by side: the same school, services and load, one after the other
                name = mode if len(backends) == 1 else f"{mode}/{backend}"
                result["modes"][name] = run_mode(mode, backend, args, bootstrap, server, school, exp, activity)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(result, indent=1))
    print_table(result)
    return 0 if all(m["snapshot"]["complete"] for m in result["modes"].values()) else 1


def print_table(result: dict[str, Any]) -> None:
    """The README's rows: per mode, snapshot seconds, peak RSS per process, steady latency and memory."""
    print(f"\n{result['students']:,} students ({result['rows']:,} SIS rows), backend {result['backend']}")
    for name, m in result["modes"].items():
        mode = f"{name} ({m.get('backend', result['backend'])})"
        s = m["snapshot"]
        secs = ", ".join(f"{k} {v:.0f}s" for k, v in s["seconds"].items())
        rss = ", ".join(f"{k} {v:.0f} MiB" for k, v in s["peak_rss_mib"].items())
        print(
            f"| {mode} | snapshot: {secs} ({'complete' if s['complete'] else 'INCOMPLETE'}; "
            f"{s['creates_in_open_batch']}/{s['creates_expected']} Creates) | peak RSS {rss} | load {s['load_avg']} |"
        )
        st = m.get("steady")
        if st:
            mem = ", ".join(
                f"{k} {w.get('start_mib', 0):.0f}→{w.get('end_mib', 0):.0f} (max {w.get('max_mib', 0):.0f})"
                for k, w in st["rss"].items()
            )
            print(
                f"| {mode} steady | {st['rate_achieved']:.0f}/s for {st['load_s']}s, {st['records']} records: "
                f"p50 {st['p50_ms']:.0f} ms, p99 {st['p99_ms']:.0f} ms, max {st['max_ms']} ms; behind at load end "
                f"{st['behind_at_load_end_s']} s, after {st['drain_s']} s of drain {st['behind_at_end_s']} s | RSS MiB {mem} |"
            )
            state = ", ".join(
                f"{k} {w.get('start_mib', 0):.0f}→{w.get('end_mib', 0):.0f} (max {w.get('max_mib', 0):.0f})"
                for k, w in st.get("state_store_mib", {}).items()
                if w
            )
            if state:
                print(f"| {mode} steady: RocksDB state stores' memory (MiB, first → last tenth) | {state} |")
            print_hops(mode, st)


def print_hops(mode: str, steady: dict[str, Any]) -> None:
    """Per hop p50/p99/max seconds (SIS commit → connector → each stage's output produced → visible)."""
    h = steady.get("hops") or {}
    if not h.get("hops"):
        print(f"| {mode} hops | none joined ({h.get('source_reader_error') or 'no record seen at every hop'}) |")
        return
    print(
        f"| {mode} hops | {h['joined_records']} of {h['open_batch_records']} open-batch records joined; "
        f"load {steady.get('load_avg_start')} → {steady.get('load_avg_at_load_end')}; box CPU busy "
        f"{steady.get('box_busy_during_load', 0):.0%} during the load; stage cores {steady.get('cores_during_load')}; "
        f"sampler CPU {h['bookkeeping_cpu_s'] + h['source_reader_cpu_s']:.1f} s |"
    )
    print("| hop | p50 s | p99 s | max s |")
    for name, v in [*h["hops"].items(), ("total", h["total"])]:
        print(f"| {name} | {v['p50_s']:.2f} | {v['p99_s']:.2f} | {v['max_s']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
