"""The EV renderer: every EV element, xsi:type, the SIS keys, the header, limits, mixed batches."""

from __future__ import annotations

import random

import pytest
from lxml import etree

from sevisflow.sinks.xml.render import MAX_RECORDS_PER_SECTION, ClosedBatch
from sevisflow.sinks.xml.render_ev import (
    check_ev_batch,
    is_ev_batch,
    mixed_problem,
    new_ids,
    render_ev_batch,
)
from sevisflow.sinks.xml.xsd_ev import XSI, load_ev_schema
from testkit.xml_samples import create_record as fm_create
from tests.ev_support import (
    PROGRAM,
    RO_USER,
    UPDATE_PAYLOADS,
    batch_of,
    create_payload,
    create_record,
    dependent,
    sample_ev_batch,
    update_record,
)
from tests.helpers import EXAMPLES_DIR, XSD_DIR

pytestmark = pytest.mark.skipif(
    not (XSD_DIR / "Create-UpdateExchangeVisitor.xsd").is_file(), reason="needs the EV XSD in SEVISFLOW_TEST_XSD_DIR"
)
XSI_TYPE = f"{{{XSI}}}type"


@pytest.fixture(scope="module")
def schema():
    return load_ev_schema(XSD_DIR)


def _doc(xml: bytes) -> etree._Element:
    return etree.fromstring(xml)


def test_the_example_document_validates_with_the_loaded_schema(schema) -> None:
    assert schema.validate(etree.parse(str(EXAMPLES_DIR / "ev-batch-valid.xml"))) == []


def test_sample_batch_is_valid_and_has_the_header_the_program_and_the_ro(schema) -> None:
    checked = check_ev_batch(sample_ev_batch(), schema)
    assert checked.ok, [p.as_dict() for p in checked.problems]
    root = _doc(checked.xml)
    assert root.tag == "SEVISBatchCreateUpdateEV"
    assert root.nsmap == {"xsi": XSI}  # no default namespace: unprefixed xsi:type names resolve
    assert root.get("userID") == RO_USER
    assert root.findtext("BatchHeader/BatchID") == "EVTEST00000001"
    assert root.findtext("BatchHeader/OrgID") == PROGRAM
    assert len(root.findall("CreateEV/ExchangeVisitor")) == 1
    assert len(root.findall("UpdateEV/ExchangeVisitor")) == len(UPDATE_PAYLOADS)
    assert {ev.get("userID") for ev in root.iter("ExchangeVisitor")} == {RO_USER}
    assert checked.xml.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")


@pytest.mark.parametrize("kind", sorted(UPDATE_PAYLOADS))
def test_each_update_event_renders_at_its_xsd_path_and_validates(schema, kind) -> None:
    rec = update_record(5, kind, UPDATE_PAYLOADS[kind], sevis_id="N0000000105")
    checked = check_ev_batch(batch_of([rec]), schema)
    assert checked.ok, [p.as_dict() for p in checked.problems]
    ev = _doc(checked.xml).find("UpdateEV/ExchangeVisitor")
    assert ev.get("sevisID") == "N0000000105" and ev.get("requestID") == rec["request_id"]
    steps = kind.split(".")[1:]
    event = ev.find("/".join(steps))
    assert event is not None, kind
    for key, value in UPDATE_PAYLOADS[kind].items():
        if key in ("@sisKey", "@xsi:type") or not key.startswith("@"):
            continue
        assert event.get(key[1:]) == value, key
    assert b"sisKey" not in checked.xml


def test_create_renders_every_part_in_xsd_order_with_xsi_type_and_dependent_keys(schema) -> None:
    rec = create_record(7, dependents=2, sites=2)
    checked = check_ev_batch(batch_of([rec]), schema)
    assert checked.ok, [p.as_dict() for p in checked.problems]
    ev = _doc(checked.xml).find("CreateEV/ExchangeVisitor")
    assert (ev.get("requestID"), ev.get("userID"), ev.get("printForm")) == ("C00000007", RO_USER, "true")
    assert [c.tag for c in ev] == [
        "UserDefinedA",
        "Biographical",
        "PositionCode",
        "PrgStartDate",
        "PrgEndDate",
        "CategoryCode",
        "SubjectField",
        "FinancialInfo",
        "CreateDependent",
        "AddSiteOfActivity",
    ]
    sites = ev.findall("AddSiteOfActivity/SiteOfActivity")
    assert [s.get(XSI_TYPE) for s in sites] == ["SOA", "SOA"]
    assert [c.tag for c in sites[0]] == ["Address1", "City", "State", "PostalCode", "SiteName", "PrimarySite"]
    # a created dependent's SIS key goes in UserDefinedB: SEVIS echoes it with the new dependent SEVIS ID
    assert [d.findtext("UserDefinedB") for d in ev.findall("CreateDependent/Dependent")] == ["D7-0", "D7-1"]
    assert b"sisKey" not in checked.xml


def test_dependent_add_puts_the_sis_key_on_the_dependent_group(schema) -> None:
    rec = update_record(3, "EV.Dependent.Add", UPDATE_PAYLOADS["EV.Dependent.Add"])
    dep = _doc(render_ev_batch(batch_of([rec]), schema)).find("UpdateEV/ExchangeVisitor/Dependent")
    assert [c.tag for c in dep] == ["UserDefinedB", "Add"]
    assert dep.findtext("UserDefinedB") == "D9"
    explicit = dict(UPDATE_PAYLOADS["EV.Dependent.Add"], UserDefinedB="HR-7003-D2", UserDefinedA="7003")
    dep = _doc(render_ev_batch(batch_of([update_record(3, "EV.Dependent.Add", explicit)]), schema)).find(
        "UpdateEV/ExchangeVisitor/Dependent"
    )
    assert [(c.tag, c.text) for c in dep][:2] == [("UserDefinedA", "7003"), ("UserDefinedB", "HR-7003-D2")]


def test_site_edit_and_delete_put_siteid_before_sitename(schema) -> None:
    rec = update_record(4, "EV.SiteOfActivity.Edit", UPDATE_PAYLOADS["EV.SiteOfActivity.Edit"])
    edit = _doc(render_ev_batch(batch_of([rec]), schema)).find("UpdateEV/ExchangeVisitor/SiteOfActivity/Edit")
    tags = [c.tag for c in edit]
    assert tags.index("SiteId") == tags.index("SiteName") - 1
    by_name = {k: v for k, v in UPDATE_PAYLOADS["EV.SiteOfActivity.Edit"].items() if k != "SiteId"}
    assert check_ev_batch(batch_of([update_record(4, "EV.SiteOfActivity.Edit", by_name)]), schema).ok


def test_rendering_is_deterministic_whatever_the_payload_key_order(schema) -> None:
    batch = sample_ev_batch()
    rng = random.Random(7)

    def shuffle(value):
        if isinstance(value, dict):
            items = [(k, shuffle(v)) for k, v in value.items()]
            rng.shuffle(items)
            return dict(items)
        if isinstance(value, list):
            return [shuffle(v) for v in value]
        return value

    shuffled = ClosedBatch(
        batch.org_id,
        batch.batch_id,
        batch.closed_by,
        batch.at_ms,
        tuple(dict(r, payload=shuffle(r["payload"])) for r in batch.records),
    )
    assert render_ev_batch(shuffled, schema) == render_ev_batch(batch, schema)


def test_a_site_without_xsi_type_or_with_the_wrong_one_is_refused_naming_the_types(schema) -> None:
    no_type = create_record(1)
    no_type["payload"]["AddSiteOfActivity"]["SiteOfActivity"][0].pop("@xsi:type")
    wrong = create_record(2)
    wrong["payload"]["AddSiteOfActivity"]["SiteOfActivity"][0]["@xsi:type"] = "AddSOA"  # an update type
    ok = create_record(3)
    checked = check_ev_batch(batch_of([no_type, wrong, ok]), schema)
    codes = {p.request_id: (p.code, p.message) for p in checked.problems}
    assert codes["C00000001"][0] == "missing_xsi_type" and "EXEMPT, SOA" in codes["C00000001"][1]
    assert codes["C00000002"][0] == "unknown_xsi_type"
    assert "C00000003" not in codes and [r["request_id"] for r in checked.rendered] == ["C00000003"]
    bad_attr = update_record(4, "EV.Validate", {**UPDATE_PAYLOADS["EV.Validate"], "@xsi:type": "SOA"})
    assert check_ev_batch(batch_of([bad_attr]), schema).problems[0].code == "unexpected_xsi_type"


def test_orgid_must_be_a_program_number_not_a_school_code(schema) -> None:
    checked = check_ev_batch(batch_of([create_record(1)], org="ZZZ214F99999000"), schema)
    assert [(p.code, p.request_id, p.field) for p in checked.problems] == [("invalid_batch", None, "BatchHeader/OrgID")]
    assert "program number" in checked.problems[0].message
    assert check_ev_batch(batch_of([create_record(1)], org="G-7-12345"), schema).ok


def test_ro_user_id_of_the_wrong_length_is_a_header_problem(schema) -> None:
    batch = ClosedBatch(PROGRAM, "EVTEST00000001", "short", 0, (create_record(1),))
    checked = check_ev_batch(batch, schema)
    assert checked.problems and all(p.request_id is None for p in checked.problems)


def test_records_that_cannot_go_are_refused_one_by_one(schema) -> None:
    no_sevis = update_record(2, "EV.Status.NoShow", {}, sevis_id=None)
    group = update_record(3, "EV.Program", {})
    unknown = update_record(4, "EV.Complete", {})
    fm = update_record(5, "Status.Complete", {})
    invalid = update_record(6, "EV.Program.Extension", {"@printForm": "true", "NewPrgEndDate": "31/12/2027"})
    checked = check_ev_batch(batch_of([create_record(1), no_sevis, group, unknown, fm, invalid]), schema)
    by = {p.request_id: p for p in checked.problems}
    assert by["U00000002"].code == "missing_sevis_id"
    assert by["U00000003"].code == "unknown_kind" and "EV.Program.Extension" in by["U00000003"].message
    assert by["U00000004"].code == "unknown_kind"
    assert by["U00000005"].code == "not_ev_record"
    assert by["U00000006"].code == "invalid_xml" and by["U00000006"].field.endswith("NewPrgEndDate")
    assert "31/12/2027" not in by["U00000006"].message  # the value is never quoted
    assert [r["request_id"] for r in checked.rendered] == ["C00000001", "U00000006"]
    no_dep_id = {k: v for k, v in UPDATE_PAYLOADS["EV.Dependent.Edit"].items() if k != "@dependentSevisID"}
    checked = check_ev_batch(batch_of([update_record(7, "EV.Dependent.Edit", no_dep_id)]), schema)
    assert [(p.code, p.field) for p in checked.problems] == [("missing_dependent_sevis_id", "@dependentSevisID")]


def test_250_creates_and_250_updates_per_document_the_rest_re_queued(schema) -> None:
    n = MAX_RECORDS_PER_SECTION
    creates = [create_record(i, dependents=0) for i in range(1, n + 3)]
    updates = [update_record(i, "EV.Status.NoShow", {}, sevis_id=f"N{i:010d}") for i in range(1, n + 2)]
    checked = check_ev_batch(batch_of(creates + updates), schema)
    over = list(checked.problems)
    assert {p.code for p in over} == {"too_many_records"} and not any(p.at_fault for p in over)
    assert sorted(p.request_id for p in over) == ["C00000251", "C00000252", "U00000251"]
    root = _doc(checked.xml)
    assert len(root.findall("CreateEV/ExchangeVisitor")) == n == len(root.findall("UpdateEV/ExchangeVisitor"))
    assert schema.validate(root) == []
    assert checked.bad_request_ids() == set()  # none at fault: all three go to the next batch


def test_more_than_25_dependents_or_sites_in_a_create_is_refused_with_the_fix(schema) -> None:
    many_deps = create_record(1, dependents=26)
    many_sites = create_record(2, sites=26)
    checked = check_ev_batch(batch_of([many_deps, many_sites, create_record(3, dependents=25, sites=25)]), schema)
    by = {p.request_id: p for p in checked.problems}
    assert by["C00000001"].code == "too_many_dependents" and "Dependent/Add" in by["C00000001"].message
    assert by["C00000002"].code == "too_many_sites" and "SiteOfActivity/Add" in by["C00000002"].message
    assert "C00000003" not in by


def test_mixed_fm_and_ev_records_are_one_problem_naming_the_fix() -> None:
    mixed = batch_of([create_record(1), fm_create(2)])
    problem = mixed_problem(mixed)
    assert problem is not None and problem.code == "mixed_batch" and problem.request_id is None
    assert "[[exchange_programs]]" in problem.message
    assert mixed_problem(sample_ev_batch()) is None
    assert is_ev_batch(sample_ev_batch()) and not is_ev_batch(batch_of([fm_create(2)]))


def test_new_ids_name_the_dependents_and_sites_a_record_asks_sevis_to_create() -> None:
    refs = new_ids(create_record(4, dependents=2, sites=2))
    assert refs == {
        "dependents": [{"sis_key": "D4-0", "user_defined_b": "D4-0"}, {"sis_key": "D4-1", "user_defined_b": "D4-1"}],
        "sites": [
            {"sis_key": "ST4-0", "site_name": "Fictional Lab 0"},
            {"sis_key": "ST4-1", "site_name": "Fictional Lab 1"},
        ],
    }
    assert new_ids(update_record(2, "EV.Dependent.Add", UPDATE_PAYLOADS["EV.Dependent.Add"])) == {
        "dependents": [{"sis_key": "D9", "user_defined_b": "D9"}],
        "sites": [],
    }
    assert new_ids(update_record(2, "EV.SiteOfActivity.Add", UPDATE_PAYLOADS["EV.SiteOfActivity.Add"])) == {
        "dependents": [],
        "sites": [{"sis_key": "ST9", "site_name": "Fictional National Lab Annex"}],
    }
    assert new_ids(update_record(2, "EV.Reprint", UPDATE_PAYLOADS["EV.Reprint"])) is None


def test_a_long_sis_key_is_not_written_into_userdefinedb(schema) -> None:
    rec = create_record(1)
    rec["payload"]["CreateDependent"]["Dependent"] = [dependent("DEPENDENT-KEY-TOO-LONG")]
    assert check_ev_batch(batch_of([rec]), schema).ok
    assert new_ids(rec)["dependents"] == [{"sis_key": "DEPENDENT-KEY-TOO-LONG", "user_defined_b": None}]


def test_create_payload_without_printform_asks_for_the_ds2019(schema) -> None:
    payload = create_payload()
    payload.pop("@printForm")
    rec = dict(create_record(1), payload=payload)
    assert _doc(render_ev_batch(batch_of([rec]), schema)).find("CreateEV/ExchangeVisitor").get("printForm") == "true"


# ---------------------------------------------------------------- the example document, element for element


def _content(el: etree._Element):
    """An element as the EV contract's payload: attributes with @ (xsi:type as @xsi:type), children by name."""
    attrs = {("@xsi:type" if k == XSI_TYPE else f"@{k}"): v for k, v in el.attrib.items()}
    children = list(el)
    if not children:
        return {**attrs, **({"#text": el.text} if el.text else {})} if attrs else (el.text or "")
    out: dict = dict(attrs)
    for c in children:
        value = _content(c)
        out[c.tag] = (
            [*out[c.tag], value]
            if isinstance(out.get(c.tag), list)
            else ([out[c.tag], value] if c.tag in out else value)
        )
    return out


def _records_of(root: etree._Element) -> list[dict]:
    records = []
    for ev in root.findall("CreateEV/ExchangeVisitor"):
        payload = _content(ev)
        rid = payload.pop("@requestID")
        payload.pop("@userID")
        records.append(
            {
                "record_id": rid,
                "request_id": rid,
                "section": "create",
                "student_key": rid,
                "sevis_id": None,
                "kind": "EV.Create",
                "payload": payload,
            }
        )
    for ev in root.findall("UpdateEV/ExchangeVisitor"):
        rec = {
            "record_id": ev.get("requestID"),
            "request_id": ev.get("requestID"),
            "section": "update",
            "student_key": ev.get("requestID"),
            "sevis_id": ev.get("sevisID"),
            "user_defined_a": ev.findtext("UserDefinedA"),
            "user_defined_b": ev.findtext("UserDefinedB"),
        }
        node, steps, group_keys = ev, [], {}
        while True:
            node = next(c for c in node if c.tag not in ("UserDefinedA", "UserDefinedB"))
            steps.append(node.tag)
            if node.tag not in ("Program", "Status", "SiteOfActivity", "Dependent", "TIPP"):
                break
            group_keys.update({c.tag: c.text for c in node if c.tag in ("UserDefinedA", "UserDefinedB")})
        payload = _content(node)
        payload = payload if isinstance(payload, dict) else {}
        records.append({**rec, "kind": "EV." + ".".join(steps), "payload": {**payload, **group_keys}})
    return records


def test_the_renderer_reproduces_the_fictional_example_document(schema) -> None:
    """Records read from examples/ev-batch-valid.xml render back to the same document (comments and the
    schema-location hint aside): root, header, xsi:type on sites, group keys, every element in place."""
    parser = etree.XMLParser(remove_comments=True, remove_blank_text=True)
    example = etree.parse(str(EXAMPLES_DIR / "ev-batch-valid.xml"), parser).getroot()
    del example.attrib[f"{{{XSI}}}noNamespaceSchemaLocation"]
    batch = ClosedBatch(
        example.findtext("BatchHeader/OrgID"),
        example.findtext("BatchHeader/BatchID"),
        example.get("userID"),
        0,
        tuple(_records_of(example)),
    )
    checked = check_ev_batch(batch, schema)
    assert checked.ok, [p.as_dict() for p in checked.problems]
    ours = etree.fromstring(checked.xml, parser)
    assert etree.tostring(ours, method="c14n") == etree.tostring(example, method="c14n")
