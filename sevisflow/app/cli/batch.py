"""``sevisflow batch show|close|hold|release|resend|list|status``: the DSO's review of the open batch.

``show`` and ``close`` read the open batch from the batcher's compacted per-school view
(``sevis.batch.open``): the latest record of the school's key, read from the end of the topic,
so they cost the same however long the history is. ``--from-history`` (and the fallback when the
view has no usable record for the school) folds the whole of ``sevis.batches`` instead, as
``list`` and ``status`` always do (they need the closed batches and ``sevis.results``). Reading
never moves any pipeline offset. Commands go to ``sevis.batch.commands``; the batcher applies them. Commands
that change something wait for the batcher's answer on ``sevis.batches`` and say
so plainly when it does not come (the batcher is probably not running).

The renderers (``render_*`` / ``*_json``, the people's screens in :mod:`sevisflow.app.cli.review`)
are pure functions of a :class:`~sevisflow.processors.batcher.view.BatchView`: the golden tests pin their output.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from sevisflow.app.cli import review
from sevisflow.app.cli.common import add_json_flag, add_pager_flag, emit, format_table, print_json, settings_from_args
from sevisflow.app.labels import Labels
from sevisflow.core.config import Settings
from sevisflow.core.errors import SevisflowError, UnreachableError
from sevisflow.core.kafka_io import (
    delivery_raiser,
    flush_or_raise,
    kafka_failure,
    make_admin,
    make_consumer,
    make_producer,
    position,
    produce,
    read_topic,
    topic_partitions,
    watermarks,
)
from sevisflow.core.serde import registry
from sevisflow.processors.batcher.ids import is_program, member_batch_prefix
from sevisflow.processors.batcher.view import BatchView, ClosedBatch, fold, fold_result, from_open_batch

BATCH_SCHEMA = "sevisflow.batches.BatchEvent"
COMMAND_SCHEMA = "sevisflow.commands.BatchCommand"
RESULT_SCHEMA = "sevisflow.results.SevisResult"
OPEN_BATCH_SCHEMA = "sevisflow.batches.OpenBatch"
ORG_HELP = (
    "the OrgID: the school's SEVIS code (default: school.org_id of the settings), a member school's code "
    "([[schools]]), or the program number of an exchange program ([[exchange_programs]], e.g. P-1-12345) "
    "for its J-1 EV batches"
)
TAIL_WINDOW = 8
"""Offsets read first from the end of each partition of the view topic (x8 each time the key is not there)."""
KAFKA_TIMEOUT_S = 10.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "batch",
        help="review, hold and close the open SEVIS batch",
        description="Review what will be sent to SEVIS, keep students out of it, and close it.",
    )
    p.add_argument("--org", default=None, help=ORG_HELP)
    bsub = p.add_subparsers(dest="batch_command", metavar="ACTION", required=True)

    show = bsub.add_parser(
        "show",
        help="the open batch: every record, what changes, where it came from",
        description="The open batch in plain language: per record only the fields that change "
        "(before → after), codes with their meaning, what happened in the SIS, and "
        "the status. Fits the terminal; long output is paged; plain lines in a pipe.",
    )
    show.add_argument("--student", metavar="KEY", help="only this student (SIS student key), in full detail")
    show.add_argument("--name", metavar="TEXT", help="only students whose name contains TEXT (any case)")
    show.add_argument("--status", choices=["ready", "held", "waiting"], help="only records with this status")
    show.add_argument(
        "--element",
        metavar="NAME",
        help="only this SEVIS element: CreateStudent, PersonalInfo, Registration, Program, "
        "Program/Extension, FinancialInfo, Dependent, Status …",
    )
    show.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="also the SIS tables, record/request/event ids and replaced changes of every record",
    )
    add_json_flag(show)
    add_pager_flag(show, width=True)
    _add_history_flag(show)
    show.set_defaults(func=cmd_show)

    close = bsub.add_parser(
        "close",
        help="close what you reviewed into batch(es) for upload",
        description="Close the ready records of the revision you reviewed (`batch show` prints "
        "it). Records added or changed since stay open for the next review.",
    )
    close.add_argument(
        "--revision",
        type=int,
        default=None,
        metavar="N",
        help="the revision `sevisflow batch show` displayed: exactly its ready records are closed "
        "(required without a terminal, unless --yes)",
    )
    close.add_argument(
        "--yes",
        action="store_true",
        help="do not ask for confirmation; without --revision: close what is ready now, recorded "
        "as closed without a reviewed revision (for scripts)",
    )
    close.add_argument(
        "--dso",
        default=None,
        metavar="USERID",
        help="your SEVIS user id (exactly 10 characters; default: school.default_dso)",
    )
    close.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the batcher (default 30)")
    add_json_flag(close)
    _add_history_flag(close)
    close.set_defaults(func=cmd_close)

    for name, helptext in (
        ("hold", "keep a student's records out of the batch until released"),
        ("release", "put a held student's records back into the batch"),
    ):
        c = bsub.add_parser(name, help=helptext)
        c.add_argument("student", help="the student's id in the SIS (student key)")
        c.add_argument(
            "--dso",
            default=None,
            metavar="USERID",
            help="your SEVIS user id, recorded with the action (default: school.default_dso)",
        )
        c.add_argument(
            "--reason",
            default=None,
            required=name == "hold",
            help="why (one line, at most 500 characters; recorded and shown to other DSOs)"
            + ("" if name == "hold" else " (optional)"),
        )
        c.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the batcher (default 30)")
        add_json_flag(c)
        c.set_defaults(func=cmd_hold if name == "hold" else cmd_release)

    rs = bsub.add_parser(
        "resend",
        help="after a fix, put records SEVIS rejected back into the open batch",
        description="Once the cause of a SEVIS rejection is fixed (in the SIS, with `sevisflow student "
        "add-info`, or in SEVIS RTI), put the rejected record(s) of a closed batch back "
        "into the open batch: the next close sends them (new requestID, original due "
        "day). A newer open change of the same record is not duplicated: it wins.",
    )
    rs.add_argument("batch_id", metavar="BatchID", help="the closed batch SEVIS answered (`sevisflow todo` names it)")
    rs.add_argument(
        "--record",
        action="append",
        default=[],
        metavar="RECORD_ID",
        help="a rejected record (record id or requestID); repeat for several; default: every rejected "
        "record of the batch not yet resent",
    )
    rs.add_argument(
        "--dso",
        default=None,
        metavar="USERID",
        help="your SEVIS user id, recorded with the action (default: school.default_dso)",
    )
    rs.add_argument("--reason", default=None, help="what was fixed (one line, at most 500 characters; recorded)")
    rs.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the batcher (default 30)")
    add_json_flag(rs)
    rs.set_defaults(func=cmd_resend)

    lst = bsub.add_parser("list", help="closed batches and their SEVIS status, newest first")
    lst.add_argument("--limit", type=int, default=20, help="how many closed batches to show (default 20)")
    add_json_flag(lst)
    add_pager_flag(lst)
    lst.set_defaults(func=cmd_list)

    st = bsub.add_parser("status", help="one closed batch: its records and SEVIS's result for each")
    st.add_argument("batch_id", metavar="BatchID")
    add_json_flag(st)
    add_pager_flag(st)
    st.set_defaults(func=cmd_status)


def _add_history_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from-history",
        action="store_true",
        help="rebuild the open batch from the whole history of sevis.batches instead of reading the "
        "batcher's open-batch view (slower; the same result)",
    )


# ----------------------------------------------------------------------------- Kafka access


def org_of(args: argparse.Namespace, settings: Settings) -> str:
    """``--org`` (the school's code by default); a program number must be a configured exchange program, and
    with member schools ([[schools]]) a school code must be the main school's or a member's."""
    org: str = getattr(args, "org", None) or settings.school.require_org_id()
    if is_program(org) and settings.program(org) is None:
        known = ", ".join(p.program_number for p in settings.exchange_programs) or "none is configured"
        raise SevisflowError(
            f"--org {org} is not a configured exchange program (exchange programs: {known}); add it "
            "under [[exchange_programs]] in the settings, or check the program number"
        )
    if (
        settings.schools
        and not is_program(org)
        and org != settings.school.org_id
        and settings.member_school(org) is None
    ):
        known = ", ".join(m.org_id for m in settings.schools)
        raise SevisflowError(
            f"--org {org} is neither school.org_id ({settings.school.org_id}) nor a member school "
            f"([[schools]]: {known}); add it under [[schools]] in the settings, or check the school code"
        )
    return org


def check_kafka(settings: Settings, topics: list[str]) -> None:
    """Fail fast and plainly when Kafka is down or the pipeline's topics are missing."""
    admin = make_admin(settings.kafka)
    try:
        md = admin.list_topics(timeout=KAFKA_TIMEOUT_S)
    except KafkaException as exc:
        failure = kafka_failure(settings.kafka, exc, client=admin)
        if isinstance(failure, UnreachableError):
            raise UnreachableError(
                f"{failure}. Is the pipeline running? Check kafka.bootstrap_servers in your settings."
            ) from None
        raise failure from None
    missing = [t for t in topics if t not in md.topics]
    if missing:
        raise SevisflowError(
            f"topic {missing[0]} does not exist in Kafka at {settings.kafka.bootstrap_servers}; "
            "the pipeline has not been set up (run `sevisflow topics create`)"
        )


def _decoded(
    settings: Settings,
    topic: str,
    schema: str,
    start: Mapping[int, int] | None = None,
    positions: dict[int, int] | None = None,
) -> Iterator[dict[str, Any]]:
    for msg in read_topic(settings.kafka, topic, timeout_s=KAFKA_TIMEOUT_S * 3, start=start):
        if positions is not None:
            _, partition, offset = position(msg)
            positions[partition] = offset + 1
        if (value := msg.value()) is not None:
            yield registry().decode(value, schema)


def load_view(settings: Settings, org: str, results: bool = False, check: bool = True) -> BatchView:
    """The school's view folded from the whole history of sevis.batches (+ sevis.results)."""
    t = settings.topics
    if check:
        check_kafka(settings, [t.batches, t.commands] + ([t.results] if results else []))
    view = BatchView(org)
    for ev in _decoded(settings, t.batches, BATCH_SCHEMA):
        fold(view, ev)
    if results:
        for res in _decoded(settings, t.results, RESULT_SCHEMA):
            fold_result(view, res)
    return view


def read_open_batch(settings: Settings, org: str) -> dict[str, Any] | None:
    """The school's latest OpenBatch record, read from the end of the compacted view topic; None if none.

    Each partition is read backwards in growing windows until the school's key shows up, so the
    cost does not depend on the topic's history (nor on when compaction last ran). The key lives
    in one partition; if partitions were ever added, the highest revision wins.
    """
    topic = settings.topics.open_batches
    key = org.encode()
    # the end of a partition is known only from an empty fetch (the last offsets are transaction
    # markers, never delivered): answer it at once instead of after the default 500 ms long poll
    consumer = make_consumer(
        settings.kafka,
        group_id=f"sevisflow-cli-{uuid.uuid4().hex[:8]}",
        **{"enable.partition.eof": True, "fetch.wait.max.ms": 10},
    )
    try:
        try:
            partitions = topic_partitions(consumer, settings.kafka, topic, KAFKA_TIMEOUT_S)
            if partitions is None:
                return None
            best: dict[str, Any] | None = None
            # watermarks are retried while a leader is elected (a new topic, a broker loss)
            for p, (low, high) in watermarks(consumer, topic, partitions, KAFKA_TIMEOUT_S).items():
                end, window = high, TAIL_WINDOW
                while end > low:
                    begin = max(low, end - window)
                    value = _last_value(consumer, topic, p, begin, end, key)
                    if value is not None:
                        rec = registry().decode(value, OPEN_BATCH_SCHEMA)
                        if best is None or rec["revision"] > best["revision"]:
                            best = rec
                        break
                    end, window = begin, window * 8
            return best
        except KafkaException as exc:
            raise UnreachableError(f"Kafka at {settings.kafka.bootstrap_servers} is not reachable: {exc}") from None
    finally:
        consumer.close()


def _last_value(consumer: Any, topic: str, partition: int, begin: int, end: int, key: bytes) -> bytes | None:
    """The value of the last committed record with ``key`` at offsets [begin, end) of one partition."""
    consumer.assign([TopicPartition(topic, partition, begin)])
    found = None
    deadline = time.monotonic() + KAFKA_TIMEOUT_S * 3
    while True:
        msg = consumer.poll(0.5)
        if msg is None:
            if time.monotonic() > deadline:
                raise UnreachableError(f"timed out reading {topic}[{partition}] at offsets {begin}-{end}")
            continue
        if msg.error() and msg.error().code() != KafkaError._PARTITION_EOF:
            raise UnreachableError(f"reading {topic}: {msg.error().str()}")
        if msg.partition() != partition:
            continue  # left over from an earlier assignment (librdkafka drops these; be sure)
        if msg.error():
            break  # EOF; read_committed: the end of what is committed (aborted data and markers are skipped)
        if msg.offset() < begin:
            continue
        if msg.offset() >= end:
            break
        if msg.key() == key and msg.value() is not None:
            found = msg.value()
        if msg.offset() >= end - 1:
            break
    consumer.unassign()
    return found


def load_open_view(settings: Settings, org: str, from_history: bool = False) -> BatchView:
    """The open batch for ``batch show``/``close``: the batcher's view, or the history when asked or needed.

    Falls back to the history when the view topic is missing (pipeline not upgraded yet), holds
    no record of the school (nothing happened yet, or the batcher has not run since the upgrade)
    or its record has no records (an open batch too large for one Kafka record).
    """
    t = settings.topics
    check_kafka(settings, [t.batches, t.commands])
    if not from_history:
        value = read_open_batch(settings, org)
        view = from_open_batch(value) if value is not None else None
        if view is not None:
            return view
    return load_view(settings, org, check=False)


def await_view(settings: Settings, org: str, revision: int, timeout_s: float = 5.0) -> None:
    """Wait (briefly) until the open-batch view shows ``revision``, so a `batch show` right after a
    command shows its effect: Kafka writes a transaction's commit markers partition by partition, so
    the view may become visible a moment after the command's events. A view that does not catch up
    (or is not there) only costs ``show`` its fallback; it never blocks the command."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read_open_batch(settings, org)
        if value is None or value["revision"] >= revision or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = make_consumer(settings.kafka, group_id=f"sevisflow-cli-{uuid.uuid4().hex[:8]}")
    try:
        md = consumer.list_topics(topic, timeout=KAFKA_TIMEOUT_S)
        parts = sorted(md.topics[topic].partitions)
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=KAFKA_TIMEOUT_S)[1] for p in parts}
    except KafkaException as exc:
        raise UnreachableError(f"Kafka at {settings.kafka.bootstrap_servers} is not reachable: {exc}") from None
    finally:
        consumer.close()


def send_command(settings: Settings, command: dict[str, Any]) -> None:
    producer = make_producer(settings.kafka)
    errors: list[Any] = []
    produce(
        producer,
        settings.topics.commands,
        command["org_id"].encode(),
        registry().encode(COMMAND_SCHEMA, command),
        on_delivery=delivery_raiser(errors),
    )
    flush_or_raise(producer, errors, timeout_s=KAFKA_TIMEOUT_S * 2)


def new_command(org: str, kind: str, **fields: Any) -> dict[str, Any]:
    cmd: dict[str, Any] = {
        "command_id": f"{kind}-{uuid.uuid4().hex}",
        "org_id": org,
        "kind": kind,
        "dso_user_id": None,
        "student_key": None,
        "record_ids": [],
        "reviewed_revision": None,
        "batch_id": None,
        "reason": None,
        "requested_at_ms": int(time.time() * 1000),
        "payload_json": None,
        "principal": None,
        "basis_revision": None,
    }
    cmd.update(fields)
    return cmd


def await_answer(
    settings: Settings, command_id: str, start: dict[int, int], done_types: set[str], timeout_s: float
) -> list[dict[str, Any]]:
    """The batcher's events for ``command_id`` (all of one transaction), or a clear error on timeout."""
    positions = dict(start)
    deadline = time.monotonic() + timeout_s
    got: list[dict[str, Any]] = []
    while True:
        for ev in _decoded(settings, settings.topics.batches, BATCH_SCHEMA, start=positions, positions=positions):
            if ev.get("command_id") == command_id:
                got.append(ev)
        # a command's events are written in one Kafka transaction: once one is visible, all are
        if any(e["type"] in done_types | {"command_rejected"} for e in got):
            return got
        if time.monotonic() > deadline:
            raise SevisflowError(
                f"the batcher did not answer within {timeout_s:g}s; it is probably not running. Your request "
                f"({command_id}) is stored and will be applied when the batcher runs: check with "
                "`sevisflow batch list` / `sevisflow batch show` before trying again"
            )
        time.sleep(0.25)


# ----------------------------------------------------------------------------- formatting


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def local_time(ms: int | None, tz: str) -> str:
    """A moment in the school's time zone, written as every review screen writes it."""
    return review.when(ms, tz)


element = review.element


def labels_of(settings: Settings) -> Labels:
    """Code labels for this school: CIP titles come from the configured SEVIS XSDs."""
    return Labels(settings.sevis.xsd_dir)


def show_json(
    view: BatchView, tz: str, labels: Labels | None = None, flt: review.Filter = review.Filter()
) -> dict[str, Any]:
    return review.show_json(view, tz, labels or Labels(None), flt)


def render_show(
    view: BatchView, tz: str, labels: Labels | None = None, width: int = 100, flt: review.Filter = review.Filter()
) -> str:
    """``batch show`` as a terminal of ``width`` columns shows it (without colours)."""
    return review.render_text(review.show_table(view, tz, labels or Labels(None), flt, width=width), width)


def close_json(events: list[dict[str, Any]], command_id: str) -> dict[str, Any]:
    batches = []
    for e in events:
        if e["type"] != "closed":
            continue
        recs = orjson.loads(e["records_json"])
        batches.append(
            {
                "batch_id": e["batch_id"],
                "creates": sum(1 for r in recs if r["section"] == "create"),
                "updates": sum(1 for r in recs if r["section"] == "update"),
                "records": len(recs),
                "note": e.get("reason"),
            }
        )
    first = next((e for e in events if e["type"] == "closed"), {})
    return {
        "command_id": command_id,
        "closed_by": first.get("closed_by"),
        "at_ms": first.get("at_ms"),
        "batches": batches,
    }


def render_close(result: Mapping[str, Any], tz: str) -> str:
    total = sum(b["records"] for b in result["batches"])
    n = len(result["batches"])
    lines = [
        f"Closed {_n(total, 'record')} into {n} batch{'es' if n != 1 else ''} "
        f"(closed by {result['closed_by']} at {local_time(result['at_ms'], tz)}):",
        "",
    ]
    lines.append(
        format_table(
            ["BatchID", "Creates", "Updates", "Records"],
            [[b["batch_id"], b["creates"], b["updates"], b["records"]] for b in result["batches"]],
        )
    )
    notes = sorted(
        {
            part
            for b in result["batches"]
            for part in (b.get("note") or "").split("; ")
            if part and not part.startswith("document ")
        }
    )
    if notes:
        lines += ["", *[f"Note: {x}" for x in notes]]
    lines += ["", "The batch files are written and uploaded by the pipeline; follow them with `sevisflow batch list`."]
    return "\n".join(lines)


def list_json(view: BatchView, limit: int) -> dict[str, Any]:
    batches = sorted(view.batches.values(), key=lambda b: b.batch_id, reverse=True)[:limit]
    return {
        "org_id": view.org_id,
        "open": view.counts(),
        "batches": [
            {
                "batch_id": b.batch_id,
                "closed_at_ms": b.at_ms,
                "closed_by": b.closed_by,
                "creates": b.creates,
                "updates": b.updates,
                "status": b.state(),
                "state_words": review.batch_state(b),
                "command_id": b.command_id,
            }
            for b in batches
        ],
    }


def render_list(view: BatchView, tz: str, limit: int, width: int = 100) -> str:
    return review.render_text(review.list_table(view, tz, limit), width)


def _batch(view: BatchView, batch_id: str) -> ClosedBatch:
    b = view.batches.get(batch_id)
    if b is None:
        raise SevisflowError(f"no closed batch {batch_id!r} for {view.org_id} (see `sevisflow batch list`)")
    return b


def status_json(view: BatchView, batch_id: str, tz: str) -> dict[str, Any]:
    b = _batch(view, batch_id)
    return {
        "batch_id": b.batch_id,
        "org_id": view.org_id,
        "closed_by": b.closed_by,
        "closed_at_ms": b.at_ms,
        "status": b.state(),
        "creates": b.creates,
        "updates": b.updates,
        "note": b.reason,
        "records": [
            {
                "request_id": r["request_id"],
                "student_key": r["student_key"],
                "display_name": r.get("display_name"),
                "sevis_id": r.get("sevis_id"),
                "element": element(r),
                "result": b.results.get(r["request_id"]),
                "result_words": review.result_words(b.results.get(r["request_id"])),
            }
            for r in b.records
        ],
    }


def render_status(view: BatchView, batch_id: str, tz: str, width: int = 100) -> str:
    return review.render_text(review.batch_table(view, _batch(view, batch_id), tz), width)


# ----------------------------------------------------------------------------- commands


def cmd_show(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    view = load_open_view(settings, org_of(args, settings), from_history=args.from_history)
    tz, labels = settings.school.timezone, labels_of(settings)
    from sevisflow.app.cli.todo import deadlines_of, today_of

    review.annotate_due(view, deadlines_of(settings), today_of(settings, None))
    flt = review.Filter(student=args.student, name=args.name, status=args.status, element=args.element)
    if args.json:
        print_json(show_json(view, tz, labels, flt))
        return 0
    if flt.student and not review.selected(view, flt) and flt.student not in view.held:
        raise SevisflowError(
            f"student {flt.student} has no record in the open batch of {view.org_id} "
            f"(revision {view.revision}); `sevisflow batch show` lists them all"
        )
    emit(
        lambda width: review.show_table(view, tz, labels, flt, args.verbose, width),
        lambda: review.show_lines(view, tz, labels, flt, args.verbose),
        use_pager=not args.no_pager,
        width=max(40, args.width) if args.width else None,
    )
    return 0


def cmd_close(args: argparse.Namespace) -> int:
    """Close the ready records of the reviewed revision (see sevisflow/app/cli/dso.py and docs/DSO-GUIDE.md)."""
    from sevisflow.app.cli import dso as dso_cli

    settings = settings_from_args(args)
    org = org_of(args, settings)
    dso = dso_cli.resolve_dso(args.dso, settings, "closed", org=org)
    person = dso_cli.interactive() and not args.json  # --json is for scripts: it never asks
    if args.revision is None and not person and not args.yes:
        raise SevisflowError(
            "not closed: say which revision you reviewed. Run `sevisflow batch show`, then "
            "`sevisflow batch close --revision N` with the revision it printed (a script that closes "
            "whatever is ready, unreviewed, says --yes)"
        )
    current = load_open_view(settings, org, from_history=args.from_history)
    revision = current.revision if args.revision is None else args.revision
    if revision > current.revision or revision < 0:
        raise SevisflowError(
            f"not closed: revision {revision} does not exist; the open batch of {org} is at revision "
            f"{current.revision} (`sevisflow batch show`)"
        )
    reviewed_view = current if revision == current.revision else dso_cli.view_at_revision(settings, org, revision)
    plan = dso_cli.plan_close(reviewed_view, current)
    changes = plan.changes_text()
    if not plan.closing:
        c = current.counts()
        why = (
            "; ".join(changes)
            if changes
            else f"revision {revision} has no record ready to send"
            + (f" ({c['held']} held, {c['waiting']} waiting for a SEVIS ID)" if c["records"] else "")
        )
        raise SevisflowError(f"nothing to close: {why}")
    reviewed = args.revision is not None or person
    if person and not args.yes:
        print(f"You are closing revision {revision} of the open batch of {org} as {dso}:")
        for what, n in plan.counts():
            print(f"  {n:>4}  {what}")
        print(f"  {len(plan.closing):>4}  record(s) in all")
        for line in changes:
            print(f"Not closed: {line}")
        if not dso_cli.confirm("Send these to SEVIS? Type yes to close: "):
            print("Not closed; nothing was sent.")
            return 1
    start = end_offsets(settings, settings.topics.batches)
    cmd = new_command(
        org,
        "close",
        dso_user_id=dso,
        record_ids=[r["record_id"] for r in plan.ready],
        reviewed_revision=revision if reviewed else None,
        basis_revision=None if reviewed else revision,
        principal=dso_cli.principal_of(settings.kafka),
        reason="closed with sevisflow batch close" + ("" if reviewed else " --yes (not reviewed)"),
    )
    send_command(settings, cmd)
    events = await_answer(settings, cmd["command_id"], start, {"closed"}, args.timeout)
    rejected = [e for e in events if e["type"] == "command_rejected"]
    if rejected:
        raise SevisflowError(f"the batcher refused: {rejected[0]['reason']}")
    result = close_json(events, cmd["command_id"])
    result.update(reviewed_revision=revision if reviewed else None, plan=plan.to_json())
    await_view(settings, org, max(e["revision"] for e in events))
    if args.json:
        print_json(result)
    else:
        print(render_close(result, settings.school.timezone))
        if plan.added:  # the batcher's notes name what it left open of the reviewed records; this is the rest
            print(f"Still open for your next review: {plan.changes_text()[-1]}")
    return 0


def _hold_or_release(args: argparse.Namespace, kind: str) -> int:
    from sevisflow.app.cli import dso as dso_cli

    settings = settings_from_args(args)
    doing = "held" if kind == "hold" else "released"
    dso = dso_cli.resolve_dso(args.dso, settings, doing, org=org_of(args, settings))
    reason = dso_cli.check_reason(args.reason) if kind == "hold" else args.reason
    if kind == "release" and reason is not None:
        problem = dso_cli.text_problem(reason, "the reason", dso_cli.MAX_REASON_LEN)
        if problem:
            raise SevisflowError(f"not released: {problem}")
    org = org_of(args, settings)
    view = load_open_view(settings, org)
    held = view.held.get(args.student)
    tz = settings.school.timezone
    if kind == "hold" and held is not None:
        raise SevisflowError(
            f"student {args.student} is already on hold (by {held.get('by') or 'a DSO'} since "
            f"{local_time(held.get('at_ms'), tz)}: {held.get('why') or 'no reason given'}); "
            "nothing changed"
        )
    if kind == "release" and held is None:
        raise SevisflowError(f"student {args.student} is not on hold; nothing to release")
    if kind == "hold" and not dso_cli.known_to_pipeline(settings, view, args.student):
        raise dso_cli.unknown_student(args.student, settings)
    start = end_offsets(settings, settings.topics.batches)
    cmd = new_command(
        org,
        kind,
        student_key=args.student,
        dso_user_id=dso,
        reason=reason,
        principal=dso_cli.principal_of(settings.kafka),
    )
    send_command(settings, cmd)
    done = "student_held" if kind == "hold" else "student_released"
    events = await_answer(settings, cmd["command_id"], start, {done}, args.timeout)
    rejected = [e for e in events if e["type"] == "command_rejected"]
    if rejected:
        raise SevisflowError(f"the batcher refused: {rejected[0]['reason']}")
    summary = orjson.loads(next(e for e in events if e["type"] == done)["record_json"])
    await_view(settings, org, max(e["revision"] for e in events))
    if args.json:
        print_json({"command_id": cmd["command_id"], "action": kind, "dso_user_id": dso, **summary})
    elif kind == "hold":
        print(
            f"Student {args.student} is on hold (by {dso}: {reason}): {summary['records']} open record(s) are kept "
            "out of the batch, and later changes of this student are held too, until you run "
            f"`sevisflow batch release {args.student} --dso {dso}`."
        )
    else:
        print(
            f"Student {args.student} is released by {dso}: {summary['records']} record(s) are back in the open batch."
        )
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    return _hold_or_release(args, "hold")


def cmd_release(args: argparse.Namespace) -> int:
    return _hold_or_release(args, "release")


def list_orgs(args: argparse.Namespace, settings: Settings) -> list[str]:
    """``batch list`` shows every OrgID of the deployment (the school's, each member school's, then each exchange
    program's) unless
    ``--org`` names one."""
    if getattr(args, "org", None):
        return [org_of(args, settings)]
    return [
        settings.school.require_org_id(),
        *(m.org_id for m in settings.schools),
        *(p.program_number for p in settings.exchange_programs),
    ]


def cmd_list(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    orgs = list_orgs(args, settings)
    views = [load_view(settings, orgs[0], results=True)]
    views += [load_view(settings, org, results=True, check=False) for org in orgs[1:]]
    tz = settings.school.timezone
    if args.json:
        out = list_json(views[0], args.limit)
        rest = list(zip(orgs[1:], views[1:], strict=True))
        members = [list_json(v, args.limit) for org, v in rest if settings.member_school(org) is not None]
        programs = [list_json(v, args.limit) for org, v in rest if settings.member_school(org) is None]
        if members:  # the member schools' batches ([[schools]]), each like the school's
            out["schools"] = members
        if programs:  # the exchange programs' EV batches, each like the school's
            out["programs"] = programs
        print_json(out)
        return 0

    def tables(_: int) -> list[Any]:
        return [r for v in views for r in review.list_table(v, tz, args.limit)]

    def lines() -> Iterator[str]:
        for i, v in enumerate(views):
            if i:
                yield ""
            yield from review.list_lines(v, tz, args.limit)

    emit(tables, lines, use_pager=not args.no_pager)
    return 0


def org_of_batch(args: argparse.Namespace, settings: Settings, batch_id: str) -> str:
    """``--org``, else the exchange program whose number a BatchID starts with (``P1123450TB5K3F`` is a batch of
    P-1-12345), else the member school whose prefix it starts with (ids.member_batch_prefix), else the school's
    code: ``batch status``/``resend`` find a program's or a member school's batch without ``--org``."""
    if getattr(args, "org", None):
        return org_of(args, settings)
    program = next(
        (p for p in settings.exchange_programs if batch_id.startswith(p.program_number.replace("-", ""))), None
    )
    if program is not None:
        return program.program_number
    member = next((m for m in settings.schools if batch_id.startswith(member_batch_prefix(m.org_id))), None)
    return member.org_id if member is not None else org_of(args, settings)


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    view = load_view(settings, org_of_batch(args, settings, args.batch_id), results=True)
    tz = settings.school.timezone
    if args.json:
        print_json(status_json(view, args.batch_id, tz))
    else:
        b = _batch(view, args.batch_id)
        emit(
            lambda _: review.batch_table(view, b, tz),
            lambda: review.batch_lines(view, b, tz),
            use_pager=not args.no_pager,
        )
    return 0


def rejected_records(b: ClosedBatch) -> list[dict[str, Any]]:
    """The records of ``b`` SEVIS rejected and nobody resent yet (what ``batch resend`` puts back)."""
    return [
        r
        for r in b.records
        if (b.results.get(r["request_id"]) or {}).get("status") not in (None, "success")
        and r["record_id"] not in b.resent
    ]


def cmd_resend(args: argparse.Namespace) -> int:
    """Put SEVIS-rejected records of a closed batch back into the open batch (the batcher checks it again)."""
    from sevisflow.app.cli import dso as dso_cli

    settings = settings_from_args(args)
    org = org_of_batch(args, settings, args.batch_id)
    dso = dso_cli.resolve_dso(args.dso, settings, "resent", org=org)
    if args.reason is not None:
        problem = dso_cli.text_problem(args.reason, "the reason", dso_cli.MAX_REASON_LEN)
        if problem:
            raise SevisflowError(f"not resent: {problem}")
    view = load_view(settings, org, results=True)
    b = _batch(view, args.batch_id)
    if not b.results:
        raise SevisflowError(
            f"not resent: batch {b.batch_id} has no SEVIS result yet; only records SEVIS rejected "
            "can be resent (`sevisflow batch status " + b.batch_id + "`)"
        )
    rejected = {r["record_id"]: r for r in rejected_records(b)}
    by_request = {r["request_id"]: r["record_id"] for r in b.records}
    wanted = [by_request.get(x, x) for x in args.record] or sorted(rejected)
    if not wanted:
        raise SevisflowError(
            f"not resent: batch {b.batch_id} has no rejected record left to resend (SEVIS accepted "
            "the others, or they were resent before)"
        )
    for rid in wanted:
        if rid not in rejected:
            known = rid in {r["record_id"] for r in b.records}
            why = (
                ("was resent before" if rid in b.resent else "was not rejected by SEVIS")
                if known
                else "is not a record of this batch"
            )
            raise SevisflowError(
                f"not resent: record {rid} {why} (rejected records of {b.batch_id}: "
                f"{', '.join(sorted(rejected)) or 'none'}); nothing was sent"
            )
    start = end_offsets(settings, settings.topics.batches)
    cmd = new_command(
        org,
        "resend",
        dso_user_id=dso,
        batch_id=b.batch_id,
        record_ids=wanted,
        reason=args.reason,
        principal=dso_cli.principal_of(settings.kafka),
    )
    send_command(settings, cmd)
    events = await_answer(settings, cmd["command_id"], start, {"resent"}, args.timeout)
    refused = [e for e in events if e["type"] == "command_rejected"]
    if refused:
        raise SevisflowError(f"the batcher refused: {refused[0]['reason']}")
    newer = [orjson.loads(e["record_json"])["record_id"] for e in events if e["type"] == "record_replaced"]
    await_view(settings, org, max(e["revision"] for e in events))
    if args.json:
        print_json(
            {
                "command_id": cmd["command_id"],
                "batch_id": b.batch_id,
                "dso_user_id": dso,
                "record_ids": wanted,
                "merged_into_newer_change": newer,
            }
        )
        return 0
    print(
        f"Resent by {dso}: {_n(len(wanted), 'record')} of batch {b.batch_id} back in the open batch; the next close "
        "sends them (`sevisflow batch show`)."
    )
    for rid in wanted:
        res = b.results.get(rejected[rid]["request_id"]) or {}
        merged = " — merged into a newer open change of the same record" if rid in newer else ""
        print(f"  {rid}: SEVIS said {res.get('error_code') or ''} {res.get('error_message') or ''}".rstrip() + merged)
    return 0
