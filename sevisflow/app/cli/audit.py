"""``sevisflow audit student <key>`` and ``sevisflow audit batch <BatchID>``.

Read-only views for auditors and DSOs, built by the pure functions of
:mod:`sevisflow.app.audit.timeline` over the topics as they are retained (no consumer
group is joined or moved) and the outbox folders. Output shows identifiers, codes and
field names; use ``sevisflow replay --student`` to export the records themselves.
"""

from __future__ import annotations

import argparse

from sevisflow.app.audit.replay import StudentMatcher, layout_from_settings
from sevisflow.app.audit.sources import (
    SCOPE_SKEW_MS,
    StudentRead,
    closed_at_from_archive,
    load_inputs,
    load_student_inputs,
    outbox_info,
)
from sevisflow.app.audit.timeline import (
    BatchReport,
    StudentTimeline,
    batch_report,
    format_batch_records,
    format_timeline,
    student_batches,
    student_timeline,
    summarize,
)
from sevisflow.app.cli.common import add_json_flag, clean, format_table, print_json, settings_from_args
from sevisflow.core.config import Settings
from sevisflow.core.errors import SevisflowError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "audit",
        help="trace a student or a batch through every stage (read-only)",
        description="Timelines for auditors: SIS change → SEVIS event → batch record → "
        "closed batch → upload → SEVIS result.",
    )
    asub = p.add_subparsers(dest="audit_command", metavar="WHAT", required=True)
    st = asub.add_parser(
        "student",
        help="the timeline of one student across all topics",
        description="Every recorded step of one student: SIS changes on the change topics, "
        "SEVIS events, batch records (added, replaced, held, released, closed), "
        "uploads and SEVIS results.",
    )
    st.add_argument("student", help="the student key (e.g. S00001234)")
    st.add_argument(
        "--no-changes",
        action="store_true",
        help="skip reading the change topics (faster; SIS steps then come only from event lineage)",
    )
    st.add_argument(
        "--decode-all",
        action="store_true",
        help="decode every record of every topic read, not only those that can concern the student "
        "(slower; the same timeline: a cross-check)",
    )
    st.add_argument("--timeout", type=float, default=30.0, help="Kafka timeout in seconds")
    add_json_flag(st)
    st.set_defaults(func=cmd_student)
    bt = asub.add_parser(
        "batch",
        help="who closed a batch, when, what it held, what SEVIS answered",
        description="One closed batch: the close and its command (who, when, reviewed revision), "
        "every record with its source lineage, and SEVIS's answer per record "
        "(joined by requestID).",
    )
    bt.add_argument("batch_id", help="the BatchID (14 characters)")
    bt.add_argument("--timeout", type=float, default=30.0, help="Kafka timeout in seconds")
    add_json_flag(bt)
    bt.set_defaults(func=cmd_batch)


def student_from_log(
    settings: Settings, student: str, *, with_changes: bool = True, decode_all: bool = False, timeout_s: float = 30.0
) -> tuple[StudentTimeline, StudentRead | None]:
    """One student's timeline from the log, and what was read for it (None with ``decode_all``: every
    record of the topics decoded, as before; the same timeline, kept as a cross-check and for the bench).
    The outbox is looked up only for the batches that carried the student."""
    if decode_all:
        inputs, read = load_inputs(settings, with_changes=with_changes, timeout_s=timeout_s), None
    else:
        inputs, read = load_student_inputs(settings, student, with_changes=with_changes, timeout_s=timeout_s)
    batch_ids, _ = student_batches(student, inputs.batches)
    uploads = {b: info for b in batch_ids if b and (info := outbox_info(settings, b))}
    tl = student_timeline(
        student,
        changes=inputs.changes,
        events=inputs.events,
        batches=inputs.batches,
        results=inputs.results,
        commands=inputs.commands,
        uploads=uploads,
        matcher=StudentMatcher(student, layout_from_settings(settings)),
    )
    return tl, read


def cmd_student(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    tl, read = student_from_log(
        settings, args.student, with_changes=not args.no_changes, decode_all=args.decode_all, timeout_s=args.timeout
    )
    if args.json:
        print_json({**tl.to_json(), "read": read.to_json() if read else {"decode_all": True}})
        return 0 if tl.steps else 1
    if not tl.steps:
        raise SevisflowError(f"nothing recorded for student {args.student} on the retained topics")
    print(
        f"student {args.student}: {len(tl.steps)} step(s) "
        + ", ".join(f"{k} {v}" for k, v in summarize(tl.steps).items())
        + (f"; batches {', '.join(tl.batches)}" if tl.batches else "; not in any closed batch")
        + (f"; {tl.unreported_changes} SIS change(s) without a SEVIS event" if tl.unreported_changes else "")
    )
    print(format_table(["WHEN (UTC)", "STAGE", "WHAT", "RECORDED AT"], format_timeline(tl)))
    print(read.describe() if read else "read every topic whole and decoded every record (--decode-all)")
    return 0


def batch_inputs_report(settings: Settings, batch_id: str, timeout_s: float) -> BatchReport:
    """The batch's report, reading the log only from its close on (the time its manifest or ledger line
    names, less the clock tolerance): the close, its command, the later moves and SEVIS's answers are all
    written from then on. When they are not found there, the whole log is read."""
    since = closed_at_from_archive(settings, batch_id)
    upload = outbox_info(settings, batch_id)
    if since is not None:
        inputs = load_inputs(settings, with_changes=False, timeout_s=timeout_s, since_ms=since - SCOPE_SKEW_MS)
        report = batch_report(
            batch_id, batches=inputs.batches, results=inputs.results, commands=inputs.commands, upload=upload
        )
        if report.found and report.close_command is not None:
            return report
    inputs = load_inputs(settings, with_changes=False, timeout_s=timeout_s)
    return batch_report(
        batch_id, batches=inputs.batches, results=inputs.results, commands=inputs.commands, upload=upload
    )


def cmd_batch(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    report = batch_inputs_report(settings, args.batch_id, args.timeout)
    if args.json:
        print_json(report.to_json())
        return 0 if report.found else 1
    if not report.found:
        raise SevisflowError(f"batch {args.batch_id} has no 'closed' event on {settings.topics.batches}")
    c, cmd = report.closed or {}, report.close_command or {}
    n = report.counts()
    print(f"batch {args.batch_id} of {c.get('org_id')}")
    print(f"  closed by     {c.get('closed_by')} at {c.get('at')} (revision {c.get('revision')}, {c.get('ref')})")
    if cmd:
        print(
            f"  close command {cmd.get('command_id')} by {cmd.get('dso_user_id') or 'the scheduler'}, "
            f"requested {cmd.get('requested_at')} ({cmd.get('ref')})"
        )
        print(f"  reviewed by   {cmd.get('reviewed_by')}")
    if c.get("reason"):
        print(f"  note          {clean(c['reason'])}")
    print(f"  content       {n['records']} record(s): {n['creates']} create, {n['updates']} update")
    print(f"  SEVIS answer  {n['success']} success, {n['failure']} failure, {n['pending']} pending")
    up = report.upload
    if up:
        print(f"  outbox        {up.get('state')} ({up.get('day', '')}) sha256 {up.get('sha256', '-')}")
    for ev in report.lifecycle:
        print(f"  {ev['type']:<13} {ev['at']} {clean(ev.get('reason') or '')}")
    print(
        format_table(
            ["REQUEST ID", "STUDENT", "KIND", "SEVIS ID", "SOURCES", "SEVIS RESULT"], format_batch_records(report)
        )
    )
    if report.unmatched_results:
        print(
            f"{len(report.unmatched_results)} result(s) name a requestID that is not in the batch: "
            + ", ".join(str(r["request_id"]) for r in report.unmatched_results)
        )
    return 0
