"""The connector bench (``python -m bench.connector``) at a tiny size, so it cannot rot: 2,000 preloaded rows and
2,000 streamed changes, one repeat, the C decoder, on the bench's own PostgreSQL + Kafka (it starts them itself:
it copies replication slots and reads the broker's log folder, so it cannot share the session's stack).

Checks that every kind of run happened and measured what the README's tables report — the raw drains with both
read loops, the connector streaming every change to Kafka, the snapshot every row — never how fast.
"""

from __future__ import annotations

import json

import pytest

from bench.connector.__main__ import main

pytestmark = pytest.mark.integration

CHANGES = ROWS = 2000


@pytest.mark.timeout(420)
def test_connector_bench_small_runs_every_kind_and_reports_its_figures(tmp_path):
    out = tmp_path / "connector.json"
    args = ["--changes", str(CHANGES), "--rows", str(ROWS), "--repeat", "1", "--no-debezium", "--decoder", "c"]
    assert main([*args, "--results", str(out)]) == 0
    result = json.loads(out.read_text())
    runs = result["runs"]
    why = json.dumps(runs, indent=1)[:6000]

    assert result["workload"]["changes"] == CHANGES, why
    for drain in ("raw", "raw_python_receive"):  # the yardstick, with the C and with the Python read loop
        (run,) = runs[drain]
        assert run["messages"] >= CHANGES and run["seconds"] > 0 and run["cpu_s"] > 0, why

    (stream,) = runs["connector"]
    assert stream["events"] == CHANGES, why  # every change produced and acknowledged, none twice
    assert stream["decoder"] == "c" and stream["receive"] == "c", why  # the shipped paths are the measured ones
    assert 0 < stream["seconds"] <= stream["seconds_confirmed"], why  # confirmed in PostgreSQL after Kafka's ack
    assert stream["task_thread_cpu_s"] > 0 and stream["read_batch_cpu_s"] > 0 and stream["topic_bytes"] > 0, why

    (snap,) = runs["snapshot"]
    assert snap["rows"] == ROWS and snap["phase_s"] > 0 and snap["cpu_s"] > 0, why
