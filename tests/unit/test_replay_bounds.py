"""Replay without Kafka: bounds, offset resolution, decoding and the student filter."""

from __future__ import annotations

import os
import stat

import orjson
import pytest

from sevisflow.app.audit.decode import decode_record, decode_value, iso_ms
from sevisflow.app.audit.replay import (
    Bound,
    StudentMatcher,
    jsonl_line,
    open_private,
    parse_bound,
    parse_time,
    resolve_range,
    table_rows,
)
from sevisflow.core.errors import SevisflowError
from sevisflow.core.serde import registry
from testkit.audit_scenario import BATCH_1, OTHER, STUDENT, decoded_scenario


def test_parse_bound_forms():
    assert parse_bound(None, "beginning") == Bound("beginning")
    assert parse_bound(None, "end") == Bound("end")
    assert parse_bound("15", "end") == Bound("offset", offset=15)
    assert parse_bound("0:10,2:7", "end").partitions == {0: 10, 2: 7}
    assert parse_bound("2024-06-19", "end") == Bound("time", time_ms=1718755200000)
    assert parse_bound("2024-06-19T10:00:00Z", "end").time_ms == 1718791200000
    assert parse_bound("2024-06-19T12:00:00+02:00", "end").time_ms == 1718791200000
    assert parse_time("2024-06-19T10:00") == 1718791200000  # no zone = UTC
    with pytest.raises(SevisflowError, match="not a time"):
        parse_bound("yesterday-ish", "end")


def test_resolve_range_offsets_times_and_partitions():
    marks = {0: (0, 10), 1: (5, 8), 2: (0, 0)}
    times = {(0, 1000): 4, (1, 1000): 8, (0, 2000): 9, (1, 2000): 8}
    look = lambda p, ms: times[(p, ms)]  # noqa: E731
    assert resolve_range([0, 1, 2], marks, Bound("beginning"), Bound("end"), look) == {0: (0, 10), 1: (5, 8)}
    # an offset below the low watermark starts at the low watermark; empty partitions are left out
    assert resolve_range([0, 1, 2], marks, Bound("offset", offset=3), Bound("end"), look) == {0: (3, 10), 1: (5, 8)}
    assert resolve_range([0, 1], marks, Bound("time", time_ms=1000), Bound("time", time_ms=2000), look) == {0: (4, 9)}
    assert resolve_range([0, 1], marks, Bound("partitions", partitions={1: 6}), Bound("end"), look) == {1: (6, 8)}
    assert resolve_range([0, 1], marks, Bound("beginning"), Bound("partitions", partitions={0: 2}), look) == {
        0: (0, 2),
        1: (5, 8),
    }


def test_decode_avro_expands_json_fields_and_keeps_value_hash():
    recs = decoded_scenario()
    closed = next(d for d in recs["sevis.batches"] if d.value["type"] == "closed")
    assert closed.format == "avro" and closed.schema == "sevisflow.batches.BatchEvent"
    assert isinstance(closed.value["records"], list) and "records_json" not in closed.value
    assert closed.value["batch_id"] == BATCH_1
    assert len(closed.value_sha256) == 64
    line = orjson.loads(jsonl_line(closed))
    assert {"topic", "partition", "offset", "timestamp", "key", "value", "value_sha256"} <= set(line)
    assert line["key"] == "ZZZ214F99999000"  # an OrgID key is text, not JSON


def test_decode_debezium_with_and_without_schema_wrapper_and_tombstone():
    env = {"before": None, "after": {"person_id": 1}, "op": "c", "source": {"lsn": 5}, "ts_ms": 1}
    assert decode_value(orjson.dumps(env))[:2] == ("debezium", env)
    wrapped = {"schema": {"type": "struct"}, "payload": env}
    assert decode_value(orjson.dumps(wrapped))[:2] == ("debezium", env)
    key = {"schema": {"type": "struct"}, "payload": {"person_id": 1}}
    d = decode_record("sis.public.person", 0, 3, orjson.dumps(key), None, (1, 5))
    assert d.format == "tombstone" and d.key == {"person_id": 1} and d.value is None
    assert decode_value(b"\xff\xfe")[0] == "base64"


def test_decode_dead_letter_bytes_fields_recursively():
    env = {"before": None, "after": {"person_id": 9}, "op": "c", "source": {}, "ts_ms": 1}
    dl = registry().encode(
        "sevisflow.dlq.DeadLetter",
        {
            "stage": "normalize",
            "reason": "bad",
            "code": "bad_code",
            "student_key": None,
            "field": None,
            "source_topic": "sis.public.person",
            "source_partition": 0,
            "source_offset": 1,
            "source_key": b'{"person_id": 9}',
            "source_value": orjson.dumps(env),
            "at_ms": 5,
        },
    )
    fmt, v, _ = decode_value(dl)
    assert fmt == "avro"
    assert v["source_value"] == {"format": "debezium", "value": env}
    assert v["source_key"]["value"] == {"person_id": 9}
    orjson.loads(jsonl_line(decode_record("sevisflow.dlq", 0, 0, None, dl)))  # serialisable


def test_student_filter_per_topic_kind():
    recs = decoded_scenario()
    m = StudentMatcher(STUDENT)
    for d in recs["sis.public.person"]:
        m.learn(d)
    assert m.sis_ids == {"42"}
    assert [d.offset for d in recs["sis.public.person"] if m.matches(d)] == [0, 2, 3]
    # child tables match through the person id learned from the person topic
    assert [d.offset for d in recs["sis.public.address"] if m.matches(d)] == [0]
    assert [d.offset for d in recs["sis.public.enrollment"] if m.matches(d)] == []
    assert [d.value["event_id"] for d in recs["sevis.events"] if m.matches(d)] == ["e-208", "e-308", "e-408"]
    assert len([d for d in recs["sevis.results"] if m.matches(d)]) == 2
    # a numeric --student is the SIS person id itself
    assert [d.offset for d in recs["sis.public.enrollment"] if StudentMatcher("43").matches(d)] == [0]


def test_closed_batch_is_narrowed_to_the_student():
    recs = decoded_scenario()
    closed = next(d for d in recs["sevis.batches"] if d.value["type"] == "closed")
    m = StudentMatcher(OTHER)
    assert m.matches(closed)
    narrowed = m.narrow(closed)
    assert [r["student_key"] for r in narrowed.value["records"]] == [OTHER]
    assert narrowed.value["narrowed_to_student"] == {"kept": 1, "of": 2}
    assert STUDENT not in jsonl_line(narrowed).decode()


def test_table_rows_carry_no_row_values():
    recs = decoded_scenario()
    rows = table_rows(recs["sis.public.person"])
    text = repr(rows)
    assert "Example" not in text and "Ana" not in text
    assert rows[2][4] == "u public.person" and rows[2][5] == STUDENT


def test_open_private_creates_0600(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old")
    os.chmod(path, 0o644)
    with open_private(path) as f:
        f.write(b"x\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"x\n"


def test_iso_ms():
    assert iso_ms(1718791200123) == "2024-06-19T10:00:00.123Z"
    assert iso_ms(None) is None and iso_ms(-1) is None
