"""The compiled Avro codec writes fastavro's bytes and reads fastavro's values, or leaves the value to fastavro.

Every shipped schema version is planned; records generated from each schema (hypothesis) encode to the same
bytes as fastavro's writer and decode to the same value as fastavro's reader; a value the codec does not take
exactly (a float for a long, an unknown field, a tuple for an array, …) goes to fastavro, which answers as it
did before the codec existed: the same bytes, or the same refusal.
"""

from __future__ import annotations

import io
import string
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevisflow.core.avro_codec import LONG_MAX, LONG_MIN, Codec, plan
from sevisflow.core.serde import SerializationError, registry

REGISTRY = registry()
VERSIONS = sorted(REGISTRY.by_fingerprint.items(), key=lambda kv: kv[1]["name"])
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


def fastavro_bytes(schema: dict[str, Any], record: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record, strict_allow_default=True)
    return buf.getvalue()


def fastavro_value(schema: dict[str, Any], data: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(data), schema, None)


def values_of(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that fit ``schema`` (a parsed one), with optional fields sometimes left out."""
    if isinstance(schema, list):
        return st.one_of(*(values_of(s, named) for s in schema))
    if isinstance(schema, str):
        simple = {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.one_of(st.integers(-200, 200), st.integers(LONG_MIN, LONG_MAX)),
            "string": TEXT,
            "bytes": st.binary(max_size=20),
        }
        return simple[schema] if schema in simple else named[schema]
    if schema["type"] == "array":
        return st.lists(values_of(schema["items"], named), max_size=4)
    if schema["type"] == "record":
        fields = {f["name"]: values_of(f["type"], named) for f in schema["fields"]}
        optional = [f["name"] for f in schema["fields"] if "default" in f]
        record = st.fixed_dictionaries(fields).flatmap(
            lambda r: st.sets(st.sampled_from(optional or [""])).map(
                lambda left_out: {k: v for k, v in r.items() if k not in left_out}
            )
        )
        named[schema["name"]] = record
        return record
    return values_of(schema["type"], named)


def codec_of(schema: dict[str, Any]) -> Codec:
    codec = plan(schema)
    assert codec is not None, schema["name"]
    return codec


def test_every_shipped_schema_version_is_planned() -> None:
    assert len(VERSIONS) >= 11  # seven current schemas and the older versions in schemas/history/
    for fp, schema in VERSIONS:
        assert plan(schema) is not None, f"{schema['name']} ({fp.hex()}) would go through fastavro"


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v[1]['name']}-{v[0].hex()[:6]}")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_record_encodes_to_fastavros_bytes_and_decodes_to_fastavros_value(
    version: tuple[bytes, dict[str, Any]], data: st.DataObject
) -> None:
    _, schema = version
    codec = codec_of(schema)
    record = data.draw(values_of(schema, {}))
    expected = fastavro_bytes(schema, record)
    assert codec.encode(record) == expected
    assert codec.decode(b"\xc3\x01" + expected + b"trailing", 2) == fastavro_value(schema, expected)


STUDENT = "sevisflow.students.StudentView"
VIEW = {
    "student_key": "S1",
    "exists": True,
    "international": True,
    "sevis_id": None,
    "view_json": "{}",
    "unit_id": "1:2:3",
    "snapshot": False,
    "commit_ts_ms": 1_764_979_200_000,
    "lineage": [{"topic": "sis.public.person", "partition": 0, "offset": 7, "lsn": 2**40, "tx_id": None}],
    "processor_version": "1",
}


@pytest.mark.parametrize(
    "change",
    [
        {"commit_ts_ms": 1.5e12},  # a float for a long
        {"commit_ts_ms": True},  # a bool for a long (an int subclass)
        {"commit_ts_ms": 2**63},  # past a long
        {"lineage": ({"topic": "t", "partition": 0, "offset": 1},)},  # a tuple for an array
        {"view_json": b"{}"},  # bytes for a string
        {"exists": 1},  # an int for a boolean
        {"unknown_field": 1},  # a field the schema does not have
        {"view_json": "\ud800"},  # a lone surrogate: not UTF-8
    ],
    ids=lambda c: next(iter(c)) + "=" + type(next(iter(c.values()))).__name__,
)
def test_a_value_the_codec_does_not_take_is_fastavros_to_encode_or_refuse(change: dict[str, Any]) -> None:
    record = {**VIEW, **change}
    schema = REGISTRY.schema(STUDENT)
    assert codec_of(schema).encode(record) is None
    try:
        expected = b"\xc3\x01" + REGISTRY._fp_of_current[STUDENT] + fastavro_bytes(schema, record)
    except (ValueError, TypeError, KeyError, UnicodeEncodeError) as exc:
        with pytest.raises((SerializationError, type(exc))):
            REGISTRY.encode(STUDENT, record)
    else:
        assert REGISTRY.encode(STUDENT, record) == expected


def test_a_missing_field_is_written_with_its_default_and_a_missing_required_one_is_refused() -> None:
    schema = REGISTRY.schema(STUDENT)
    short = {k: v for k, v in VIEW.items() if k not in ("sevis_id", "lineage", "snapshot", "processor_version")}
    assert codec_of(schema).encode(short) == fastavro_bytes(schema, short)
    assert REGISTRY.decode(REGISTRY.encode(STUDENT, short)) == {
        **short,
        "sevis_id": None,
        "lineage": [],
        "snapshot": False,
        "processor_version": "",
    }
    no_key = {k: v for k, v in VIEW.items() if k != "student_key"}
    assert codec_of(schema).encode(no_key) is None
    with pytest.raises(SerializationError, match="StudentView"):
        REGISTRY.encode(STUDENT, no_key)


def test_the_registry_round_trips_a_view_through_the_codec() -> None:
    data = REGISTRY.encode(STUDENT, VIEW)
    assert data[10:] == fastavro_bytes(REGISTRY.schema(STUDENT), VIEW)
    lineage = [{**VIEW["lineage"][0], "table": None, "sequence": None, "commit_ts_ms": None}]
    assert REGISTRY.decode(data, STUDENT) == {**VIEW, "lineage": lineage}


def test_an_array_written_in_sized_blocks_by_another_writer_is_read() -> None:
    """Avro lets a writer split an array into blocks, a negative count followed by the block's size in bytes."""
    schema = fastavro.parse_schema(
        {"type": "record", "name": "A", "fields": [{"name": "xs", "type": {"type": "array", "items": "long"}}]}
    )
    # count -2 (zigzag 3), size 2 bytes, items 1 and -1 (zigzag 2, 1); then count 1 (zigzag 2), item 5; then 0
    data = bytes([3, 4, 2, 1, 2, 10, 0])
    assert fastavro_value(schema, data) == {"xs": [1, -1, 5]}
    assert codec_of(schema).decode(data, 0) == {"xs": [1, -1, 5]}


@pytest.mark.parametrize(
    "data",
    [
        b"",  # nothing
        b"\x04S1",  # the student key cut short
        b"\x02S\x02",  # a boolean byte that is neither 0 nor 1
        b"\x04\xff\xfe",  # not UTF-8
        b"\x02S\x01\x01\x08",  # a union branch that does not exist
        b"\x80" * 12,  # a varint longer than a long
    ],
)
def test_data_the_codec_cannot_read_is_fastavros_to_refuse(data: bytes) -> None:
    schema = REGISTRY.schema(STUDENT)
    assert codec_of(schema).decode(data, 0) is None
    with pytest.raises(SerializationError, match=r"cannot decode record with sevisflow\.students\.StudentView"):
        REGISTRY.decode(b"\xc3\x01" + REGISTRY._fp_of_current[STUDENT] + data)


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "enum", "name": "E", "symbols": ["A"]},
        {"type": "map", "values": "long"},
        {"type": "fixed", "name": "F", "size": 2},
        "double",
        ["null", "string", "long"],
        {"type": "int", "logicalType": "date"},
    ],
    ids=str,
)
def test_a_schema_with_a_type_the_codec_does_not_plan_goes_to_fastavro(field_type: Any) -> None:
    schema = fastavro.parse_schema({"type": "record", "name": "R", "fields": [{"name": "f", "type": field_type}]})
    assert plan(schema) is None


def test_a_named_record_used_twice_is_planned_once_and_written_both_times() -> None:
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "ns.Outer",
            "fields": [
                {"name": "a", "type": {"type": "record", "name": "ns.Inner", "fields": [{"name": "x", "type": "int"}]}},
                {"name": "b", "type": ["null", "ns.Inner"]},
            ],
        }
    )
    for record in ({"a": {"x": 1}, "b": None}, {"a": {"x": -3}, "b": {"x": 2**31 - 1}}):
        data = codec_of(schema).encode(record)
        assert data == fastavro_bytes(schema, record)
        assert codec_of(schema).decode(data, 0) == record


def test_characters_beyond_ascii_are_written_as_utf8() -> None:
    record = {**VIEW, "view_json": '{"name":"Zoë Ñandú 名字 🎓"}' + string.printable}
    assert REGISTRY.encode(STUDENT, record)[10:] == fastavro_bytes(REGISTRY.schema(STUDENT), record)
