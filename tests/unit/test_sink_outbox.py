"""The outbox: atomic, private, idempotent files; quarantine; DLQ and requeue outputs; results."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import orjson
import pytest

from sevisflow.core.serde import registry
from sevisflow.sinks.outbox import Outbox, day_for, safe_name
from sevisflow.sinks.sevis.translog import parse_translog
from sevisflow.sinks.sevis.uploader import build_results
from sevisflow.sinks.xml.render import ClosedBatch
from sevisflow.sinks.xml.stage import decode_closed, outputs_for, sink_closed_batch
from sevisflow.sinks.xml.xsd import load_schema
from testkit.xml_samples import DSO, ORG_ID, create_record, sample_batch, update_record
from tests.helpers import EXAMPLES_DIR, XSD_DIR, make_settings


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox", tmp_path / "quarantine", "America/Chicago")


@pytest.fixture(scope="module")
def schema():
    return load_schema(XSD_DIR)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_day_comes_from_close_time_in_school_timezone():
    # 2025-06-03 03:30 UTC is still 2025-06-02 in Chicago
    assert day_for(1748921400000, "America/Chicago") == "2025-06-02"
    assert day_for(1748921400000, "UTC") == "2025-06-03"


def test_safe_name_is_reversible_and_safe():
    assert safe_name("----kynEn47azQ") == "----kynEn47azQ"
    assert "/" not in safe_name("AB/CD:EF GH123") and " " not in safe_name("AB/CD:EF GH123")
    assert safe_name("a/b") != safe_name("a_b")


def test_written_once_with_manifest_and_private_modes(outbox, schema):
    batch = sample_batch(2, 3, batch_id="SFTEST00000010", at_ms=1748921400000)
    first = sink_closed_batch(batch, schema, outbox)
    assert first.status == "written"
    folder = Path(first.path)
    assert folder.parent.name == "ready" and folder.parent.parent.name == "2025-06-02"
    xml = folder / "SFTEST00000010.xml"
    manifest = json.loads((folder / "manifest.json").read_text())
    import hashlib

    assert manifest["sha256"] == hashlib.sha256(xml.read_bytes()).hexdigest()
    assert manifest["record_count"] == 5 and manifest["batch_id"] == "SFTEST00000010"
    assert _mode(xml) == 0o600 and _mode(folder / "manifest.json") == 0o600 and _mode(folder) == 0o700
    before = xml.read_bytes()
    again = sink_closed_batch(batch, schema, outbox)
    assert again.status == "exists" and xml.read_bytes() == before
    assert len(list(outbox.root.rglob("*.xml"))) == 1
    # also when it has moved on to another state
    outbox.move(outbox.find("SFTEST00000010"), "uploaded")
    assert sink_closed_batch(batch, schema, outbox).status == "exists"
    assert len(list(outbox.root.rglob("*.xml"))) == 1
    assert not list(outbox.root.rglob(".tmp/*"))


def test_invalid_batch_is_quarantined_with_dead_letters_and_requeue(outbox, schema, tmp_path):
    good, bad = create_record(1), create_record(2, last="B4d")
    batch = ClosedBatch(ORG_ID, "SFTEST00000011", DSO, 1748921400000, (good, bad, update_record(3, "Status.Complete")))
    outcome = sink_closed_batch(batch, schema, outbox)
    assert outcome.status == "quarantined"
    assert not list(outbox.root.rglob("*.xml"))
    q = Path(outcome.path)
    problems = json.loads((q / "problems.json").read_text())
    assert problems[0]["student_key"] == "S00000002" and problems[0]["field"] == "PersonalInfo/FullName/LastName"
    assert _mode(q / "problems.json") == 0o600
    settings = make_settings(unique="x")
    outs = outputs_for(outcome, settings)
    dlq = [o for o in outs if o.topic == settings.topics.dlq]
    cmds = [o for o in outs if o.topic == settings.topics.commands]
    assert len(dlq) == 1 and len(cmds) == 1
    dead = registry().decode(dlq[0].value)
    assert dead["stage"] == "sink_xml" and dead["student_key"] == "S00000002" and "B4d" not in dead["reason"]
    cmd = registry().decode(cmds[0].value)
    assert cmd["kind"] == "requeue" and cmd["batch_id"] == "SFTEST00000011"
    assert cmd["record_ids"] == [good["record_id"], "S00000003:Status.Complete"]
    assert outputs_for(sink_closed_batch(batch, schema, outbox), settings)[1].value == cmds[0].value


def test_decode_closed_batch_event():
    batch = sample_batch(1, 1)
    value = registry().encode(
        "sevisflow.batches.BatchEvent",
        {
            "org_id": ORG_ID,
            "batch_id": batch.batch_id,
            "type": "closed",
            "revision": 3,
            "at_ms": batch.at_ms,
            "records_json": orjson.dumps(list(batch.records)).decode(),
            "closed_by": DSO,
        },
    )
    decoded = decode_closed(value)
    assert decoded == batch
    other = registry().encode(
        "sevisflow.batches.BatchEvent", {"org_id": ORG_ID, "type": "opened", "revision": 0, "at_ms": 1}
    )
    assert decode_closed(other) is None


def test_results_follow_the_batch_and_carry_new_sevis_ids():
    log = parse_translog((EXAMPLES_DIR / "transaction-log-valid.xml").read_bytes())
    manifest = {
        "org_id": ORG_ID,
        "batch_id": "FICT2025000001",
        "records": [
            {"request_id": "C-1001-0001", "record_id": "S1:Create", "student_key": "S1", "kind": "Create"},
            {
                "request_id": "U-2003-PEXT-01",
                "record_id": "S2:Program.Extension",
                "student_key": "S2",
                "kind": "Program.Extension",
                "sevis_id": "N0000000102",
            },
            {"request_id": "U-LOST", "record_id": "S3:Status.Complete", "student_key": "S3", "kind": "Status.Complete"},
        ],
    }
    results = build_results(manifest, log)
    assert [(r["request_id"], r["status"], r["sevis_id"], r["error_code"]) for r in results] == [
        ("C-1001-0001", "success", "N0000000199", None),
        ("U-2003-PEXT-01", "failure", "N0000000102", "S1100"),
        ("U-LOST", "failure", None, None),
    ]
    for r in results:
        registry().encode("sevisflow.results.SevisResult", r)
