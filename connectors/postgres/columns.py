"""Columns a school keeps off its change topics: Debezium's ``column.exclude.list`` and
``column.mask.hash.v2.<algorithm>.with.salt.<salt>``, with Debezium's names and semantics.

Why: change topics live for years (auditors replay them), so a school may decide that some personal
data — a passport number, a birth date — never goes there. ``column.exclude.list`` drops a column from
every event (``before``, ``after`` and the schema); a hash mask replaces a character column's value by
the lower-case hex digest of ``salt + value`` (UTF-8, Debezium's "v2" hashing), cut to the column's
declared length when it has one, so equal values still compare equal downstream without being readable.
Both take comma-separated regular expressions matched against the whole ``schema.table.column`` name.

Primary-key columns can be neither excluded nor masked: the key is how normalize links a row to its
student and how Kafka partitions a table, so the connector refuses such a setting at start.
A table with an excluded or masked column takes the generic (Python) event path; the C fast paths write
every column as it is and are used only for tables without a policy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sevisflow.core.errors import ConfigError

# column.mask.hash.<algorithm>.with.salt.<salt> and column.mask.hash.v2.<algorithm>.with.salt.<salt>
MASK_KEY = re.compile(r"column\.mask\.hash\.(?:(v[12])\.)?([A-Za-z0-9-]+)\.with\.salt\.(.+)")
# Java MessageDigest names → hashlib names
ALGORITHMS = {
    "MD5": "md5",
    "SHA-1": "sha1",
    "SHA-224": "sha224",
    "SHA-256": "sha256",
    "SHA-384": "sha384",
    "SHA-512": "sha512",
    "SHA3-256": "sha3_256",
    "SHA3-512": "sha3_512",
}


def _patterns(where: str, text: str) -> tuple[re.Pattern[str], ...]:
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(re.compile(part))
        except re.error as exc:
            raise ConfigError(f"{where}: {part!r} is not a regular expression ({exc}): fix the pattern") from None
    return tuple(out)


@dataclass(frozen=True)
class HashMask:
    """One ``column.mask.hash…`` setting: which columns, which digest, which salt."""

    patterns: tuple[re.Pattern[str], ...]
    algorithm: str  # hashlib name
    salt: bytes

    def digest(self, value: str, length: int | None) -> str:
        h = hashlib.new(self.algorithm)
        h.update(self.salt)
        h.update(value.encode("utf-8"))
        text = h.hexdigest()
        return text[:length] if length else text


@dataclass(frozen=True)
class TablePolicy:
    """What to do to one table's rows: columns to drop, columns to hash (with the column's length)."""

    excluded: frozenset[str]
    masked: Mapping[str, tuple[HashMask, int | None]] = field(default_factory=dict)

    def apply(self, row: dict[str, Any] | None) -> dict[str, Any] | None:
        """The row as it may leave the connector (a new dict; ``row`` is not changed)."""
        if row is None:
            return None
        out = {c: v for c, v in row.items() if c not in self.excluded}
        for name, (mask, length) in self.masked.items():
            v = out.get(name)
            if isinstance(v, str):
                out[name] = mask.digest(v, length)
        return out


@dataclass(frozen=True)
class ColumnPolicy:
    """The connector's column settings, parsed once; :meth:`for_table` gives a table's policy or None."""

    exclude: tuple[re.Pattern[str], ...] = ()
    masks: tuple[HashMask, ...] = ()

    @classmethod
    def from_settings(cls, exclude_list: Sequence[str], mask_hash: Mapping[str, str]) -> ColumnPolicy:
        exclude = _patterns("connector.column.exclude.list", ",".join(exclude_list))
        masks = []
        for key, columns in mask_hash.items():
            m = MASK_KEY.fullmatch(key)
            if m is None:
                raise ConfigError(f"connector.{key}: use column.mask.hash.v2.<algorithm>.with.salt.<salt>")
            version, alg, salt = m.groups()
            if version != "v2":
                raise ConfigError(
                    f"connector.{key}: only Debezium's v2 hashing (of the value's text) is "
                    "supported; the unversioned (v1) form hashes Java-serialised objects, which "
                    "no other system can reproduce: use column.mask.hash.v2.…"
                )
            if alg not in ALGORITHMS:
                raise ConfigError(
                    f"connector.{key}: unknown hash algorithm {alg!r}: use one of {', '.join(ALGORITHMS)}"
                )
            masks.append(HashMask(_patterns(f"connector.{key}", columns), ALGORITHMS[alg], salt.encode("utf-8")))
        return cls(exclude, tuple(masks))

    def __bool__(self) -> bool:
        return bool(self.exclude or self.masks)

    def for_table(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        key_columns: Sequence[str],
        lengths: Sequence[int | None] = (),
    ) -> TablePolicy | None:
        """The policy of ``schema.table`` or None when no column of it is excluded or masked.

        Raises :class:`ConfigError` when a primary-key column is matched."""
        if not self:
            return None
        excluded: set[str] = set()
        masked: dict[str, tuple[HashMask, int | None]] = {}
        for i, col in enumerate(columns):
            full = f"{schema}.{table}.{col}"
            if any(p.fullmatch(full) for p in self.exclude):
                excluded.add(col)
                continue
            for mask in self.masks:
                if any(p.fullmatch(full) for p in mask.patterns):
                    masked[col] = (mask, lengths[i] if i < len(lengths) else None)
                    break
        bad = [c for c in key_columns if c in excluded or c in masked]
        if bad:
            raise ConfigError(
                f"{schema}.{table}.{bad[0]} is a primary-key column: it cannot be excluded or masked "
                "(normalize links rows by it); narrow column.exclude.list / column.mask.hash"
            )
        if not excluded and not masked:
            return None
        return TablePolicy(frozenset(excluded), masked)
