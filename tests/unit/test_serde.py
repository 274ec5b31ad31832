"""The serializer registry: single-object Avro encoding, strict schemas, clear errors."""

from __future__ import annotations

import json

import pytest

from sevisflow.core.serde import MAGIC, SchemaRegistry, SerializationError, decode_json, encode_json, registry

EVENT = "sevisflow.events.SevisEvent"


def _event(**over):
    base = {
        "event_id": "e1",
        "org_id": "ZZZ214F99999000",
        "student_key": "S1",
        "kind": "PersonalInfo",
        "coalesce_key": "PersonalInfo",
        "payload_json": "{}",
        "lineage": [{"topic": "sis.public.person", "partition": 0, "offset": 7, "lsn": 123, "tx_id": 9}],
    }
    base.update(over)
    return base


def test_round_trip_fills_defaults():
    data = registry().encode(EVENT, _event())
    assert data[:2] == MAGIC
    back = registry().decode(data)
    assert back["sevis_id"] is None and back["origin"] == "sis"
    assert back["lineage"][0]["offset"] == 7


def test_every_shipped_schema_parses():
    names = set(registry().current)
    assert {
        "sevisflow.events.SevisEvent",
        "sevisflow.batches.BatchEvent",
        "sevisflow.commands.BatchCommand",
        "sevisflow.results.SevisResult",
        "sevisflow.dlq.DeadLetter",
    } <= names


def test_unknown_field_is_refused_with_schema_name():
    with pytest.raises(SerializationError, match="SevisEvent"):
        registry().encode(EVENT, _event(surprise=1))


def test_missing_required_field_is_refused():
    rec = _event()
    del rec["kind"]
    with pytest.raises(SerializationError):
        registry().encode(EVENT, rec)


def test_not_avro_is_a_clear_error():
    with pytest.raises(SerializationError, match="single-object"):
        registry().decode(b'{"json": true}')


def test_old_writer_schema_is_resolved_by_fingerprint(tmp_path):
    old = {"type": "record", "name": "Thing", "namespace": "t", "fields": [{"name": "a", "type": "string"}]}
    new = {
        "type": "record",
        "name": "Thing",
        "namespace": "t",
        "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": ["null", "long"], "default": None}],
    }
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "thing.v1.avsc").write_text(json.dumps(old))
    (tmp_path / "thing.avsc").write_text(json.dumps(new))
    reg = SchemaRegistry(tmp_path)
    # write with v1 (as an old producer did) by building a registry over the old schema alone
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    (old_dir / "thing.avsc").write_text(json.dumps(old))
    written = SchemaRegistry(old_dir).encode("t.Thing", {"a": "x"})
    assert reg.decode(written, reader="t.Thing") == {"a": "x", "b": None}


def test_json_helpers():
    assert decode_json(encode_json({"a": [1, "é"]})) == {"a": [1, "é"]}
    with pytest.raises(SerializationError):
        decode_json(b"{nope")
