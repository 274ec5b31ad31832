"""The lenient transaction-log parser."""

from __future__ import annotations

import pytest

from sinks.sevis.translog import TranslogError, parse_translog
from tests.helpers import EXAMPLES_DIR


def test_processed_log_example():
    log = parse_translog((EXAMPLES_DIR / "transaction-log-valid.xml").read_bytes())
    assert (log.batch_id, log.org_id, log.upload_code, log.process_code, log.download_code) == \
        ("FICT2025000001", "ZZZ214F99999000", "S0000", "S0020", "S0000")
    assert log.counts == {"success": 1, "failure": 1, "total": 2}
    ok, bad = log.records
    assert ok.ok and ok.sevis_id == "N0000000199" and ok.request_id == "C-1001-0001"
    assert not bad.ok and bad.error_code == "S1100" and "program end date" in bad.error_message


def test_upload_response_example():
    log = parse_translog((EXAMPLES_DIR / "transaction-log-upload-response.xml").read_bytes())
    assert log.upload_code == "S0000" and log.upload_file_name == "FICT2025000001.xml"
    assert log.process is None and log.records == ()


def test_tolerates_namespaces_unknown_and_missing_elements():
    data = b"""<?xml version="1.0"?>
    <tl:TransactionLog xmlns:tl="urn:whatever"><tl:BatchHeader><tl:BatchID>B</tl:BatchID></tl:BatchHeader>
      <tl:BatchDetail><Surprise/><tl:Process resultCode="S0020">
        <tl:Record requestID="R1" sevisID="N0000000001"><tl:Result status="1"/>
          <tl:PhysicalCorrectedAddress><Address1>x</Address1></tl:PhysicalCorrectedAddress></tl:Record>
        <tl:Record requestID="R2"><tl:Result status="false"><tl:ErrorCode>S1003</tl:ErrorCode></tl:Result></tl:Record>
        <tl:Record><tl:Result status="true"/></tl:Record>
        <tl:Record requestID="R3"><tl:Dependent dependentSevisID="N0000000009"/></tl:Record>
      </tl:Process></tl:BatchDetail></tl:TransactionLog>"""
    log = parse_translog(data)
    assert log.org_id is None and log.status is None and log.process_code == "S0020"
    assert [(r.request_id, r.ok, r.error_code) for r in log.records] == \
        [("R1", True, None), ("R2", False, "S1003"), ("R3", False, None)]
    assert log.records[2].dependents[0]["dependent_sevis_id"] == "N0000000009"


@pytest.mark.parametrize("data", [b"", b"<TransactionLog><BatchHeader>", b"PK\x03\x04garbage", b"<Other/>"])
def test_refuses_what_is_not_a_log(data):
    with pytest.raises(TranslogError):
        parse_translog(data)


def test_no_entity_expansion():
    data = b"""<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>
    <TransactionLog><BatchHeader><BatchID>&x;</BatchID></BatchHeader></TransactionLog>"""
    log = parse_translog(data)
    assert log.batch_id is None or "root:" not in log.batch_id
