"""The normalize steady-state bench (``python -m bench.processors.steady``) at a tiny size, so it cannot rot: the
working tree and the code of the last commit measured side by side, in child processes, no Kafka.

Checks that both versions ran the changes and counted the state traffic, never how fast (the figures are the
bench's).
"""

from __future__ import annotations

from tests.helpers import side_by_side_runs


def test_steady_bench_measures_both_versions_side_by_side(tmp_path):
    runs = side_by_side_runs("bench.processors.steady", tmp_path / "out.json", "--students", "40", "--changes", "60")
    for run in runs:
        assert run["changes"] == 60 and run["cpu_us_per_change"] > 0
        # a change reads its state (the transaction buffer's first read reaches the store) and writes some
        assert run["state_reads_per_change"] > 5 and run["rocksdb_reads_per_change"] >= 1
        assert run["state_writes_per_change"] > 0
