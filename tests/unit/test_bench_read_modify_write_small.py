"""The state read-modify-write bench (``python -m bench.state.read_modify_write``) at a tiny size, so it cannot
rot: every layer measured, every value read back as last written; never how fast."""

from __future__ import annotations

import json

from bench.state.read_modify_write import VARIANTS, main


def test_read_modify_write_bench_measures_every_layer_and_reads_back_what_it_wrote(tmp_path):
    out = tmp_path / "rmw.json"
    args = ["--keys", "300", "--value-bytes", "500", "--ops", "900", "--per-transaction", "50", "--repeat", "1"]
    assert main([*args, "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())["medians"]
    assert set(result) == set(VARIANTS) == {"memory", "rocksdb-none", "rocksdb-lz4", "rocksdb-snappy", "rocksdb-zstd"}
    for variant, figures in result.items():
        [run] = figures["samples"]
        assert run["variant"] == variant and run["wrong_values"] == 0 and run["us_per_op"] > 0, run
