"""The closed-batches bench (``python -m bench.batcher.closed_batches``) at a tiny size, so it cannot rot: the
working tree and the code of the last commit measured side by side, in child processes, no Kafka.

Checks that every repeat of both versions closed, answered and measured what it says, never how fast or how
big (the figures are the bench's).
"""

from __future__ import annotations

from tests.helpers import side_by_side_runs


def test_closed_batches_bench_measures_both_versions_side_by_side(tmp_path):
    runs = side_by_side_runs(
        "bench.batcher.closed_batches", tmp_path / "out.json", "--closes", "3", "--per-close", "260"
    )
    for run in runs:
        assert run["kept_batches"] == 6, "260 records make two documents (250 updates at most each)"
        assert run["results"] == 3 * 260
        assert run["max_rss_mib"] > 0 and run["cpu_ms_per_close"] > 0 and run["cpu_us_per_result"] > 0
