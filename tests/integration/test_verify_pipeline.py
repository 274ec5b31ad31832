"""``verify`` over what the real stages wrote: PostgreSQL → connector → normalize → sevis_events → batcher → XML sink.

The unit tests feed verify change records made by the pure ``SisFeed``; this test feeds it the
change topics the real connector wrote (several partitions per table, the transaction topic on
its own, snapshot rows then streamed transactions) and the events, batches and document the real
Kafka stages made, and requires every check of every batch to pass — none failed, none skipped.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from sevisflow.app.runner import Pipeline
from sevisflow.core.kafka_io import ensure_topics
from sevisflow.core.topics import all_topics
from sevisflow.deploy.sis.activity import generate_activity
from sevisflow.deploy.sis.generator import generate_school
from sevisflow.deploy.sis.load import create_schema, load_school, play_activity
from tests.helpers import REPO, XSD_DIR, connector_section, count, make_settings, settled, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (XSD_DIR / "Create-UpdateStudent.xsd").exists(), reason="no SEVIS XSDs"),
]

TODAY = date(2026, 10, 5)
SEED = 7
DSO = "dsotest001"


def _close(settings: Any) -> str:
    """What ``sevisflow batch close --dso …`` does: close the open batch as reviewed, wait for the batcher."""
    from sevisflow.app.cli.batch import await_answer, end_offsets, load_view, new_command, send_command

    org = settings.school.org_id
    view = load_view(settings, org)
    ready = [r for r in view.open_records() if r["status"] == "open"]
    assert ready, "the activity must leave records to close"
    start = end_offsets(settings, settings.topics.batches)
    cmd = new_command(
        org,
        "close",
        dso_user_id=DSO,
        record_ids=[r["record_id"] for r in ready],
        reviewed_revision=view.revision,
        reason="closed by the verify pipeline test",
    )
    send_command(settings, cmd)
    answer = await_answer(settings, cmd["command_id"], start, {"closed"}, 60)
    closed = [e["batch_id"] for e in answer if e["type"] == "closed"]
    assert closed, [e["type"] for e in answer]
    return closed[0]


def test_verify_all_over_the_real_pipeline(kafka_stack, fresh_db, unique, tmp_path):
    from sevisflow.app.audit.verify import verify_all
    from sevisflow.app.cli.verify import load_context
    from sevisflow.core.ledger import Ledger
    from sevisflow.sinks.xml.stage import make_outbox

    settings = make_settings(
        kafka_stack,
        fresh_db,
        unique,
        connector=connector_section(unique, tmp_path),
        school={"mapping_file": str(REPO / "deploy" / "sis" / "mapping.toml")},
        sevis={
            "xsd_dir": str(XSD_DIR),
            "outbox_dir": str(tmp_path / "outbox"),
            "quarantine_dir": str(tmp_path / "quarantine"),
        },
    )
    assert settings.kafka.partitions > 1, "several partitions per change topic, as deployed"
    create_schema(fresh_db.dsn)
    school = generate_school(80, 0.5, SEED, TODAY)
    load_school(fresh_db.dsn, school)
    ensure_topics(settings.kafka, all_topics(settings))

    pipeline = Pipeline(settings, ["connector", "normalize", "events", "batcher", "sink-xml"]).start()
    try:
        t = settings.topics
        wait_for("the snapshot's student views", settled(lambda: count(settings, t.students), 2.0), 60, pipeline)
        before = count(settings, t.events)
        play_activity(fresh_db.dsn, generate_activity(school, 40, SEED, TODAY))
        wait_for(
            "the activity's SEVIS events",
            settled(lambda: max(0, count(settings, t.events) - before), 3.0),
            60,
            pipeline,
        )
        batch_id = _close(settings)
        outbox = make_outbox(settings)
        wait_for(f"the outbox document of {batch_id}", lambda: outbox.find(batch_id), 30, pipeline)
    finally:
        failed = pipeline.stop()
    assert not failed, [(f.name, f.error) for f in failed]

    ctx = load_context(settings, with_sources=True, timeout_s=30)
    assert ctx.transactions, "the transaction topic is read"

    from sevisflow.core.ledger import read_anchors

    anchors = read_anchors(settings.kafka, settings.topics.ledger)
    report = verify_all(ctx, Ledger(settings.sevis.outbox_dir), anchors=anchors)
    assert [v.batch_id for v in report.verdicts] == [batch_id]
    checks = {c.name: (c.status, c.message) for c in report.verdicts[0].checks}
    assert set(checks) == {"archive", "render", "batching", "events", "sources"}
    # snapshot rows (op r, one LSN, interleaved across topics/partitions) are held by normalize and
    # applied as one sorted unit: the snapshot Creates re-derive exactly, like everything streamed
    assert all(status == "ok" for status, _ in checks.values()), checks
    assert "SIS-derived events re-derived identically" in checks["events"][1]
    assert report.ok and report.missing == [] and report.chain_problems == [], report.chain_problems
    # the XML sink sealed the batch in its transaction and anchored the head on the ledger topic
    assert [e["batch_id"] for e in Ledger(settings.sevis.outbox_dir).entries()] == [batch_id]
    assert report.anchored == (1, Ledger(settings.sevis.outbox_dir).entries()[0]["hash"]) and report.unanchored == 0

    # verify <BatchID> reads the log only up to the batch's close, and every check still passes
    from sevisflow.app.cli.verify import verify_one

    one, read = verify_one(settings, batch_id, with_sources=True, timeout_s=30)
    assert {c.name: c.status for c in one.checks} == dict.fromkeys(checks, "ok"), one.to_json()
    assert read.startswith("read the log up to"), read
