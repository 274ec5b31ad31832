"""``sevisflow verify <BatchID>`` reads the log only up to the batch's close, and still catches tampering.

The batches are made by the real batcher (:func:`testkit.audit_scenario.batcher_run`) on a real
Kafka and filed by the XML sink's own function, as in ``test_verify_cli.py``. The close time comes from
the batch's manifest; the closed event is looked up by Kafka's time index. These tests are about what is
read and what is caught, not about time (bench/audit measures that).
"""

from __future__ import annotations

import orjson
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from sevisflow.app.cli import main
from sevisflow.core.config import load_settings
from sevisflow.core.ledger import Ledger, LedgerWriter
from sevisflow.core.serde import registry
from testkit.audit_scenario import batcher_run, produce_batcher_run
from tests.audit_scenario import scenario_config
from tests.helpers import XSD_DIR

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (XSD_DIR / "Create-UpdateStudent.xsd").exists(), reason="no SEVIS XSDs"),
]

ROUNDS = 4


@pytest.fixture
def world(kafka_stack, unique, tmp_path):
    """Four closed batches on Kafka (events, commands, batches) and in a sealed outbox."""
    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.render import ClosedBatch
    from sevisflow.sinks.xml.stage import sink_closed_batch
    from sevisflow.sinks.xml.xsd import load_schema

    cfg = scenario_config(tmp_path, kafka_stack.bootstrap, unique)
    cfg.write_text(cfg.read_text().replace("[sevis]", f'[sevis]\nxsd_dir = "{XSD_DIR}"'))
    settings = load_settings(cfg, env={})
    t = settings.topics
    run = batcher_run(updates=6, creates=2, batches=ROUNDS)
    produce_batcher_run(settings.kafka, t, run)
    outbox = Outbox(settings.sevis.outbox_dir, settings.sevis.quarantine_dir, settings.school.timezone)
    writer = LedgerWriter(Ledger(settings.sevis.outbox_dir), "sink-xml", settings.school.org_id)
    ids = []
    for _, value, _ in run["batches"]:
        ev = registry().decode(value)
        if ev["type"] == "closed":
            ids.append(ev["batch_id"])
            sink_closed_batch(
                ClosedBatch.from_event(ev, orjson.loads(ev["records_json"])), load_schema(XSD_DIR), outbox
            )
            writer.seal_archive(outbox.find(ev["batch_id"]), ev["batch_id"])
    assert len(ids) == ROUNDS
    return {"cfg": cfg, "settings": settings, "outbox": outbox, "ids": ids, "run": run}


def _verify(capsys, cfg, batch_id: str) -> tuple[int, dict, str]:
    capsys.readouterr()
    code = main(["--config", str(cfg), "verify", batch_id, "--json", "--allow-skipped"])
    out = capsys.readouterr()
    return code, orjson.loads(out.out), out.err


def test_one_batch_is_verified_from_the_log_up_to_its_close(world, capsys):
    from sevisflow.app.audit.sources import SCOPE_SKEW_MS, batch_read_limit
    from sevisflow.app.cli.verify import load_context

    settings, ids = world["settings"], world["ids"]
    limit = batch_read_limit(settings, ids[1])
    closed_ts = [ts for _, v, ts in world["run"]["batches"] if registry().decode(v)["type"] == "closed"][1]
    assert limit == closed_ts + SCOPE_SKEW_MS
    scoped, full = load_context(settings, with_sources=False, until_ms=limit), load_context(settings, False)
    # nothing after the close is read: the later batches' events, commands and batch records stay unread
    assert set(scoped.closed_events()) == set(ids[:2]) and set(full.closed_events()) == set(ids)
    assert max(d.timestamp_ms for d in scoped.events + scoped.batches + scoped.commands) < limit
    assert len(scoped.events) < len(full.events) and len(scoped.batches) < len(full.batches)
    for bid in ids:
        code, v, _ = _verify(capsys, world["cfg"], bid)
        checks = {c["check"]: c["status"] for c in v["checks"]}
        assert code == 0 and v["ok"], v
        assert checks["archive"] == checks["render"] == checks["batching"] == "ok", checks
        # the first from an empty state; the next ones resume from the checkpoint the one before left
        # (tests/integration/test_verify_checkpoint.py), reading from its offsets up to the close
        first = "read the log up to" if bid == ids[0] else "resumed the batcher from the checkpoint after batch"
        assert v["read"].startswith(first) and "(the batch's close + 60 s)" in v["read"], v["read"]
    capsys.readouterr()
    assert main(["--config", str(world["cfg"]), "verify", ids[1], "--allow-skipped", "--from-start"]) == 0
    assert "read the log up to" in capsys.readouterr().out


def test_one_batch_still_catches_an_altered_document_and_missing_records(world, capsys):
    settings, ids, outbox = world["settings"], world["ids"], world["outbox"]
    bd = outbox.find(ids[1])
    bd.xml_path.write_bytes(bd.xml_path.read_bytes().replace(b"Springfield", b"Shelbyville", 1))
    code, v, err = _verify(capsys, world["cfg"], ids[1])
    checks = {c["check"]: (c["status"], c["message"]) for c in v["checks"]}
    assert code == 1 and "FAILED" in err
    assert checks["archive"][0] == "failed" and "does not match the manifest" in checks["archive"][1]
    assert checks["render"][0] == "failed" and "differs from the archive" in checks["render"][1]

    # the first events of the log deleted (retention, or an admin): batch 3 was made of records no longer
    # on the log, so its batching cannot be re-derived — the scoped read and the full read both say so
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    fut = admin.delete_records([TopicPartition(settings.topics.events, 0, 3)])
    for f in fut.values():
        f.result(30)
    code, v, _ = _verify(capsys, world["cfg"], ids[2])
    checks = {c["check"]: (c["status"], c["message"]) for c in v["checks"]}
    assert code == 1 and checks["archive"][0] == "ok"
    assert checks["batching"][0] == "failed" and "stopped after 0 of" in checks["batching"][1], checks
    assert main(["--config", str(world["cfg"]), "verify", ids[2], "--allow-skipped"]) == 1
    assert "reading up to the close did not verify, so the whole log was checked" in capsys.readouterr().out


def test_a_misdated_manifest_costs_a_longer_read_never_a_false_verdict(world, capsys):
    from sevisflow.app.audit.sources import batch_read_limit

    settings, ids, outbox = world["settings"], world["ids"], world["outbox"]
    for bid, shift in ((ids[0], 10**9), (ids[2], -(10**9))):  # ~11 days later / earlier than the close
        path = outbox.find(bid).path / "manifest.json"
        m = orjson.loads(path.read_bytes())
        path.write_bytes(orjson.dumps({**m, "closed_at_ms": m["closed_at_ms"] + shift}))
    assert batch_read_limit(settings, ids[0]) is None  # not found after the stated time: read it all
    assert batch_read_limit(settings, ids[2]) is not None  # found reading forward from the stated time
    for bid in (ids[0], ids[2]):
        code, v, _ = _verify(capsys, world["cfg"], bid)
        assert code == 0 and v["ok"], v
    assert main(["--config", str(world["cfg"]), "verify", ids[0], "--allow-skipped"]) == 0
    assert "read the whole log (the archive names no close time found on the log)" in capsys.readouterr().out


def test_audit_batch_reads_from_the_close_on_and_reports_what_the_whole_log_does(world, capsys):
    from sevisflow.app.audit.sources import load_inputs, outbox_info
    from sevisflow.app.audit.timeline import batch_report
    from sevisflow.app.cli.audit import batch_inputs_report

    settings, ids = world["settings"], world["ids"]
    full = load_inputs(settings, with_changes=False)
    for bid in (ids[0], ids[-1]):
        got = batch_inputs_report(settings, bid, 30)
        want = batch_report(
            bid, batches=full.batches, results=full.results, commands=full.commands, upload=outbox_info(settings, bid)
        )
        assert got.found and got.close_command is not None
        assert got.to_json() == want.to_json()
