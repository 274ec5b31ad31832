"""The observability server: /metrics exposition, /health and /ready verdicts, lag helpers."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sevisflow.app import runner
from sevisflow.core.observability import (
    STAGE_METRICS_PORTS,
    ConsumerLagSampler,
    Heartbeat,
    ObservabilityServer,
    StageMetrics,
    compute_lag,
)


def _get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_endpoint_exposes_stage_metrics():
    registry = CollectorRegistry()
    m = StageMetrics("normalize", registry)
    other = StageMetrics("batcher", registry)  # two stages of one process share the families
    m.records_in("sis.public.person", 5)
    m.records_out("sevisflow.students", 3)
    m.error("kafka")
    m.dead_letter("unmapped_code", 2)
    m.transaction("commit")
    m.batch(42)
    m.consumer_lag({("sis.public.person", 0): 7, ("sis.public.person", 1): 0})
    other.batch(250, kind="sevis_document")
    sink = StageMetrics("sink-sevis", registry)
    sink.remote_answer("upload", "S0010")
    sink.remote_answer("upload", "S0010")
    with ObservabilityServer(0, registry, host="127.0.0.1") as server:
        status, ctype, body = _get(server.port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    s = _samples(body)
    assert s[("sevisflow_records_in_total", (("stage", "normalize"), ("topic", "sis.public.person")))] == 5
    assert s[("sevisflow_records_out_total", (("stage", "normalize"), ("topic", "sevisflow.students")))] == 3
    assert s[("sevisflow_errors_total", (("kind", "kafka"), ("stage", "normalize")))] == 1
    assert s[("sevisflow_dlq_records_total", (("code", "unmapped_code"), ("stage", "normalize")))] == 2
    assert s[("sevisflow_transactions_total", (("outcome", "commit"), ("stage", "normalize")))] == 1
    assert (
        s[("sevisflow_consumer_lag", (("partition", "0"), ("stage", "normalize"), ("topic", "sis.public.person")))] == 7
    )
    # the slot's lag is the connector's own gauge (sevisflow_connector_slot_lag_bytes): no second family
    assert not any(name == "sevisflow_replication_slot_lag_bytes" for name, _ in s)
    assert s[("sevisflow_batch_records_count", (("kind", "sevis_document"), ("stage", "batcher")))] == 1
    assert s[("sevisflow_batch_records_bucket", (("kind", "poll"), ("le", "50.0"), ("stage", "normalize")))] == 1
    assert s[("sevisflow_remote_answers_total", (("code", "S0010"), ("op", "upload"), ("stage", "sink-sevis")))] == 2


def test_ready_follows_its_callable_and_health_its_heartbeat():
    state = {"ready": False}
    now = [100.0]
    beat = Heartbeat(clock=lambda: now[0])

    def ready():
        return (True, "ok") if state["ready"] else (False, "restoring state")

    with ObservabilityServer(
        0, CollectorRegistry(), ready=ready, health=lambda: beat.alive(30), host="127.0.0.1"
    ) as server:
        assert _get(server.port, "/ready")[0::2] == (503, "restoring state\n")
        assert _get(server.port, "/health")[0] == 200
        state["ready"] = True
        assert _get(server.port, "/ready")[0::2] == (200, "ok\n")
        now[0] += 31  # the main loop stopped beating: liveness fails, Kubernetes restarts the pod
        assert _get(server.port, "/health")[0] == 503
        beat.beat()
        assert _get(server.port, "/health")[0] == 200
        assert _get(server.port, "/nope")[0] == 404


def test_a_failing_check_is_not_ready_and_shows_no_message():
    def boom():
        raise RuntimeError("student Jane Doe born 2001-02-03")  # a message that must never be served

    with ObservabilityServer(0, CollectorRegistry(), ready=boom, host="127.0.0.1") as server:
        status, _, body = _get(server.port, "/ready")
    assert status == 503
    assert "RuntimeError" in body and "Jane" not in body


def test_server_answers_concurrent_probes_and_stops_cleanly():
    server = ObservabilityServer(0, CollectorRegistry(), host="127.0.0.1").start()
    port = server.port
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(_get(port, "/health")[0])) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    server.stop()
    assert results == [200] * 20
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)


def test_compute_lag():
    assert compute_lag({("t", 0): 10, ("t", 1): -1001}, {("t", 0): 15, ("t", 1): 4, ("t", 2): 0}) == {
        ("t", 0): 5,
        ("t", 1): 4,
        ("t", 2): 0,
    }


@dataclass
class _TP:
    topic: str
    partition: int
    offset: int = -1001


class _FakeConsumer:
    def __init__(self) -> None:
        self.assigned = [_TP("in", 0), _TP("in", 1)]
        self.positions = {0: 3, 1: 10}
        self.highs = {0: 8, 1: 10}

    def assignment(self):
        return list(self.assigned)

    def position(self, tps):
        return [_TP(tp.topic, tp.partition, self.positions[tp.partition]) for tp in tps]

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        assert cached, "the sampler must not query the broker from the processing loop"
        return 0, self.highs[tp.partition]


def test_lag_sampler_samples_at_most_every_interval_and_forgets_revoked_partitions():
    registry = CollectorRegistry()
    metrics = StageMetrics("events", registry)
    now = [0.0]
    consumer = _FakeConsumer()
    sampler = ConsumerLagSampler(consumer, metrics, interval_s=10, clock=lambda: now[0])
    assert sampler.maybe_sample() == {("in", 0): 5, ("in", 1): 0}
    assert sampler.maybe_sample() is None
    now[0] = 11
    consumer.assigned = [_TP("in", 1)]
    assert sampler.maybe_sample() == {("in", 1): 0}
    lag = registry.get_sample_value("sevisflow_consumer_lag", {"stage": "events", "topic": "in", "partition": "0"})
    assert lag is None


def test_records_held_back_by_the_stage_count_as_lag_although_the_consumer_is_past_them():
    metrics = StageMetrics("normalize", CollectorRegistry())
    consumer = _FakeConsumer()
    held = {("in", 1): 4, ("gone", 0): 9}  # partition 1 is at its high watermark, 4 of its records not handled yet
    sampler = ConsumerLagSampler(consumer, metrics, held=lambda: held)
    assert sampler.maybe_sample() == {("in", 0): 5, ("in", 1): 4}


def test_every_stage_has_a_distinct_metrics_port():
    assert set(runner.STAGES) <= set(STAGE_METRICS_PORTS)
    assert len(set(STAGE_METRICS_PORTS.values())) == len(STAGE_METRICS_PORTS)


def test_process_endpoint_is_not_ready_until_a_stage_registers_and_ready_once_it_is(monkeypatch):
    from sevisflow.core import observability
    from sevisflow.core.observability import register_probe, serve_for, unregister_probe

    monkeypatch.setattr(observability, "_PROBES", {})  # this process's probes only, not other tests' stages
    server = serve_for(free_port_for_test(), "127.0.0.1")
    assert server is not None
    try:
        status, _, body = _get(server.port, "/ready")
        assert (status, body) == (503, "no stage has started yet\n")
        assert _get(server.port, "/health")[0] == 200, "alive even before a stage registers"
        register_probe("test-stage:1", lambda: (True, "ok"), lambda: (True, "ok"))
        assert _get(server.port, "/ready")[0::2] == (200, "ok\n")
    finally:
        unregister_probe("test-stage:1")
        server.stop()


def free_port_for_test() -> int:
    from sevisflow.deploy.local.stack import free_port

    return free_port()
