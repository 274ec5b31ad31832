"""The vendor bench (``python -m bench.vendor``) at a tiny size, so it cannot rot: 3 schools in one SIS, two
sevis_events and two batcher processes on the session's real Kafka and PostgreSQL, instance b of each killed
with SIGKILL during the SIS load.

Checks that the run is complete and right — every Create in its own school's open batch, every close answered,
after the kill no event lost, none in two closed batches, none twice on sevis.events, and the events on the
topic exactly the ones the pure sevis_events derives from the student views — never how fast.
"""

from __future__ import annotations

import json

import pytest

from bench.vendor.__main__ import main
from testkit.settings import run_bench_on_stack

pytestmark = pytest.mark.integration


@pytest.mark.timeout(420)
def test_vendor_bench_small_loses_and_duplicates_nothing_across_a_kill(kafka_stack, pg_stack, tmp_path):
    args = ["--schools", "3", "--students", "150", "--baseline", "1", "--during", "1", "--partitions", "3"]
    args += ["--rate", "30", "--duration", "12", "--kill-after", "4", "--writers", "1", "--settle", "5"]
    args += ["--drain-max", "120", "--timeout", "180", "--close-timeout", "120", "--sample", "0.5"]
    rc, result = run_bench_on_stack(main, args, kafka_stack, pg_stack, tmp_path)
    why = json.dumps(result, indent=1, default=str)[:6000]
    assert rc == 0, why
    snap = result["snapshot"]
    assert snap["complete"] and snap["creates_expected"] > 0 and snap["creates_in_a_wrong_schools_batch"] == 0, why
    assert result["closes"]["onboarded_school"]["complete"], why
    kill = result["kill"]
    assert kill["killed"] == ["batcher-b", "events-b"], why
    assert kill["committed_row_changes"] > 0 and kill["events_on_topic"] > 0, why
    assert kill["lost"] == 0 and kill["events_in_two_closed_batches"] == 0 and kill["events_twice_on_topic"] == 0, why
    assert kill["in_a_wrong_schools_batch"] == 0, why
    assert kill["derived_not_on_topic"] == 0 and kill["on_topic_not_derived"] == 0, why
    assert kill["events_in_closed_batches"] + kill["events_still_open"] >= kill["events_on_topic"], why
    assert set(result["peak_rss_mib"]) == {"connector", "normalize", "events-a", "events-b", "batcher-a", "batcher-b"}
