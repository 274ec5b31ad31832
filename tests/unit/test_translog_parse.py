"""The lenient transaction-log parser."""

from __future__ import annotations

import pytest

from sevisflow.sinks.sevis.translog import TranslogError, parse_translog
from tests.helpers import EXAMPLES_DIR


def test_processed_log_example():
    log = parse_translog((EXAMPLES_DIR / "transaction-log-valid.xml").read_bytes())
    assert (log.batch_id, log.org_id, log.upload_code, log.process_code, log.download_code) == (
        "FICT2025000001",
        "ZZZ214F99999000",
        "S0000",
        "S0020",
        "S0000",
    )
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
    assert [(r.request_id, r.ok, r.error_code) for r in log.records] == [
        ("R1", True, None),
        ("R2", False, "S1003"),
        ("R3", False, None),
    ]
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


def test_billion_laughs_is_refused_not_expanded():
    lol = b'<!ENTITY a0 "lollollollollollollollollollol">' + b"".join(
        f'<!ENTITY a{i} "{("&a" + str(i - 1) + ";") * 10}">'.encode() for i in range(1, 10)
    )
    data = (
        b'<?xml version="1.0"?><!DOCTYPE TransactionLog [' + lol + b"]><TransactionLog><BatchHeader>"
        b"<BatchID>&a9;</BatchID></BatchHeader></TransactionLog>"
    )
    try:
        log = parse_translog(data)
    except TranslogError:
        return  # libxml2 refused the amplification: fine
    assert log.batch_id is None or len(log.batch_id) < 1000


def test_a_text_node_over_libxml2s_limit_is_refused():
    data = (
        b"<TransactionLog><BatchHeader><BatchID>" + b"x" * (11 * 1024 * 1024) + b"</BatchID></BatchHeader>"
        b"</TransactionLog>"
    )
    with pytest.raises(TranslogError, match="not well-formed"):
        parse_translog(data)


def test_parsing_is_incremental_memory_follows_one_record_not_the_document(tmp_path):
    """A 40 MB log (20,000 records with long address blocks the parser skips), parsed in a fresh
    process: its peak RSS grows by far less than the document (a whole tree would take several
    times the document's size), while every result is read."""
    import subprocess
    import sys

    from tests.helpers import REPO

    rec = (
        '<Record requestID="R{0}" sevisID="N{0:010d}"><ProcessDate>2025-01-01</ProcessDate>'
        '<Result status="true"/><PhysicalCorrectedAddress><Address1>'
        + "a" * 2000
        + "</Address1></PhysicalCorrectedAddress></Record>"
    )
    path = tmp_path / "log.xml"
    with open(path, "w") as fh:
        fh.write(
            "<TransactionLog><BatchHeader><BatchID>B1</BatchID><OrgID>O1</OrgID></BatchHeader>"
            '<BatchDetail status="true"><Upload resultCode="S0000"><FileName>f.xml</FileName></Upload>'
            '<Process resultCode="S0000"><RecordCount><Success>20000</Success></RecordCount>'
        )
        for i in range(20000):
            fh.write(rec.format(i))
        fh.write('</Process><Download resultCode="S0000"/></BatchDetail></TransactionLog>')
    size = path.stat().st_size
    probe = (
        "import resource, sys\n"
        "from sevisflow.sinks.sevis.translog import parse_translog\n"
        "parse_translog(b'<TransactionLog/>')\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "with open(sys.argv[1], 'rb') as fh:\n"
        "    log = parse_translog(fh)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "print(len(log.records), log.records[-1].sevis_id, log.batch_id, log.counts['success'], after - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(path)], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    ).stdout.split()
    assert out[:4] == ["20000", "N0000019999", "B1", "20000"]
    assert int(out[4]) < size / 2, f"parsing a {size} byte log grew the process by {out[4]} bytes"
