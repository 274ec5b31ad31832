"""``sevisflow issues``: what the pipeline could not process, for the DSO to fix in the SIS.

Lists the dead letters on ``sevisflow.dlq`` (newest last): when, which stage, a machine code
(``incomplete_record``, ``name_rejected``, ``bad_code``, ``mapping_missing_column`` …), the student
key, the field, the reason (it never contains personal data) and where the input sits in Kafka, so
an engineer can find it. Times are in the school's time zone (``[school] timezone``). On a
terminal the list is a table as wide as the terminal (paged when long); into a pipe, one plain
line per issue. Filters narrow the list; ``--json`` prints everything for tools (times in ms).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from sevisflow.app.cli.common import add_json_flag, add_pager_flag, clean, emit, print_json, settings_from_args
from sevisflow.core.dlq import SCHEMA
from sevisflow.core.kafka_io import read_topic
from sevisflow.core.serde import SerializationError, registry


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "issues",
        help="list records the pipeline could not process (dead letters)",
        description="Dead letters from every stage: what is wrong, for which student, and the fix.",
    )
    p.add_argument("--stage", help="only this stage (normalize, sevis_events, batcher, sink_xml …)")
    p.add_argument("--code", help="only this code, e.g. incomplete_record")
    p.add_argument("--student", help="only this student key")
    p.add_argument("--limit", type=int, default=200, help="show at most the last N (default 200; 0 = all)")
    add_json_flag(p)
    add_pager_flag(p)
    p.set_defaults(func=run)


HEADERS = ("When", "Stage", "Code", "Student", "Field", "Reason", "Source")


def issue_rows(items: list[dict[str, Any]], tz: str) -> list[tuple[str, ...]]:
    """One row per dead letter, every value escaped for the terminal; times in the school's zone."""
    from sevisflow.app.cli.review import when

    return [
        (
            when(r["at_ms"], tz),
            clean(r["stage"]),
            clean(r["code"]),
            clean(r.get("student_key") or ""),
            clean(r.get("field") or ""),
            clean(r["reason"]),
            clean(f"{r.get('source_topic') or ''}[{r.get('source_partition')}]@{r.get('source_offset')}"),
        )
        for r in items
    ]


def issue_lines(items: list[dict[str, Any]], tz: str) -> Iterator[str]:
    for row in issue_rows(items, tz):
        yield "  ".join(x for x in (row[0], row[1], row[2], row[3], row[4]) if x) + f": {row[5]}  ({row[6]})"
    yield ""
    yield f"{len(items)} issue(s)"


def issue_table(items: list[dict[str, Any]], tz: str, width: int = 100) -> Iterator[Any]:
    """For a terminal of ``width`` columns: when, student, and the problem in words (what to fix
    first, the field, then the machine code, the stage and where the input sits, dimmed)."""
    from rich.console import Console
    from rich.text import Text

    from sevisflow.app.cli.review import _grid_piece

    widths = (12, 12, max(30, width - 12 - 12 - 4))
    con = Console(width=width, color_system=None, force_terminal=False, highlight=False)
    rows = [[[Text(h, style="bold")] for h in ("When", "Student", "What could not be processed")]]
    for when_, stage, code, student, fld, reason, source in issue_rows(items, tz):
        words = when_.split(" ")  # "Jun 15, 2025 10:07 CDT": the day on one line, the time below
        when_lines = [Text(" ".join(words[:3]))] + ([Text(" ".join(words[3:]))] if len(words) > 3 else [])
        rows.append(
            [
                when_lines,
                [Text(student or "-")],
                [Text(reason)]
                + ([Text(f"field: {fld}")] if fld else [])
                + [Text(f"{code}, found by {stage}, input at {source}", style="dim")],
            ]
        )
    yield _grid_piece(con, widths, rows)
    yield Text(f"{len(items)} issue(s)")


def load_issues(
    settings: Any, stage: str | None = None, code: str | None = None, student: str | None = None
) -> list[dict[str, Any]]:
    out = []
    for msg in read_topic(settings.kafka, settings.topics.dlq):
        if (value := msg.value()) is None:
            continue
        try:
            rec = registry().decode(value, SCHEMA)
        except SerializationError:
            continue
        if (
            (stage and rec["stage"] != stage)
            or (code and rec["code"] != code)
            or (student and rec.get("student_key") != student)
        ):
            continue
        rec.pop("source_value", None)  # the raw input may hold personal data: not for terminals
        rec.pop("source_key", None)
        rec["dlq_position"] = f"{msg.partition()}@{msg.offset()}"
        out.append(rec)
    out.sort(key=lambda r: (r["at_ms"], r["dlq_position"]))
    return out


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    items = load_issues(settings, args.stage, args.code, args.student)
    if args.limit:
        items = items[-args.limit :]
    if args.json:
        print_json(items)
        return 0
    if not items:
        print("no issues")
        return 0
    tz = settings.school.timezone
    emit(lambda width: issue_table(items, tz, width), lambda: issue_lines(items, tz), use_pager=not args.no_pager)
    return 0
