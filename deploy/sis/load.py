"""Create the reference SIS in PostgreSQL, bulk-load a school, play activity; plus the CLI.

    python -m sevisflow.deploy.sis.load --dsn "host=… port=… dbname=…" --students 2000 \\
        --international-share 0.3 --seed 7 [--activity 500] [--authorizations] [--today 2026-10-05] [--replace] \\
        [--exchange 20 --exchange-activity 40] [--schools NORTH=300,SOUTH=200]

The school is loaded with COPY in one transaction (fast: 20k students in seconds); each activity
transaction is its own commit, so the connector sees the same transaction boundaries every run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path

import orjson
import psycopg
from psycopg import sql

from sevisflow.deploy.sis.activity import Transaction, generate_activity, generate_authorizations
from sevisflow.deploy.sis.exchange import generate_exchange_activity, with_exchange
from sevisflow.deploy.sis.generator import TABLE_ORDER, Row, School, generate_school, generate_vendor

SCHEMA_SQL = Path(__file__).with_name("schema.sql")
PUBLICATION = "sevisflow_sis"
TABLES: tuple[str, ...] = TABLE_ORDER


class ActivityDriftError(RuntimeError):
    """An activity update or delete did not hit exactly one row: the database is not the school
    the activity was generated from (different seed, or the data was changed by someone else)."""


def create_schema(conninfo: str, *, replace: bool = False) -> None:
    """Create the SIS tables and publication; with `replace`, drop existing ones first."""
    with psycopg.connect(conninfo) as conn:
        if replace:
            conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(PUBLICATION)))
            conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(
                    sql.SQL(", ").join(sql.Identifier("public", t) for t in reversed(TABLES))
                )
            )
        conn.execute(SCHEMA_SQL.read_text(encoding="utf-8").encode())


def column_runs(rows: Sequence[Row]) -> list[tuple[tuple[str, ...], list[Row]]]:
    """`rows` cut into runs of consecutive rows with the same columns, in order: one COPY each.

    Rows made before a column existed (e.g. person rows without `school_code`) load next to newer ones:
    a column a row does not have gets the table's default (NULL for school_code).
    """
    runs: list[tuple[tuple[str, ...], list[Row]]] = []
    for row in rows:
        columns = tuple(row)
        if runs and set(runs[-1][0]) == set(columns):
            runs[-1][1].append(row)
        else:
            runs.append((columns, [row]))
    return runs


def load_school(conninfo: str, school: School) -> dict[str, int]:
    """COPY every table of `school` in foreign-key order, in one transaction; return row counts."""
    counts: dict[str, int] = {}
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        for table in TABLES:
            rows = school.get(table, [])
            counts[table] = len(rows)
            for columns, run in column_runs(rows):
                statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier("public", table), sql.SQL(", ").join(map(sql.Identifier, columns))
                )
                with cur.copy(statement) as copy:
                    for row in run:
                        copy.write_row([row[c] for c in columns])
    return counts


def play_activity(conninfo: str, transactions: Iterable[Transaction]) -> int:
    """Run each transaction as one commit, in order; return how many were committed.

    Raises ActivityDriftError (after rolling that transaction back) if an update or delete does
    not match exactly one row.
    """
    done = 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for tx in transactions:
            with conn.transaction():
                for op in tx.ops:
                    statement, params = op.sql()
                    cur = conn.execute(statement.encode(), params)
                    if op.action != "insert" and cur.rowcount != 1:
                        raise ActivityDriftError(
                            f"{tx.kind} of person {tx.person_id}: {op.action} {op.table} {dict(op.key)}"
                            f" matched {cur.rowcount} rows"
                        )
            done += 1
    return done


def member_schools(text: str) -> list[tuple[str, int]]:
    """`--schools` value `NORTH=300,SOUTH=200` → [("NORTH", 300), ("SOUTH", 200)]."""
    out: list[tuple[str, int]] = []
    for part in text.split(","):
        code, sep, n = part.partition("=")
        if not sep or not code.strip() or not n.strip().isdigit():
            raise argparse.ArgumentTypeError(f"{part!r}: give CODE=N (e.g. NORTH=300), comma-separated")
        out.append((code.strip(), int(n)))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sevisflow.deploy.sis.load", description=__doc__.split("\n")[0])
    p.add_argument("--dsn", required=True, help="libpq conninfo or URI of the SIS database")
    p.add_argument("--students", type=int, required=True, help="number of students")
    p.add_argument(
        "--international-share", type=float, default=0.3, help="share of F-1/M-1/J-1 students, 0..1 (default 0.3)"
    )
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument(
        "--activity", type=int, default=0, metavar="K", help="after loading, play K change transactions (default 0)"
    )
    p.add_argument(
        "--authorizations",
        action="store_true",
        help="then play a few DSO approvals (RCL, CPT, OPT, STEM OPT) and one withdrawal",
    )
    p.add_argument(
        "--schools",
        type=member_schools,
        default=[],
        metavar="CODE=N[,CODE=N...]",
        help="one SIS for several schools: besides the --students of the main school (person.school_code NULL), "
        "N students of each member school CODE (person.school_code = CODE), e.g. NORTH=300,SOUTH=200",
    )
    p.add_argument(
        "--exchange",
        type=int,
        default=0,
        metavar="N",
        help="the school sponsors J-1 exchange visitors: add N J-1 scholars (program RSCH) and the "
        "sponsor's records of its J-1 students (program STUD); F/M rows and activity are unchanged",
    )
    p.add_argument(
        "--exchange-activity",
        type=int,
        default=0,
        metavar="K",
        help="with --exchange: then play K sponsor-side changes (arrivals, sites, extensions, ...)",
    )
    p.add_argument(
        "--today",
        type=date.fromisoformat,
        default=None,
        help="the date the data is generated for, YYYY-MM-DD (default: the current date)",
    )
    p.add_argument("--replace", action="store_true", help="drop existing SIS tables first")
    p.add_argument("--no-schema", action="store_true", help="the schema exists already")
    p.add_argument(
        "--play-only",
        action="store_true",
        help="do not create or load: play --activity/--authorizations on the school loaded before "
        "with the same --students, --international-share, --seed and --today (while the pipeline runs)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: create, load, optionally play activity; print counts as JSON. 0 ok, 1 failure."""
    args = _parser().parse_args(argv)
    # The only wall-clock read of sevisflow.deploy.sis, and only when the user gives no --today.
    today: date = args.today or date.today()
    try:
        if args.schools:
            schools = [(None, args.students), *args.schools]
            school = generate_vendor(schools, args.international_share, args.seed, today)
        else:
            school = generate_school(args.students, args.international_share, args.seed, today)
        # the F/M activity is generated from the school without the sponsor's rows: the same with or without them
        full = with_exchange(school, args.seed, today, args.exchange) if args.exchange else school
        counts: dict[str, int] = {}
        if not args.no_schema and not args.play_only:
            create_schema(args.dsn, replace=args.replace)
        if not args.play_only:
            counts = load_school(args.dsn, full)
        played = 0
        if args.activity:
            played = play_activity(args.dsn, generate_activity(school, args.activity, args.seed, today))
        if args.authorizations:
            played += play_activity(args.dsn, generate_authorizations(school, args.seed, today))
        if args.exchange and args.exchange_activity:
            played += play_activity(
                args.dsn, generate_exchange_activity(full, args.seed, today, args.exchange_activity)
            )
    except (psycopg.Error, ActivityDriftError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = {"today": today.isoformat(), "seed": args.seed, "rows": counts, "activity": played}
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
