"""``sevisflow verify`` against a real Kafka: batches made by the real batcher and XML sink, then tampered with."""

from __future__ import annotations

import shutil

import orjson
import pytest

from sevisflow.app.cli import main
from sevisflow.core.ledger import Ledger, LedgerWriter
from sevisflow.core.serde import registry
from testkit.audit_scenario import batcher_run, produce_batcher_run
from tests.audit_scenario import scenario_config
from tests.helpers import XSD_DIR, make_settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (XSD_DIR / "Create-UpdateStudent.xsd").exists(), reason="no SEVIS XSDs"),
]


def test_verify_all_then_tamper(kafka_stack, unique, tmp_path, capsys):
    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.render import ClosedBatch
    from sevisflow.sinks.xml.stage import sink_closed_batch
    from sevisflow.sinks.xml.xsd import load_schema

    settings = make_settings(kafka_stack, unique=unique)
    t = settings.topics
    run = batcher_run(updates=12, creates=3, batches=3)
    produce_batcher_run(settings.kafka, t, run)
    cfg = scenario_config(tmp_path, kafka_stack.bootstrap, unique)
    cfg.write_text(cfg.read_text().replace("[sevis]", f'[sevis]\nxsd_dir = "{XSD_DIR}"'))
    outbox = Outbox(tmp_path / "outbox", tmp_path / "quarantine", settings.school.timezone)
    schema = load_schema(XSD_DIR)
    ids = []
    writer = LedgerWriter(Ledger(tmp_path / "outbox"), "sink-xml", settings.school.org_id)
    for _, value, _ in run["batches"]:
        ev = registry().decode(value)
        if ev["type"] == "closed":
            ids.append(ev["batch_id"])
            sink_closed_batch(ClosedBatch.from_event(ev, orjson.loads(ev["records_json"])), schema, outbox)
            writer.seal_archive(outbox.find(ev["batch_id"]), ev["batch_id"])  # as the XML sink does
    assert len(ids) == 3

    capsys.readouterr()
    # no change topics and (here) no ledger topic: those checks cannot run, so only --allow-skipped exits 0
    assert main(["--config", str(cfg), "verify", "--all"]) == 3
    assert main(["--config", str(cfg), "verify", "--all", "--allow-skipped"]) == 0
    out = capsys.readouterr().out
    assert out.count("VERIFIED") == 6 and "ledger intact" in out and "anchor not read" in out
    head = out.rsplit("head ", 1)[1].split(",")[0].strip()

    assert main(["--config", str(cfg), "verify", ids[1], "--json", "--allow-skipped"]) == 0
    v = orjson.loads(capsys.readouterr().out)
    assert v["ok"] and {c["check"]: c["status"] for c in v["checks"]}["batching"] == "ok"

    # tamper: alter one archived document, delete another batch's folder
    bd = outbox.find(ids[0])
    bd.xml_path.write_bytes(bd.xml_path.read_bytes().replace(b"Springfield", b"Shelbyville", 1))
    shutil.rmtree(outbox.find(ids[2]).path)
    assert main(["--config", str(cfg), "verify", "--all", "--head", head]) == 1
    out = capsys.readouterr().out
    assert f"{ids[0]}  FAILED" in out and "does not match the manifest" in out
    assert f"{ids[2]}  MISSING" in out and "no longer in the outbox" in out
    assert "the document differs from the one sealed" in out and "ledger BROKEN" in out
