"""sink-sevis serves /metrics, /health and /ready like the TransactionalLoop stages (real SEVIS simulator).

In-process: the stage's counters by SEVIS code, a hung upload failing /health and /ready before
the first pass. As a process (`sevisflow sink sevis` on real Kafka): the endpoints on metrics.port.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sevisflow.app.runner import STAGES
from sevisflow.core.kafka_io import ensure_topics, read_topic
from sevisflow.core.observability import serve_for
from sevisflow.core.topics import pipeline_topics
from sevisflow.deploy.local.stack import free_port
from sevisflow.sinks.sevis.client import SevisClient
from sevisflow.sinks.sevis.stage import run as run_sevis
from sevisflow.sinks.xml.render import ClosedBatch, render_batch
from sevisflow.sinks.xml.xsd import load_schema
from testkit.xml_samples import DSO, ORG_ID, create_record
from tests.helpers import REPO, XSD_DIR, http_get, make_settings, stage_env
from tests.metrics_conventions import problems
from tests.upload_support import FakePublisher, put_batch, settings_for, sim_sevis, states

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(body: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset({"stage": "sink-sevis", **labels}.items())), 0.0)


def _wait_for(cond, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sink_sevis_counts_codes_and_a_hung_upload_fails_health(sim, tmp_path):
    settings = settings_for(sim, tmp_path, http_timeout_s=30.0).replace(metrics={"stall_after_s": 1.0})
    put_batch(settings, "OBSGOOD0000001")  # 3 records: 2 succeed, 1 fails with S1003 → process S0020
    put_batch(settings, "OBSDUPE0000001")
    # the second BatchID is already used at SEVIS → S0010, the batch fails and its 3 records are re-queued
    other = ClosedBatch(ORG_ID, "OBSDUPE0000001", DSO, 0, (create_record(99),))
    assert (
        SevisClient(settings.sevis)
        .upload(ORG_ID, DSO, "OBSDUPE0000001", "x.xml", render_batch(other, load_schema(XSD_DIR)))
        .code
        == "S0000"
    )
    sim.fail("upload", "slow", 1, delay_s=6.0)  # the first upload of the stage hangs for 6 s
    sim.fail("download", "http500", 1)  # the first results download fails: counted as an error, retried

    server = serve_for(free_port(), "127.0.0.1")
    base = f"http://127.0.0.1:{server.port}"
    before = _samples(http_get(f"{base}/metrics")[1])
    stop = threading.Event()
    pub = FakePublisher()
    errors: list[BaseException] = []

    def stage() -> None:
        try:
            run_sevis(settings, stop, tick_s=0.05, publisher=pub)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=stage, daemon=True)
    thread.start()
    try:
        # while the upload hangs: /health fails once it hangs past stall_after_s; not ready before a first pass
        def hung() -> tuple[tuple[int, str], tuple[int, str]] | None:
            ready = http_get(f"{base}/ready")
            health = http_get(f"{base}/health")
            return (ready, health) if health[0] == 503 else None

        ready, health = _wait_for(hung, 20, "/health to report the hung upload")
        assert health[1].startswith("sink-sevis: loop stalled for"), health
        assert ready == (503, "sink-sevis: first pass over the outbox not done yet\n")

        # the answer comes: healthy again, ready, both batches handled
        _wait_for(
            lambda: states(settings) == {"processed": ["OBSGOOD0000001"], "failed": ["OBSDUPE0000001"]},
            60,
            "both batches to be handled",
        )
        _wait_for(lambda: http_get(f"{base}/ready")[0] == 200, 20, "/ready")
        assert http_get(f"{base}/health") == (200, "ok\n")
        status, body = http_get(f"{base}/metrics")
        assert status == 200 and not errors
    finally:
        stop.set()
        thread.join(30)
        server.stop()
    assert not thread.is_alive() and not errors

    after = _samples(body)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    answers = "sevisflow_remote_answers_total"
    assert delta(answers, op="upload", code="S0000") == 1
    assert delta(answers, op="upload", code="S0010") == 1
    assert delta(answers, op="download", code="S0000") == 1  # the results zip
    assert delta(answers, op="process", code="S0020") == 1
    assert delta("sevisflow_records_in_total", topic="outbox") == 6
    assert delta("sevisflow_records_out_total", topic=settings.topics.results) == 3
    assert delta("sevisflow_records_out_total", topic=settings.topics.commands) == 3
    assert delta("sevisflow_batch_records_count", kind="upload") == 1
    assert delta("sevisflow_errors_total", kind="sevis_http") == 1
    # per record: the good batch's 2 accepted and 1 rejected with SEVIS's code
    assert delta("sevisflow_sevis_results_total", result="accepted", code="none") == 2
    assert delta("sevisflow_sevis_results_total", result="rejected", code="S1003") == 1
    assert [r["error_code"] for r in pub.published].count("S1003") == 1 and len(pub.requeued) == 1
    # labels are stage names, codes and topics: nothing of a record reaches the metrics
    record_values = {
        str(v) for r in pub.published for k, v in r.items() if k in ("student_key", "sevis_id", "request_id") and v
    }
    assert record_values and not any(v in body for v in record_values)
    # the stage's probe is gone once it stopped (a restarted stage registers it again)
    from sevisflow.core.observability import _PROBES

    assert "sink-sevis" not in _PROBES


def test_sink_sevis_process_serves_health_ready_and_metrics(kafka_stack, unique, sim, tmp_path):
    settings = make_settings(
        kafka_stack,
        unique=unique,
        sevis=sim_sevis(sim, tmp_path, poll_interval_s=0.2, retry_base_s=0.1, retry_max_s=0.5),
    )
    ensure_topics(settings.kafka, pipeline_topics(settings))
    batch_id = f"OP{unique:0>12}"
    put_batch(settings, batch_id)
    port = free_port()
    env = stage_env(settings, port)
    env.update(
        {
            **{
                f"SEVISFLOW_SEVIS_{k.upper()}": str(getattr(settings.sevis, k))
                for k in (
                    "xsd_dir",
                    "upload_url",
                    "download_url",
                    "client_cert",
                    "client_key",
                    "ca_bundle",
                    "outbox_dir",
                    "quarantine_dir",
                    "poll_interval_s",
                    "retry_base_s",
                    "retry_max_s",
                )
            },
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sevisflow.app.cli.__main__", "sink", "sevis"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            return http_get(f"{base}/ready")[0] == 200

        _wait_for(ready, 60, "/ready")
        assert http_get(f"{base}/health") == (200, "ok\n")

        def processed() -> Samples | None:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            s = _samples(http_get(f"{base}/metrics")[1])
            return s if _value(s, "sevisflow_remote_answers_total", op="process", code="S0020") == 1 else None

        samples = _wait_for(processed, 60, "the results to be processed")
        assert _value(samples, "sevisflow_remote_answers_total", op="upload", code="S0000") == 1
        assert _value(samples, "sevisflow_records_in_total", topic="outbox") == 3
        assert _value(samples, "sevisflow_records_out_total", topic=settings.topics.results) == 3
        assert _value(samples, "sevisflow_sevis_results_total", result="rejected", code="S1003") == 1
        assert problems(http_get(f"{base}/metrics")[1], STAGES) == []
        results = [m for m in read_topic(settings.kafka, settings.topics.results) if m.value()]
        assert len(results) == 3
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        assert proc.returncode == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
