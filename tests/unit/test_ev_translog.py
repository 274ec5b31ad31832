"""EV results: the transaction log's SiteIds and dependent SEVIS IDs, matched to SIS keys, applied by the batcher."""

from __future__ import annotations

import orjson
import pytest
from lxml import etree

from sevisflow.processors.batcher import ev_refs
from sevisflow.processors.batcher.core import EventIn, Publish, ResultIn, School, apply
from sevisflow.sinks.sevis.translog import RecordResult, assign_new_ids, parse_translog
from sevisflow.sinks.sevis.uploader import build_results
from sevisflow.sinks.xml.render_ev import new_ids
from sevisflow.sinks.xml.xsd import load_translog_schema
from testkit.batcher import BASE_MS, event, result
from tests.ev_support import UPDATE_PAYLOADS, create_record, update_record
from tests.helpers import XSD_DIR

PROGRAM = "P-1-99999"
LOG = b"""<?xml version="1.0" encoding="UTF-8"?>
<TransactionLog>
  <BatchHeader><BatchID>EVTEST00000001</BatchID><OrgID>P-1-99999</OrgID></BatchHeader>
  <BatchDetail status="false" system="PROD">
    <Upload resultCode="S0000" dateTimeStamp="2026-03-01T10:00:00.000"><FileName>EVTEST00000001.xml</FileName></Upload>
    <Process resultCode="S0020" dateTimeStamp="2026-03-01T10:05:00.000">
      <RecordCount><Success>2</Success><Failure>1</Failure><Total>3</Total></RecordCount>
      <Record requestID="C00000001" sevisID="N0000000501" userID="roaro00001">
        <UserDefinedA>J0000001</UserDefinedA>
        <ProcessDate>2026-03-01T10:05:00.000</ProcessDate>
        <Result status="true"/>
        <SiteOfActivity><SiteId>900001</SiteId><SiteName>Fictional Lab 1</SiteName></SiteOfActivity>
        <SiteOfActivity><SiteId>900002</SiteId><SiteName>Fictional Lab 0</SiteName></SiteOfActivity>
        <Dependent dependentSevisID="N0000000502"><UserDefinedB>D1-1</UserDefinedB></Dependent>
        <Dependent dependentSevisID="N0000000503"><UserDefinedB>D1-0</UserDefinedB></Dependent>
      </Record>
      <Record requestID="U00000002" sevisID="N0000000102" userID="roaro00001">
        <ProcessDate>2026-03-01T10:05:00.000</ProcessDate>
        <Result status="true"/>
        <SiteOfActivity><SiteId>900009</SiteId><SiteName>Fictional National Lab Annex</SiteName></SiteOfActivity>
      </Record>
      <Record requestID="U00000003" sevisID="N0000000103" userID="roaro00001">
        <ProcessDate>2026-03-01T10:05:00.000</ProcessDate>
        <Result status="false"><ErrorCode>S2232</ErrorCode><ErrorMessage>Dependent SEVIS ID not found</ErrorMessage></Result>
      </Record>
    </Process>
  </BatchDetail>
</TransactionLog>
"""


def manifest() -> dict:
    recs = [
        create_record(1, dependents=2, sites=2),
        update_record(2, "EV.SiteOfActivity.Add", UPDATE_PAYLOADS["EV.SiteOfActivity.Add"], "N0000000102"),
        update_record(3, "EV.Dependent.Delete", UPDATE_PAYLOADS["EV.Dependent.Delete"], "N0000000103"),
    ]
    out = []
    for r in recs:
        m = {k: r.get(k) for k in ("request_id", "record_id", "student_key", "kind", "section", "sevis_id")}
        if new_ids(r):
            m["new_ids"] = new_ids(r)
        out.append(m)
    return {"batch_id": "EVTEST00000001", "org_id": PROGRAM, "records": out}


@pytest.mark.skipif(not (XSD_DIR / "SevisTransLog.xsd").is_file(), reason="needs the XSDs")
def test_the_hand_written_ev_log_is_a_valid_transaction_log() -> None:
    assert load_translog_schema(XSD_DIR).validate(etree.fromstring(LOG))


def test_the_parser_reads_site_ids_and_dependent_ids() -> None:
    log = parse_translog(LOG)
    create = log.records[0]
    assert create.ok and create.sevis_id == "N0000000501"
    assert create.sites == (
        {"site_id": "900001", "site_name": "Fictional Lab 1"},
        {"site_id": "900002", "site_name": "Fictional Lab 0"},
    )
    assert [d["dependent_sevis_id"] for d in create.dependents] == ["N0000000502", "N0000000503"]
    assert log.records[2].error_code == "S2232" and not log.records[2].ok


def test_build_results_names_the_sis_key_of_every_new_id_matched_by_name_and_user_defined_b() -> None:
    results = build_results(manifest(), parse_translog(LOG))
    create = results[0]
    assert create["status"] == "success" and create["sevis_id"] == "N0000000501" and create["kind"] == "EV.Create"
    deps = orjson.loads(create["dependents_json"])
    assert [(d["dependent_sevis_id"], d["sis_key"]) for d in deps] == [("N0000000502", "D1-1"), ("N0000000503", "D1-0")]
    sites = orjson.loads(create["sites_json"])
    assert [(s["site_id"], s["sis_key"]) for s in sites] == [("900001", "ST1-1"), ("900002", "ST1-0")]
    assert [(s["site_id"], s["sis_key"]) for s in orjson.loads(results[1]["sites_json"])] == [("900009", "ST9")]
    assert results[2]["status"] == "failure" and results[2]["error_code"] == "S2232"
    assert results[2]["sites_json"] is None and results[2]["dependents_json"] is None


def test_assign_new_ids_falls_back_to_position_and_never_guesses_otherwise() -> None:
    expected = {
        "dependents": [{"sis_key": "DA", "user_defined_b": None}, {"sis_key": "DB", "user_defined_b": None}],
        "sites": [{"sis_key": "S-A", "site_name": None}],
    }
    r = RecordResult(
        "C1",
        True,
        dependents=(
            {"dependent_sevis_id": "N1", "user_defined_b": None},
            {"dependent_sevis_id": "N2", "user_defined_b": None},
        ),
        sites=({"site_id": "7", "site_name": None},),
    )
    deps, sites = assign_new_ids(expected, r)
    assert [d["sis_key"] for d in deps] == ["DA", "DB"] and sites[0]["sis_key"] == "S-A"
    # SEVIS returned more than was asked for and nothing echoes: no key is guessed
    r2 = RecordResult("C1", True, dependents=r.dependents + ({"dependent_sevis_id": "N3", "user_defined_b": None},))
    assert [d["sis_key"] for d in assign_new_ids(expected, r2)[0]] == [None, None, None]
    assert assign_new_ids(None, r)[0][0]["sis_key"] is None


# ---------------------------------------------------------------- the batcher applies them


def ev_event(student: str, kind: str, payload: dict, n: int, sevis_id: str | None = None) -> EventIn:
    ev = event(student, kind, n=n, org=PROGRAM, payload=payload, sevis_id=sevis_id, coalesce_key=f"{kind}:{n}")
    return EventIn(ev, at_ms=BASE_MS + n * 1000)


def _records(state: School, student: str) -> dict[str, dict]:
    return {r["kind"]: r for r in state.records.values() if r["student_key"] == student}


def test_learned_reads_only_successful_results_with_sis_keys() -> None:
    res = dict(
        result("B", "C1", status="success"),
        dependents_json=orjson.dumps(
            [
                {"dependent_sevis_id": "N0000000777", "sis_key": "D1"},
                {"dependent_sevis_id": "N0000000778", "sis_key": None},
            ]
        ).decode(),
        sites_json=orjson.dumps([{"site_id": "900001", "sis_key": "S1"}]).decode(),
    )
    assert ev_refs.learned(res) == [("dep", "D1", "N0000000777"), ("site", "S1", "900001")]
    assert ev_refs.learned(dict(res, status="failure")) == []
    assert ev_refs.learned(dict(res, dependents_json="not json", sites_json=None)) == []


def test_a_dependent_event_waits_for_the_dependent_sevis_id_and_a_site_event_gets_the_site_id() -> None:
    """Create accepted → the EV's SEVIS ID, the spouse's dependent SEVIS ID and the SiteId reach the open records
    that wait for them, the same way an F/M student's SEVIS ID does."""
    student = "J0000001"
    dep_edit = {"@printForm": "false", "@sisKey": "D1", "Relationship": "01"}
    site_edit = {
        "@printForm": "false",
        "@sisKey": "S1",
        "Address1": "1 New Street",
        "PostalCode": "62701",
        "SiteName": "Fictional Lab",
    }
    state, outs = School(org_id=PROGRAM), []
    for inp in (
        ev_event(student, "EV.Dependent.Edit", dep_edit, 1),
        ev_event(student, "EV.SiteOfActivity.Edit", site_edit, 2),
    ):
        state, o = apply(state, inp)
        outs += o
    recs = _records(state, student)
    assert recs["EV.Dependent.Edit"]["status"] == "waiting" and recs["EV.SiteOfActivity.Edit"]["status"] == "waiting"
    # the EV's create is accepted in an earlier batch: SEVIS ID, dependent ID and SiteId come back
    res = dict(
        result("EVTEST00000001", "C00000001", student=student, kind="EV.Create", sevis_id="N0000000501", org=PROGRAM),
        dependents_json=orjson.dumps([{"dependent_sevis_id": "N0000000502", "sis_key": "D1"}]).decode(),
        sites_json=orjson.dumps([{"site_id": "900001", "site_name": "Fictional Lab", "sis_key": "S1"}]).decode(),
    )
    state, o = apply(state, ResultIn(res, at_ms=BASE_MS + 10_000))
    recs = _records(state, student)
    dep, site = recs["EV.Dependent.Edit"], recs["EV.SiteOfActivity.Edit"]
    assert dep["status"] == "open" and dep["sevis_id"] == "N0000000501"
    assert dep["payload"]["@dependentSevisID"] == "N0000000502"
    assert site["status"] == "open" and site["payload"]["SiteId"] == "900001"
    types = [p.event["type"] for p in o if isinstance(p, Publish)]
    assert "record_released" in types
    # a later event of the same dependent gets the id at once; the ids are kept per exchange visitor and key
    assert state.sevis_ids[ev_refs.ref_key(student, "dep", "D1")] == "N0000000502"
    state, _ = apply(state, ev_event(student, "EV.Dependent.Delete", {"@sisKey": "D1"}, 3, sevis_id="N0000000501"))
    delete = _records(state, student)["EV.Dependent.Delete"]
    assert delete["status"] == "open" and delete["payload"]["@dependentSevisID"] == "N0000000502"


def test_a_dependent_event_of_an_unknown_dependent_keeps_waiting_with_the_reason() -> None:
    state, outs = apply(
        School(org_id=PROGRAM),
        ev_event(
            "J0000002",
            "EV.Dependent.Terminate",
            {"@sisKey": "D9", "Reason": "09", "EffectiveDate": "2026-05-15"},
            1,
            "N0000000601",
        ),
    )
    rec = _records(state, "J0000002")["EV.Dependent.Terminate"]
    assert rec["status"] == "waiting"
    assert any("dependent's SEVIS ID" in (p.event.get("reason") or "") for p in outs if isinstance(p, Publish))
    # a failed result teaches nothing
    bad = dict(
        result("B2", "C9", student="J0000002", kind="EV.Dependent.Add", status="failure", org=PROGRAM),
        dependents_json=orjson.dumps([{"dependent_sevis_id": "N0000000602", "sis_key": "D9"}]).decode(),
    )
    state, _ = apply(state, ResultIn(bad, at_ms=BASE_MS + 5000))
    assert _records(state, "J0000002")["EV.Dependent.Terminate"]["status"] == "waiting"


def test_ev_results_travel_as_sevis_results_with_their_new_ids() -> None:
    from sevisflow.core.serde import registry

    for res in build_results(manifest(), parse_translog(LOG)):
        decoded = registry().decode(registry().encode("sevisflow.results.SevisResult", res))
        assert decoded == res
    old = {k: v for k, v in build_results(manifest(), parse_translog(LOG))[1].items() if k != "sites_json"}
    assert registry().decode(registry().encode("sevisflow.results.SevisResult", old))["sites_json"] is None
