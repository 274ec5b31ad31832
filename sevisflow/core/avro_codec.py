"""Avro binary encoding and decoding of the project's own schemas, compiled with the processors' core.

fastavro stays the reference and the fallback: it parses the schemas, computes their fingerprints, resolves
an older writer version against the current reader, and encodes or refuses every value this codec does not
take. What this module adds is speed on the hot path. fastavro writes a value of a union (``["null",
"long"]``) by validating it against each branch in Python; a student view's lineage entry has five such
fields and cost about 5 µs to write, the whole view 19 µs, a SEVIS event 22 µs to write and 16 to read
(bench/README.md, "Avro/JSON boundaries", with this codec's figures beside them).

A :class:`Codec` is planned once per parsed schema, for the types the project's schemas use: records, arrays,
null, boolean, int, long, string, bytes, and unions of null with one other type (a schema with anything
else gets no plan: :func:`plan` returns None). It takes only values of exactly the expected Python types —
``dict`` records with no unknown field, ``list`` arrays, ``str``, ``bytes``, ``bool``, an ``int`` in range,
``None`` — and gives up (``None``) on anything else, so the caller hands that value to fastavro, which then
encodes it or refuses it as before. For what it takes, the bytes are fastavro's, byte for byte, and a
decoded value equals fastavro's (tests/unit/test_avro_codec.py, over every shipped schema).
"""

from __future__ import annotations

from typing import Any, Final

INT_MIN: Final = -(1 << 31)
INT_MAX: Final = (1 << 31) - 1
LONG_MIN: Final = -(1 << 63)
LONG_MAX: Final = (1 << 63) - 1
_ONE_BYTE: Final = [bytes([z]) for z in range(128)]  # the varint of every zigzag value below 128
_ZERO: Final = b"\x00"
_ONE: Final = b"\x01"
_MISSING: Final = object()  # a field the record does not have (None is a value)


class Unfit(Exception):
    """The value is not exactly what the plan takes (or the data is not what it reads): use fastavro."""


def _varint(out: list[bytes], z: int) -> None:
    """Append the unsigned LEB128 varint of ``z`` (a zigzag-encoded value)."""
    if z < 128:
        out.append(_ONE_BYTE[z])
        return
    digits: list[int] = []
    while z >= 128:
        digits.append((z & 0x7F) | 0x80)
        z >>= 7
    digits.append(z)
    out.append(bytes(digits))


def _long(out: list[bytes], n: int) -> None:
    _varint(out, (n << 1) ^ (n >> 63))


class Reader:
    """A position in the bytes being decoded."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def long(self) -> int:
        data = self.data
        pos = self.pos
        b = data[pos]
        pos += 1
        n = b & 0x7F
        shift = 7
        while b & 0x80:
            if shift > 63:
                raise Unfit("varint longer than a long")
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
        self.pos = pos
        return (n >> 1) ^ -(n & 1)

    def raw(self) -> bytes:
        size = self.long()
        start = self.pos
        end = start + size
        if size < 0 or end > len(self.data):
            raise Unfit("length past the end of the data")
        self.pos = end
        return self.data[start:end]


class Node:
    """How one schema type is written and read."""

    def write(self, out: list[bytes], value: object) -> None:
        raise NotImplementedError

    def read(self, r: Reader) -> object:
        raise NotImplementedError


class NullNode(Node):
    def write(self, out: list[bytes], value: object) -> None:
        if value is not None:
            raise Unfit("not None")

    def read(self, r: Reader) -> object:
        return None


class BooleanNode(Node):
    def write(self, out: list[bytes], value: object) -> None:
        if value is True:
            out.append(_ONE)
        elif value is False:
            out.append(_ZERO)
        else:
            raise Unfit("not a bool")

    def read(self, r: Reader) -> object:
        b = r.data[r.pos]
        if b > 1:
            raise Unfit("boolean byte not 0 or 1")
        r.pos += 1
        return b == 1


class IntegerNode(Node):
    """Avro ``int`` and ``long``: the same zigzag varint, with the type's range."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high

    def write(self, out: list[bytes], value: object) -> None:
        if type(value) is not int:
            raise Unfit("not an int")
        n: int = value
        if n < self.low or n > self.high:
            raise Unfit("out of range")
        _long(out, n)

    def read(self, r: Reader) -> object:
        return r.long()


class StringNode(Node):
    def write(self, out: list[bytes], value: object) -> None:
        if type(value) is not str:
            raise Unfit("not a str")
        s: str = value
        b = s.encode()  # UnicodeEncodeError (a lone surrogate) is the caller's: fastavro's answer then
        _long(out, len(b))
        out.append(b)

    def read(self, r: Reader) -> object:
        return r.raw().decode()


class BytesNode(Node):
    def write(self, out: list[bytes], value: object) -> None:
        if type(value) is not bytes:
            raise Unfit("not bytes")
        b: bytes = value
        _long(out, len(b))
        out.append(b)

    def read(self, r: Reader) -> object:
        return r.raw()


class OptionalNode(Node):
    """A union of null and one other type, in either order."""

    def __init__(self, null_index: int, other: Node) -> None:
        self.null_index = null_index
        self.other = other
        self.null_tag = _ONE_BYTE[null_index << 1]
        self.other_tag = _ONE_BYTE[(1 - null_index) << 1]

    def write(self, out: list[bytes], value: object) -> None:
        if value is None:
            out.append(self.null_tag)
        else:
            out.append(self.other_tag)
            self.other.write(out, value)

    def read(self, r: Reader) -> object:
        index = r.long()
        if index == self.null_index:
            return None
        if index != 1 - self.null_index:
            raise Unfit("union branch out of range")
        return self.other.read(r)


class ArrayNode(Node):
    def __init__(self, items: Node) -> None:
        self.items = items

    def write(self, out: list[bytes], value: object) -> None:
        if type(value) is not list:
            raise Unfit("not a list")
        values: list[object] = value
        if values:
            _long(out, len(values))  # one block with every item, then the empty block, as fastavro writes
            items = self.items
            for v in values:
                items.write(out, v)
        out.append(_ZERO)

    def read(self, r: Reader) -> object:
        values: list[object] = []
        items = self.items
        count = r.long()
        while count != 0:
            if count < 0:  # a block with its size in bytes after the count
                count = -count
                r.long()
            for _ in range(count):
                values.append(items.read(r))
            count = r.long()
        return values


class Field:
    def __init__(self, name: str, node: Node, has_default: bool, default: object) -> None:
        self.name = name
        self.node = node
        self.has_default = has_default
        self.default = default


class RecordNode(Node):
    def __init__(self) -> None:
        self.fields: list[Field] = []  # filled after construction (a field may name this record)

    def write(self, out: list[bytes], value: object) -> None:
        if type(value) is not dict:
            raise Unfit("not a dict")
        record: dict[str, object] = value
        found = 0
        for f in self.fields:
            v = record.get(f.name, _MISSING)
            if v is not _MISSING:
                f.node.write(out, v)
                found += 1
            elif f.has_default:
                f.node.write(out, f.default)
            else:
                raise Unfit("a field without default is missing")
        if found != len(record):
            raise Unfit("a field the schema does not have")

    def read(self, r: Reader) -> object:
        record: dict[str, object] = {}
        for f in self.fields:
            record[f.name] = f.node.read(r)
        return record


class Codec:
    """The plan of one schema: :meth:`encode` and :meth:`decode`, or None where fastavro must answer."""

    def __init__(self, root: Node) -> None:
        self.root = root

    def encode(self, value: object) -> bytes | None:
        out: list[bytes] = []
        try:
            self.root.write(out, value)
        except (Unfit, UnicodeEncodeError):
            return None
        return b"".join(out)

    def decode(self, data: bytes, start: int) -> object | None:
        """The value encoded in ``data`` from ``start`` (bytes after it are ignored, as fastavro does);
        None when the data is not what the plan reads (fastavro then gives the error)."""
        r = Reader(data, start)
        try:
            return self.root.read(r)
        except (Unfit, IndexError, UnicodeDecodeError):
            return None


_PRIMITIVES: Final[dict[str, Node]] = {
    "null": NullNode(),
    "boolean": BooleanNode(),
    "int": IntegerNode(INT_MIN, INT_MAX),
    "long": IntegerNode(LONG_MIN, LONG_MAX),
    "string": StringNode(),
    "bytes": BytesNode(),
}


class _NoPlan(Exception):
    pass


def plan(schema: dict[str, Any]) -> Codec | None:
    """A codec for ``schema`` (as ``fastavro.parse_schema`` returns it: named types in full at first use,
    by full name after), or None when it is not a record or uses a type this module does not plan."""
    try:
        root = _node(schema, {})
    except _NoPlan:
        return None
    return Codec(root) if isinstance(root, RecordNode) else None


def _node(schema: Any, named: dict[str, Node]) -> Node:
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _PRIMITIVES[schema]
        if schema in named:
            return named[schema]
        raise _NoPlan(schema)
    if isinstance(schema, list):
        nulls = [i for i, s in enumerate(schema) if s == "null"]
        if len(schema) != 2 or len(nulls) != 1:
            raise _NoPlan("a union other than null and one type")
        return OptionalNode(nulls[0], _node(schema[1 - nulls[0]], named))
    if not isinstance(schema, dict) or "logicalType" in schema:
        raise _NoPlan(str(schema))
    kind = schema.get("type")
    if kind == "array":
        return ArrayNode(_node(schema["items"], named))
    if kind == "record":
        record = RecordNode()
        named[schema["name"]] = record
        for f in schema["fields"]:
            record.fields.append(Field(f["name"], _node(f["type"], named), "default" in f, f.get("default")))
        return record
    if isinstance(kind, str) and kind in _PRIMITIVES and set(schema) <= {"type", "doc"}:
        return _PRIMITIVES[kind]
    raise _NoPlan(str(kind))
