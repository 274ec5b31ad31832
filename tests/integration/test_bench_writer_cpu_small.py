"""The scale bench's load-generator bench (``python -m bench.scale.writer_cpu``) at a tiny size, so it cannot rot:
2 writers, 100 row changes per second for 2 s, each way once, on a PostgreSQL the bench starts itself.

Checks that both ways committed the row changes and that both CPU figures were measured, never how much.
"""

from __future__ import annotations

import json

import pytest

from bench.scale.writer_cpu import main

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_writer_cpu_bench_measures_both_ways(tmp_path):
    out = tmp_path / "writer_cpu.json"
    args = ["--rate", "100", "--writers", "2", "--seconds", "2", "--repeat", "1", "--json-out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    for way in ("alone", "begin_commit"):
        (run,) = result[way]["runs"]
        assert 150 <= run["ops"] <= 202, run  # 100 per second for 2 s, paced by the writers (+1 each at the end)
        assert run["writers_cpu_s"] > 0 and run["postgres_cpu_s"] > 0, run
        assert result[way]["writers_cpu_s_per_1000"] > 0 and result[way]["postgres_cpu_s_per_1000"] > 0
