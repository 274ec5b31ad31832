"""The scale bench's per-hop breakdown (bench/scale/hops.py): the join of a record's times across topics and
the reading of the connector's commit times — pure parts, no Kafka."""

from __future__ import annotations

import orjson

from bench.scale.hops import HopLog, connector_commit_ms, hop_breakdown, lineage_commit_ms


def test_connector_commit_time_comes_from_end_markers_and_changes_not_from_begin():
    end = {"status": "END", "id": "771:2400", "event_count": 1, "ts_ms": 1_700_000_000_123}
    begin = {**end, "status": "BEGIN"}
    change = {"op": "u", "before": None, "after": {"person_id": 1}, "source": {"ts_ms": 1_700_000_000_456}, "ts_ms": 9}
    assert connector_commit_ms(orjson.dumps(end)) == 1_700_000_000_123
    assert connector_commit_ms(orjson.dumps({"schema": {}, "payload": end})) == 1_700_000_000_123
    assert connector_commit_ms(orjson.dumps(change)) == 1_700_000_000_456  # the commit, not the processing time
    assert connector_commit_ms(orjson.dumps(begin)) is None
    assert connector_commit_ms(b"not json") is None
    assert connector_commit_ms(None) is None


def test_lineage_commit_time_is_the_latest_commit_of_the_lineage():
    assert lineage_commit_ms([{"commit_ts_ms": 5}, {"commit_ts_ms": 9}, {"command_id": "c"}]) == 9
    assert lineage_commit_ms([{"command_id": "c"}]) is None
    assert lineage_commit_ms(None) is None


def test_the_log_keeps_the_first_output_per_commit_and_ignores_commits_before_the_window():
    log = HopLog(since_ms=1000)
    log.note("events", "S1", 1500, produced_ms=1600, seen_ms=1700)
    log.note("events", "S1", 1500, produced_ms=1800, seen_ms=1900)  # a later output for the same commit
    log.note("events", "S2", 999, produced_ms=1600, seen_ms=1700)  # committed before the steady phase
    log.note("events", "S3", None, produced_ms=1600, seen_ms=1700)
    log.note_source(1500, 1510)
    log.note_source(1500, 1530)  # the END marker after the changes: the latest counts
    log.note_source(1500, 1520)
    assert log.stages["events"] == {("S1", 1500): (1600, 1700)}
    assert log.source == {1500: 1530}


def test_hops_split_each_record_into_connector_wait_and_commit_and_add_up_to_the_total():
    log = HopLog(since_ms=0)
    for i, commit in enumerate((10_000, 20_000)):
        key = f"S{i}"
        log.note_source(commit, commit + 100)  # connector 0.1 s
        log.note("normalize", key, commit, commit + 600, commit + 1100)  # wait 0.5 s, commit 0.5 s
        log.note("events", key, commit, commit + 1300, commit + 1400)  # wait 0.2 s, commit 0.1 s
        log.note("batcher", key, commit, commit + 1700, commit + 2000 + i * 1000)  # wait 0.3 s, commit 0.3/1.3 s
    log.note("batcher", "S9", 30_000, 31_000, 32_000)  # never seen upstream: not joined
    out = hop_breakdown(log)
    assert out["joined_records"] == 2 and out["open_batch_records"] == 3
    h = out["hops"]
    assert h["connector"] == {"p50_s": 0.1, "p99_s": 0.1, "max_s": 0.1}
    assert h["normalize.wait"]["p50_s"] == 0.5 and h["normalize.commit"]["p50_s"] == 0.5
    assert h["normalize"]["p50_s"] == 1.0 and h["events"]["p50_s"] == 0.3
    assert h["batcher.commit"]["max_s"] == 1.3 and h["batcher"]["max_s"] == 1.6
    assert out["total"]["max_s"] == 3.0  # 0.1 + 1.0 + 0.3 + 1.6: the hops add up to SIS commit → open batch
    assert out["total"]["p50_s"] == 3.0  # of 2 values the upper, as the bench's own percentiles (index int(q·n))


def test_no_joined_record_gives_empty_hops():
    out = hop_breakdown(HopLog(since_ms=0))
    assert out["joined_records"] == 0 and out["hops"] == {} and out["total"] == {}
