"""One Kafka record → plain JSON an auditor can read and keep.

:func:`decode_value` recognises, in this order:

* ``tombstone`` — no value (a delete's tombstone on a change topic);
* ``avro`` — Avro single-object encoding (``C3 01`` + fingerprint): the writer schema is
  found by fingerprint in ``schemas/`` or ``schemas/history/`` (see :mod:`sevisflow.core.serde`)
  and the record is read with the *current* schema of that name, so records written years
  ago by an older version come out with today's field names and defaults.
  String fields whose name ends in ``_json`` (``payload_json``, ``records_json``,
  ``record_json``, ``before_json``…) are parsed and stored under the name without the
  suffix (``payload``, ``records``…); ``bytes`` fields (a dead letter's ``source_value``)
  are decoded recursively;
* ``debezium`` — a JSON change event (``op`` + ``before``/``after``), with or without the
  JsonConverter ``{"schema":…, "payload":…}`` wrapper (the wrapper is dropped, the payload kept);
* ``json`` — any other JSON (keys of change topics, transaction metadata);
* ``text`` / ``base64`` — anything else, UTF-8 text when it is, base64 otherwise.

Every decoded record keeps the sha256 of its raw value bytes, so a kept JSON line can be
matched to the record in the log byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from sevisflow.core.serde import MAGIC, SerializationError, registry

TIMESTAMP_TYPES = {0: "none", 1: "create", 2: "log_append"}


def iso_ms(ms: int | None) -> str | None:
    """``2024-06-19T10:00:00.000Z`` for epoch milliseconds (UTC), None for None/negative."""
    if ms is None or ms < 0:
        return None
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _unwrap_connect(obj: Any) -> Any:
    """Drop Kafka Connect's JsonConverter wrapper ``{"schema":…, "payload":…}`` if present."""
    if isinstance(obj, dict) and set(obj) == {"schema", "payload"}:
        return obj["payload"]
    return obj


def expand_json_fields(record: dict[str, Any]) -> dict[str, Any]:
    """``{"payload_json": "{…}"}`` → ``{"payload": {…}}``; bytes fields decoded recursively."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if k.endswith("_json") and isinstance(v, str):
            name = k[:-5]
            if name not in record:
                try:
                    out[name] = orjson.loads(v)
                    continue
                except orjson.JSONDecodeError:
                    pass
            out[k] = v
        elif isinstance(v, (bytes, bytearray)):
            fmt, val, _ = decode_value(bytes(v))
            out[k] = {"format": fmt, "value": val}
        else:
            out[k] = v
    return out


def decode_value(data: bytes | None) -> tuple[str, Any, str | None]:
    """``(format, decoded value, avro schema name or None)`` for one key or value."""
    if data is None:
        return "tombstone", None, None
    if len(data) >= 10 and data[:2] == MAGIC:
        name = registry().schema_name_of(data)
        if name is not None:
            try:
                reader = name if name in registry().current else None
                rec = registry().decode(data, reader)
                return "avro", expand_json_fields(rec), name
            except SerializationError:
                pass
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return "text", data.decode("utf-8"), None
        except UnicodeDecodeError:
            return "base64", base64.b64encode(data).decode(), None
    obj = _unwrap_connect(obj)
    if isinstance(obj, dict) and "op" in obj and ("after" in obj or "before" in obj):
        return "debezium", obj, None
    return "json", obj, None


@dataclass(frozen=True)
class Decoded:
    """One record of a topic, decoded, with its position in the log."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    timestamp_type: str
    key: Any
    value: Any
    format: str
    schema: str | None
    value_sha256: str | None
    raw: bytes | None = field(default=None, repr=False, compare=False)
    """the value bytes as in the log (for the pure pipeline functions that ``verify`` re-runs)"""
    raw_key: bytes | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines export of one record (what an auditor keeps)."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": iso_ms(self.timestamp_ms),
            "timestamp_ms": self.timestamp_ms,
            "timestamp_type": self.timestamp_type,
            "key": self.key,
            "format": self.format,
            "schema": self.schema,
            "value_sha256": self.value_sha256,
            "value": self.value,
        }

    @property
    def ref(self) -> str:
        """``topic[partition]@offset``: where to find the record again."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


def decode_record(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    timestamp: tuple[int, int] | None = None,
) -> Decoded:
    """Decode one record (pure: no Kafka needed, so tests build records by hand)."""
    kfmt, kval, _ = decode_value(key)
    if kfmt == "tombstone":
        kval = None
    fmt, val, schema = decode_value(value)
    ts_type, ts = timestamp if timestamp is not None else (0, -1)
    return Decoded(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=ts if ts is not None and ts >= 0 else None,
        timestamp_type=TIMESTAMP_TYPES.get(ts_type, str(ts_type)),
        key=kval,
        value=val,
        format=fmt,
        schema=schema,
        value_sha256=hashlib.sha256(value).hexdigest() if value is not None else None,
        raw=value,
        raw_key=key,
    )


def decode_message(msg: Any) -> Decoded:
    """Decode a confluent-kafka ``Message``."""
    return decode_record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), msg.timestamp())


@dataclass(frozen=True)
class RawRecord:
    """One record as read, not yet decoded: a reader that needs few of many records (``audit student``)
    keeps these and decodes only the ones a byte test cannot rule out (decoding is most of the cost)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: tuple[int, int] | None = None

    def decode(self) -> Decoded:
        return decode_record(self.topic, self.partition, self.offset, self.key, self.value, self.timestamp)

    def mentions(self, needles: tuple[bytes, ...]) -> bool:
        """Whether the value bytes hold any of ``needles`` (an empty needle is in every value)."""
        v = self.value
        return v is not None and any(n in v for n in needles)


def raw_message(msg: Any) -> RawRecord:
    """A confluent-kafka ``Message`` → :class:`RawRecord` (the bytes only; nothing decoded)."""
    return RawRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), msg.timestamp())
