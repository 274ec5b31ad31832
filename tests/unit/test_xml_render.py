"""The XML format: XSD-ordered rendering, validation mapped to records, round trip of the example batch."""

from __future__ import annotations

import random

import pytest
from lxml import etree

from sevisflow.sinks.xml.render import ClosedBatch, batch_from_document, check_batch, redact, render_batch
from sevisflow.sinks.xml.xsd import load_schema
from testkit.xml_samples import DSO, ORG_ID, create_record, sample_batch, update_record
from tests.helpers import EXAMPLES_DIR, XSD_DIR


@pytest.fixture(scope="module")
def schema():
    return load_schema(XSD_DIR)


def _canon(el: etree._Element):
    """Structure without comments, namespace declarations, xsi attributes or layout whitespace."""
    attrs = tuple(sorted((k, v) for k, v in el.attrib.items() if not k.startswith("{")))
    kids = [c for c in el if isinstance(c.tag, str)]
    text = (el.text or "").strip() if not kids else ""
    return (el.tag, attrs, text, tuple(_canon(c) for c in kids))


def _shuffle(value, rnd):
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffle(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffle(v, rnd) for v in value]
    return value


def test_example_batch_round_trips(schema):
    original = (EXAMPLES_DIR / "student-batch-valid.xml").read_bytes()
    batch = batch_from_document(original, schema)
    assert len(batch.records) == 7
    checked = check_batch(batch, schema)
    assert checked.ok, checked.problems
    parser = etree.XMLParser(remove_comments=True, remove_blank_text=True)
    assert _canon(etree.fromstring(checked.xml, parser)) == _canon(etree.fromstring(original, parser))


def test_payload_key_order_does_not_matter(schema):
    original = (EXAMPLES_DIR / "student-batch-valid.xml").read_bytes()
    batch = batch_from_document(original, schema)
    expected = render_batch(batch, schema)
    for seed in range(5):
        rnd = random.Random(seed)
        shuffled = ClosedBatch(
            batch.org_id,
            batch.batch_id,
            batch.closed_by,
            batch.at_ms,
            tuple(_shuffle(dict(r), rnd) for r in batch.records),
        )
        assert render_batch(shuffled, schema) == expected


def test_rendering_is_deterministic_and_validates(schema):
    batch = sample_batch(3, 6)
    a, b = check_batch(batch, schema), check_batch(batch, schema)
    assert a.ok and a.xml == b.xml
    assert a.xml.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    root = etree.fromstring(a.xml)
    assert root.get("userID") == DSO
    assert [s.get("userID") for s in root.iter("Student")] == [DSO] * 9
    ext = root.find("UpdateStudent/Student/Program/Extension")
    assert ext is not None and ext.get("printForm") == "true"
    assert [c.tag for c in ext] == ["NewPrgEndDate", "Explanation"]


def test_kind_paths_and_attributes(schema):
    rec = update_record(7, "Status.Terminate")
    batch = ClosedBatch(ORG_ID, "SFTEST00000002", DSO, 0, (rec,))
    root = etree.fromstring(render_batch(batch, schema))
    st = root.find("UpdateStudent/Student")
    assert st.get("sevisID") == "N0000000007" and st.get("requestID") == rec["request_id"]
    assert st.find("Status/Terminate/Reason").text == "01"
    assert st.findtext("UserDefinedB") == "S00000007"


def test_unknown_kind_and_element_are_refused_with_reason(schema):
    bad_kind = update_record(1, "Program", payload={})  # a group, not one event
    unknown = update_record(2, "PersonalInfo")
    unknown["payload"] = {"@printForm": "false", "Nickname": "x"}
    no_id = update_record(3, "Status.Complete")
    no_id["sevis_id"] = None
    good = update_record(4, "Status.Complete")
    checked = check_batch(ClosedBatch(ORG_ID, "SFTEST00000003", DSO, 0, (bad_kind, unknown, no_id, good)), schema)
    codes = {p.request_id: p.code for p in checked.problems}
    assert codes == {
        bad_kind["request_id"]: "unknown_kind",
        unknown["request_id"]: "unknown_element",
        no_id["request_id"]: "missing_sevis_id",
    }
    assert [r["request_id"] for r in checked.rendered] == [good["request_id"]]


def test_validation_errors_map_to_student_and_field_without_values(schema):
    bad = create_record(5, last="Smith2", address1="x" * 70)
    good = create_record(6)
    checked = check_batch(ClosedBatch(ORG_ID, "SFTEST00000004", DSO, 0, (good, bad)), schema)
    assert not checked.ok
    fields = {(p.student_key, p.field) for p in checked.problems}
    assert fields == {("S00000005", "PersonalInfo/FullName/LastName"), ("S00000005", "ForeignAddress/Address1")}
    assert all("Smith2" not in p.message for p in checked.problems)
    assert checked.bad_request_ids() == {bad["request_id"]}


def test_header_problems_are_batch_level(schema):
    batch = ClosedBatch(ORG_ID, "SHORT", "dso", 0, (update_record(1, "Status.Complete"),))
    checked = check_batch(batch, schema)
    assert checked.problems and all(p.request_id is None for p in checked.problems)
    assert not checked.bad_request_ids()


def test_more_than_250_records_are_not_at_fault(schema):
    batch = sample_batch(0, 252)
    checked = check_batch(batch, schema)
    assert [p.code for p in checked.problems] == ["too_many_records"] * 2
    assert not any(p.at_fault for p in checked.problems)
    assert len(etree.fromstring(checked.xml).findall("UpdateStudent/Student")) == 250


def test_control_characters_are_refused(schema):
    rec = create_record(9, first="An\x01sel")
    checked = check_batch(ClosedBatch(ORG_ID, "SFTEST00000005", DSO, 0, (rec,)), schema)
    assert [p.code for p in checked.problems] == ["invalid_character"]


def test_redact_drops_values_with_apostrophes():
    msg = "Element 'LastName': [facet 'pattern'] The value 'O'Br1en' is not accepted by the pattern '\\D+'."
    assert "Br1en" not in redact(msg)
    msg2 = "Element 'BirthDate': '2001-13-01' is not a valid value of the atomic type 'DateType'."
    assert "2001" not in redact(msg2)


def test_invalid_example_reports_every_record(schema):
    batch = batch_from_document((EXAMPLES_DIR / "student-batch-invalid.xml").read_bytes(), schema)
    checked = check_batch(batch, schema)
    fields = {(p.request_id, p.field) for p in checked.problems}
    assert (None, "BatchHeader/BatchID") in fields and (None, "BatchHeader/OrgID") in fields
    assert ("U-9002-BAD-02", "Program/Shorten/@printForm") in fields
    assert ("U-9002-BAD-02", "Program/Shorten/NewPrgEndDate") in fields
    assert ("U-9003-BAD-03", "Program/Edit/MajorCode1") in fields
    assert ("U-9001-BAD-01", "@sevisID") in fields
