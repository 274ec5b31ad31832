"""``sevisflow issues``: what the pipeline could not process, for the DSO to fix in the SIS.

Lists the dead letters on ``sevisflow.dlq`` (newest last): when, which stage, a machine code
(``incomplete_record``, ``name_rejected``, ``bad_code``, ``mapping_missing_column`` …), the student
key, the field, the reason (it never contains personal data) and where the input sits in Kafka, so
an engineer can find it. Filters narrow the list; ``--json`` prints everything for tools.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import Any

from sevisflow.cli.common import add_json_flag, format_table, print_json, settings_from_args
from sevisflow.dlq import SCHEMA
from sevisflow.kafka_io import read_topic
from sevisflow.serde import SerializationError, registry


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("issues", help="list records the pipeline could not process (dead letters)",
                       description="Dead letters from every stage: what is wrong, for which student, and the fix.")
    p.add_argument("--stage", help="only this stage (normalize, sevis_events, batcher, sink_xml …)")
    p.add_argument("--code", help="only this code, e.g. incomplete_record")
    p.add_argument("--student", help="only this student key")
    p.add_argument("--limit", type=int, default=200, help="show at most the last N (default 200; 0 = all)")
    add_json_flag(p)
    p.set_defaults(func=run)


def _when(ms: int) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def load_issues(settings: Any, stage: str | None = None, code: str | None = None,
                student: str | None = None) -> list[dict[str, Any]]:
    out = []
    for msg in read_topic(settings.kafka, settings.topics.dlq):
        if msg.value() is None:
            continue
        try:
            rec = registry().decode(msg.value(), SCHEMA)
        except SerializationError:
            continue
        if (stage and rec["stage"] != stage) or (code and rec["code"] != code) or \
                (student and rec.get("student_key") != student):
            continue
        rec.pop("source_value", None)   # the raw input may hold personal data: not for terminals
        rec.pop("source_key", None)
        rec["dlq_position"] = f"{msg.partition()}@{msg.offset()}"
        out.append(rec)
    out.sort(key=lambda r: (r["at_ms"], r["dlq_position"]))
    return out


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    items = load_issues(settings, args.stage, args.code, args.student)
    if args.limit:
        items = items[-args.limit:]
    if args.json:
        print_json(items)
        return 0
    if not items:
        print("no issues")
        return 0
    rows = [(_when(r["at_ms"]), r["stage"], r["code"], r.get("student_key") or "", r.get("field") or "",
             r["reason"], f"{r.get('source_topic') or ''}[{r.get('source_partition')}]@{r.get('source_offset')}")
            for r in items]
    print(format_table(["when", "stage", "code", "student", "field", "reason", "source"], rows))
    print(f"\n{len(items)} issue(s)")
    return 0
