"""The audit-at-scale bench (``python -m bench.audit.scale``) at a tiny size, so it cannot rot: 4 closed batches
on the session's real Kafka, ``verify <BatchID>`` from an empty state, from ``verify --all``'s checkpoints and
from the previous batch's checkpoint, and ``audit student``, each also as the CLI in a new process.

The bench itself asserts that every verdict is VERIFIED, that each way resumed from the checkpoint it
names and that every student timeline equals the one from the whole log; here it must run to the end
and print its tables. Never how fast (the figures are the bench's).
"""

from __future__ import annotations

import pytest

from bench.audit.scale import main

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_audit_scale_bench_small_runs_every_way_and_checks_every_verdict(kafka_stack, capsys):
    rc = main(["--batches", "4", "--size", "3", "--repeat", "1", "--kafka", kafka_stack.bootstrap])
    assert rc in (0, None)
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith(("| first (", "| middle (", "| last ("))]
    assert len(rows) == 6, printed[-3000:]  # three batches for verify, three students for audit student
    assert "verify --all (writes the checkpoints)" in printed and "audit student" in printed, printed[-3000:]
