"""verify without Kafka: the real batcher and XML sink produce batches; verify re-derives them; tampering shows."""

from __future__ import annotations

import json
import shutil

import orjson
import pytest

from sevisflow.app.audit.decode import decode_record
from sevisflow.app.audit.verify import VerifyContext, first_difference, first_json_difference, verify_all, verify_batch
from sevisflow.core.ledger import Ledger, LedgerWriter, check_chain
from sevisflow.core.serde import registry
from testkit.audit_scenario import batcher_run, batcher_verify_context
from tests.helpers import XSD_DIR

pytestmark = pytest.mark.skipif(not (XSD_DIR / "Create-UpdateStudent.xsd").exists(), reason="SEVIS XSDs not present")


def _decoded(run, topic_names=None):
    names = topic_names or {"events": "sevis.events", "commands": "sevis.batch.commands", "batches": "sevis.batches"}
    return {
        k: [decode_record(names[k], 0, i, key, value, (1, ts)) for i, (key, value, ts) in enumerate(v)]
        for k, v in run.items()
    }


@pytest.fixture
def world(tmp_path):
    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.render import ClosedBatch
    from sevisflow.sinks.xml.stage import sink_closed_batch
    from sevisflow.sinks.xml.xsd import load_schema

    schema = load_schema(XSD_DIR)
    run = batcher_run(updates=6, creates=2, batches=2)
    d = _decoded(run)
    outbox = Outbox(tmp_path / "outbox", tmp_path / "quarantine", "America/Chicago")
    closed = [x for x in d["batches"] if x.value["type"] == "closed"]
    assert len(closed) == 2
    writer = LedgerWriter(Ledger(tmp_path / "outbox"), "sink-xml", "ZZZ")
    for c in closed:
        ev = registry().decode(c.raw)
        out = sink_closed_batch(ClosedBatch.from_event(ev, orjson.loads(ev["records_json"])), schema, outbox)
        assert out.status == "written", out
        writer.seal_archive(outbox.find(ev["batch_id"]), ev["batch_id"])  # what the XML sink does in its transaction
    return batcher_verify_context(d, outbox, schema), [c.value["batch_id"] for c in closed], outbox, tmp_path


def test_verify_batch_identical(world):
    ctx, ids, _, _ = world
    v = verify_batch(ids[0], ctx)
    status = {c.name: c.status for c in v.checks}
    assert status == {"archive": "ok", "render": "ok", "batching": "ok", "events": "skipped", "sources": "skipped"}
    assert v.ok
    assert "identical" in next(c.message for c in v.checks if c.name == "render")


def test_altered_document_is_detected(world):
    ctx, ids, outbox, _ = world
    bd = outbox.find(ids[0])
    xml = bd.xml_path.read_bytes()
    bd.xml_path.write_bytes(xml.replace(b"Springfield", b"Springfeld", 1))
    v = verify_batch(ids[0], ctx)
    assert not v.ok
    msg = {c.name: c.message for c in v.checks}
    assert "does not match the manifest" in msg["archive"]
    assert "first difference at byte" in msg["render"] and "/SEVISBatchCreateUpdateStudent/" in msg["render"]


def test_altered_document_and_manifest_still_fails_rerender(world):
    ctx, ids, outbox, _ = world
    bd = outbox.find(ids[1])
    xml = bd.xml_path.read_bytes().replace(b"2027-05-15", b"2028-05-15", 1)
    bd.xml_path.write_bytes(xml)
    m = bd.manifest()
    import hashlib

    m["sha256"] = hashlib.sha256(xml).hexdigest()
    (bd.path / "manifest.json").write_text(json.dumps(m))
    v = verify_batch(ids[1], ctx)
    status = {c.name: c.status for c in v.checks}
    assert status["archive"] == "ok" and status["render"] == "failed"
    assert "NewPrgEndDate" in next(c.message for c in v.checks if c.name == "render")


def test_tampered_event_breaks_the_batching_check(world):
    ctx, ids, _, _ = world
    ev = registry().decode(ctx.events[2].raw)
    ev["payload_json"] = ev["payload_json"].replace("Springfield", "Elsewhere")
    ctx.events[2] = decode_record(
        "sevis.events",
        0,
        2,
        ctx.events[2].raw_key,
        registry().encode("sevisflow.events.SevisEvent", ev),
        (1, ctx.events[2].timestamp_ms),
    )
    v = verify_batch(ids[0], ctx)
    b = next(c for c in v.checks if c.name == "batching")
    assert b.status == "failed" and "cannot reproduce recorded event" in b.message


def test_verify_all_checks_what_the_sink_sealed_then_detects_deletion(world):
    ctx, ids, outbox, tmp_path = world
    ledger = Ledger(tmp_path / "outbox")
    before = ledger.path.read_bytes()
    r1 = verify_all(ctx, ledger, anchors={})
    assert r1.ok and r1.missing == [] and r1.chain_problems == [], r1.chain_problems
    assert [e["batch_id"] for e in ledger.entries()] == ids and ledger.path.read_bytes() == before, "verify only reads"
    assert oct(ledger.path.stat().st_mode & 0o777) == "0o600"
    r2 = verify_all(ctx, ledger, expect_head=r1.head, anchors={})
    assert r2.ok and r2.head == r1.head and r2.expected_head_found

    # an auditor-visible deletion: the folder of a sealed batch disappears
    shutil.rmtree(outbox.find(ids[0]).path)
    r3 = verify_all(ctx, ledger, anchors={})
    assert not r3.ok
    assert r3.missing == [ids[0]]
    assert any("no longer in the outbox" in p for p in r3.chain_problems)


def test_ledger_line_edit_and_truncation_are_detected(world):
    ctx, _ids, _, tmp_path = world
    ledger = Ledger(tmp_path / "outbox")
    head = verify_all(ctx, ledger, anchors={}).head
    lines = ledger.path.read_bytes().splitlines()
    e = orjson.loads(lines[0])
    e["xml_sha256"] = "0" * 64
    ledger.path.write_bytes(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n" + lines[1] + b"\n")
    problems, _ = check_chain(ledger.entries())
    assert [(p.line, "altered" in p.message) for p in problems] == [(1, True)]
    # re-hashing the edited line does not help: the next line's link breaks
    from sevisflow.core.ledger import entry_hash

    e["hash"] = entry_hash(e)
    ledger.path.write_bytes(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n" + lines[1] + b"\n")
    problems, _ = check_chain(ledger.entries())
    assert [(p.line, "link broken" in p.message) for p in problems] == [(2, True)]
    ledger.path.write_bytes(lines[0] + b"\n")  # truncated: the last line removed
    assert check_chain(ledger.entries())[0] == []
    r = verify_all(ctx, ledger, expect_head=head, anchors={})
    assert not r.ok and any("truncated" in p for p in r.chain_problems)


def test_first_difference_and_json_difference():
    assert first_difference(b"<a>\n<b>1</b>\n</a>", b"<a>\n<b>1</b>\n</a>") == "identical"
    msg = first_difference(b"<a>\n<b>1</b>\n</a>", b"<a>\n<b>2</b>\n</a>")
    assert "byte 7 (line 2, column 4)" in msg and "/a/b" in msg
    assert "longer" in first_difference(b"<a/>", b"<a/>\n")
    assert first_json_difference({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}) == ".a[1].b: values differ"
    assert first_json_difference({"x": '{"k": 1}'}, {"x": '{"k": 2}'}) == ".x(json).k: values differ"
    assert first_json_difference({"a": 1}, {"a": 1}) is None


def test_full_chain_from_change_records_to_document(tmp_path):
    """SIS change records → normalize + sevis_events → batcher → sink; verify re-derives every step."""
    scen = pytest.importorskip("tests.unit.test_events_scenarios")
    from sevisflow.processors.batcher.core import CommandIn, EventIn, Publish, School, apply
    from sevisflow.processors.normalize.debezium import SisFeed
    from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline
    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.render import ClosedBatch
    from sevisflow.sinks.xml.stage import sink_closed_batch
    from sevisflow.sinks.xml.xsd import load_schema

    org = "ZZZ214F99999000"
    rows = scen.base_rows()
    feed = SisFeed(primary_keys=scen.PKS)
    feed.tx(*[("c", scen.TABLES[n], None, r) for n, r in rows.items()])
    feed.tx(("u", "public.person", rows["person"], {**rows["person"], "email": "zoe.new@example.com"}))
    feed.tx(("u", "public.program", rows["program"], {**rows["program"], "expected_end_date": scen.date(2027, 12, 17)}))
    # give every change record a position, as Kafka would
    changes, counts = [], {}
    for r in feed.records:
        off = counts.get(r.topic, 0)
        counts[r.topic] = off + 1
        changes.append(decode_record(r.topic, 0, off, r.key, r.value, (1, 1_767_225_600_000 + len(changes))))
    pipe, out = PurePipeline(scen.MAPPING, org_id=org, tx_topic=feed.tx_topic), PureOutput()
    for d in changes:
        pipe.feed_one(d.topic, d.raw_key, d.raw, out, d.partition, d.offset)
    assert out.events, "the scenario must produce SEVIS events"

    state, batches, events = School(org_id=org), [], []
    ts = 1_767_300_000_000
    for i, e in enumerate(out.events):
        raw = registry().encode("sevisflow.events.SevisEvent", e)
        events.append(decode_record("sevis.events", 0, i, org.encode(), raw, (1, ts + i)))
        state, outs = apply(state, EventIn(registry().decode(raw), ts + i))
        batches += [o.event for o in outs if isinstance(o, Publish)]
    cmd = {
        "command_id": "close-1",
        "org_id": org,
        "kind": "close",
        "dso_user_id": "dsouser001",
        "student_key": None,
        "record_ids": [],
        "reviewed_revision": None,
        "batch_id": None,
        "reason": None,
        "requested_at_ms": ts + 10_000,
        "payload_json": None,
    }
    state, outs = apply(state, CommandIn(cmd))
    batches += [o.event for o in outs if isinstance(o, Publish)]
    dec_batches = [
        decode_record(
            "sevis.batches", 0, i, org.encode(), registry().encode("sevisflow.batches.BatchEvent", b), (1, ts + 10_000)
        )
        for i, b in enumerate(batches)
    ]
    commands = [
        decode_record(
            "sevis.batch.commands",
            0,
            0,
            org.encode(),
            registry().encode("sevisflow.commands.BatchCommand", cmd),
            (1, ts + 10_000),
        )
    ]
    closed = [b for b in batches if b["type"] == "closed"]
    assert len(closed) == 1
    schema = load_schema(XSD_DIR)
    outbox = Outbox(tmp_path / "outbox", tmp_path / "q", "America/Chicago")
    res = sink_closed_batch(ClosedBatch.from_event(closed[0], orjson.loads(closed[0]["records_json"])), schema, outbox)
    assert res.status == "written", [p.as_dict() for p in (res.checked.problems if res.checked else [])]

    # as the reader gives them: the transaction topic apart from the change topics
    txs = [d for d in changes if d.topic == feed.tx_topic]
    rows = [d for d in changes if d.topic != feed.tx_topic]
    ctx = VerifyContext(
        batches=dec_batches,
        events=events,
        commands=commands,
        results=[],
        changes=rows,
        outbox=outbox,
        schema=schema,
        mapping=scen.MAPPING,
        tx_topic=feed.tx_topic,
        transactions=txs,
    )
    v = verify_batch(closed[0]["batch_id"], ctx)
    assert {c.name: c.status for c in v.checks} == {
        "archive": "ok",
        "render": "ok",
        "batching": "ok",
        "events": "ok",
        "sources": "ok",
    }, v.to_json()
    # without the transaction topic every streamed change waits for an END: nothing is re-derived
    bare = VerifyContext(
        batches=dec_batches,
        events=events,
        commands=commands,
        results=[],
        changes=rows,
        outbox=outbox,
        schema=schema,
        mapping=scen.MAPPING,
        tx_topic=feed.tx_topic,
    )
    assert next(c for c in verify_batch(closed[0]["batch_id"], bare).checks if c.name == "events").status == "failed"

    # a change record altered in the retained log: the events check names the event and the field
    i = next(k for k, d in enumerate(changes) if d.topic.endswith("person") and d.value["op"] == "u")
    val = changes[i].value
    val = {**val, "after": {**val["after"], "email": "someone.else@example.com"}}
    changes[i] = decode_record(
        changes[i].topic, 0, changes[i].offset, changes[i].raw_key, orjson.dumps(val), (1, changes[i].timestamp_ms)
    )
    ctx2 = VerifyContext(
        batches=dec_batches,
        events=events,
        commands=commands,
        results=[],
        changes=changes,
        outbox=outbox,
        schema=schema,
        mapping=scen.MAPPING,
        tx_topic=feed.tx_topic,
    )
    ev_check = next(c for c in verify_batch(closed[0]["batch_id"], ctx2).checks if c.name == "events")
    assert ev_check.status == "failed" and "re-derived differently at" in ev_check.message
