"""`sevisflow run --skip sink-sevis` as an operator starts it: a real process on real Kafka and PostgreSQL,
without a SEVIS certificate, at the default log level.

It must say what runs and where /metrics is served, report the connector's snapshot (rows done of the
estimate) and a progress line with consumer lag per stage at a bounded rate, say when it is ready, serve
metrics that keep Prometheus's conventions with the stage names as labels, never print a student's
name, birth date or passport number, and drain on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson
import psycopg
import pytest

from sevisflow.app.runner import STAGES
from sevisflow.core.config import settings_from_mapping
from sevisflow.core.kafka_io import ensure_topics
from sevisflow.core.topics import all_topics
from sevisflow.deploy.local.stack import free_port
from sevisflow.deploy.sis.generator import generate_school
from sevisflow.deploy.sis.load import create_schema, load_school
from tests.helpers import REPO, count, http_get
from tests.metrics_conventions import problems
from tests.pipeline_support import pipeline_raw, write_config
from tests.school_replay import TODAY

pytestmark = pytest.mark.integration
PROGRESS_S = 2.0


def _lines(path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]


def _personal_values(dsn: str) -> set[str]:
    """The school's names and birth dates (the SIS holds no passport number): none may reach the output."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT last_name, first_name, birth_date::text FROM public.person").fetchall()
    return {v for row in rows for v in row if v and len(v) >= 5}


def test_run_without_sevis_upload_says_what_runs_reports_progress_and_serves_clean_metrics(
    kafka_stack, fresh_db, unique, tmp_path
):
    raw = pipeline_raw({"bootstrap_servers": kafka_stack.bootstrap}, fresh_db, unique, tmp_path)
    port = free_port()
    raw["metrics"] = {"port": port, "host": "127.0.0.1", "progress_interval_s": PROGRESS_S}
    config = write_config(raw, tmp_path / "sevisflow.toml")
    settings = settings_from_mapping(raw, env={})
    ensure_topics(settings.kafka, all_topics(settings))
    create_schema(fresh_db.dsn)
    load_school(fresh_db.dsn, generate_school(40, 0.5, 7, TODAY))
    personal = _personal_values(fresh_db.dsn)
    assert len(personal) > 40

    env = {k: v for k, v in os.environ.items() if not k.startswith("SEVISFLOW_")}
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sevisflow", "--config", str(config), "run", "--skip", "sink-sevis"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    began = time.monotonic()
    try:

        def wait(what: str, pred, timeout_s: float = 150.0):
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                assert proc.poll() is None, f"exited while waiting for {what}:\n{log_path.read_text()[-3000:]}"
                got = pred()
                if got:
                    return got
                time.sleep(0.5)
            raise AssertionError(f"timed out waiting for {what}:\n{log_path.read_text()[-3000:]}")

        wait("/ready", lambda: http_get(f"http://127.0.0.1:{port}/ready")[0] == 200)
        wait("the student views", lambda: count(settings, settings.topics.students) > 0)

        def lagged_progress() -> dict | None:
            lines = [x for x in _lines(log_path) if x["event"] == "progress"]
            last = lines[-1]["stages"] if lines else {}
            lagged = all("lag" in last.get(s, {}) for s in ("normalize", "events", "batcher"))
            return last if lagged and last["normalize"].get("records_in", 0) > 0 else None

        progress = wait("a progress line with normalize's records and every processor's lag", lagged_progress, 90)
        body = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.monotonic() - began
    text = log_path.read_text()
    lines = _lines(log_path)
    events = [x["event"] for x in lines]

    # start-up: what runs and where the metrics are, one line per stage with its role
    starting = next(x for x in lines if x["event"] == "pipeline.starting")
    assert starting["stages"] == ["connector", "normalize", "events", "batcher", "sink-xml"]
    assert starting["metrics"] == f"http://127.0.0.1:{port}/metrics"
    assert [x["stage"] for x in lines if x["event"] == "stage.started"] == starting["stages"]
    assert "pipeline.ready" in events
    # the snapshot: rows done of the estimate, and its end
    snap = [x for x in lines if x["event"] == "connector.snapshot_progress"]
    assert snap and snap[-1]["completed"] is True and snap[-1]["rows"] > 40 and snap[-1]["tables"] >= 5
    assert all("rows_estimate" in x and "tables_done" in x for x in snap)
    # progress per stage (records, rate, lag) at a bounded rate: not one line per record
    assert progress["connector"]["records_out"] > 40 and "records_in_per_s" in progress["normalize"]
    assert 1 <= events.count("progress") <= elapsed / PROGRESS_S + 2
    # no DEBUG/INFO chatter at the default level: only the start-up and progress lines and warnings
    assert all(x["level"] != "debug" for x in lines)
    assert all(x["logger"] == "sevisflow.status" for x in lines if x["level"] == "info")
    # metrics: conventions on the live scrape; the stages label by their names; process metrics
    assert problems(body, STAGES) == []
    for stage in ("connector", "normalize", "events", "batcher"):
        assert f'stage="{stage}"' in body, stage
    assert 'stage="sink-sevis"' not in body and "process_cpu_seconds_total" in body
    leaked = sorted(v for v in personal if v in text or v in body)
    assert not leaked, f"personal data in the output or metrics: {leaked[:5]}"
