"""``sevisflow sink xml|sevis|status``: run the sink stages, show the outbox.

``sink xml`` turns closed batches from sevis.batches into validated XML files in
the outbox (or the quarantine); ``sink sevis`` uploads them to SEVIS and brings
the results back onto sevis.results; ``sink status`` lists the batches by day and
state (the folder each sits in).
"""

from __future__ import annotations

import argparse
from typing import Any

from sevisflow.cli.common import add_json_flag, format_table, print_json, run_stage, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("sink", help="run the XML / SEVIS sinks, show the outbox",
                       description="The last stages: closed batches → XSD-valid XML → SEVIS → sevis.results.")
    ssub = p.add_subparsers(dest="sink_command", metavar="STAGE", required=True)
    x = ssub.add_parser("xml", help="render closed batches into validated XML files in the outbox")
    x.set_defaults(func=cmd_xml)
    s = ssub.add_parser("sevis", help="upload ready batches to SEVIS, download results, publish them")
    s.add_argument("--once", action="store_true", help="make one pass over the outbox and exit")
    s.set_defaults(func=cmd_sevis)
    st = ssub.add_parser("status", help="list the outbox and quarantine: day, state, BatchID, records, codes")
    add_json_flag(st)
    st.set_defaults(func=cmd_status)


def cmd_xml(args: argparse.Namespace) -> int:
    from sinks.xml.stage import run

    return run_stage(settings_from_args(args), run, name="sink-xml")


def cmd_sevis(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.once:
        from sinks.sevis.stage import KafkaPublisher
        from sinks.sevis.uploader import SevisSink
        from sinks.xml.stage import make_outbox

        pub = KafkaPublisher(settings)
        try:
            r = SevisSink(settings, make_outbox(settings), pub).step()
        finally:
            pub.close()
        print(f"uploaded {r.uploaded}, processed {r.processed}, failed {r.failed}, retrying {r.retried}")
        return 0
    from sinks.sevis.stage import run

    return run_stage(settings, run, name="sink-sevis")


def outbox_rows(settings: Any) -> list[dict[str, Any]]:
    """Every batch folder in the outbox and quarantine, with its state and last codes (no personal data)."""
    import json

    from sinks.outbox import STATES
    from sinks.xml.stage import make_outbox

    ob = make_outbox(settings)
    rows: list[dict[str, Any]] = []
    for state in STATES:
        for bd in ob.batches(state):
            try:
                m = bd.manifest()
            except (OSError, ValueError):
                m = {}
            st = bd.state_data()
            rows.append({"day": bd.day, "state": state, "batch_id": m.get("batch_id", bd.name),
                         "records": m.get("record_count"), "upload_tries": st.get("upload_tries", 0),
                         "upload_code": st.get("last_upload_code"), "process_code": st.get("process_code"),
                         "success": st.get("success"), "failure": st.get("failure"), "path": str(bd.path)})
    if ob.quarantine_root.is_dir():
        for day in sorted(p for p in ob.quarantine_root.iterdir() if p.is_dir()):
            for b in sorted(p for p in day.iterdir() if p.is_dir()):
                try:
                    m = json.loads((b / "manifest.json").read_text())
                    problems = json.loads((b / "problems.json").read_text())
                except (OSError, ValueError):
                    m, problems = {}, []
                rows.append({"day": day.name, "state": "quarantine", "batch_id": m.get("batch_id", b.name),
                             "records": len(m.get("records", [])), "upload_tries": 0, "upload_code": None,
                             "process_code": None, "success": None, "failure": len(problems), "path": str(b)})
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
    print(format_table(["DAY", "STATE", "BATCH ID", "RECORDS", "TRIES", "UPLOAD", "PROCESS", "OK", "FAILED"],
                       [[r["day"], r["state"], r["batch_id"], r["records"], r["upload_tries"], r["upload_code"],
                         r["process_code"], r["success"], r["failure"]] for r in rows]))
    return 0
