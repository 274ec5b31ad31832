"""``python -m bench.chaos [--minutes M] [--kills K] [--seed S]``: a full-pipeline chaos run and its figures.

Starts a throwaway local stack (PostgreSQL + Kafka), runs testkit/chaos.py on it (every stage
its own process, SIGKILLed at seeded random moments, the SEVIS simulator's faults on), prints
kills per stage and the end-state counts (lost, duplicated, sent twice, invalid), and writes the
report to bench/results/chaos.json. Exit 1 when any of those counts is not zero.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from testkit.chaos import REPO, Chaos, Plan


def main(argv: list[str]) -> int:
    d = Plan()
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=d.minutes, help="length of the activity-and-kills phase")
    ap.add_argument("--kills", type=int, default=d.kills, help="kill -9s over that phase")
    ap.add_argument("--seed", type=int, default=d.seed, help="seed of the school, its activity and the kill schedule")
    ap.add_argument("--students", type=int, default=d.students)
    ap.add_argument("--share", type=float, default=d.share, help="international share of the school")
    ap.add_argument("--activity", type=int, default=d.activity, help="SIS transactions played during the phase")
    ap.add_argument("--close-every", type=float, default=d.close_every_s, help="seconds between DSO closes")
    ap.add_argument(
        "--registration-delay",
        type=float,
        default=d.registration_delay_s,
        help="seconds an accepted upload stays unknown to downloads (S0031) at the simulator",
    )
    ap.add_argument("--fault-every", type=int, default=d.fault_every, help="every n-th kill also arms a SEVIS fault")
    ap.add_argument(
        "--in-flight-share",
        type=float,
        default=d.in_flight_share,
        help="share of the kills that hit sink sevis while SEVIS holds its upload/download",
    )
    ap.add_argument("--xsd-dir", default=str(REPO.parent / "shared" / "sevis" / "xsd"))
    ap.add_argument("--keep", action="store_true", help="keep the stack folder (logs, outbox) for a post-mortem")
    args = ap.parse_args(argv)
    plan = Plan(
        students=args.students,
        share=args.share,
        activity=args.activity,
        minutes=args.minutes,
        kills=args.kills,
        seed=args.seed,
        close_every_s=args.close_every,
        fault_every=args.fault_every,
        in_flight_share=args.in_flight_share,
        registration_delay_s=args.registration_delay,
    )

    from sevisflow.deploy.local.stack import start_stack, stop_stack

    started = datetime.now(UTC)
    t0 = time.monotonic()
    info = start_stack(name="bench-chaos", progress=lambda m: print(f"  {m}", flush=True))
    assert info.kafka and info.postgres
    pg = {"host": "127.0.0.1", "port": info.postgres.port, "dbname": info.postgres.dbname, "user": info.postgres.user}
    work = Path(info.base) / "chaos"
    try:
        report = Chaos(
            plan,
            info.kafka.bootstrap,
            pg,
            info.postgres.dsn,
            work,
            args.xsd_dir,
            uuid.uuid4().hex[:8],
            say=lambda m: print(m, flush=True),
        ).run()
    finally:
        if args.keep:
            print(f"stack kept in {info.base} (stop it with `sevisflow stack down`)")
            stop_stack(info, remove=False)
        else:
            saved = REPO / ".local" / "chaos-logs"  # the stages' logs of the last run, for a post-mortem
            shutil.rmtree(saved, ignore_errors=True)
            if (work / "logs").is_dir():
                shutil.copytree(work / "logs", saved)
            stop_stack(info, remove=True)
    out = report.as_json()
    out.update(
        command="python -m bench.chaos " + " ".join(argv),
        started_utc=started.isoformat(timespec="minutes"),
        wall_s=round(time.monotonic() - t0, 1),
    )
    path = REPO / "bench" / "results" / "chaos.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nchaos run, seed {plan.seed}, {plan.minutes:g} min, started {started:%Y-%m-%d %H:%M} UTC")
    print(report.table())
    if report.unplanned_exits:
        for e in report.unplanned_exits:
            print(f"  stage {e['stage']} exited by itself (rc {e['rc']}) at {e['at']}")
    print(f"report: {path}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
