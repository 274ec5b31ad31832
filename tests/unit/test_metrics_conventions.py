"""The metrics every stage exports keep Prometheus's conventions, and the dashboard asks only for those.

A registry is filled the way the stages fill theirs (every StageMetrics verb, the connector's families,
prometheus_client's process/platform/GC collectors), served by the real ObservabilityServer and scraped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from sevisflow.app.runner import STAGES
from sevisflow.connectors.postgres.metrics import ConnectorMetrics
from sevisflow.core.observability import ObservabilityServer, StageMetrics, register_runtime_collectors
from sevisflow.core.state import RocksState
from tests.helpers import REPO, http_get
from tests.metrics_conventions import problems, sample_names

DASHBOARD = REPO / "deploy" / "grafana" / "sevisflow-pipeline.json"


@pytest.fixture
def exercised_registry(tmp_path: Path) -> Iterator[CollectorRegistry]:
    """A registry holding every family the code exports, each with a sample; a stage's RocksDB state store is
    open meanwhile (its memory family is served while one is)."""
    store = RocksState(tmp_path, "sevisflow-normalize-sequencer", 1, 1, stage="normalize")
    store.apply({0: {b"k": b"v"}})
    try:
        yield _filled_registry()
    finally:
        store.close()


def _filled_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    register_runtime_collectors(registry)
    m = StageMetrics("normalize", registry)
    m.records_in("sis.public.person", 5)
    m.records_out("sevisflow.students", 3)
    m.error("kafka")
    m.dead_letter("unmapped_code")
    m.transaction("commit")
    m.batch(42)
    m.consumer_lag({("sis.public.person", 0): 7})
    b = StageMetrics("batcher", registry)
    b.worklist({"overdue": 1, "none": 2}, 90.5, 1, 7200.0)
    s = StageMetrics("sink-sevis", registry)
    s.remote_answer("upload", "S0000")
    s.sevis_results([{"status": "success", "error_code": None}, {"status": "failure", "error_code": "S1003"}])
    c = ConnectorMetrics("conn", "slot")
    try:
        c.events({"c": 2, "u": 1})
        c.snapshot_progress(10, {"rows": 10, "total_estimate": 20, "tables_done": 1, "tables": 2, "completed": False})
        c.commit_seen(1_700_000_000_000)
        c.confirmed(123)
        c.slot_lag(4096)
        c.restarted("TransientError")
        registry.register(c.registry)
    finally:
        c.close()
    return registry


def scrape(registry: CollectorRegistry) -> str:
    with ObservabilityServer(0, registry, host="127.0.0.1") as server:
        status, body = http_get(f"http://127.0.0.1:{server.port}/metrics")
    assert status == 200
    return body


def test_every_exported_metric_keeps_the_conventions(exercised_registry):
    body = scrape(exercised_registry)
    assert problems(body, STAGES) == []
    names = sample_names(body)
    # units in names; counters end in _total; the per-record SEVIS result counter; process metrics
    for want in (
        "sevisflow_connector_behind_source_seconds",
        "sevisflow_connector_slot_lag_bytes",
        "sevisflow_records_in_total",
        "sevisflow_sevis_results_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "python_info",
        "python_gc_collections_total",
        "sevisflow_state_store_memory_bytes",
    ):
        assert want in names, want
    assert 'sevisflow_sevis_results_total{code="S1003",result="rejected",stage="sink-sevis"} 1.0' in body
    assert 'sevisflow_sevis_results_total{code="none",result="accepted",stage="sink-sevis"} 1.0' in body
    assert not any(n.endswith("_created") for n in names)


def test_the_checker_catches_each_broken_convention():
    registry = CollectorRegistry()
    Counter("sevisflow_thing", "no stage label", registry=registry).inc()
    from prometheus_client import Gauge

    Gauge("sevisflow_wait_ms", "milliseconds", ["stage"], registry=registry).labels("normalize").set(1)
    Gauge("sevisflow_oldest_age", "a time without unit", ["stage"], registry=registry).labels("events").set(1)
    Gauge("sevisflow_other_stage", "unknown stage", ["stage"], registry=registry).labels("sevisflow-batcher").set(1)
    found = "\n".join(problems(scrape(registry), STAGES))
    assert "sevisflow_thing_total{}: no stage label" in found
    assert "sevisflow_wait_ms: use base units" in found
    assert "sevisflow_oldest_age: a time must be in seconds" in found
    assert "stage label 'sevisflow-batcher'" in found
    never = "# HELP sevisflow_x_seconds x\n# TYPE sevisflow_x_seconds gauge\n"
    assert problems(never) == ["sevisflow_x_seconds: declared but never sampled"]
    twice = 'sevisflow_y_bytes{stage="events"} 1\n'
    assert "declared 2 times" in "".join(problems(f"# TYPE sevisflow_y_bytes gauge\n{twice}" * 2))


def test_families_without_a_sample_are_not_served():
    registry = CollectorRegistry()
    StageMetrics("events", registry).records_in("t", 1)  # only records_in and last_progress have samples
    body = scrape(registry)
    assert "sevisflow_records_in_total" in body and "sevisflow_deadline_records" not in body
    assert "sevisflow_consumer_lag" not in body and problems(body, STAGES) == []


def test_a_garbled_sevis_error_code_cannot_become_a_label():
    registry = CollectorRegistry()
    StageMetrics("sink-sevis", registry).sevis_results(
        [{"status": "failure", "error_code": "Jane Doe 2001-02-03"}, {"status": "failure", "error_code": ""}]
    )
    body = scrape(registry)
    assert 'code="other",result="rejected"' in body and 'code="none",result="rejected"' in body
    assert "Jane" not in body


def _exprs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [e for k, v in node.items() for e in ([v] if k == "expr" else _exprs(v))]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


METRIC = re.compile(r"\b((?:sevisflow|process|python)_[a-z0-9_]+)\b")


def test_every_dashboard_query_names_a_metric_the_code_exports(exercised_registry):
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    exprs = _exprs(dashboard)
    assert len(exprs) >= 15
    exported = sample_names(scrape(exercised_registry))
    used: set[str] = set()
    for expr in exprs:
        names = METRIC.findall(expr)
        assert names, f"the query {expr!r} names no sevisflow/process metric"
        used.update(names)
        assert set(names) <= exported, f"{expr!r} asks for {sorted(set(names) - exported)}, which nothing exports"
    # what an operator watches is on it: lag, throughput, open-batch age, deadlines, rejections
    for want in (
        "sevisflow_consumer_lag",
        "sevisflow_records_in_total",
        "sevisflow_oldest_ready_record_age_seconds",
        "sevisflow_deadline_records",
        "sevisflow_rejections_open",
        "sevisflow_sevis_results_total",
        "sevisflow_connector_slot_lag_bytes",
    ):
        assert want in used, want
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and Path(DASHBOARD).stat().st_size < 200_000
