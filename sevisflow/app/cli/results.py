"""``sevisflow results <BatchID>``: SEVIS's per-record results of one batch, from sevis.results.

The records are shown as ``batch status`` shows them — the same words ("accepted by SEVIS",
"rejected by SEVIS", "sent, no SEVIS result yet"), with the students' names — because the names
and the SEVIS elements come from the closed batch on sevis.batches. A result whose batch is not
known there (another school's, or the history was cut) is still shown, without a name.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from sevisflow.app.cli.common import add_json_flag, add_pager_flag, clean, emit, print_json, settings_from_args
from sevisflow.core.errors import SevisflowError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "results",
        help="show SEVIS's results for one batch",
        description="One entry per record: request id, student and name, SEVIS update, "
        "accepted or rejected by SEVIS (with SEVIS's code and message).",
    )
    p.add_argument("batch_id", metavar="BATCH_ID", help="the 14-character BatchID")
    p.add_argument("--org", default=None, help="the school's SEVIS code (default: school.org_id of the settings)")
    add_json_flag(p)
    add_pager_flag(p)
    p.set_defaults(func=cmd_results)


def batch_results(settings: Any, batch_id: str) -> list[dict[str, Any]]:
    """The results of ``batch_id`` in topic order; a re-published result replaces the earlier one."""
    from sevisflow.core.kafka_io import read_topic
    from sevisflow.core.serde import registry

    found: dict[str, dict[str, Any]] = {}
    for msg in read_topic(settings.kafka, settings.topics.results):
        if (value := msg.value()) is None:
            continue
        rec = registry().decode(value, "sevisflow.results.SevisResult")
        if rec.get("batch_id") == batch_id:
            found.pop(rec["request_id"], None)
            found[rec["request_id"]] = rec
    return list(found.values())


def result_rows(
    rows: list[dict[str, Any]], names: dict[str, tuple[str, str]]
) -> list[tuple[str, str, str, str, str, str]]:
    """(request, student, name, SEVIS update, result, detail) per result; ``names``: request id →
    (display name, SEVIS update in words) from the closed batch."""
    from sevisflow.app.cli import review

    out = []
    for r in rows:
        name, what = names.get(r["request_id"], ("", clean((r.get("kind") or "").replace(".", "/"))))
        out.append(
            (
                clean(r["request_id"]),
                clean(r.get("student_key") or ""),
                name,
                what,
                review.result_words(r),
                review.result_detail(r),
            )
        )
    return out


def summary(batch_id: str, rows: list[dict[str, Any]]) -> str:
    ok = sum(1 for r in rows if r["status"] == "success")
    return (
        f"Batch {clean(batch_id)}: {len(rows)} result(s) from SEVIS, {ok} accepted by SEVIS, "
        f"{len(rows) - ok} rejected by SEVIS (SEVIS process code {clean(rows[0].get('process_code'))})"
    )


def result_lines(batch_id: str, rows: list[dict[str, Any]], names: dict[str, tuple[str, str]]) -> Iterator[str]:
    yield summary(batch_id, rows)
    for rid, key, name, what, res, detail in result_rows(rows, names):
        yield ""
        yield f"{rid}  {key}" + (f"  {name}" if name else "")
        yield f"    {what}"
        yield f"    {res}" + (f": {detail}" if detail else "")


def result_table(batch_id: str, rows: list[dict[str, Any]], names: dict[str, tuple[str, str]]) -> list[Any]:
    from rich.text import Text

    from sevisflow.app.cli.review import record_table

    return [Text(summary(batch_id, rows)), record_table(result_rows(rows, names))]


def names_of(settings: Any, org: str, batch_id: str) -> dict[str, tuple[str, str]]:
    """request id → (name, SEVIS update in words) from the closed batch on sevis.batches ({} if unknown)."""
    from sevisflow.app.cli import batch as batch_cli
    from sevisflow.app.cli import review

    try:
        batch_cli.check_kafka(settings, [settings.topics.batches])
        view = batch_cli.load_view(settings, org, check=False)
    except SevisflowError:  # no sevis.batches here: the results are shown without names
        return {}
    b = view.batches.get(batch_id)
    if b is None:
        return {}
    return {
        r["request_id"]: (clean(r.get("display_name") or ""), f"{review.title(r)} ({review.element(r)})")
        for r in b.records
    }


def cmd_results(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    rows = batch_results(settings, args.batch_id)
    # the results name their OrgID: an exchange program's batch is found under its program number
    org = args.org or (rows[0].get("org_id") if rows else None) or settings.school.org_id
    names = names_of(settings, org, args.batch_id) if rows else {}
    if args.json:
        print_json(
            [
                {
                    **r,
                    "display_name": names.get(r["request_id"], ("", ""))[0] or None,
                    "result_words": result_rows([r], names)[0][4],
                }
                for r in rows
            ]
        )
        return 0
    if not rows:
        raise SevisflowError(
            f"no results for batch {args.batch_id} on {settings.topics.results} yet "
            "(is it uploaded? `sevisflow sink status` shows where it is)"
        )
    emit(
        lambda _: result_table(args.batch_id, rows, names),
        lambda: result_lines(args.batch_id, rows, names),
        use_pager=not args.no_pager,
    )
    return 0
