"""``sevisflow results <BatchID>``: SEVIS's per-record results of one batch, from sevis.results."""

from __future__ import annotations

import argparse
from typing import Any

from sevisflow.cli.common import add_json_flag, format_table, print_json, settings_from_args
from sevisflow.errors import SevisflowError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("results", help="show SEVIS's results for one batch",
                       description="One line per record: request id, student, event, success or SEVIS's error.")
    p.add_argument("batch_id", metavar="BATCH_ID", help="the 14-character BatchID")
    add_json_flag(p)
    p.set_defaults(func=cmd_results)


def batch_results(settings: Any, batch_id: str) -> list[dict[str, Any]]:
    """The results of ``batch_id`` in topic order; a re-published result replaces the earlier one."""
    from sevisflow.kafka_io import read_topic
    from sevisflow.serde import registry

    found: dict[str, dict[str, Any]] = {}
    for msg in read_topic(settings.kafka, settings.topics.results):
        if msg.value() is None:
            continue
        rec = registry().decode(msg.value(), "sevisflow.results.SevisResult")
        if rec.get("batch_id") == batch_id:
            found.pop(rec["request_id"], None)
            found[rec["request_id"]] = rec
    return list(found.values())


def cmd_results(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    rows = batch_results(settings, args.batch_id)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        raise SevisflowError(f"no results for batch {args.batch_id} on {settings.topics.results} yet "
                             "(is it uploaded? `sevisflow sink status` shows where it is)")
    ok = sum(1 for r in rows if r["status"] == "success")
    print(format_table(["REQUEST ID", "STUDENT", "EVENT", "STATUS", "SEVIS ID", "CODE", "MESSAGE"],
                       [[r["request_id"], r.get("student_key"), r.get("kind"), r["status"], r.get("sevis_id"),
                         r.get("error_code"), r.get("error_message")] for r in rows]))
    print(f"\nbatch {args.batch_id}: {len(rows)} records, {ok} accepted, {len(rows) - ok} rejected "
          f"(process code {rows[0].get('process_code')})")
    return 0
