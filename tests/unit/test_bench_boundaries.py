"""The Avro/JSON boundaries bench (``python -m bench.processors.boundaries``) at a tiny size, so it cannot rot.

Checks the shape and sanity of the result and that every boundary decodes back what it encoded — never how
fast (the figures are the bench's, in bench/README.md).
"""

from __future__ import annotations

import orjson
import pytest

from bench.processors.boundaries import EVENT_SCHEMA, STUDENT_SCHEMA, collect, run, table
from sevisflow.core.serde import registry
from sevisflow.processors.normalize.changes import parse_change

AS_BUILT = {
    "Debezium change JSON → parse_change",
    "transaction marker JSON → parse_tx_marker",
    "normalize state values (orjson)",
    "StudentView Avro (view_json as a string)",
    "StudentView view_json (orjson)",
    "SevisEvent Avro (payload etc. as strings)",
    "SevisEvent payload/before/after JSON (orjson)",
}
PARTS_AND_ALTERNATIVES = {
    "of which orjson.loads (key + value)",
    "Debezium JSON with schemas.enable wrapper",
    "StudentView Avro through fastavro alone (before the codec)",
    "StudentView Avro with lineage emptied",
    "StudentView as one JSON document (alternative)",
    "SevisEvent Avro through fastavro alone (before the codec)",
    "SevisEvent Avro with lineage emptied",
    "SevisEvent as one JSON document (alternative)",
}


@pytest.fixture(scope="module")
def result():
    return run(students=20, repeat=1)


def test_every_boundary_is_measured_with_bytes_and_a_share_of_the_pure_cost(result):
    rows = {r["boundary"].strip(): r for r in result["rows"]}
    for name, r in rows.items():
        assert r["bytes_per_record"] > 0, name
        assert r["records"] > 0, name
        assert r["decode_us"] > 0, name
        assert r["encode_us"] is None or r["encode_us"] > 0, name
        assert r["share_of_pure"] > 0, name
    assert result["pure_us_per_row_change"] > 0
    assert set(rows) == AS_BUILT | PARTS_AND_ALTERNATIVES
    assert {n for n, r in rows.items() if r["alternative"]} == PARTS_AND_ALTERNATIVES
    as_built = [r for r in result["rows"] if not r["alternative"]]
    assert result["chosen_us_per_row_change"] == pytest.approx(sum(r["us_per_row_change"] for r in as_built))
    assert result["chosen_us_per_row_change"] == pytest.approx(
        result["chosen_us_in_pure"] + result["chosen_us_in_connector"] + result["chosen_us_added_by_stages"]
    )
    assert 0 < result["chosen_us_in_pure"] < result["chosen_us_per_row_change"]


def test_every_boundary_round_trips(result):
    assert result["round_trips"] and all(result["round_trips"].values()), result["round_trips"]


def test_the_counts_are_the_workload_of_bench_processors(result):
    c = result["counts"]
    assert c["row_changes"] == 12 * 20 + 1  # 12 per student plus the term row (bench/README.md, "Processors")
    assert c["student_versions"] == 4 * 20
    assert c["events"] > 0 and c["state_writes"] >= c["state_writes_per_kafka_batch"] > 0
    assert "| boundary |" in table(result)


def test_the_samples_are_the_records_the_stages_write_and_read():
    s = collect(5)
    reg = registry()
    for value, view in zip(s.student_values, s.views, strict=True):
        rec = reg.decode(value, STUDENT_SCHEMA)
        assert orjson.loads(rec["view_json"]) == view
        assert reg.encode(STUDENT_SCHEMA, rec) == value
    for e in s.events:
        back = reg.decode(reg.encode(EVENT_SCHEMA, e), EVENT_SCHEMA)
        assert {k: back[k] for k in e} == e
    assert all(parse_change(r.key, r.value, r.topic) is not None for r in s.changes)
    assert all(isinstance(orjson.loads(b), (dict, list, str, int)) for b in s.state_values)
