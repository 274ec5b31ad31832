"""column.exclude.list and column.mask.hash.v2: personal data a school keeps off its change topics — no services."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import date
from typing import Any

import orjson
import pytest

from sevisflow.connectors.postgres import convert as cv
from sevisflow.connectors.postgres.columns import ColumnPolicy
from sevisflow.connectors.postgres.envelope import EventBuilder, TableMeta, TxContext, build_schemas
from sevisflow.core.config import settings_from_mapping
from sevisflow.core.errors import ConfigError

SALT = "pepper"
MASK_KEY = f"column.mask.hash.v2.SHA-256.with.salt.{SALT}"


def _policy() -> ColumnPolicy:
    return ColumnPolicy.from_settings([r"public\.person\.born"], {MASK_KEY: r"public\.person\.pass(port)?_no"})


def _meta(policy: ColumnPolicy | None = None) -> TableMeta:
    columns = ("id", "name", "born", "passport_no")
    table = (policy or _policy()).for_table("public", "person", columns, ("id",), [None, None, None, 12])
    return TableMeta(
        schema="public",
        table="person",
        topic="sis.public.person",
        columns=columns,
        mappings=(
            cv.column_mapping(cv.INT8, -1),
            cv.column_mapping(cv.TEXT, -1),
            cv.column_mapping(cv.DATE, -1),
            cv.column_mapping(cv.TEXT, -1),
        ),
        key_columns=("id",),
        policy=table,
    )


def _tx() -> TxContext:
    return TxContext(xid=700, commit_lsn=5000, ts_us=1_700_000_000_123_456)


def _masked(value: str) -> str:
    return hashlib.sha256((SALT + value).encode()).hexdigest()[:12]


ROW = ["1", "Ana", "1990-05-01", "X1234567"]
BORN_TEXT = "1990-05-01"
BORN_DAYS = (date(1990, 5, 1) - date(1970, 1, 1)).days  # how Debezium's io.debezium.time.Date carries it


def _leaves(obj: Any) -> Iterator[Any]:
    """Every scalar value of a decoded JSON event, however deep."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj


def test_settings_take_debeziums_names():
    s = settings_from_mapping(
        {"connector": {"column.exclude.list": r"public\.person\.born", MASK_KEY: r"public\.person\.passport_no"}},
        env={},
    )
    assert s.connector.column_exclude_list == [r"public\.person\.born"]
    assert s.connector.column_mask_hash == {MASK_KEY: r"public\.person\.passport_no"}


@pytest.mark.parametrize("schemas", [False, True])
def test_every_event_drops_excluded_columns_and_hashes_masked_ones(schemas: bool):
    b = EventBuilder(name="sis", db="d", version="v", schemas_enable=schemas)
    meta = _meta()
    if schemas:
        build_schemas(meta)
    events = [
        b.insert(meta, ROW, _tx(), 4000)[0],
        b.update(meta, ROW, "O", ROW[:3] + ["Y7654321"], _tx(), 4100)[0],
        b.delete(meta, ROW, "O", _tx(), 4200)[0],
        b.read(meta, ROW, _tx(), 3000, "true"),
        *[(meta.topic, k, v, None) for k, v in b.read_values(meta, [ROW], _tx(), 3000, "last")],
    ]
    assert b.fast_change(meta, b"I\x00\x00\x00\x01N", _tx(), 1) is None  # never the C/fast path
    for _, key, value, _ in events:
        ev = orjson.loads(value)
        payload = ev["payload"] if schemas else ev
        for row in (payload["before"], payload["after"]):
            if row is None:
                continue
            assert "born" not in row and set(row) == {"id", "name", "passport_no"}
            assert row["passport_no"] in (_masked("X1234567"), _masked("Y7654321"))
        assert orjson.loads(key)["payload" if schemas else "id"] in ({"id": 1}, 1)
        # the excluded birth date in no form anywhere in the event (a byte search for "1990" also matched the
        # digits of a timestamp), the masked passport numbers nowhere in clear
        assert not {BORN_TEXT, BORN_DAYS} & set(_leaves(ev))
        assert b"X1234567" not in value and b"Y7654321" not in value
        if schemas:
            fields = [f["field"] for f in ev["schema"]["fields"][1]["fields"]]
            assert fields == ["id", "name", "passport_no"]


def test_a_table_without_a_matching_column_keeps_the_fast_paths():
    assert _policy().for_table("public", "address", ("id", "city"), ("id",)) is None
    assert ColumnPolicy().for_table("public", "person", ("id", "born"), ("id",)) is None


def test_the_same_value_always_gives_the_same_pseudonym_and_nulls_stay_null():
    table = _meta().policy
    assert table is not None
    a = table.apply({"id": 1, "passport_no": "X1234567", "born": 7305})
    assert a == {"id": 1, "passport_no": _masked("X1234567")}
    assert table.apply({"id": 2, "passport_no": "X1234567"})["passport_no"] == a["passport_no"]  # type: ignore[index]
    assert table.apply({"id": 3, "passport_no": None}) == {"id": 3, "passport_no": None}


@pytest.mark.parametrize(
    "exclude, masks, message",
    [
        ([r"public\.person\.id"], {}, "public.person.id is a primary-key column"),
        ([], {MASK_KEY: r"public\.person\.id"}, "public.person.id is a primary-key column"),
        ([r"public\.person\.(born"], {}, "is not a regular expression"),
        ([], {"column.mask.hash.v2.ROT13.with.salt.x": "a"}, "unknown hash algorithm 'ROT13'"),
        ([], {"column.mask.hash.SHA-256.with.salt.x": "a"}, "only Debezium's v2 hashing"),
        ([], {"column.mask.hash.v1.SHA-256.with.salt.x": "a"}, "only Debezium's v2 hashing"),
    ],
)
def test_bad_column_settings_are_refused_with_the_fix(exclude, masks, message):
    with pytest.raises(ConfigError, match=message):
        ColumnPolicy.from_settings(exclude, masks).for_table("public", "person", ("id", "born"), ("id",))
