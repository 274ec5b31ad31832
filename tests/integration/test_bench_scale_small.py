"""The scale bench (``python -m bench.scale``) at a tiny size, so it cannot rot: 300 students, 20 s of steady
SIS changes at 20 per second, each stage in its own process on the session's real Kafka and PostgreSQL.

Checks that the result is complete and right — every student view and every Create the pure pipeline
derives reached the topics and the open batch, none unexpected, latencies recorded for the steady
changes, every process's memory sampled (its RSS, and its state stores' by RocksDB's accounting) — never how fast (the targets are the bench's, not CI's).
"""

from __future__ import annotations

import json
import math

import pytest

from bench.scale.__main__ import main
from testkit.settings import run_bench_on_stack

pytestmark = pytest.mark.integration

STAGES = {"connector", "normalize", "events", "batcher"}


@pytest.mark.timeout(300)
def test_scale_bench_small_is_complete_and_measures_what_it_claims(kafka_stack, pg_stack, tmp_path):
    args = ["--students", "300", "--rate", "20", "--duration", "20", "--activity", "100", "--modes", "separate"]
    args += ["--steady-in", "separate", "--settle", "3", "--timeout", "180", "--sample", "0.5"]
    rc, result = run_bench_on_stack(main, args, kafka_stack, pg_stack, tmp_path)
    run = result["modes"]["separate"]
    why = json.dumps({k: v for k, v in run.items() if k not in ("rss_series", "state_store_series")}, indent=1)[:6000]
    assert rc == 0, why

    snap = run["snapshot"]
    assert snap["complete"] and not snap["failure"], why
    assert snap["views_expected"] == 300 and snap["views_seen"] == 300, why
    assert snap["creates_expected"] > 0, why  # the pure pipeline's oracle is not empty: the check can fail
    assert snap["creates_in_open_batch"] == snap["creates_expected"], why
    assert snap["creates_unexpected"] == 0, why
    assert snap["open_batch_records"] >= snap["creates_expected"], why
    assert set(snap["seconds"]) == {"views", "create_events", "open_batch"}, why
    assert set(snap["peak_rss_mib"]) == STAGES and all(v > 20 for v in snap["peak_rss_mib"].values()), why
    assert set(snap["cpu_s"]) == STAGES and all(v > 0 for v in snap["cpu_s"].values()), why

    steady = run["steady"]
    assert not steady["driver_error"] and not steady["failure"], why
    assert steady["missed_ops"] == 0, why
    assert steady["kinds"].get("contact_change", 0) > 0 and len(steady["kinds"]) > 1, why  # activity, then e-mails
    assert steady["committed_row_changes"] >= 200, why  # 20/s for 20 s, paced (≥ half of it)
    assert steady["records"] > 0, why  # SIS changes reached the open batch …
    assert 0 <= steady["p50_ms"] <= steady["p99_ms"] <= steady["max_ms"], why  # … each with its latency
    assert not math.isnan(steady["p99_ms"]), why
    assert steady["behind_at_end_s"] is not None and steady["behind_at_end_s"] >= 0, why
    for name in STAGES:  # memory over the steady window, per process
        window = steady["rss"][name]
        assert window["samples"] >= 10 and window["max_mib"] >= window["start_mib"] > 20, why
        assert len(run["rss_series"][name]) >= 20, why
    for name in STAGES - {"connector"}:  # and what of it their RocksDB stores hold, read from their /metrics
        window = steady["state_store_mib"][name]
        assert window["samples"] >= 2 and 0 < window["start_mib"] <= window["max_mib"] < 200, why

    hops = steady["hops"]  # where the latency goes: every hop measured on records joined across all topics
    assert not hops["source_reader_error"] and hops["joined_records"] > 0, why
    assert hops["joined_records"] <= hops["open_batch_records"], why
    for name in ("connector", "normalize", "events", "batcher", "normalize.wait", "normalize.commit", "batcher.commit"):
        h = hops["hops"][name]
        assert 0 <= h["p50_s"] <= h["p99_s"] <= h["max_s"], (name, why)
    # the hops of one record add up to its latency, which is the bench's own span (SIS commit → open batch)
    assert 0 < hops["total"]["p50_s"] <= hops["total"]["max_s"] <= steady["max_ms"] / 1000 + 0.001, why
    assert hops["bookkeeping_cpu_s"] >= 0 and hops["source_reader_cpu_s"] > 0, why
    assert steady["load_avg_start"] and steady["cpu_s_at_start"].keys() == STAGES, why
    assert steady["cores_during_load"].keys() == STAGES and 0 < steady["box_busy_during_load"] <= 1, why
