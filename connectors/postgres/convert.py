"""PostgreSQL text values → JSON values and Kafka Connect schemas, the way Debezium maps them.

Both the snapshot (COPY text) and the stream (pgoutput text tuples) hand us values in
PostgreSQL's text output form, so one converter per column serves both and a row gives
byte-identical JSON whichever path read it. The connector pins the session settings the
text form depends on (``TimeZone=UTC``, ``DateStyle=ISO``, ``IntervalStyle=postgres``,
``extra_float_digits=3``), see :data:`SESSION_OPTIONS`.

Debezium defaults reproduced here (``decimal.handling.mode=precise``,
``time.precision.mode=adaptive``, ``binary.handling.mode=bytes``,
``interval.handling.mode=numeric``):

=================================  ===============================================================
PostgreSQL                         JSON value (Connect type, logical name)
=================================  ===============================================================
bool                               true/false (boolean)
int2 / int4 / int8 / oid           number (int16 / int32 / int64)
float4 / float8                    number (float / double)
numeric(p,s)                       base64 of the unscaled two's-complement integer
                                   (bytes, org.apache.kafka.connect.data.Decimal, scale param);
                                   ``string`` mode: the text; ``double`` mode: a number
numeric (no scale)                 {"scale": s, "value": base64} (io.debezium.data.VariableScaleDecimal)
text / varchar / char / name       string (char keeps its padding)
date                               days since 1970-01-01 (int32, io.debezium.time.Date)
time(p ≤ 3) / time                 ms / µs since midnight (io.debezium.time.Time / MicroTime)
timestamp(p ≤ 3) / timestamp       ms / µs since the epoch (io.debezium.time.Timestamp / MicroTimestamp)
timestamptz(p)                     ISO-8601 string in UTC with p (default 6) fraction digits,
                                   ``2024-05-01T12:00:00.500000Z`` (io.debezium.time.ZonedTimestamp)
timetz(p)                          ``12:00:00.500000Z`` in UTC (io.debezium.time.ZonedTime)
uuid / json / jsonb / xml          string (io.debezium.data.Uuid / Json / Json / Xml)
bytea                              base64 (bytes)
interval                           µs, months as 30.4375 days (int64, io.debezium.time.MicroDuration)
enum                               label (string, io.debezium.data.Enum, ``allowed`` param)
arrays                             JSON arrays of the element mapping (nested for multi-dim)
domains                            as their base type
anything else                      its text form (string); Debezium would drop such a column
=================================  ===============================================================
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

Converter = Callable[[str], Any] | None

SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3"

EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1)
_EPOCH_TZ = datetime(1970, 1, 1, tzinfo=UTC)
_US_PER_DAY = 86_400_000_000
_DAYS_PER_MONTH_AVG = 365.25 / 12
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# builtin type oids (pg_type.dat), element oid for arrays
BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID, JSON, XML = 16, 17, 18, 19, 20, 21, 23, 25, 26, 114, 142
FLOAT4, FLOAT8, MONEY, BPCHAR, VARCHAR, DATE, TIME, TIMESTAMP = 700, 701, 790, 1042, 1043, 1082, 1083, 1114
TIMESTAMPTZ, INTERVAL, TIMETZ, NUMERIC, UUID, JSONB = 1184, 1186, 1266, 1700, 2950, 3802

ARRAY_ELEMENT: dict[int, int] = {
    1000: BOOL,
    1001: BYTEA,
    1002: CHAR,
    1003: NAME,
    1016: INT8,
    1005: INT2,
    1007: INT4,
    1009: TEXT,
    1028: OID,
    199: JSON,
    143: XML,
    1021: FLOAT4,
    1022: FLOAT8,
    791: MONEY,
    1014: BPCHAR,
    1015: VARCHAR,
    1182: DATE,
    1183: TIME,
    1115: TIMESTAMP,
    1185: TIMESTAMPTZ,
    1187: INTERVAL,
    1270: TIMETZ,
    1231: NUMERIC,
    2951: UUID,
    3807: JSONB,
}


@dataclass(frozen=True)
class PgType:
    """What the catalog says about a non-builtin type (looked up once per oid)."""

    oid: int
    name: str
    kind: str  # pg_type.typtype: b base, e enum, d domain, c composite, r range …
    element: int = 0  # typelem for arrays (typcategory 'A')
    base: int = 0  # typbasetype for domains
    base_typmod: int = -1
    labels: tuple[str, ...] = ()  # enum labels in sort order
    is_array: bool = False


TypeLookup = Callable[[int], PgType | None]


@dataclass(frozen=True)
class ColumnMapping:
    """How one column's text becomes JSON, and its Connect schema (for ``schemas.enable``)."""

    convert: Converter
    schema: dict[str, Any] = field(default_factory=dict)
    is_string: bool = True  # the unchanged-TOAST placeholder is only type-correct for strings


# --------------------------------------------------------------------------- scalar converters


def to_bool(s: str) -> bool:
    return s == "t"


def to_date_days(s: str) -> int:
    try:
        return date.fromisoformat(s).toordinal() - EPOCH_ORDINAL
    except ValueError:
        return _special_date(s)


def _special_date(s: str) -> int:
    if s == "infinity":
        return 2**31 - 1
    if s == "-infinity":
        return -(2**31)
    if s.endswith(" BC"):
        y, m, d = (int(x) for x in s[:-3].split("-"))
        return _days_from_civil(1 - y, m, d)
    y, m, d = (int(x) for x in s.split("-"))
    return _days_from_civil(y, m, d)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 for any proleptic Gregorian date (astronomical year numbering)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _time_us(s: str) -> int:
    hh, mm, rest = s.split(":")
    if "." in rest:
        ss, frac = rest.split(".")
        us = int((frac + "000000")[:6])
    else:
        ss, us = rest, 0
    return ((int(hh) * 60 + int(mm)) * 60 + int(ss)) * 1_000_000 + us


def to_micro_time(s: str) -> int:
    return _time_us(s)


def to_milli_time(s: str) -> int:
    return _time_us(s) // 1000


def to_micro_timestamp(s: str) -> int:
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return _special_timestamp_us(s)
    return (dt - _EPOCH) // _ONE_US


def to_milli_timestamp(s: str) -> int:
    v = to_micro_timestamp(s)
    return v if v in (INT64_MAX, INT64_MIN) else v // 1000


_ONE_US = datetime(1970, 1, 1, 0, 0, 0, 1) - _EPOCH


def _special_timestamp_us(s: str) -> int:
    if s == "infinity":
        return INT64_MAX
    if s == "-infinity":
        return INT64_MIN
    bc = s.endswith(" BC")
    if bc:
        s = s[:-3]
    d, _, t = s.partition(" ")
    tz_us = 0
    for sign in ("+", "-"):
        if sign in t:
            t, _, off = t.partition(sign)
            parts = [int(x) for x in off.split(":")] + [0, 0]
            tz_us = (parts[0] * 3600 + parts[1] * 60 + parts[2]) * 1_000_000 * (1 if sign == "+" else -1)
            break
    y, m, dd = (int(x) for x in d.split("-"))
    if bc:
        y = 1 - y
    return _days_from_civil(y, m, dd) * _US_PER_DAY + _time_us(t) - tz_us


def to_zoned_timestamp(s: str, precision: int = 6) -> str:
    """ISO-8601 in UTC with exactly ``precision`` fraction digits, as Debezium 3 writes ZonedTimestamp."""
    # fast path: the session runs in UTC, so the server prints "YYYY-MM-DD HH:MM:SS[.ffffff]+00"
    if len(s) >= 22 and s[-3:] == "+00" and s[4] == "-" and s[10] == " ":
        body = s[11:-3]
        dot = body.find(".")
        frac = body[dot + 1 :] if dot >= 0 else ""
        base = body[:dot] if dot >= 0 else body
        return s[:10] + "T" + base + ("." + (frac + "000000")[:precision] if precision else "") + "Z"
    try:
        dt = datetime.fromisoformat(s).astimezone(UTC)
    except ValueError:
        if s in ("infinity", "-infinity"):
            return s
        us = _special_timestamp_us(s)
        dt = _EPOCH_TZ + us * _ONE_US if abs(us) < 2**60 else _EPOCH_TZ
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if precision:
        text += "." + f"{dt.microsecond:06d}"[:precision]
    return text + "Z"


def to_zoned_time(s: str, precision: int = 6) -> str:
    sign_pos = max(s.rfind("+"), s.rfind("-"))
    t, off = s[:sign_pos], s[sign_pos:]
    parts = [int(x) for x in off[1:].split(":")] + [0, 0]
    off_us = (parts[0] * 3600 + parts[1] * 60 + parts[2]) * 1_000_000 * (1 if off[0] == "+" else -1)
    us = (_time_us(t) - off_us) % _US_PER_DAY
    secs, frac = divmod(us, 1_000_000)
    text = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
    if precision:
        text += "." + f"{frac:06d}"[:precision]
    return text + "Z"


def to_bytea_base64(s: str) -> str:
    if s.startswith("\\x"):
        raw = bytes.fromhex(s[2:])
    else:  # bytea_output=escape
        raw = s.encode("latin-1").decode("unicode_escape").encode("latin-1")
    return base64.b64encode(raw).decode()


_INTERVAL_UNITS = {
    "year": 12 * _DAYS_PER_MONTH_AVG * _US_PER_DAY,
    "years": 12 * _DAYS_PER_MONTH_AVG * _US_PER_DAY,
    "mon": _DAYS_PER_MONTH_AVG * _US_PER_DAY,
    "mons": _DAYS_PER_MONTH_AVG * _US_PER_DAY,
    "day": _US_PER_DAY,
    "days": _US_PER_DAY,
}


def to_micro_duration(s: str) -> int:
    """IntervalStyle=postgres text (``1 year 2 mons -3 days 04:05:06.5``) → µs, months as 30.4375 days."""
    total = 0.0
    tokens = s.split()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if ":" in tok:
            neg = tok.startswith("-")
            us = _time_us(tok.lstrip("+-"))
            total += -us if neg else us
            i += 1
        else:
            total += float(tok) * _INTERVAL_UNITS[tokens[i + 1]]
            i += 2
    return round(total)


def _unscaled_bytes(n: int) -> str:
    bits = (n if n >= 0 else ~n).bit_length()
    return base64.b64encode(n.to_bytes(bits // 8 + 1, "big", signed=True)).decode()


def _finite_decimal(s: str) -> Decimal | None:
    """``s`` as a Decimal, or None for text that is not a number and for NaN/±Infinity (Connect has no such value)."""
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def make_decimal_precise(scale: int) -> Callable[[str], Any]:
    def conv(s: str) -> Any:
        ip, _, fp = s.partition(".")
        if len(fp) == scale and (ip[-1:].isdigit()):
            return _unscaled_bytes(int(ip + fp))
        d = _finite_decimal(s)
        if d is None:
            return None
        return _unscaled_bytes(int(d.scaleb(scale).to_integral_value()))

    return conv


def to_variable_decimal(s: str) -> Any:
    d = _finite_decimal(s)
    if d is None:
        return None
    exp = d.as_tuple().exponent
    scale = -exp if isinstance(exp, int) and exp < 0 else 0
    unscaled = int(d.scaleb(scale))
    return {"scale": scale, "value": _unscaled_bytes(unscaled)}


def to_double(s: str) -> float:
    return float(s)


# --------------------------------------------------------------------------- arrays


def parse_array(s: str, elem: Converter) -> Any:
    """PostgreSQL array text (``{1,2,NULL}``, ``{{a,"b c"}}``, ``[0:1]={1,2}``) → nested lists."""
    if s.startswith("["):
        s = s[s.index("=") + 1 :]
    pos = 0
    n = len(s)

    def parse_level() -> list[Any]:
        nonlocal pos
        assert s[pos] == "{"
        pos += 1
        out: list[Any] = []
        if s[pos] == "}":
            pos += 1
            return out
        while True:
            ch = s[pos]
            if ch == "{":
                out.append(parse_level())
            elif ch == '"':
                pos += 1
                buf = []
                while s[pos] != '"':
                    if s[pos] == "\\":
                        pos += 1
                    buf.append(s[pos])
                    pos += 1
                pos += 1
                text = "".join(buf)
                out.append(elem(text) if elem else text)
            else:
                start = pos
                while pos < n and s[pos] not in ",}":
                    pos += 1
                text = s[start:pos].strip()
                if text == "NULL":
                    out.append(None)
                else:
                    out.append(elem(text) if elem else text)
            if s[pos] == ",":
                pos += 1
                continue
            if s[pos] == "}":
                pos += 1
                return out
            raise ValueError("bad array text")

    return parse_level()


# --------------------------------------------------------------------------- the mapping


def _schema(typ: str, name: str | None = None, params: Mapping[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": typ}
    if name:
        out["name"] = name
        out["version"] = 1
    if params:
        out["parameters"] = dict(params)
    out.update(extra)
    return out


def column_mapping(
    type_oid: int, typmod: int, lookup: TypeLookup | None = None, decimal_mode: str = "precise", _depth: int = 0
) -> ColumnMapping:
    """The converter and Connect schema for a column of type ``type_oid`` with ``typmod``."""
    if type_oid == BOOL:
        return ColumnMapping(to_bool, _schema("boolean"), False)
    if type_oid in (INT2, INT4, INT8, OID):
        typ = {INT2: "int16", INT4: "int32", INT8: "int64", OID: "int64"}[type_oid]
        return ColumnMapping(int, _schema(typ), False)
    if type_oid in (FLOAT4, FLOAT8):
        return ColumnMapping(float, _schema("float" if type_oid == FLOAT4 else "double"), False)
    if type_oid == NUMERIC:
        if decimal_mode == "string":
            return ColumnMapping(None, _schema("string"))
        if decimal_mode == "double":
            return ColumnMapping(to_double, _schema("double"), False)
        if typmod >= 4:
            precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
            return ColumnMapping(
                make_decimal_precise(scale),
                _schema(
                    "bytes",
                    "org.apache.kafka.connect.data.Decimal",
                    {"scale": str(scale), "connect.decimal.precision": str(precision)},
                ),
                False,
            )
        return ColumnMapping(
            to_variable_decimal,
            _schema(
                "struct",
                "io.debezium.data.VariableScaleDecimal",
                None,
                fields=[
                    {"type": "int32", "optional": False, "field": "scale"},
                    {"type": "bytes", "optional": False, "field": "value"},
                ],
            ),
            False,
        )
    if type_oid in (TEXT, VARCHAR, BPCHAR, NAME, CHAR, MONEY):
        return ColumnMapping(None, _schema("string"))
    if type_oid == DATE:
        return ColumnMapping(to_date_days, _schema("int32", "io.debezium.time.Date"), False)
    if type_oid == TIME:
        if 0 <= typmod <= 3:
            return ColumnMapping(to_milli_time, _schema("int32", "io.debezium.time.Time"), False)
        return ColumnMapping(to_micro_time, _schema("int64", "io.debezium.time.MicroTime"), False)
    if type_oid == TIMESTAMP:
        if 0 <= typmod <= 3:
            return ColumnMapping(to_milli_timestamp, _schema("int64", "io.debezium.time.Timestamp"), False)
        return ColumnMapping(to_micro_timestamp, _schema("int64", "io.debezium.time.MicroTimestamp"), False)
    if type_oid == TIMESTAMPTZ:
        p = typmod if 0 <= typmod <= 6 else 6
        conv = to_zoned_timestamp if p == 6 else functools.partial(to_zoned_timestamp, precision=p)
        return ColumnMapping(conv, _schema("string", "io.debezium.time.ZonedTimestamp"))
    if type_oid == TIMETZ:
        p = typmod if 0 <= typmod <= 6 else 6
        return ColumnMapping(
            functools.partial(to_zoned_time, precision=p), _schema("string", "io.debezium.time.ZonedTime")
        )
    if type_oid == UUID:
        return ColumnMapping(None, _schema("string", "io.debezium.data.Uuid"))
    if type_oid in (JSON, JSONB):
        return ColumnMapping(None, _schema("string", "io.debezium.data.Json"))
    if type_oid == XML:
        return ColumnMapping(None, _schema("string", "io.debezium.data.Xml"))
    if type_oid == BYTEA:
        return ColumnMapping(to_bytea_base64, _schema("bytes"), False)
    if type_oid == INTERVAL:
        return ColumnMapping(to_micro_duration, _schema("int64", "io.debezium.time.MicroDuration"), False)
    elem_oid = ARRAY_ELEMENT.get(type_oid)
    info = None
    if elem_oid is None and lookup is not None and _depth < 5:
        info = lookup(type_oid)
        if info is not None and info.is_array and info.element:
            elem_oid = info.element
    if elem_oid is not None:
        elem = column_mapping(elem_oid, -1 if elem_oid != NUMERIC else typmod, lookup, decimal_mode, _depth + 1)
        econv = elem.convert
        return ColumnMapping(
            functools.partial(parse_array, elem=econv), _schema("array", items={**elem.schema, "optional": True}), False
        )
    if info is not None:
        if info.kind == "e":
            return ColumnMapping(None, _schema("string", "io.debezium.data.Enum", {"allowed": ",".join(info.labels)}))
        if info.kind == "d" and info.base:
            return column_mapping(info.base, info.base_typmod, lookup, decimal_mode, _depth + 1)
    return ColumnMapping(None, _schema("string"))
