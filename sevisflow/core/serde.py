"""The one serializer registry: Avro for SEVIS-side topics, JSON for change events.

Avro values use the Avro spec's *single-object encoding*: two marker bytes
``C3 01``, the writer schema's 8-byte CRC-64-AVRO fingerprint (little endian),
then the binary body. Every schema version ever shipped lives in ``schemas/``
(current versions) or ``schemas/history/`` (older ones), so a reader finds the
writer schema by fingerprint and resolves it against the current reader schema:
an auditor replaying a topic years later decodes every record without a
schema-registry service. Schemas are parsed once, at first use.

Encoding and decoding go through :mod:`sevisflow.core.avro_codec` (compiled with the processors' core) where
it takes the value, and through fastavro otherwise: the same bytes either way, fastavro's errors for what
does not fit, and fastavro's schema resolution when an older writer version is read.
"""

from __future__ import annotations

import io
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
import orjson
from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from sevisflow.core import PACKAGE_ROOT
from sevisflow.core.avro_codec import Codec, plan
from sevisflow.core.errors import SevisflowError

SCHEMA_DIR = PACKAGE_ROOT / "schemas"
MAGIC = b"\xc3\x01"


class SerializationError(SevisflowError):
    """A record could not be encoded or decoded; the message names the schema and the cause."""


class SchemaRegistry:
    """All .avsc files of a folder: current schemas by name, every version by fingerprint."""

    def __init__(self, folder: Path = SCHEMA_DIR) -> None:
        self.folder = folder
        self.current: dict[str, dict[str, Any]] = {}
        self.by_fingerprint: dict[bytes, dict[str, Any]] = {}
        self._fp_of_current: dict[str, bytes] = {}  # computing CRC-64 per record cost ~1.5 ms
        self._codecs: dict[bytes, Codec] = {}  # by fingerprint: every version the codec plans
        for path in sorted(folder.glob("*.avsc")):
            schema = self._parse(path, {})
            self.current[schema["name"]] = schema
            self._fp_of_current[schema["name"]] = fingerprint(schema)
        history = folder / "history"
        if history.is_dir():
            for path in sorted(history.glob("*.avsc")):
                self._parse(path, {})

    def _parse(self, path: Path, named: dict[str, Any]) -> dict[str, Any]:
        raw = orjson.loads(path.read_bytes())
        try:
            schema = fastavro.parse_schema(raw, named_schemas=named)
        except Exception as exc:  # fastavro raises several types for bad schemas
            raise SerializationError(f"schema {path.name} is not valid Avro: {exc}") from exc
        if not isinstance(schema, dict):
            raise SerializationError(f"schema {path.name} is not a named Avro schema (a JSON object with a name)")
        fp = fingerprint(schema)
        self.by_fingerprint[fp] = schema
        codec = plan(schema)
        if codec is not None:
            self._codecs[fp] = codec
        return schema

    def schema(self, name: str) -> dict[str, Any]:
        try:
            return self.current[name]
        except KeyError:
            raise SerializationError(
                f"no Avro schema named {name!r} in {self.folder} (known: {', '.join(sorted(self.current))})"
            ) from None

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        """Single-object-encode ``record`` with the current schema ``name``."""
        schema = self.schema(name)
        fp = self._fp_of_current[name]
        codec = self._codecs.get(fp)
        if codec is not None and (body := codec.encode(record)) is not None:
            return MAGIC + fp + body
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(fp)
        try:
            fastavro.schemaless_writer(buf, schema, record, strict_allow_default=True)
        except (ValueError, TypeError, KeyError) as exc:
            raise SerializationError(f"record does not fit Avro schema {name}: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes, reader: str | None = None) -> dict[str, Any]:
        """Decode a single-object-encoded value, resolving to the current ``reader`` schema if given."""
        if len(data) < 10 or data[:2] != MAGIC:
            raise SerializationError("value is not Avro single-object encoded (missing C3 01 marker)")
        writer = self.by_fingerprint.get(data[2:10])
        if writer is None:
            raise SerializationError(
                f"unknown writer schema fingerprint {data[2:10].hex()}; is schemas/history/ missing a version?"
            )
        reader_schema = self.schema(reader) if reader else writer
        codec = self._codecs.get(data[2:10]) if reader_schema is writer else None
        if codec is not None and (value := codec.decode(data, 10)) is not None:
            return value  # type: ignore[return-value]  # a record schema decodes to a dict
        try:
            return fastavro.schemaless_reader(io.BytesIO(data[10:]), writer, reader_schema)  # type: ignore[return-value]
        except Exception as exc:  # fastavro raises many types
            raise SerializationError(f"cannot decode record with {writer.get('name')}: {exc}") from exc

    def schema_name_of(self, data: bytes) -> str | None:
        """The writer schema's full name of an encoded value, or None when not Avro."""
        if len(data) >= 10 and data[:2] == MAGIC:
            writer = self.by_fingerprint.get(data[2:10])
            return writer.get("name") if writer else None
        return None


def fingerprint(schema: dict[str, Any]) -> bytes:
    """CRC-64-AVRO fingerprint of the schema's canonical form, little endian (per the Avro spec)."""
    value = int(avro_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"), 16)
    return struct.pack("<Q", value)


@lru_cache(maxsize=1)
def registry() -> SchemaRegistry:
    """The process-wide registry over the project's schemas/ folder."""
    return SchemaRegistry()


def encode_json(value: Any) -> bytes:
    """Compact JSON bytes (orjson), the format of change-event keys and values."""
    return orjson.dumps(value)


def decode_json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"value is not valid JSON: {exc}") from exc
