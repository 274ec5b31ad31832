"""``sevisflow todo``: the DSO's worklist — what must be reported or fixed, per student, by legal due day.

``todo`` lists, most urgent first: records waiting in the open batch (with the day each is legally due),
SEVIS rejections of every batch until a later one is accepted, registrations not yet reported (an Initial
student who is not registered is a No-Show risk), and the data problems the pipeline could not send.
``todo done ITEM --dso ID --note "…"`` records that an item needs nothing more (on the ``sevis.worklist``
topic, kept as long as the audit trail); it leaves the list until its content changes. Everything is read
from Kafka, nothing is moved: the same command gives the same list on every machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from sevisflow.app.cli.common import add_json_flag, add_pager_flag, clean, emit, print_json, settings_from_args
from sevisflow.core.config import Settings
from sevisflow.core.errors import SevisflowError
from sevisflow.core.kafka_io import delivery_raiser, flush_or_raise, make_producer, produce, read_topic
from sevisflow.core.serde import SerializationError, registry
from sevisflow.core.worklist.deadlines import Deadlines
from sevisflow.core.worklist.items import Item, band_counts, worklist

STUDENT_SCHEMA = "sevisflow.students.StudentView"
MAX_NOTE = 500
BAND_WORDS = {"overdue": "OVERDUE", "urgent": "URGENT", "soon": "soon", "ok": "ok", "none": "no legal limit"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "todo",
        help="the DSO's worklist: what to report or fix, by legal due day",
        description="Everything a DSO must act on, grouped per student, most urgent first.",
    )
    p.add_argument(
        "--org",
        default=None,
        help="the OrgID: the school's SEVIS code (default: school.org_id of the "
        "settings), a member school's code ([[schools]]) or an exchange program's number (P-1-12345)",
    )
    p.add_argument("--student", help="only this student key")
    p.add_argument("--band", choices=("overdue", "urgent", "soon", "ok", "none"), help="only items in this band")
    p.add_argument("--all", action="store_true", help="also show items marked done")
    p.add_argument("--today", type=date.fromisoformat, help=argparse.SUPPRESS)  # tests and demos: a fixed day
    add_json_flag(p)
    add_pager_flag(p)
    p.set_defaults(func=cmd_list)
    tsub = p.add_subparsers(dest="todo_action", metavar="ACTION")
    done = tsub.add_parser("done", help="record that an item needs nothing more (who, why)")
    done.add_argument("item_id", metavar="ITEM", help="the item's id, as `sevisflow todo` shows it")
    done.add_argument("--dso", metavar="USERID", help="your SEVIS user id (or school.default_dso)")
    done.add_argument("--note", required=True, help='what was done, e.g. "reported in SEVIS RTI on 10/21"')
    done.add_argument("--org", default=None, help=argparse.SUPPRESS)
    done.add_argument("--today", type=date.fromisoformat, help=argparse.SUPPRESS)
    done.set_defaults(func=cmd_done)


def deadlines_of(settings: Settings) -> Deadlines:
    d = settings.deadlines
    try:
        return Deadlines.configured(d.limits, d.soon_days, d.urgent_days, settings.school.timezone)
    except ValueError as exc:
        raise SevisflowError(str(exc)) from None


def today_of(settings: Settings, given: date | None) -> date:
    if given is not None:
        return given
    return datetime.now(UTC).astimezone(ZoneInfo(settings.school.timezone)).date()


def read_students(settings: Settings) -> list[dict[str, Any]]:
    """The canonical view of every student (``sevisflow.students``, compacted: the latest value per key)."""
    latest: dict[bytes, bytes | None] = {}
    for msg in read_topic(settings.kafka, settings.topics.students, timeout_s=60.0):
        if (key := msg.key()) is not None:
            latest[key] = msg.value()
    out = []
    for value in latest.values():
        if value is None:
            continue
        try:
            rec = registry().decode(value, STUDENT_SCHEMA)
            view = orjson.loads(rec["view_json"])
        except (SerializationError, orjson.JSONDecodeError):
            continue
        view["student_key"] = rec["student_key"]
        out.append(view)
    return out


def read_done(settings: Settings, org: str) -> dict[str, dict[str, Any]]:
    """The done marks of ``org``: item id → the latest mark (who, when, note)."""
    out: dict[str, dict[str, Any]] = {}
    for msg in read_topic(settings.kafka, settings.topics.worklist, timeout_s=30.0):
        if (value := msg.value()) is None or msg.key() != org.encode():
            continue
        try:
            mark = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(mark, dict) and isinstance(mark.get("item_id"), str):
            out[mark["item_id"]] = {k: mark.get(k) for k in ("by", "note", "at_ms", "principal")}
    return out


def read_letters(settings: Settings) -> list[dict[str, Any]]:
    """The dead letters, with what changed in the SIS (``changes``) where the events stage recorded it: the
    DSO sees it in the terminal; it never goes to a log."""
    from sevisflow.core.dlq import SCHEMA

    out = []
    for msg in read_topic(settings.kafka, settings.topics.dlq, timeout_s=30.0):
        if (value := msg.value()) is None:
            continue
        try:
            rec = registry().decode(value, SCHEMA)
        except SerializationError:
            continue
        raw = rec.pop("source_value", None)
        rec.pop("source_key", None)
        if rec.get("stage") == "sevis_events" and raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("changes"), dict):
                rec["changes"] = body["changes"]
        out.append(rec)
    return out


def of_school(
    settings: Settings, org: str, students: list[dict[str, Any]], letters: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """With member schools ([[schools]]): the students of F/M school ``org`` (by ``student.school_code``), and the
    dead letters minus those about another school's students, so a school's DSOs see only their own students.
    A student whose code is no configured school (``unknown_school``) stays on the main school's list."""
    main = settings.school.org_id

    def org_of_view(view: dict[str, Any]) -> str:
        return settings.org_for_school_code((view.get("student") or {}).get("school_code")) or main

    orgs = {v.get("student_key"): org_of_view(v) for v in students}
    mine = [v for v in students if orgs[v.get("student_key")] == org]
    kept = [d for d in letters if orgs.get(d.get("student_key"), main) == org]
    return mine, kept


def build(settings: Settings, org: str, today: date, include_done: bool) -> list[Item]:
    from sevisflow.app.cli.batch import load_view

    view = load_view(settings, org, results=True)
    # term registrations are an F/M duty: an exchange program's list has its open records, rejections and letters
    students = [] if settings.program(org) is not None else read_students(settings)
    letters = read_letters(settings)
    if settings.schools and settings.program(org) is None:
        students, letters = of_school(settings, org, students, letters)
    return worklist(
        view.open_records(),
        view.batches.values(),
        students,
        letters,
        read_done(settings, org),
        deadlines_of(settings),
        today,
        include_done,
    )


def _due_text(item: Item, today: date) -> str:
    if item.due_on is None:
        return "no legal limit"
    left = (item.due_on - today).days
    when = "today" if left == 0 else (f"in {left} day(s)" if left > 0 else f"{-left} day(s) ago")
    return f"{BAND_WORDS[item.band]}: due {item.due_on.isoformat()} ({when})"


def todo_lines(items: list[Item], today: date) -> Iterator[str]:
    counts = band_counts(items)
    yield (
        f"Worklist for {today.isoformat()}: {len(items)} item(s) — {counts['overdue']} overdue, "
        f"{counts['urgent']} urgent, {counts['soon']} soon, {counts['ok']} ok, {counts['none']} without a "
        "legal limit"
    )
    student: object = object()
    for i in items:
        if i.student_key != student:
            student = i.student_key
            yield ""
            yield clean(f"{i.name or '(no name on record)'} — student {i.student_key or '(none)'}")
        yield clean(f"  [{i.item_id}] {i.title} — {_due_text(i, today)}")
        for d in i.detail:
            yield clean(f"      {d}")
        if i.rule:
            yield clean(
                f"      rule: {i.rule['limit_days']} days from the {i.rule['clock'].replace('_', ' ')} "
                f"({i.rule['source']})"
            )
        yield clean(f"      to do: {i.action}")
        if i.done:
            yield clean(f"      done by {i.done.get('by')}: {i.done.get('note')}")


def cmd_list(args: argparse.Namespace) -> int:
    from sevisflow.app.cli.batch import org_of

    settings = settings_from_args(args)
    org = org_of(args, settings)
    today = today_of(settings, args.today)
    items = build(settings, org, today, args.all)
    if args.student:
        items = [i for i in items if i.student_key == args.student]
    if args.band:
        items = [i for i in items if i.band == args.band]
    if args.json:
        print_json(
            {
                "org_id": org,
                "today": today.isoformat(),
                "counts": band_counts(items),
                "items": [i.to_json() for i in items],
            }
        )
        return 0
    lines = list(todo_lines(items, today))
    emit(lambda width: lines, lambda: lines, use_pager=not args.no_pager)
    return 0


def cmd_done(args: argparse.Namespace) -> int:
    from sevisflow.app.cli.batch import org_of
    from sevisflow.app.cli.dso import principal_of, resolve_dso

    settings = settings_from_args(args)
    org = org_of(args, settings)
    dso = resolve_dso(args.dso, settings, "marked done", org=org)
    note = (args.note or "").strip()
    if not note or len(note) > MAX_NOTE or any(ord(c) < 32 for c in note):
        raise SevisflowError(
            f"not marked done: the note must be one line of 1–{MAX_NOTE} characters saying what was done"
        )
    items = {i.item_id: i for i in build(settings, org, today_of(settings, args.today), include_done=True)}
    item = items.get(args.item_id)
    if item is None:
        raise SevisflowError(
            f"not marked done: there is no item {args.item_id!r} in the worklist of {org} "
            "(run `sevisflow todo` for the ids)"
        )
    if item.done is not None:
        print(f"item {item.item_id} was already marked done by {item.done.get('by')}: {item.done.get('note')}")
        return 0
    mark = {
        "org_id": org,
        "item_id": item.item_id,
        "student_key": item.student_key,
        "title": item.title,
        "by": dso,
        "principal": principal_of(settings.kafka),
        "note": note,
        "at_ms": int(time.time() * 1000),
    }
    producer = make_producer(settings.kafka)
    errors: list[Any] = []
    produce(producer, settings.topics.worklist, org.encode(), orjson.dumps(mark), on_delivery=delivery_raiser(errors))
    flush_or_raise(producer, errors)
    print(clean(f"marked done: {item.title} ({item.student_key}) — by {dso}: {note}"))
    return 0
