"""The hot-student bench (``python -m bench.processors.hot_student``) at a tiny size, so it cannot rot: the
working tree and the code of the last commit side by side, in child processes, no Kafka.

Checks that every fifth of the run of both versions has its figures and that, in the working tree, the rows
past ``MAX_ENTRIES_PER_SECTION`` became dead letters; never how fast.
"""

from __future__ import annotations

import json

from bench.processors.hot_student import main
from sevisflow.processors.normalize.view import MAX_ENTRIES_PER_SECTION


def test_hot_student_bench_measures_both_versions_and_refuses_rows_past_the_bound(tmp_path, monkeypatch):
    monkeypatch.setenv("SEVISFLOW_MYPYC_OPT", "0")  # HEAD's compiled parts: a quick build, shared (bench/common.py)
    out = tmp_path / "hot_student.json"
    rows = MAX_ENTRIES_PER_SECTION + 50
    assert main(["--rows", str(rows), "--repeat", "1", "--compare-with", "HEAD", "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    for name in ("before (HEAD)", "now"):
        parts = result[name]["parts"]
        assert len(parts) == 5 and all(p["cpu_us_per_record"] > 0 for p in parts), name
    # the base row and MAX - 1 more fill the section: the other 51 rows are refused
    assert result["now"]["parts"][-1]["dead_letters"] == rows - (MAX_ENTRIES_PER_SECTION - 1)
