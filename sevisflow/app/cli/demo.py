"""``sevisflow demo``: run the whole pipeline end to end on a generated school (what `make demo` runs)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the pipeline end to end on a local stack it starts itself",
        description="Starts a real PostgreSQL and Kafka, generates a school, runs every stage, "
        "lets a DSO review and close a batch, writes and checks the XML, and stops "
        "everything again.",
    )
    p.add_argument("--students", type=int, default=300, help="students in the generated school (default 300)")
    p.add_argument("--international-share", type=float, default=0.35, help="share of F/M/J students (default 0.35)")
    p.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    p.add_argument("--xsd-dir", default=None, help="folder with the SEVIS XSDs (default ../shared/sevis/xsd)")
    p.add_argument("--activity", type=int, default=150, help="SIS change transactions to play (default 150)")
    p.add_argument(
        "--scholars", type=int, default=12, help="J-1 research scholars of the school's exchange program (default 12)"
    )
    p.add_argument(
        "--exchange-activity", type=int, default=40, help="changes of the sponsor's J-1 records to play (default 40)"
    )
    p.add_argument("--keep", action="store_true", help="leave the stack running at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sevisflow.app.demo import run_demo

    return run_demo(
        students=args.students,
        international_share=args.international_share,
        seed=args.seed,
        xsd_dir=args.xsd_dir,
        keep=args.keep,
        activity=args.activity,
        scholars=args.scholars,
        exchange_activity=args.exchange_activity,
    )
