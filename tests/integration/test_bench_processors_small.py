"""The processors bench (``python -m bench.processors``) through a real Kafka at a tiny size, so it cannot rot.

Checks that both stages consumed the whole generated history, that every event the pure pipeline derives
from it reached ``sevis.events``, and that the CPU split was measured (the stages' own thread is part of the
process's CPU), never how fast.
"""

from __future__ import annotations

import pytest

from bench.processors.__main__ import pure, through_kafka

pytestmark = pytest.mark.integration

STUDENTS = 20


@pytest.mark.timeout(240)
def test_processors_bench_through_kafka_measures_the_whole_history(kafka_stack):
    expected = pure(STUDENTS)
    got = through_kafka(STUDENTS, kafka_stack.bootstrap)
    assert got["row_changes"] == expected["row_changes"] > 10 * STUDENTS
    assert got["events"] == expected["events"] > 0
    assert got["student_versions"] > 0 and got["normalize_inputs"] >= got["row_changes"]
    for stage in ("normalize", "events"):
        assert 0 < got[f"{stage}_main_thread_cpu_s"] <= got[f"{stage}_cpu_s"] + 0.05, got
