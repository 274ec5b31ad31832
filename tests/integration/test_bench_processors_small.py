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


@pytest.mark.timeout(240)
def test_the_warm_run_measures_everything_after_the_first_transaction_on_the_streaming_path(kafka_stack):
    """``--warm``: the stages go through the school's first transaction (BEGIN, the term row, END) unmeasured;
    every later row change and every event is measured, and normalize does not hold them (no start-up hold:
    each input record is handled once, as it comes, instead of held and released)."""
    expected = pure(STUDENTS)
    got = through_kafka(STUDENTS, kafka_stack.bootstrap, warm=True)
    assert got["warm"] is True
    assert got["row_changes"] == expected["row_changes"] - 1  # the term row went before the clock
    assert got["records"] == expected["records"] - 3
    assert got["events"] == expected["events"] > 0
    assert got["normalize_inputs"] == got["records"]  # every measured record handled once: nothing held


@pytest.mark.timeout(300)
def test_the_side_by_side_through_kafka_bench_measures_both_trees_on_one_broker(kafka_stack, tmp_path):
    from tests.helpers import bench_results

    out = bench_results(
        "bench.processors.kafka_side_by_side",
        tmp_path / "out.json",
        *("--compare-with", "HEAD", "--students", "5", "--repeat", "2", "--kafka", kafka_stack.bootstrap),
        timeout_s=280,
    )
    summary = out["summary"]
    assert sorted(summary) == ["before (HEAD)", "now"]
    expected = pure(5)
    for fig in summary.values():
        assert len(fig["samples"]) == 2
        for run in fig["samples"]:
            assert run["row_changes"] == expected["row_changes"] and run["events"] == expected["events"] > 0
            assert run["normalize_main_thread_cpu_s"] > 0 and run["events_main_thread_cpu_s"] > 0


@pytest.mark.timeout(240)
def test_the_fetch_order_bench_matches_every_handed_record_to_its_produce_position(kafka_stack):
    from bench.processors.fetch_order import handed_order, order_figures

    assert order_figures([0, 1, 2, 3]) == {"records": 4, "ascending_runs": 1, "median_distance": 0, "p90_distance": 0}
    assert order_figures([2, 3, 0, 1])["ascending_runs"] == 2
    assert order_figures([10, 30, 20]) == {"records": 3, "ascending_runs": 2, "median_distance": 1, "p90_distance": 1}
    expected = pure(STUDENTS)
    got = handed_order(STUDENTS, kafka_stack.bootstrap, 1)  # the window's path (0 is the loop as before)
    assert got["window_mb"] == 1
    assert got["records"] == expected["records"]  # each produced record handed exactly once (else a KeyError)
    assert got["ascending_runs"] >= 1 and got["normalize_thread_cpu_s"] > 0
    assert 0 < expected["row_changes"] <= got["rows_records"] < got["records"]
