"""The XML sink stage with EV batches: the records pick the document; mixed batches are refused with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree

from sevisflow.core.serde import registry
from sevisflow.sinks.outbox import Outbox
from sevisflow.sinks.xml.stage import outputs_for, sink_closed_batch
from sevisflow.sinks.xml.xsd import load_schema
from sevisflow.sinks.xml.xsd_ev import load_ev_schema
from testkit.xml_samples import create_record as fm_create
from tests.ev_support import PROGRAM, RO_USER, UPDATE_PAYLOADS, batch_of, create_record, update_record
from tests.helpers import XSD_DIR, make_settings

pytestmark = pytest.mark.skipif(
    not (XSD_DIR / "Create-UpdateExchangeVisitor.xsd").is_file(), reason="needs the EV XSD in SEVISFLOW_TEST_XSD_DIR"
)


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox", tmp_path / "quarantine", "America/Chicago")


@pytest.fixture(scope="module")
def schema():
    return load_schema(XSD_DIR)


def test_an_ev_batch_is_written_as_an_ev_document_validated_before_writing(outbox, schema) -> None:
    batch = batch_of([create_record(1), update_record(2, "EV.Validate", UPDATE_PAYLOADS["EV.Validate"])])
    outcome = sink_closed_batch(batch, schema, outbox)
    assert outcome.status == "written"
    folder = Path(outcome.path)
    doc = etree.parse(str(folder / "EVTEST00000001.xml"))
    assert doc.getroot().tag == "SEVISBatchCreateUpdateEV" and doc.getroot().get("userID") == RO_USER
    assert load_ev_schema(XSD_DIR).validate(doc) == []
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["org_id"], manifest["creates"], manifest["updates"]) == (PROGRAM, 1, 1)
    assert manifest["schema_version"] == load_ev_schema(XSD_DIR).version == "6.27"
    assert manifest["records"][0]["new_ids"] == {
        "dependents": [{"sis_key": "D1-0", "user_defined_b": "D1-0"}],
        "sites": [{"sis_key": "ST1-0", "site_name": "Fictional Lab 0"}],
    }
    assert "new_ids" not in manifest["records"][1]
    # re-delivered: found, nothing written again
    assert sink_closed_batch(batch, schema, outbox).status == "exists"


def test_an_invalid_ev_record_waits_and_the_others_are_closed_again_at_once(outbox, schema) -> None:
    bad = update_record(
        3,
        "EV.Program.Shorten",
        {"@printForm": "false", "NewPrgEndDate": "2026-06-30", "ShortenReason": "NOPE", "Remarks": "x"},
    )
    good = [create_record(1), update_record(2, "EV.Status.NoShow", {})]
    outcome = sink_closed_batch(batch_of([*good, bad], batch_id="EVTEST00000002"), schema, outbox)
    assert outcome.status == "quarantined" and not list(outbox.root.rglob("*.xml"))
    settings = make_settings(unique="ev")
    outs = outputs_for(outcome, settings)
    dead = [registry().decode(o.value) for o in outs if o.topic == settings.topics.dlq]
    cmds = [registry().decode(o.value) for o in outs if o.topic == settings.topics.commands]
    assert [d["student_key"] for d in dead] == ["J0000003"] and "NOPE" not in dead[0]["reason"]
    assert "ShortenReason" in dead[0]["reason"]
    assert cmds[0]["kind"] == "requeue" and cmds[0]["org_id"] == PROGRAM
    assert cmds[0]["record_ids"] == [r["record_id"] for r in good]
    assert json.loads(cmds[0]["payload_json"]) == {"refused_request_ids": ["U00000003"], "close_now": True}


def test_a_batch_mixing_fm_and_ev_records_is_refused_with_a_dead_letter_naming_the_fix(outbox, schema) -> None:
    batch = batch_of([create_record(1), fm_create(2)], batch_id="EVTEST00000003")
    outcome = sink_closed_batch(batch, schema, outbox)
    assert outcome.status == "quarantined" and not list(outbox.root.rglob("*.xml"))
    problems = json.loads((Path(outcome.path) / "problems.json").read_text())
    assert [p["code"] for p in problems] == ["mixed_batch"]
    settings = make_settings(unique="evmix")
    outs = outputs_for(outcome, settings)
    dead = [registry().decode(o.value) for o in outs if o.topic == settings.topics.dlq]
    assert len(dead) == 1 and dead[0]["code"] == "mixed_batch"
    assert "the batch header" in dead[0]["reason"] and "[[exchange_programs]]" in dead[0]["reason"]
    cmds = [registry().decode(o.value) for o in outs if o.topic == settings.topics.commands]
    # nothing is sent; every record goes back for a close after the fix, none at once
    assert json.loads(cmds[0]["payload_json"]) == {"refused_request_ids": [], "close_now": False}
    assert sorted(cmds[0]["record_ids"]) == sorted(r["record_id"] for r in batch.records)


def test_fm_batches_keep_their_manifest_exactly(outbox, schema) -> None:
    from sevisflow.sinks.xml.render import ClosedBatch
    from testkit.xml_samples import DSO, ORG_ID

    outcome = sink_closed_batch(
        ClosedBatch(ORG_ID, "SFTEST00000099", DSO, 1748921400000, (fm_create(1),)), schema, outbox
    )
    manifest = json.loads((Path(outcome.path) / "manifest.json").read_text())
    assert manifest["schema_version"] == schema.version
    assert set(manifest["records"][0]) == {"request_id", "record_id", "student_key", "kind", "section", "sevis_id"}


def test_without_the_ev_xsd_an_ev_batch_stops_the_sink_naming_the_file(tmp_path) -> None:
    """A school without J programs needs no EV XSD; the first EV batch names the missing file (a ConfigError stops
    the stage with its message: the environment, not the record)."""
    import shutil

    from sevisflow.core.errors import ConfigError
    from sevisflow.sinks.xml.document import check_document

    folder = tmp_path / "xsd"
    folder.mkdir()
    for name in ("Create-UpdateStudent.xsd", "Common.xsd", "SEVISTable.xsd"):
        shutil.copy(XSD_DIR / name, folder / name)
    student_only = load_schema(folder)
    from sevisflow.sinks.xml.render import ClosedBatch
    from testkit.xml_samples import DSO, ORG_ID

    assert check_document(ClosedBatch(ORG_ID, "SFTEST00000098", DSO, 0, (fm_create(1),)), student_only)[0].ok
    with pytest.raises(ConfigError, match=r"Create-UpdateExchangeVisitor\.xsd"):
        check_document(batch_of([create_record(1)]), student_only)
