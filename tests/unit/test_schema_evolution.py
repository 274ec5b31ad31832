"""Avro evolution: a reader of every current schema reads data written with each older version in history/."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest

from sevisflow.core.serde import MAGIC, SCHEMA_DIR, SchemaRegistry, fingerprint

REG = SchemaRegistry()
HISTORY = sorted((SCHEMA_DIR / "history").glob("*.avsc"))


def sample(schema: Any) -> Any:
    """A value of ``schema`` (parsed form), filling every field."""
    if isinstance(schema, list):
        return sample(next(s for s in schema if s != "null")) if any(s != "null" for s in schema) else None
    if isinstance(schema, dict):
        t = schema["type"]
        if t == "record":
            return {f["name"]: sample(f["type"]) for f in schema["fields"]}
        if t == "array":
            return [sample(schema["items"])]
        if t == "map":
            return {"k": sample(schema["values"])}
        if t == "enum":
            return schema["symbols"][0]
        return sample(t)
    return {
        "string": "x",
        "long": 7,
        "int": 3,
        "boolean": True,
        "bytes": b"b",
        "double": 1.5,
        "float": 1.5,
        "null": None,
    }[schema]


def _kept(old: Any, new: Any) -> bool:
    """``new`` holds every value of ``old``; nested records may have gained (defaulted) fields."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(k in new and _kept(v, new[k]) for k, v in old.items())
    if isinstance(old, list):
        return isinstance(new, list) and len(old) == len(new) and all(map(_kept, old, new))
    return old == new


@pytest.mark.parametrize("path", HISTORY, ids=[p.name for p in HISTORY])
def test_current_reader_reads_old_writer(path) -> None:
    import orjson

    old = fastavro.parse_schema(orjson.loads(path.read_bytes()), named_schemas={})
    record = sample(old)
    buf = io.BytesIO()
    buf.write(MAGIC + fingerprint(old))
    fastavro.schemaless_writer(buf, old, record)
    decoded = REG.decode(buf.getvalue(), old["name"])
    for k, v in record.items():
        assert _kept(v, decoded[k]), k
    assert set(decoded) == {f["name"] for f in REG.schema(old["name"])["fields"]}


def test_student_view_v2_added_fields_have_defaults() -> None:
    cur = {f["name"]: f for f in REG.schema("sevisflow.students.StudentView")["fields"]}
    for name in ("snapshot", "commit_ts_ms", "processor_version"):
        assert "default" in cur[name]
