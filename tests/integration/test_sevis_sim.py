"""The SEVIS simulator over real TLS: protocol rules, IDs, delays, certificates."""

from __future__ import annotations

import io
import json
import ssl
import urllib.request
import zipfile
from pathlib import Path

import pytest
from lxml import etree

from sevisflow.sinks.sevis.client import CertificateError, SevisClient
from sevisflow.sinks.sevis.translog import parse_translog
from sevisflow.sinks.sevis_sim import SevisSimulator
from sevisflow.sinks.xml.render import ClosedBatch, render_batch
from sevisflow.sinks.xml.xsd import load_schema, load_translog_schema
from testkit.xml_samples import DSO, ORG_ID, create_record, sample_batch, update_record
from tests.helpers import EXAMPLES_DIR, XSD_DIR, make_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def sim(tmp_path: Path):
    s = SevisSimulator(tmp_path / "certs", XSD_DIR, known_sevis_ids=["N0000000101"])
    s.start()
    yield s
    s.stop()


def client_for(sim: SevisSimulator, **over) -> SevisClient:
    sevis = {
        "upload_url": sim.upload_url,
        "download_url": sim.download_url,
        "client_cert": str(sim.certs.client_cert),
        "client_key": str(sim.certs.client_key),
        "ca_bundle": str(sim.certs.ca_cert),
        "http_timeout_s": 10.0,
    }
    sevis.update(over)
    return SevisClient(make_settings(sevis=sevis).sevis)


def _xml(batch):
    return render_batch(batch, load_schema(XSD_DIR))


def test_upload_rules_and_results(sim):
    c = client_for(sim)
    batch = ClosedBatch(
        ORG_ID,
        "SIMTEST0000001",
        DSO,
        0,
        (
            create_record(1),
            update_record(2, "Status.Complete", sevis_id="N0000000101"),
            update_record(3, "Status.Complete", sevis_id="N0000000999"),
        ),
    )
    assert c.download(ORG_ID, DSO, "SIMTEST0000001").code == "S0031"
    assert c.upload(ORG_ID, DSO, "SIMTEST0000001", "a.xml", _xml(batch)).code == "S0000"
    assert c.upload(ORG_ID, DSO, "SIMTEST0000001", "a.xml", _xml(batch)).code == "S0010"
    assert c.upload("ZZZ214F99999001", DSO, "SIMTEST0000001", "a.xml", _xml(batch)).code == "S0012"  # header differs
    assert c.upload(ORG_ID, "short", "SIMTEST0000002", "a.xml", _xml(batch)).code == "S0003"
    assert c.upload("BAD", DSO, "SIMTEST0000002", "a.xml", b"<x/>").code == "S0002"
    assert c.upload(ORG_ID, DSO, "SIMTEST0000002", "a.xml", b"<not xml").code == "S0012"
    invalid = (
        (EXAMPLES_DIR / "student-batch-invalid.xml")
        .read_bytes()
        .replace(b"FICT202500001", b"SIMTEST0000003")
        .replace(b"ZZZ214X99999000", ORG_ID.encode())
    )
    assert c.upload(ORG_ID, DSO, "SIMTEST0000003", "a.xml", invalid).code == "S0013"
    reply = c.download(ORG_ID, DSO, "SIMTEST0000001")
    assert reply.code == "S0000"
    zf = zipfile.ZipFile(io.BytesIO(reply.zip_bytes))
    raw = zf.read("sevis_transaction_log.xml")
    assert load_translog_schema(XSD_DIR).validate(etree.fromstring(raw))
    log = parse_translog(raw)
    assert log.process_code == "S0020"
    by = {r.request_id: r for r in log.records}
    created = by[batch.records[0]["request_id"]]
    assert created.ok and created.sevis_id.startswith("N") and len(created.sevis_id) == 11
    assert any(n.startswith(created.sevis_id) and n.endswith(".pdf") for n in zf.namelist())
    assert by[batch.records[1]["request_id"]].ok
    assert by[batch.records[2]["request_id"]].error_code == "S1003"


def test_sevis_ids_are_deterministic(tmp_path):
    ids = []
    for _n in range(2):
        with SevisSimulator(tmp_path / "certs", XSD_DIR) as s:
            c = client_for(s)
            c.upload(
                ORG_ID,
                DSO,
                "SIMTEST0000009",
                "a.xml",
                _xml(ClosedBatch(ORG_ID, "SIMTEST0000009", DSO, 0, (create_record(1),))),
            )
            ids.append(
                parse_translog(
                    zipfile.ZipFile(io.BytesIO(c.download(ORG_ID, DSO, "SIMTEST0000009").zip_bytes)).read(
                        "sevis_transaction_log.xml"
                    )
                )
                .records[0]
                .sevis_id
            )
    assert ids[0] == ids[1]


def test_results_wait_for_the_delay_and_limits(tmp_path):
    with SevisSimulator(tmp_path / "certs", XSD_DIR, results_delay_s=30, accept_any_sevis_id=True) as s:
        c = client_for(s)
        assert (
            c.upload(ORG_ID, DSO, "SIMTEST0000004", "a.xml", _xml(sample_batch(0, 250, "SIMTEST0000004"))).code
            == "S0000"
        )
        assert c.download(ORG_ID, DSO, "SIMTEST0000004").code == "S0030"
        too_many = _xml(sample_batch(0, 250, "SIMTEST0000005")).replace(
            b"<UpdateStudent>",
            b"<UpdateStudent>" + b'<Student sevisID="N0000000001" requestID="X1" '
            b'userID="dsouser001"><Status><Complete/></Status></Student>',
            1,
        )
        assert c.upload(ORG_ID, DSO, "SIMTEST0000005", "a.xml", too_many).code == "S0013"


def test_control_endpoint_and_state(sim):
    ctx = ssl.create_default_context(cafile=str(sim.certs.ca_cert))
    ctx.load_cert_chain(str(sim.certs.client_cert), str(sim.certs.client_key))
    req = urllib.request.Request(
        sim.url + "/_sim/control",
        method="POST",
        data=json.dumps({"fail": {"op": "upload", "mode": "http500", "count": 1}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    state = json.loads(urllib.request.urlopen(req, context=ctx, timeout=10).read())
    assert state["pending_faults"][0]["mode"] == "http500"


def test_client_without_certificate_is_refused(sim, tmp_path):
    ctx = ssl.create_default_context(cafile=str(sim.certs.ca_cert))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        urllib.request.urlopen(sim.url + "/_sim/state", context=ctx, timeout=10).read()


def test_pkcs12_client_certificate(sim):
    c = client_for(
        sim, client_cert=str(sim.certs.client_p12), client_key="", client_key_password=sim.certs.p12_password
    )
    assert c.download(ORG_ID, DSO, "NOSUCHBATCH001").code == "S0031"
    with pytest.raises(CertificateError, match="PKCS#12"):
        client_for(sim, client_cert=str(sim.certs.client_p12), client_key="", client_key_password="wrong")
