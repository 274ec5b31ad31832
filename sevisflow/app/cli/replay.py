"""``sevisflow replay <topic> --from … [--to …] [--student …] [--format jsonl|table] [--output FILE]``.

Reads any topic read-only (manual assignment, no commits: the pipeline's consumer
groups never move) and prints or exports the records decoded — Avro by schema
fingerprint, Debezium JSON with or without the schema wrapper. See
:mod:`sevisflow.app.audit.replay` for the bounds and what ``--student`` matches per topic,
and docs/AUDIT.md for worked examples.
"""

from __future__ import annotations

import argparse
import sys

from sevisflow.app.audit.replay import (
    TABLE_HEADERS,
    jsonl_line,
    open_private,
    parse_bound,
    replay,
    table_rows,
)
from sevisflow.app.cli.common import format_table, settings_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="read any topic read-only and export it decoded (JSON lines)",
        description="Read a topic between two positions without joining or moving any consumer group, decode "
        "every record (Avro by fingerprint, Debezium JSON) and print it as JSON lines or a table.",
        epilog="Positions: beginning | end | ISO time (2024-06-19, 2024-06-19T10:00:00Z; no zone = UTC) | "
        "offset N (all partitions) | P:O[,P:O…]. --from is inclusive, --to exclusive. "
        "--student matches the student_key of SEVIS-side records and, on change topics "
        "<prefix>.<schema>.<table>, rows of that student (school_id, or their person_id).",
    )
    p.add_argument("topic", help="topic name, e.g. sevis.batches or sis.public.person")
    p.add_argument("--from", dest="frm", default=None, metavar="POS", help="start position (default: beginning)")
    p.add_argument("--to", default=None, metavar="POS", help="end position, exclusive (default: the current end)")
    p.add_argument(
        "--student",
        default=None,
        metavar="KEY",
        help="only this student's records (student key, e.g. S00001234, or the SIS person id)",
    )
    p.add_argument("--format", choices=("jsonl", "table"), default="jsonl", help="output format (default jsonl)")
    p.add_argument(
        "--output",
        "-o",
        default=None,
        metavar="FILE",
        help="write to FILE (created 0600: it may hold student data) instead of stdout",
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N records")
    p.add_argument("--timeout", type=float, default=30.0, help="Kafka timeout in seconds (default 30)")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    frm = parse_bound(args.frm, "beginning")
    to = parse_bound(args.to, "end")
    records = replay(settings, args.topic, frm, to, student=args.student, timeout_s=args.timeout)
    if args.limit is not None:
        records = (r for i, r in zip(range(args.limit), records))
    out = open_private(args.output) if args.output else sys.stdout.buffer
    n = 0
    try:
        if args.format == "jsonl":
            for d in records:
                out.write(jsonl_line(d))
                n += 1
        else:
            rows = table_rows(records)
            n = len(rows)
            out.write((format_table(TABLE_HEADERS, rows) + "\n").encode())
        out.flush()
    finally:
        if args.output:
            out.close()
    if args.output:
        print(
            f"{n} record(s) of {args.topic} ({frm.describe()} .. {to.describe()}) written to {args.output}",
            file=sys.stderr,
        )
    return 0
