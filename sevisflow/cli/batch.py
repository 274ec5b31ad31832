"""``sevisflow batch show|close|hold|release|list|status``: the DSO's review of the open batch.

``show`` and ``close`` read the open batch from the batcher's compacted per-school view
(``sevis.batch.open``): the latest record of the school's key, read from the end of the topic,
so they cost the same however long the history is. ``--from-history`` (and the fallback when the
view has no usable record for the school) folds the whole of ``sevis.batches`` instead, as
``list`` and ``status`` always do (they need the closed batches and ``sevis.results``). Reading
never moves any pipeline offset. Commands go to ``sevis.batch.commands``; the batcher applies them. Commands
that change something wait for the batcher's answer on ``sevis.batches`` and say
so plainly when it does not come (the batcher is probably not running).

The renderers (``render_*`` / ``*_json``) are pure functions of a
:class:`~processors.batcher.view.BatchView`: the golden tests pin their output.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import datetime
from typing import Any, Iterator, Mapping
from zoneinfo import ZoneInfo

import orjson
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from processors.batcher.ids import user_id_problem
from processors.batcher.view import BatchView, ClosedBatch, fold, fold_result, from_open_batch
from sevisflow.cli.common import add_json_flag, format_table, print_json, settings_from_args
from sevisflow.config import Settings
from sevisflow.errors import SevisflowError, UnreachableError
from sevisflow.kafka_io import (
    delivery_raiser,
    flush_or_raise,
    make_admin,
    make_consumer,
    make_producer,
    produce,
    read_topic,
    topic_partitions,
    watermarks,
)
from sevisflow.serde import registry

BATCH_SCHEMA = "sevisflow.batches.BatchEvent"
COMMAND_SCHEMA = "sevisflow.commands.BatchCommand"
RESULT_SCHEMA = "sevisflow.results.SevisResult"
OPEN_BATCH_SCHEMA = "sevisflow.batches.OpenBatch"
TAIL_WINDOW = 8
"""Offsets read first from the end of each partition of the view topic (x8 each time the key is not there)."""
STATUS_TEXT = {"open": "ready", "held": "HELD", "waiting": "waiting for SEVIS ID"}
KAFKA_TIMEOUT_S = 10.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("batch", help="review, hold and close the open SEVIS batch",
                       description="Review what will be sent to SEVIS, keep students out of it, and close it.")
    p.add_argument("--org", default=None, help="the school's SEVIS code (default: school.org_id of the settings)")
    bsub = p.add_subparsers(dest="batch_command", metavar="ACTION", required=True)

    show = bsub.add_parser("show", help="the open batch: every record, what changed, where it came from")
    add_json_flag(show)
    _add_history_flag(show)
    show.set_defaults(func=cmd_show)

    close = bsub.add_parser("close", help="close what you reviewed into batch(es) for upload")
    close.add_argument("--dso", required=True, metavar="USERID", help="your SEVIS user id (exactly 10 characters)")
    close.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the batcher (default 30)")
    add_json_flag(close)
    _add_history_flag(close)
    close.set_defaults(func=cmd_close)

    for name, helptext in (("hold", "keep a student's records out of the batch until released"),
                           ("release", "put a held student's records back into the batch")):
        c = bsub.add_parser(name, help=helptext)
        c.add_argument("student", help="the student's id in the SIS (student key)")
        c.add_argument("--dso", default=None, metavar="USERID", help="your SEVIS user id (recorded with the hold)")
        c.add_argument("--reason", default=None, help="why (recorded, shown to other DSOs)")
        c.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the batcher (default 30)")
        add_json_flag(c)
        c.set_defaults(func=cmd_hold if name == "hold" else cmd_release)

    lst = bsub.add_parser("list", help="closed batches and their SEVIS status, newest first")
    lst.add_argument("--limit", type=int, default=20, help="how many closed batches to show (default 20)")
    add_json_flag(lst)
    lst.set_defaults(func=cmd_list)

    st = bsub.add_parser("status", help="one closed batch: its records and SEVIS's result for each")
    st.add_argument("batch_id", metavar="BatchID")
    add_json_flag(st)
    st.set_defaults(func=cmd_status)


def _add_history_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-history", action="store_true",
                   help="rebuild the open batch from the whole history of sevis.batches instead of reading the "
                        "batcher's open-batch view (slower; the same result)")


# ----------------------------------------------------------------------------- Kafka access


def org_of(args: argparse.Namespace, settings: Settings) -> str:
    return getattr(args, "org", None) or settings.school.org_id


def check_kafka(settings: Settings, topics: list[str]) -> None:
    """Fail fast and plainly when Kafka is down or the pipeline's topics are missing."""
    try:
        md = make_admin(settings.kafka).list_topics(timeout=KAFKA_TIMEOUT_S)
    except KafkaException as exc:
        raise UnreachableError(
            f"Kafka at {settings.kafka.bootstrap_servers} is not reachable ({exc.args[0].str()}). "
            "Is the pipeline running? Check kafka.bootstrap_servers in your settings.") from None
    missing = [t for t in topics if t not in md.topics]
    if missing:
        raise SevisflowError(f"topic {missing[0]} does not exist in Kafka at {settings.kafka.bootstrap_servers}; "
                             "the pipeline has not been set up (run `sevisflow topics create`)")


def _decoded(settings: Settings, topic: str, schema: str, start: Mapping[int, int] | None = None,
             positions: dict[int, int] | None = None) -> Iterator[dict[str, Any]]:
    for msg in read_topic(settings.kafka, topic, timeout_s=KAFKA_TIMEOUT_S * 3, start=start):
        if positions is not None:
            positions[msg.partition()] = msg.offset() + 1
        if msg.value() is not None:
            yield registry().decode(msg.value(), schema)


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
    consumer = make_consumer(settings.kafka, group_id=f"sevisflow-cli-{uuid.uuid4().hex[:8]}",
                             **{"enable.partition.eof": True, "fetch.wait.max.ms": 10})
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
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=KAFKA_TIMEOUT_S)[1]
                for p in parts}
    except KafkaException as exc:
        raise UnreachableError(f"Kafka at {settings.kafka.bootstrap_servers} is not reachable: {exc}") from None
    finally:
        consumer.close()


def send_command(settings: Settings, command: dict[str, Any]) -> None:
    producer = make_producer(settings.kafka)
    errors: list[Any] = []
    produce(producer, settings.topics.commands, command["org_id"].encode(),
            registry().encode(COMMAND_SCHEMA, command), on_delivery=delivery_raiser(errors))
    flush_or_raise(producer, errors, timeout_s=KAFKA_TIMEOUT_S * 2)


def new_command(org: str, kind: str, **fields: Any) -> dict[str, Any]:
    cmd: dict[str, Any] = {
        "command_id": f"{kind}-{uuid.uuid4().hex}", "org_id": org, "kind": kind, "dso_user_id": None,
        "student_key": None, "record_ids": [], "reviewed_revision": None, "batch_id": None, "reason": None,
        "requested_at_ms": int(time.time() * 1000), "payload_json": None,
    }
    cmd.update(fields)
    return cmd


def await_answer(settings: Settings, command_id: str, start: dict[int, int], done_types: set[str],
                 timeout_s: float) -> list[dict[str, Any]]:
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
                "`sevisflow batch list` / `sevisflow batch show` before trying again")
        time.sleep(0.25)


# ----------------------------------------------------------------------------- formatting


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def local_time(ms: int | None, tz: str) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")


def element(rec: Mapping[str, Any]) -> str:
    if rec["kind"] == "Create":
        return "CreateStudent"
    return rec["kind"].replace(".", "/")


def _val(v: Any) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, (dict, list)):
        return orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()
    return str(v)


def changes(rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    before, after = rec.get("before") or {}, rec.get("after") or {}
    keys = sorted(set(before) | set(after))
    return [{"field": k, "before": before.get(k), "after": after.get(k)} for k in keys]


def change_text(rec: Mapping[str, Any]) -> str:
    ch = changes(rec)
    if not ch:
        return "new record" if rec["section"] == "create" else "(see payload)"
    return "; ".join(f"{c['field']}: {_val(c['before'])} → {_val(c['after'])}" for c in ch)


def source(rec: Mapping[str, Any], tz: str) -> dict[str, Any]:
    lineage = rec.get("lineage") or []
    last = lineage[-1] if lineage else {}
    out = {"origin": rec.get("origin") or "sis", "table": last.get("table"),
           "commit_time": local_time(last.get("commit_ts_ms") or rec.get("at_ms"), tz),
           "changes_merged": len(rec.get("event_ids") or [])}
    if last.get("command_id"):  # reported with `sevisflow student report`
        out.update(command_id=last["command_id"], dso_user_id=last.get("dso_user_id"))
    return out


def source_text(rec: Mapping[str, Any], tz: str) -> str:
    s = source(rec, tz)
    where = (f"DSO {s['dso_user_id']} (report)" if s.get("command_id") else "DSO (add-info)") \
        if s["origin"] == "dso" else (s["table"] or "SIS")
    text = f"{where}, {s['commit_time']}"
    return text + (f" (+{s['changes_merged'] - 1} earlier)" if s["changes_merged"] > 1 else "")


def status_text(rec: Mapping[str, Any]) -> str:
    text = STATUS_TEXT.get(rec["status"], rec["status"])
    n = len(rec.get("replaced") or [])
    return text + (f", replaced {n}x" if n else "")


def record_json(rec: Mapping[str, Any], tz: str) -> dict[str, Any]:
    return {
        "record_id": rec["record_id"], "request_id": rec["request_id"], "student_key": rec["student_key"],
        "display_name": rec.get("display_name"), "sevis_id": rec.get("sevis_id"), "section": rec["section"],
        "element": element(rec), "kind": rec["kind"], "status": rec["status"], "changes": changes(rec),
        "source": source(rec, tz), "problems": list(rec.get("problems") or []),
        "replaced": list(rec.get("replaced") or []), "event_ids": list(rec.get("event_ids") or []),
        "revision": rec.get("rev"),
    }


def show_json(view: BatchView, tz: str) -> dict[str, Any]:
    return {"org_id": view.org_id, "revision": view.revision, "counts": view.counts(),
            "held_students": sorted(view.held), "records": [record_json(r, tz) for r in view.open_records()]}


def render_show(view: BatchView, tz: str) -> str:
    c = view.counts()
    lines = [f"Open batch of {view.org_id} (revision {view.revision})"]
    if not c["records"]:
        lines.append("The open batch is empty: nothing waits to be sent to SEVIS.")
        return "\n".join(lines)
    lines.append(f"{_n(c['records'], 'record')}: {_n(c['creates'], 'new student')} (CreateStudent), "
                 f"{_n(c['updates'], 'update')}. "
                 f"Ready to send: {c['ready']}; held: {c['held']}; waiting for a SEVIS ID: {c['waiting']}.")
    lines.append("")
    rows = []
    for i, r in enumerate(view.open_records(), 1):
        rows.append([i, r["student_key"], r.get("display_name") or "", element(r), change_text(r),
                     source_text(r, tz), status_text(r), "; ".join(r.get("problems") or [])])
    lines.append(format_table(["#", "Student", "Name", "SEVIS element", "Change (before → after)", "From",
                               "Status", "Problems"], rows))
    replaced = [r for r in view.open_records() if r.get("replaced")]
    if replaced:
        lines += ["", "Replaced changes (only the latest change of each kind is sent):"]
        for r in replaced:
            for x in r["replaced"]:
                lines.append(f"  {r['student_key']} {element(r)}: the change of {local_time(x.get('at_ms'), tz)} "
                             f"(event {x['event_id']}) was replaced by a later change (event {x['by_event_id']})"
                             + (f", after batch {x['requeued_from']} was refused" if x.get("requeued_from") else ""))
    if c["ready"]:
        lines += ["", "Close what you reviewed with: sevisflow batch close --dso <your SEVIS user id>"]
    return "\n".join(lines)


def close_json(events: list[dict[str, Any]], command_id: str) -> dict[str, Any]:
    batches = []
    for e in events:
        if e["type"] != "closed":
            continue
        recs = orjson.loads(e["records_json"])
        batches.append({"batch_id": e["batch_id"], "creates": sum(1 for r in recs if r["section"] == "create"),
                        "updates": sum(1 for r in recs if r["section"] == "update"), "records": len(recs),
                        "note": e.get("reason")})
    first = next((e for e in events if e["type"] == "closed"), {})
    return {"command_id": command_id, "closed_by": first.get("closed_by"), "at_ms": first.get("at_ms"),
            "batches": batches}


def render_close(result: Mapping[str, Any], tz: str) -> str:
    total = sum(b["records"] for b in result["batches"])
    n = len(result["batches"])
    lines = [f"Closed {_n(total, 'record')} into {n} batch{'es' if n != 1 else ''} "
             f"(closed by {result['closed_by']} at {local_time(result['at_ms'], tz)}):", ""]
    lines.append(format_table(["BatchID", "Creates", "Updates", "Records"],
                              [[b["batch_id"], b["creates"], b["updates"], b["records"]] for b in result["batches"]]))
    notes = sorted({part for b in result["batches"] for part in (b.get("note") or "").split("; ")
                    if part and not part.startswith("document ")})
    if notes:
        lines += ["", *[f"Note: {x}" for x in notes]]
    lines += ["", "The batch files are written and uploaded by the pipeline; follow them with "
                  "`sevisflow batch list`."]
    return "\n".join(lines)


def list_json(view: BatchView, limit: int) -> dict[str, Any]:
    batches = sorted(view.batches.values(), key=lambda b: b.batch_id, reverse=True)[:limit]
    return {"org_id": view.org_id, "open": view.counts(),
            "batches": [{"batch_id": b.batch_id, "closed_at_ms": b.at_ms, "closed_by": b.closed_by,
                         "creates": b.creates, "updates": b.updates, "status": b.state(),
                         "command_id": b.command_id} for b in batches]}


def render_list(view: BatchView, tz: str, limit: int) -> str:
    c = view.counts()
    lines = [f"Open batch of {view.org_id}: {c['records']} records ({c['ready']} ready, {c['held']} held, "
             f"{c['waiting']} waiting for a SEVIS ID)", ""]
    batches = sorted(view.batches.values(), key=lambda b: b.batch_id, reverse=True)[:limit]
    if not batches:
        lines.append("No batch has been closed yet.")
        return "\n".join(lines)
    lines.append(format_table(["BatchID", "Closed", "By", "Creates", "Updates", "Status"],
                              [[b.batch_id, local_time(b.at_ms, tz), b.closed_by, b.creates, b.updates, b.state()]
                               for b in batches]))
    return "\n".join(lines)


def _batch(view: BatchView, batch_id: str) -> ClosedBatch:
    b = view.batches.get(batch_id)
    if b is None:
        raise SevisflowError(f"no closed batch {batch_id!r} for {view.org_id} (see `sevisflow batch list`)")
    return b


def status_json(view: BatchView, batch_id: str, tz: str) -> dict[str, Any]:
    b = _batch(view, batch_id)
    return {"batch_id": b.batch_id, "org_id": view.org_id, "closed_by": b.closed_by, "closed_at_ms": b.at_ms,
            "status": b.state(), "creates": b.creates, "updates": b.updates, "note": b.reason,
            "records": [{"request_id": r["request_id"], "student_key": r["student_key"],
                         "display_name": r.get("display_name"), "sevis_id": r.get("sevis_id"),
                         "element": element(r), "result": b.results.get(r["request_id"])} for r in b.records]}


def render_status(view: BatchView, batch_id: str, tz: str) -> str:
    b = _batch(view, batch_id)
    lines = [f"Batch {b.batch_id} of {view.org_id}: {_n(b.creates, 'create')}, {_n(b.updates, 'update')}",
             f"Closed by {b.closed_by} at {local_time(b.at_ms, tz)}; status: {b.state()}", ""]
    rows = []
    for r in b.records:
        res = b.results.get(r["request_id"])
        outcome = "pending" if res is None else ("ok" if res.get("status") == "success" else "FAILED")
        detail = "" if res is None else " ".join(x for x in (res.get("sevis_id") if outcome == "ok" else None,
                                                             res.get("error_code"), res.get("error_message")) if x)
        rows.append([r["request_id"], r["student_key"], r.get("display_name") or "", element(r), outcome, detail])
    lines.append(format_table(["Request ID", "Student", "Name", "SEVIS element", "Result", "Detail"], rows))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- commands


def cmd_show(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    view = load_open_view(settings, org_of(args, settings), from_history=args.from_history)
    if args.json:
        print_json(show_json(view, settings.school.timezone))
    else:
        print(render_show(view, settings.school.timezone))
    return 0


def cmd_close(args: argparse.Namespace) -> int:
    problem = user_id_problem(args.dso)
    if problem:
        raise SevisflowError(f"not closed: {problem}")
    settings = settings_from_args(args)
    org = org_of(args, settings)
    view = load_open_view(settings, org, from_history=args.from_history)
    ready = [r for r in view.open_records() if r["status"] == "open"]
    if not ready:
        c = view.counts()
        raise SevisflowError("nothing to close: the open batch has no record ready to send"
                             + (f" ({c['held']} held, {c['waiting']} waiting for a SEVIS ID)" if c["records"] else ""))
    start = end_offsets(settings, settings.topics.batches)
    cmd = new_command(org, "close", dso_user_id=args.dso, record_ids=[r["record_id"] for r in ready],
                      reviewed_revision=view.revision, reason="closed with sevisflow batch close")
    send_command(settings, cmd)
    events = await_answer(settings, cmd["command_id"], start, {"closed"}, args.timeout)
    rejected = [e for e in events if e["type"] == "command_rejected"]
    if rejected:
        raise SevisflowError(f"the batcher refused: {rejected[0]['reason']}")
    result = close_json(events, cmd["command_id"])
    await_view(settings, org, max(e["revision"] for e in events))
    if args.json:
        print_json(result)
    else:
        print(render_close(result, settings.school.timezone))
    return 0


def _hold_or_release(args: argparse.Namespace, kind: str) -> int:
    if args.dso is not None and user_id_problem(args.dso):
        raise SevisflowError(str(user_id_problem(args.dso)))
    settings = settings_from_args(args)
    org = org_of(args, settings)
    check_kafka(settings, [settings.topics.batches, settings.topics.commands])
    start = end_offsets(settings, settings.topics.batches)
    cmd = new_command(org, kind, student_key=args.student, dso_user_id=args.dso, reason=args.reason)
    send_command(settings, cmd)
    done = "student_held" if kind == "hold" else "student_released"
    events = await_answer(settings, cmd["command_id"], start, {done}, args.timeout)
    rejected = [e for e in events if e["type"] == "command_rejected"]
    if rejected:
        raise SevisflowError(f"the batcher refused: {rejected[0]['reason']}")
    summary = orjson.loads(next(e for e in events if e["type"] == done)["record_json"])
    await_view(settings, org, max(e["revision"] for e in events))
    if args.json:
        print_json({"command_id": cmd["command_id"], "action": kind, **summary})
    elif kind == "hold":
        print(f"Student {args.student} is on hold: {summary['records']} open record(s) are kept out of the batch, "
              "and later changes of this student are held too, until you run "
              f"`sevisflow batch release {args.student}`.")
    else:
        print(f"Student {args.student} is released: {summary['records']} record(s) are back in the open batch."
              + ("" if summary.get("was_held") else " (The student was not on hold.)"))
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    return _hold_or_release(args, "hold")


def cmd_release(args: argparse.Namespace) -> int:
    return _hold_or_release(args, "release")


def cmd_list(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    view = load_view(settings, org_of(args, settings), results=True)
    if args.json:
        print_json(list_json(view, args.limit))
    else:
        print(render_list(view, settings.school.timezone, args.limit))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    view = load_view(settings, org_of(args, settings), results=True)
    if args.json:
        print_json(status_json(view, args.batch_id, settings.school.timezone))
    else:
        print(render_status(view, args.batch_id, settings.school.timezone))
    return 0
