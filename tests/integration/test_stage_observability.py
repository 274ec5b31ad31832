"""Every processor serves /metrics, /health and /ready when metrics.port is set."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from sevisflow.deploy.local.stack import free_port
from sevisflow.core.kafka_io import ensure_topics
from sevisflow.core.topics import all_topics
from tests.helpers import REPO, stage_env, http_get, make_settings

pytestmark = pytest.mark.integration




def test_batcher_process_serves_health_ready_and_metrics(kafka_stack, unique):
    settings = make_settings(kafka=kafka_stack, unique=unique)
    ensure_topics(settings.kafka, all_topics(settings))
    port = free_port()
    env = stage_env(settings, port)
    proc = subprocess.Popen([sys.executable, "-m", "sevisflow.app.cli.__main__", "process", "batcher",
                             "--instance", f"obs-{unique}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
        assert "sevisflow_transactions" in body and "sevisflow_consumer_lag" in body
        # the worklist gauges follow the open batch: one 2025 change (long overdue) and one Create (no limit)
        from sevisflow.processors.batcher.fixtures import event
        from tests.batcher_support import send_events

        send_events(settings, [event("S1", n=1), event("S2", "Create", n=2)])
        want = ('sevisflow_deadline_records{band="overdue"', 'sevisflow_deadline_records{band="none"')
        while time.monotonic() < deadline + 60:
            body = http_get(f"http://127.0.0.1:{port}/metrics")[1]
            lines = [x for x in body.splitlines() if x.startswith(want)]
            if len(lines) == 2 and all(x.endswith(" 1.0") for x in lines):
                break
            time.sleep(0.5)
        else:
            raise AssertionError([x for x in body.splitlines() if "deadline" in x or "oldest" in x])
        age = next(x for x in body.splitlines() if x.startswith("sevisflow_oldest_ready_record_age_seconds{"))
        assert float(age.rsplit(" ", 1)[1]) > 86400 * 30
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        assert proc.returncode == 0, proc.stderr.read()[-2000:]
        assert time.monotonic() - started < 45, "SIGTERM did not drain within the bound"
    finally:
        if proc.poll() is None:
            proc.kill()
