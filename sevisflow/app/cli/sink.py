"""``sevisflow sink xml|sevis|status``: run the sink stages, show the outbox.

``sink xml`` turns closed batches from sevis.batches into validated XML files in
the outbox (or the quarantine); ``sink sevis`` uploads them to SEVIS and brings
the results back onto sevis.results; ``sink status`` lists the batches by day and
state (the folder each sits in) with what each waits for ("outcome unknown since …,
N checks, next check …"); ``sink requeue`` is the operator's way out for a batch
whose upload outcome stays unknown although SEVIS has no record of it.
"""

from __future__ import annotations

import argparse
from typing import Any

from sevisflow.app.cli.common import add_json_flag, format_table, print_json, run_stage, settings_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sink",
        help="run the XML / SEVIS sinks, show the outbox",
        description="The last stages: closed batches → XSD-valid XML → SEVIS → sevis.results.",
    )
    ssub = p.add_subparsers(dest="sink_command", metavar="STAGE", required=True)
    x = ssub.add_parser("xml", help="render closed batches into validated XML files in the outbox")
    x.set_defaults(func=cmd_xml)
    s = ssub.add_parser("sevis", help="upload ready batches to SEVIS, download results, publish them")
    s.add_argument("--once", action="store_true", help="make one pass over the outbox and exit")
    s.set_defaults(func=cmd_sevis)
    st = ssub.add_parser("status", help="list the outbox and quarantine: day, state, BatchID, records, codes")
    add_json_flag(st)
    st.set_defaults(func=cmd_status)
    rq = ssub.add_parser(
        "requeue",
        help="give up on a batch in sending/ whose outcome is unknown: re-queue its records",
        description="For a batch in sending/ only. First downloads from SEVIS: if SEVIS has the batch "
        "(S0030 or results) nothing is done. Otherwise records the operator's decision in the "
        "batch folder, publishes a requeue command (its records go into the next close under a "
        "new BatchID) and moves it to failed/. Stop `sink sevis` first (it holds the outbox lock).",
    )
    rq.add_argument("batch_id")
    rq.add_argument(
        "--force",
        action="store_true",
        help="skip the download check (when SEVIS cannot be reached and you checked in SEVIS itself)",
    )
    rq.set_defaults(func=cmd_requeue)


def cmd_xml(args: argparse.Namespace) -> int:
    from sevisflow.sinks.xml.stage import run

    return run_stage(settings_from_args(args), run, name="sink-xml")


def cmd_sevis(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.once:
        from sevisflow.sinks.outbox import OutboxLock
        from sevisflow.sinks.sevis.stage import KafkaPublisher
        from sevisflow.sinks.sevis.uploader import SevisSink
        from sevisflow.sinks.xml.stage import make_outbox

        outbox = make_outbox(settings)
        with OutboxLock(outbox.root):
            pub = KafkaPublisher(settings)
            try:
                r = SevisSink(settings, outbox, pub).step()
            finally:
                pub.close()
        print(f"uploaded {r.uploaded}, processed {r.processed}, failed {r.failed}, retrying {r.retried}")
        return 0
    from sevisflow.sinks.sevis.stage import run

    return run_stage(settings, run, name="sink-sevis")


def outbox_rows(settings: Any) -> list[dict[str, Any]]:
    """Every batch folder in the outbox and quarantine, with its state and last codes (no personal data)."""
    import json

    from sevisflow.sinks.outbox import STATES
    from sevisflow.sinks.sevis.uploader import describe, posts_of
    from sevisflow.sinks.xml.stage import make_outbox

    ob = make_outbox(settings)
    rows: list[dict[str, Any]] = []
    for state in STATES:
        for bd in ob.batches(state):
            try:
                m = bd.manifest()
            except (OSError, ValueError):
                m = {}
            try:
                st = bd.state_data()
            except (OSError, ValueError):
                st = {}
            try:
                posts, status = len(posts_of(bd)), describe(bd, max_posts=settings.sevis.max_posts)
            except (OSError, ValueError) as exc:
                posts, status = 0, f"unreadable: {type(exc).__name__}"
            rows.append(
                {
                    "day": bd.day,
                    "state": state,
                    "batch_id": m.get("batch_id", bd.name),
                    "records": m.get("record_count"),
                    "upload_tries": posts,
                    "upload_code": st.get("last_upload_code"),
                    "process_code": st.get("process_code"),
                    "success": st.get("success"),
                    "failure": st.get("failure"),
                    "checks": st.get("checks", 0) + st.get("download_tries", 0),
                    "next_check_at": st.get("next_check_at"),
                    "status": status,
                    "path": str(bd.path),
                }
            )
    if ob.quarantine_root.is_dir():
        for day in sorted(p for p in ob.quarantine_root.iterdir() if p.is_dir()):
            for b in sorted(p for p in day.iterdir() if p.is_dir()):
                try:
                    m = json.loads((b / "manifest.json").read_text())
                    problems = json.loads((b / "problems.json").read_text())
                except (OSError, ValueError):
                    m, problems = {}, []
                rows.append(
                    {
                        "day": day.name,
                        "state": "quarantine",
                        "batch_id": m.get("batch_id", b.name),
                        "records": len(m.get("records", [])),
                        "upload_tries": 0,
                        "upload_code": None,
                        "process_code": None,
                        "success": None,
                        "failure": len(problems),
                        "checks": 0,
                        "next_check_at": None,
                        "status": "failed XSD validation: never uploaded",
                        "path": str(b),
                    }
                )
    rows.sort(key=lambda r: (r["day"], r["batch_id"]))
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    rows = outbox_rows(settings_from_args(args))
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("the outbox is empty")
        return 0
    print(
        format_table(
            ["DAY", "STATE", "BATCH ID", "RECORDS", "POSTS", "UPLOAD", "PROCESS", "OK", "FAILED", "STATUS"],
            [
                [
                    r["day"],
                    r["state"],
                    r["batch_id"],
                    r["records"],
                    r["upload_tries"],
                    r["upload_code"],
                    r["process_code"],
                    r["success"],
                    r["failure"],
                    r["status"],
                ]
                for r in rows
            ],
        )
    )
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    """Operator decision for a batch stuck with an unknown outcome (see ``sink requeue --help``)."""
    import time

    import orjson

    from sevisflow.core.errors import SevisflowError
    from sevisflow.sinks.outbox import OutboxLock, create_evidence
    from sevisflow.sinks.sevis.stage import KafkaPublisher
    from sevisflow.sinks.sevis.uploader import OPERATOR_REQUEUE, SevisSink, StepReport
    from sevisflow.sinks.xml.stage import make_outbox

    settings = settings_from_args(args)
    outbox = make_outbox(settings)
    with OutboxLock(outbox.root, role="sink requeue"):
        bd = outbox.find(args.batch_id)
        if bd is None:
            raise SevisflowError(
                f"batch {args.batch_id} is not in the outbox ({outbox.root}); `sevisflow sink status` lists the batches"
            )
        if bd.state != "sending":
            raise SevisflowError(
                f"batch {args.batch_id} is in {bd.state}/, not sending/: only a batch whose upload "
                "outcome is unknown can be re-queued by hand"
                + (" (SEVIS accepted it: it is never re-queued)" if bd.state in ("uploaded", "processed") else "")
            )
        pub = KafkaPublisher(settings)
        try:
            sink = SevisSink(settings, outbox, pub)
            if not args.force:
                m = bd.manifest()
                reply = sink.client.download(m["org_id"], sink._user(m), m["batch_id"])
                if reply.code in ("S0000", "S0030"):
                    raise SevisflowError(
                        f"SEVIS has batch {args.batch_id} (download answered {reply.code}): not "
                        "re-queued; start `sevisflow sink sevis` and it moves on to uploaded/"
                    )
                if reply.code != "S0031":
                    raise SevisflowError(
                        f"SEVIS answered {reply.code} to the download of {args.batch_id}, not S0031 "
                        "(no such batch): not re-queued; try again later or use --force after "
                        "checking in SEVIS"
                    )
            create_evidence(bd.path / OPERATOR_REQUEUE, orjson.dumps({"at": time.time(), "forced": bool(args.force)}))
            sink._settle(bd, StepReport())  # re-queues and moves it to failed/ under the same lock
        finally:
            pub.close()
    after = outbox.find(args.batch_id)
    print(f"batch {args.batch_id}: {after.state if after else 'gone'}")
    return 0
