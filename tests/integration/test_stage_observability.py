"""Every processor serves /metrics, /health and /ready when metrics.port is set."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import orjson
import pytest

from sevisflow.app.runner import STAGES
from sevisflow.core.kafka_io import ensure_topics
from sevisflow.core.topics import all_topics
from sevisflow.deploy.local.stack import free_port
from tests.helpers import REPO, http_get, make_settings, stage_env
from tests.metrics_conventions import problems

pytestmark = pytest.mark.integration


def test_batcher_process_serves_health_ready_and_metrics(kafka_stack, unique):
    settings = make_settings(kafka=kafka_stack, unique=unique)
    ensure_topics(settings.kafka, all_topics(settings))
    port = free_port()
    env = stage_env(settings, port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sevisflow.app.cli.__main__", "process", "batcher", "--instance", f"obs-{unique}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        ready = (0, "")
        while time.monotonic() < deadline:
            ready = http_get(f"http://127.0.0.1:{port}/ready")
            if ready[0] == 200:
                break
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.5)
        assert ready[0] == 200, ready
        health = http_get(f"http://127.0.0.1:{port}/health")
        assert health[0] == 200, health
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        # Prometheus conventions on the live scrape: every family sampled, units in names, process metrics
        assert problems(body, STAGES) == [] and "process_resident_memory_bytes" in body
        # the worklist gauges follow the open batch: one 2025 change (long overdue) and one Create (no limit)
        from testkit.batcher import event
        from tests.batcher_support import send_events

        send_events(settings, [event("S1", n=1), event("S2", "Create", n=2)])
        want = ('sevisflow_deadline_records{band="overdue"', 'sevisflow_deadline_records{band="none"')
        while time.monotonic() < deadline + 60:
            body = http_get(f"http://127.0.0.1:{port}/metrics")[1]
            lines = [x for x in body.splitlines() if x.startswith(want)]
            # a family is served once it has a sample: transactions after the first commit, the lag once
            # the assigned partitions were sampled (every 15 s)
            sampled = all(f"{name}{{" in body for name in ("sevisflow_transactions_total", "sevisflow_consumer_lag"))
            if len(lines) == 2 and all(x.endswith(" 1.0") for x in lines) and sampled:
                break
            time.sleep(0.5)
        else:
            raise AssertionError([x for x in body.splitlines() if "deadline" in x or "oldest" in x])
        assert problems(body, STAGES) == [] and 'stage="batcher"' in body
        age = next(x for x in body.splitlines() if x.startswith("sevisflow_oldest_ready_record_age_seconds{"))
        assert float(age.rsplit(" ", 1)[1]) > 86400 * 30
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        err = proc.stderr.read()
        assert proc.returncode == 0, err[-2000:]
        assert time.monotonic() - started < 45, "SIGTERM did not drain within the bound"
        # at the default log level: where metrics are served, and what runs
        lines = [orjson.loads(x) for x in err.splitlines() if x.startswith("{")]
        starting = [x for x in lines if x["event"] == "pipeline.starting"]
        assert starting and starting[0]["metrics"] == f"http://127.0.0.1:{port}/metrics", err[-2000:]
        assert [x["stage"] for x in lines if x["event"] == "stage.started"] == ["batcher"]
        assert any(x["event"] == "pipeline.ready" for x in lines), err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
