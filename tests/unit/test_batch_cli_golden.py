"""Golden tests of the DSO's screens: `batch show|close|list|status`, human tables and --json.

The views are built by the real state machine from fixed inputs, so the files in
tests/golden/ pin both the batcher's records and the CLI's rendering.
Regenerate after an intended change with ``SEVISFLOW_UPDATE_GOLDEN=1 pytest tests/unit/test_batch_cli_golden.py``
and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from processors.batcher.core import CommandIn, EventIn, Publish, School, apply
from processors.batcher.fixtures import BASE_MS, ORG, command, event, result
from processors.batcher.view import build_view
from sevisflow.cli import batch as cli

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
TZ = "America/Chicago"
DSO = "JSMITH0001"


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("SEVISFLOW_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with SEVISFLOW_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden file"


def as_json(value) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


def scenario():
    s = School(ORG)
    published = []

    def feed(inp):
        nonlocal s
        s, outs = apply(s, inp)
        published.extend(o.event for o in outs if isinstance(o, Publish))
        return outs

    feed(EventIn(event("S1001", n=1, display_name="Chen, Wei", before={"email": "wei@old.example"},
                       after={"email": "wei@new.example"}), BASE_MS))
    feed(EventIn(event("S1001", n=2, display_name="Chen, Wei", before={"email": "wei@new.example"},
                       after={"email": "wei.chen@example.edu"}), BASE_MS))
    feed(EventIn(event("S1002", "Program.Extension", n=3, coalesce_key="Program.EndDate", table="public.program",
                       display_name="Okafor, Ada", before={"program_end": "2026-05-15"},
                       after={"program_end": "2026-12-18"},
                       payload={"@printForm": "true", "NewPrgEndDate": "2026-12-18", "Explanation": "Thesis"}),
                 BASE_MS))
    feed(EventIn(event("S1003", "Create", n=4, table="public.person", display_name="Garcia, Lucia",
                       payload={"@printForm": "true", "IssueReason": "I"}), BASE_MS))
    feed(EventIn(event("S1003", "Registration", n=5, sevis_id=None, table="public.enrollment",
                       display_name="Garcia, Lucia", before={"term": None}, after={"term": "2025FA"}), BASE_MS))
    feed(EventIn(event("S1004", n=6, display_name="Novak, Petr", table="public.person",
                       problems=["US address has no ZIP code"], before={"phone": "5550001"},
                       after={"phone": "5550002"}), BASE_MS))
    feed(CommandIn(command("hold", "h-1", student_key="S1004", dso_user_id=DSO, reason="call student")))
    return s, published, feed


def test_batch_show_golden():
    _, published, _ = scenario()
    view = build_view(ORG, published)
    check("batch_show.txt", cli.render_show(view, TZ) + "\n")
    check("batch_show.json", as_json(cli.show_json(view, TZ)))


def test_batch_show_empty_golden():
    check("batch_show_empty.txt", cli.render_show(build_view(ORG, []), TZ) + "\n")


def test_batch_close_list_status_golden():
    s, published, feed = scenario()
    view = build_view(ORG, published)
    ready = [r["record_id"] for r in view.open_records() if r["status"] == "open"]
    at = BASE_MS + 7_200_000
    outs = feed(CommandIn(command("close", "close-1", dso_user_id=DSO, record_ids=ready,
                                  reviewed_revision=view.revision, at_ms=at)))
    events = [o.event for o in outs if isinstance(o, Publish)]
    res = cli.close_json(events, "close-1")
    check("batch_close.txt", cli.render_close(res, TZ) + "\n")
    check("batch_close.json", as_json(res))
    closed = next(e for e in events if e["type"] == "closed")
    recs = orjson.loads(closed["records_json"])
    create = next(r for r in recs if r["kind"] == "Create")
    ext = next(r for r in recs if r["kind"] == "Program.Extension")
    results = [result(closed["batch_id"], create["request_id"], sevis_id="N0009876543"),
               result(closed["batch_id"], ext["request_id"], status="failure", error_code="S1110")]
    view = build_view(ORG, published, results)
    check("batch_list.txt", cli.render_list(view, TZ, 20) + "\n")
    check("batch_list.json", as_json(cli.list_json(view, 20)))
    check("batch_status.txt", cli.render_status(view, closed["batch_id"], TZ) + "\n")
    check("batch_status.json", as_json(cli.status_json(view, closed["batch_id"], TZ)))


def test_status_of_unknown_batch_is_a_clear_error():
    with pytest.raises(cli.SevisflowError, match="no closed batch"):
        cli.render_status(build_view(ORG, []), "S0000000000000", TZ)
