"""Text → JSON conversions, checked against values Debezium produces for the same inputs."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sevisflow.connectors.postgres import convert as cv


def _numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | scale) + 4


def test_scalars() -> None:
    assert cv.column_mapping(cv.BOOL, -1).convert("t") is True  # type: ignore[misc]
    assert cv.column_mapping(cv.BOOL, -1).convert("f") is False  # type: ignore[misc]
    assert cv.column_mapping(cv.INT8, -1).convert("-9223372036854775808") == -(2**63)  # type: ignore[misc]
    assert cv.column_mapping(cv.FLOAT8, -1).convert("1.5") == 1.5  # type: ignore[misc]
    for oid in (cv.TEXT, cv.VARCHAR, cv.BPCHAR, cv.UUID, cv.JSONB, cv.JSON):
        assert cv.column_mapping(oid, -1).convert is None


def test_dates_and_times_match_debezium() -> None:
    assert cv.to_date_days("1970-01-01") == 0
    assert cv.to_date_days("2024-02-29") == (date(2024, 2, 29) - date(1970, 1, 1)).days
    assert cv.to_date_days("0044-03-15 BC") == cv._days_from_civil(-43, 3, 15)
    assert cv.to_date_days("infinity") == 2**31 - 1
    assert cv.to_micro_time("13:45:07.25") == (13 * 3600 + 45 * 60 + 7) * 1_000_000 + 250_000
    assert cv.to_micro_time("24:00:00") == 86_400_000_000
    assert cv.to_milli_time("00:00:01.5") == 1500
    assert (
        cv.to_micro_timestamp("2024-01-02 03:04:05.000006")
        == int(datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC).timestamp()) * 1_000_000 + 6
    )
    assert cv.to_milli_timestamp("1969-12-31 23:59:59.999") == -1
    assert cv.to_micro_timestamp("infinity") == cv.INT64_MAX
    # Debezium 3.6.1 writes the column's precision (6 by default), e.g. "2026-01-01T00:00:01.000000Z"
    assert cv.to_zoned_timestamp("2024-01-02 03:04:05.12+00") == "2024-01-02T03:04:05.120000Z"
    assert cv.to_zoned_timestamp("2024-01-02 03:04:05+00") == "2024-01-02T03:04:05.000000Z"
    assert cv.to_zoned_timestamp("2024-01-02 03:04:05.5-11") == "2024-01-02T14:04:05.500000Z"
    assert cv.column_mapping(cv.TIMESTAMPTZ, 3).convert("2024-01-02 03:04:05.5+00") == "2024-01-02T03:04:05.500Z"  # type: ignore[misc]
    assert cv.column_mapping(cv.TIMESTAMPTZ, 0).convert("2024-01-02 03:04:05+00") == "2024-01-02T03:04:05Z"  # type: ignore[misc]
    assert cv.to_zoned_time("10:00:00.5+02") == "08:00:00.500000Z"
    assert cv.to_zoned_time("23:30:00-01:30") == "01:00:00.000000Z"


def test_timestamp_special_paths_agree_with_fast_path() -> None:
    assert cv._special_timestamp_us("2024-01-02 03:04:05.5") == cv.to_micro_timestamp("2024-01-02 03:04:05.5")
    assert cv._special_timestamp_us("0001-01-01 00:00:00 BC") == cv._days_from_civil(0, 1, 1) * 86_400_000_000


@pytest.mark.parametrize(
    "text,precision,scale,unscaled",
    [
        ("12.5", 4, 1, 125),
        ("-0.5", 4, 1, -5),
        ("0.0", 4, 1, 0),
        ("99999999.99", 10, 2, 9999999999),
        ("-128", 5, 0, -128),
    ],
)
def test_numeric_precise_is_javas_bigdecimal_bytes(text: str, precision: int, scale: int, unscaled: int) -> None:
    m = cv.column_mapping(cv.NUMERIC, _numeric_typmod(precision, scale))
    raw = base64.b64decode(m.convert(text))  # type: ignore[misc]
    assert int.from_bytes(raw, "big", signed=True) == unscaled
    # Java's BigInteger.toByteArray(): minimal two's complement
    bits = (unscaled if unscaled >= 0 else ~unscaled).bit_length()
    assert len(raw) == bits // 8 + 1
    assert m.schema["parameters"] == {"scale": str(scale), "connect.decimal.precision": str(precision)}


def test_numeric_other_modes() -> None:
    assert cv.column_mapping(cv.NUMERIC, -1, decimal_mode="string").convert is None
    assert cv.column_mapping(cv.NUMERIC, -1, decimal_mode="double").convert("1.25") == 1.25  # type: ignore[misc]
    var = cv.column_mapping(cv.NUMERIC, -1).convert("-3.140")  # type: ignore[misc]
    assert var["scale"] == 3
    assert int.from_bytes(base64.b64decode(var["value"]), "big", signed=True) == -3140
    assert cv.column_mapping(cv.NUMERIC, -1).convert("NaN") is None  # type: ignore[misc]


@settings(max_examples=200, deadline=None)
@given(
    st.decimals(
        min_value=Decimal("-99999999.99"),
        max_value=Decimal("99999999.99"),
        places=2,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_numeric_precise_round_trip(d: Decimal) -> None:
    text = f"{d:.2f}"
    raw = base64.b64decode(cv.make_decimal_precise(2)(text))
    assert Decimal(int.from_bytes(raw, "big", signed=True)).scaleb(-2) == Decimal(text)


def test_arrays_enums_domains_bytea_interval() -> None:
    ints = cv.column_mapping(1007, -1)
    assert ints.convert("{1,2,NULL}") == [1, 2, None]  # type: ignore[misc]
    assert ints.schema == {"type": "array", "items": {"type": "int32", "optional": True}}
    texts = cv.column_mapping(1009, -1)
    assert texts.convert('{"a,b","c\\"d",NULL,"NULL",plain}') == ["a,b", 'c"d', None, "NULL", "plain"]  # type: ignore[misc]
    assert cv.column_mapping(1007, -1).convert("{{1,2},{3,4}}") == [[1, 2], [3, 4]]  # type: ignore[misc]
    assert cv.column_mapping(1007, -1).convert("[0:1]={5,6}") == [5, 6]  # type: ignore[misc]
    assert cv.column_mapping(1182, -1).convert("{1970-01-02}") == [1]  # type: ignore[misc]
    assert cv.column_mapping(1009, -1).convert("{}") == []  # type: ignore[misc]

    catalog = {
        90001: cv.PgType(90001, "mood", "e", labels=("sad", "ok", "happy")),
        90002: cv.PgType(90002, "_mood", "b", element=90001, is_array=True),
        90003: cv.PgType(90003, "posint", "d", base=cv.INT4),
    }
    enum = cv.column_mapping(90001, -1, catalog.get)
    assert enum.convert is None and enum.schema["parameters"] == {"allowed": "sad,ok,happy"}
    assert cv.column_mapping(90002, -1, catalog.get).convert("{sad,happy}") == ["sad", "happy"]  # type: ignore[misc]
    assert cv.column_mapping(90003, -1, catalog.get).convert("7") == 7  # type: ignore[misc]
    assert cv.column_mapping(12345678, -1, catalog.get).convert is None  # unknown type: its text

    assert cv.to_bytea_base64("\\x00ff") == base64.b64encode(b"\x00\xff").decode()
    assert cv.to_micro_duration("1 day 01:00:00") == (86400 + 3600) * 1_000_000
    assert cv.to_micro_duration("1 mon") == int(30.4375 * 86400 * 1_000_000)
    assert cv.to_micro_duration("-00:00:01.5") == -1_500_000
