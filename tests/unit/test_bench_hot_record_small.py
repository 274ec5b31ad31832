"""The hot-record bench (``python -m bench.batcher.hot_record``) at a tiny size, so it cannot rot: the working
tree and the code of the last commit side by side, in child processes, no Kafka.

Checks that every fifth of the run of both versions has its figures, and that the working tree's record stays
within the bound of ``RECORD_HISTORY`` (the bench's point); never how fast.
"""

from __future__ import annotations

import json

from bench.batcher.hot_record import main


def test_hot_record_bench_measures_both_versions_and_the_record_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setenv("SEVISFLOW_MYPYC_OPT", "0")  # HEAD's compiled parts: a quick build, shared (bench/common.py)
    out = tmp_path / "hot_record.json"
    assert main(["--changes", "1000", "--repeat", "1", "--compare-with", "HEAD", "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sorted(k for k in result if k not in ("changes", "repeat", "load_avg")) == ["before (HEAD)", "now"]
    for name in ("before (HEAD)", "now"):
        parts = result[name]["parts"]
        assert [p["after"] for p in parts] == [200, 400, 600, 800, 1000], name
        assert all(p["cpu_us_per_event"] > 0 and p["largest_state_value_kib"] > 0 for p in parts), name
    now = [p["largest_state_value_kib"] for p in result["now"]["parts"]]
    assert max(now) < 64  # KiB: bounded, whatever the number of changes
    assert now[-1] <= now[1] * 1.05  # no longer growing once the history is full
