"""verify for an exchange program's EV batches, without Kafka: the real batcher closes an EV batch next to the
school's F/M batch on the same topics, the real XML sink writes both; verify re-derives each (render with the EV
renderer, the batcher re-run per OrgID), and tampering with the EV document shows."""

from __future__ import annotations

import orjson
import pytest

from sevisflow.app.audit.decode import decode_record
from sevisflow.app.audit.verify import verify_all, verify_batch
from sevisflow.core.ledger import Ledger
from sevisflow.core.serde import registry
from sevisflow.processors.batcher.core import CommandIn, EventIn, Publish, School, apply
from testkit.audit_scenario import batcher_run, batcher_verify_context, sealed_batcher_runs
from tests.ev_support import UPDATE_PAYLOADS, create_payload
from tests.helpers import XSD_DIR

pytestmark = pytest.mark.skipif(
    not (XSD_DIR / "Create-UpdateExchangeVisitor.xsd").exists(), reason="SEVIS XSDs not present"
)
PROGRAM, RO = "P-1-12345", "ROUSER0001"
EV_KINDS = ("EV.Validate", "EV.Biographical", "EV.Program.Extension", "EV.FinancialInfo", "EV.SiteOfActivity.Add")


def ev_run(base_ms: int) -> dict[str, list[tuple[bytes, bytes, int]]]:
    """Inputs and outputs of the real batcher for one program: a create and five updates, closed by the RO."""
    out: dict[str, list[tuple[bytes, bytes, int]]] = {"events": [], "commands": [], "batches": []}
    state, ts, key = School(PROGRAM), base_ms, PROGRAM.encode()

    def run(inp, topic: str, value: bytes) -> None:
        nonlocal state
        out[topic].append((key, value, ts))
        state, outs = apply(state, inp)
        out["batches"] += [
            (key, registry().encode("sevisflow.batches.BatchEvent", o.event), ts)
            for o in outs
            if isinstance(o, Publish)
        ]

    for n, kind in enumerate(("EV.Create", *EV_KINDS), 1):
        ts += 1000
        payload = create_payload(n) if kind == "EV.Create" else UPDATE_PAYLOADS[kind]
        ev = {
            "event_id": f"ev-j{n}",
            "org_id": PROGRAM,
            "student_key": f"J{n:07d}",
            "sevis_id": None if kind == "EV.Create" else f"N{n:010d}",
            "kind": kind,
            "coalesce_key": kind,
            "payload_json": orjson.dumps(payload).decode(),
            "before_json": None,
            "after_json": None,
            "origin": "sis",
            "display_name": None,
            "problems": [],
            "processor_version": "test",
            "lineage": [
                {
                    "topic": "sis.public.exchange_visitor",
                    "partition": 0,
                    "offset": n,
                    "table": "public.exchange_visitor",
                    "lsn": 9000 + n,
                    "sequence": None,
                    "tx_id": 700 + n,
                    "commit_ts_ms": ts - 500,
                }
            ],
        }
        run(EventIn(ev, ts), "events", registry().encode("sevisflow.events.SevisEvent", ev))
    ts += 60_000
    cmd = {
        "command_id": "close-ev",
        "org_id": PROGRAM,
        "kind": "close",
        "dso_user_id": RO,
        "student_key": None,
        "record_ids": [],
        "reviewed_revision": None,
        "batch_id": None,
        "reason": None,
        "requested_at_ms": ts,
        "payload_json": None,
    }
    run(CommandIn(cmd), "commands", registry().encode("sevisflow.commands.BatchCommand", cmd))
    return out


@pytest.fixture
def world(tmp_path):
    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.xsd import load_schema

    schema = load_schema(XSD_DIR)
    outbox = Outbox(tmp_path / "outbox", tmp_path / "quarantine", "America/Chicago")
    # one log per topic: the school's and the program's records interleaved by time
    d, ids = sealed_batcher_runs(
        [batcher_run(updates=4, creates=1, batches=1), ev_run(1_750_000_000_000)], outbox, schema
    )
    return batcher_verify_context(d, outbox, schema), ids, outbox, tmp_path


def test_the_ev_batch_verifies_like_the_fm_batch(world):
    ctx, ids, outbox, _ = world
    assert set(ids) == {"ZZZ214F99999000", PROGRAM} and ids[PROGRAM].startswith("P112345")
    xml = outbox.find(ids[PROGRAM]).xml_path.read_bytes()
    assert b"<SEVISBatchCreateUpdateEV" in xml and RO.encode() in xml and b"<CreateStudent>" not in xml
    for org, bid in ids.items():
        v = verify_batch(bid, ctx)
        status = {c.name: c.status for c in v.checks}
        assert status == {
            "archive": "ok",
            "render": "ok",
            "batching": "ok",
            "events": "skipped",
            "sources": "skipped",
        }, (org, v.to_json())
        assert f"batch events of {org} reproduced" in next(c.message for c in v.checks if c.name == "batching")
    report = verify_all(ctx, Ledger(outbox.root), anchors={})
    assert [v.batch_id for v in report.verdicts if v.ok] == sorted(ids.values()) and not report.missing


def test_a_changed_ev_document_or_closed_event_fails_verify(world):
    ctx, ids, outbox, _ = world
    bd = outbox.find(ids[PROGRAM])
    doc = bd.xml_path.read_bytes()
    bd.xml_path.write_bytes(doc.replace(b"2175550142", b"2175550143"))
    v = verify_batch(ids[PROGRAM], ctx)
    assert {c.name: c.status for c in v.checks}["archive"] == "failed"
    bd.xml_path.write_bytes(doc)
    # the batcher's log says another RO signed: the re-run cannot reproduce it
    closed = next(x for x in ctx.batches if x.value["type"] == "closed" and x.value["org_id"] == PROGRAM)
    forged = dict(registry().decode(closed.raw), closed_by="OTHERRO001")
    i = ctx.batches.index(closed)
    ctx.batches[i] = decode_record(
        "sevis.batches",
        0,
        closed.offset,
        PROGRAM.encode(),
        registry().encode("sevisflow.batches.BatchEvent", forged),
        (1, closed.timestamp_ms),
    )
    ctx._closed = None
    v = verify_batch(ids[PROGRAM], ctx)
    status = {c.name: c.status for c in v.checks}
    assert status["render"] == "failed" and status["batching"] == "failed", v.to_json()


def test_audit_reads_the_ev_batch_and_an_exchange_visitors_timeline(world):
    from sevisflow.app.audit.timeline import batch_report, student_timeline

    ctx, ids, _, _ = world
    report = batch_report(ids[PROGRAM], batches=ctx.batches, commands=ctx.commands)
    assert report.found and report.closed["org_id"] == PROGRAM and report.closed["closed_by"] == RO
    assert report.close_command["command_id"] == "close-ev" and report.counts()["creates"] == 1
    assert report.counts()["records"] == 1 + len(EV_KINDS)
    tl = student_timeline("J0000002", events=ctx.events, batches=ctx.batches, commands=ctx.commands)
    assert tl.batches == [ids[PROGRAM]] and any(s.stage == "event" for s in tl.steps)
