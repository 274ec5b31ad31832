"""The uploader/downloader against the simulator over real TLS (publisher faked; Kafka in test_sink_kafka)."""

from __future__ import annotations

import json
import time

import pytest

from sevisflow.sinks.sevis.client import CertificateError, SevisClient
from sevisflow.sinks.sevis.uploader import SevisSink
from sevisflow.sinks.sevis_sim.certs import make_ca, make_leaf
from sevisflow.sinks.xml.render import ClosedBatch
from sevisflow.sinks.xml.xsd import load_schema
from testkit.xml_samples import DSO, ORG_ID, create_record
from tests.helpers import XSD_DIR
from tests.upload_support import FakePublisher, outbox_of, put_batch, settings_for, states

pytestmark = pytest.mark.integration


def drive(sink: SevisSink, done, steps: int = 60) -> None:
    for _ in range(steps):
        sink.step()
        if done():
            return
        time.sleep(0.02)
    raise AssertionError("did not get there")


def test_upload_download_partial_success(sim, tmp_path):
    settings = settings_for(sim, tmp_path)
    batch = put_batch(settings)
    pub = FakePublisher()
    sink = SevisSink(settings, outbox_of(settings), pub)
    drive(sink, lambda: states(settings) == {"processed": ["UPLTEST0000001"]})
    assert [(r["request_id"], r["status"], r["error_code"]) for r in pub.published] == [
        (batch.records[0]["request_id"], "success", None),
        (batch.records[1]["request_id"], "success", None),
        (batch.records[2]["request_id"], "failure", "S1003"),
    ]
    new_id = pub.published[0]["sevis_id"]
    assert new_id and new_id.startswith("N") and pub.published[0]["student_key"] == "S00000001"
    assert all(r["process_code"] == "S0020" for r in pub.published)
    folder = next(outbox_of(settings).batches("processed")).path
    assert (folder / "results" / "sevis_transaction_log.xml").is_file()
    assert (folder / "results" / f"{new_id}_I20.pdf").is_file()
    assert sim.upload_count("UPLTEST0000001") == 1


def test_retry_on_http_errors_and_s0001_then_never_again_after_restart(sim, tmp_path):
    settings = settings_for(sim, tmp_path)
    put_batch(settings)
    sim.fail("upload", "http500", 2)
    sim.fail("upload", "S0001", 1)
    pub = FakePublisher()
    drive(SevisSink(settings, outbox_of(settings), pub), lambda: "processed" in states(settings))
    assert sim.upload_count("UPLTEST0000001", "S0000") == 1 and sim.upload_count(code="S0010") == 0
    folder = next(outbox_of(settings).batches("processed")).path
    # the two HTTP 500s left the outcome unknown: each was followed by a download (S0031) before the next POST
    assert sorted(p.name for p in folder.glob("post-*.json") if "answer" not in p.name) == [
        "post-1.json",
        "post-2.json",
        "post-3.json",
        "post-4.json",
    ]
    assert sim.post_count("UPLTEST0000001") == 4
    probes = [r["code"] for r in sim.requests if r["op"] == "download"]
    assert probes[:2] == ["S0031", "S0031"]
    # a restart: a new process over the same outbox uploads nothing and publishes nothing again
    pub2 = FakePublisher()
    restarted = SevisSink(settings, outbox_of(settings), pub2)
    for _ in range(3):
        restarted.step()
    assert sim.post_count("UPLTEST0000001") == 4 and not pub2.published


def test_crash_after_sevis_accepted_does_not_upload_twice(sim, tmp_path):
    """Also a folder written before the evidence files (state.json says a POST was tried): never re-posted."""
    settings = settings_for(sim, tmp_path)
    put_batch(settings)
    ob = outbox_of(settings)
    bd = ob.move(next(ob.batches("ready")), "sending")
    # the POST reached SEVIS, then the process died before it could record the answer
    SevisClient(settings.sevis).upload(ORG_ID, DSO, "UPLTEST0000001", bd.xml_path.name, bd.xml_path.read_bytes())
    bd.save_state({"upload_tries": 1, "outcome_unknown": True})
    pub = FakePublisher()
    drive(SevisSink(settings, outbox_of(settings), pub), lambda: "processed" in states(settings))
    assert sim.upload_count("UPLTEST0000001") == 1 and sim.upload_count(code="S0010") == 0
    assert len(pub.published) == 3 and not pub.requeued


def test_network_drop_is_retried_after_asking_sevis(sim, tmp_path):
    settings = settings_for(sim, tmp_path)
    put_batch(settings)
    sim.fail("upload", "drop", 1)
    pub = FakePublisher()
    drive(SevisSink(settings, outbox_of(settings), pub), lambda: "processed" in states(settings))
    downloads = [r for r in sim.requests if r["op"] == "download"]
    assert downloads[0]["code"] == "S0031"  # the probe before the second POST
    assert sim.upload_count("UPLTEST0000001", "S0000") == 1


def test_duplicate_batch_id_fails_the_batch_and_requeues(sim, tmp_path):
    settings = settings_for(sim, tmp_path)
    batch = put_batch(settings)
    other = ClosedBatch(ORG_ID, "UPLTEST0000001", DSO, 0, (create_record(99),))
    from sevisflow.sinks.xml.render import render_batch

    assert (
        SevisClient(settings.sevis)
        .upload(ORG_ID, DSO, "UPLTEST0000001", "x.xml", render_batch(other, load_schema(XSD_DIR)))
        .code
        == "S0000"
    )
    pub = FakePublisher()
    drive(SevisSink(settings, outbox_of(settings), pub), lambda: "failed" in states(settings))
    assert pub.requeued == [
        {"batch_id": "UPLTEST0000001", "record_ids": [r["record_id"] for r in batch.records], "code": "S0010"}
    ]
    folder = next(outbox_of(settings).batches("failed")).path
    assert json.loads((folder / "reason.json").read_text())["code"] == "S0010"
    sink = SevisSink(settings, outbox_of(settings), pub)
    sink.step()
    assert sim.upload_count("UPLTEST0000001") == 2 and len(pub.requeued) == 1


def test_malformed_transaction_log_is_downloaded_again(sim, tmp_path):
    settings = settings_for(sim, tmp_path)
    put_batch(settings)
    sim.fail("download", "malformed", 1)
    pub = FakePublisher()
    sink = SevisSink(settings, outbox_of(settings), pub)
    sink.step()  # upload
    sink.step()  # download: malformed
    assert states(settings) == {"uploaded": ["UPLTEST0000001"]} and not pub.published
    assert "unusable results" in next(outbox_of(settings).batches("uploaded")).state_data()["last_download_error"]
    drive(sink, lambda: "processed" in states(settings))
    assert len(pub.published) == 3


def test_accepted_batch_is_never_posted_again_even_when_sevis_answers_s0031(sim, tmp_path):
    settings = settings_for(sim, tmp_path)
    put_batch(settings)
    pub = FakePublisher()
    sim.results_delay_s = 3600
    sink = SevisSink(settings, outbox_of(settings), pub)
    sink.step()
    sink.step()
    assert states(settings) == {"uploaded": ["UPLTEST0000001"]}
    assert next(outbox_of(settings).batches("uploaded")).state_data()["last_download_code"] == "S0030"
    sim.fail("download", "S0031", 1000)  # SEVIS "forgets" it for a while: S0031 after S0000 = not registered yet
    for _ in range(8):
        sink.step()
        time.sleep(0.02)
    assert states(settings) == {"uploaded": ["UPLTEST0000001"]} and not pub.published and not pub.requeued
    from sevisflow.sinks.sevis.uploader import describe

    assert "S0031 since" in describe(next(outbox_of(settings).batches("uploaded")))
    with sim.lock:
        sim.faults.clear()
    sim.results_delay_s = 0
    drive(sink, lambda: "processed" in states(settings))
    assert sim.post_count("UPLTEST0000001") == 1 and len(pub.published) == 3 and not pub.requeued


def test_missing_client_certificate_is_a_clear_error(sim, tmp_path):
    settings = settings_for(sim, tmp_path, client_cert="", client_key="")
    with pytest.raises(CertificateError, match=r"no client certificate configured.*client_cert"):
        SevisSink(settings, outbox_of(settings), FakePublisher())
    settings = settings_for(sim, tmp_path, client_cert=str(tmp_path / "nope.pem"))
    with pytest.raises(CertificateError, match="does not exist"):
        SevisSink(settings, outbox_of(settings), FakePublisher())


def test_wrong_client_certificate_is_a_clear_error_and_recoverable(sim, tmp_path):
    ca, ca_key = make_ca(tmp_path / "rogue", "rogue-ca")
    cert, key = make_leaf(tmp_path / "rogue", "client", ca, ca_key, server=False)
    settings = settings_for(sim, tmp_path, client_cert=str(cert), client_key=str(key))
    put_batch(settings)
    sink = SevisSink(settings, outbox_of(settings), FakePublisher())
    with pytest.raises(CertificateError, match="refused our TLS client certificate"):
        sink.step()
    assert states(settings) == {"sending": ["UPLTEST0000001"]}
    assert sim.upload_count() == 0
    good = settings_for(sim, tmp_path)
    pub = FakePublisher()
    drive(SevisSink(good, outbox_of(good), pub), lambda: "processed" in states(good))
    assert sim.upload_count("UPLTEST0000001") == 1


def test_untrusted_server_is_a_clear_error(sim, tmp_path):
    ca, _ = make_ca(tmp_path / "other", "other-ca")
    settings = settings_for(sim, tmp_path, ca_bundle=str(ca))
    with pytest.raises(CertificateError, match="not trusted"):
        SevisClient(settings.sevis).download(ORG_ID, DSO, "UPLTEST0000001")
