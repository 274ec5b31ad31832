"""The big-open-batch bench (``python -m bench.batcher.big_open_batch``) at a tiny size, so it cannot rot:
both the working tree and the code of the last commit measured side by side, in child processes, no Kafka.

Checks that every repeat of both versions produced a figure (per event, and per gauge and tick pass), never
how fast (the figures are the bench's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from testkit.settings import REPO


def test_big_open_batch_bench_measures_both_versions_side_by_side(tmp_path):
    out = tmp_path / "big_open_batch.json"
    quick_build = {**os.environ, "SEVISFLOW_MYPYC_OPT": "0"}  # HEAD's compiled parts, built once (bench/common.py)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.batcher.big_open_batch",
            "--sizes",
            "30,60",
            "--events",
            "40",
            "--repeat",
            "2",
            "--compare-with",
            "HEAD",
            "--json-out",
            str(out),
        ],
        cwd=REPO,
        env=quick_build,
        check=True,
        capture_output=True,
        timeout=240,
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["size"] for r in rows] == [30, 60]
    for row in rows:
        versions = [k for k in row if k not in ("size", "events", "repeat", "backend")]
        assert sorted(versions) == ["before (HEAD)", "now"], row
        assert row["backend"] == "rocksdb"
        for name in versions:
            assert len(row[name]["samples"]) == 2 and all(v > 0 for v in row[name]["samples"]), row
            for periodic in ("gauges_ms_samples", "tick_ms_samples"):  # the periodic passes were timed too
                assert len(row[name][periodic]) == 2 and all(v > 0 for v in row[name][periodic]), row
