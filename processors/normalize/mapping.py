"""The mapping file: which SIS tables and columns feed the canonical student, and how values translate.

A school describes its SIS once, in TOML (docs/MAPPING.md is the reference; deploy/sis/mapping.toml
maps the reference schema). Loading checks everything that can be checked without data: unknown
keys, unknown sections and canonical fields, value tables that are named but missing. What can only
be checked against data (a column the rows do not have, a code the table does not list) becomes a
dead letter at run time, never a crash.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping as TMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sevisflow.core.errors import ConfigError
from sevisflow.processors.normalize import codes
from sevisflow.processors.normalize.canonical import SECTIONS, FieldType

UNMAPPED_POLICIES = ("error", "keep", "null")


@dataclass(frozen=True)
class ValueTable:
    """SIS value → canonical value. ``unmapped``: error (dead letter) | keep (pass through) | null."""

    name: str
    values: dict[str, Any]
    unmapped: str = "error"
    case_insensitive: bool = False

    def lookup(self, raw: Any) -> tuple[bool, Any]:
        """(found, value); ``found`` False means the policy ``error`` applies."""
        key = str(raw).strip()
        probe = key.lower() if self.case_insensitive else key
        if probe in self.values:
            return True, self.values[probe]
        if self.unmapped == "keep":
            return True, key
        if self.unmapped == "null":
            return True, None
        return False, None


@dataclass(frozen=True)
class FieldSpec:
    """One canonical field fed by one SIS column (or a column of the looked-up reference row)."""

    name: str
    column: str
    from_lookup: bool = False
    scale: int | None = None  # decimal scale of a Debezium bytes-encoded NUMERIC without a schema


@dataclass(frozen=True, slots=True)
class FieldPlan:
    """One field of a feed as normalize converts it (:meth:`Mapping.field_plan`): its column, type, value table
    (enums) and whether it is an address's state (checked against the US states in a US slot)."""

    name: str
    column: str
    from_lookup: bool
    scale: int | None
    ft: FieldType
    table: ValueTable | None
    us_state: bool


@dataclass(frozen=True)
class Lookup:
    reference: str  # the reference table's name
    on: str  # the column of this table holding the reference key


@dataclass(frozen=True)
class Feed:
    """One SIS table feeding (part of) one canonical section."""

    table: str
    section: str
    fields: tuple[FieldSpec, ...]
    link: str | None = None  # column pointing at the student (None: the student table itself)
    slot: str | None = None  # fixed slot (keyed sections), e.g. "foreign"
    slot_column: str | None = None  # or: the column whose value names the slot
    slots: dict[str, str] | None = None  # SIS slot value → canonical slot (None: the value itself)
    where: dict[str, Any] = field(default_factory=dict)  # only rows with these column values count
    lookup: Lookup | None = None
    columns: frozenset[str] = field(init=False, repr=False, compare=False)
    """The row columns this feed reads (checked on every row change: computed once, with the feed). Not a
    ``functools.cached_property``: mypyc, which compiles this module, would run it at every read."""

    def __post_init__(self) -> None:
        cols = {f.column for f in self.fields if not f.from_lookup}
        cols |= set(self.where)
        for c in (self.link, self.slot_column, self.lookup.on if self.lookup else None):
            if c:
                cols.add(c)
        object.__setattr__(self, "columns", frozenset(cols))


@dataclass(frozen=True)
class Reference:
    """A lookup table that belongs to no student (e.g. terms), joined into feeds by key."""

    table: str
    name: str
    key: str


@dataclass(frozen=True)
class Mapping:
    student_table: str
    student_key: str
    student_id: str
    international_visas: frozenset[str]
    feeds: tuple[Feed, ...]
    references: tuple[Reference, ...]
    values: dict[str, ValueTable]
    origin: str = "mapping"
    # visas of students SEVIS holds in another batch (J-1 → EV): their changes become dead letters
    other_sevis_visas: frozenset[str] = frozenset()
    _feeds_by_table: dict[str, tuple[Feed, ...]] = field(init=False, repr=False, compare=False)
    _indexed_feeds_by_table: dict[str, tuple[tuple[int, Feed], ...]] = field(init=False, repr=False, compare=False)
    _reference_by_table: dict[str, Reference] = field(init=False, repr=False, compare=False)
    _field_plans: dict[int, tuple[FieldPlan, ...]] = field(init=False, repr=False, compare=False)

    def tables(self) -> list[str]:
        """Every SIS table (schema.table) the mapping reads, in a stable order."""
        seen: dict[str, None] = {}
        for f in self.feeds:
            seen.setdefault(f.table, None)
        for r in self.references:
            seen.setdefault(r.table, None)
        return list(seen)

    def __post_init__(self) -> None:
        # per-table lookups, asked for every row change: computed once (the mapping is immutable)
        by_table: dict[str, list[Feed]] = {}
        for f in self.feeds:
            by_table.setdefault(f.table, []).append(f)
        object.__setattr__(self, "_feeds_by_table", {t: tuple(fs) for t, fs in by_table.items()})
        indexed: dict[str, list[tuple[int, Feed]]] = {}
        for i, f in enumerate(self.feeds):
            indexed.setdefault(f.table, []).append((i, f))
        object.__setattr__(self, "_indexed_feeds_by_table", {t: tuple(fs) for t, fs in indexed.items()})
        object.__setattr__(self, "_reference_by_table", {r.table: r for r in reversed(self.references)})
        object.__setattr__(self, "_field_plans", {})  # filled by field_plan, feed by feed

    def feeds_of(self, table: str) -> tuple[Feed, ...]:
        return self._feeds_by_table.get(table, ())

    def indexed_feeds_of(self, table: str) -> tuple[tuple[int, Feed], ...]:
        """(index in :attr:`feeds`, feed) of every feed of ``table``: a contribution names its feed by index."""
        return self._indexed_feeds_by_table.get(table, ())

    def field_plan(self, fi: int) -> tuple[FieldPlan, ...]:
        """The fields of feed ``fi`` as normalize converts them at every row change, resolved once."""
        plan = self._field_plans.get(fi)
        if plan is None:
            feed = self.feeds[fi]
            sec = SECTIONS[feed.section]
            steps = []
            for spec in feed.fields:
                ft = sec.fields[spec.name]
                table = None
                if ft.kind == "enum":
                    table = self.value_table(ft.values or "")
                    assert table is not None
                us_state = feed.section == "address" and spec.name == "state"
                steps.append(FieldPlan(spec.name, spec.column, spec.from_lookup, spec.scale, ft, table, us_state))
            plan = self._field_plans[fi] = tuple(steps)
        return plan

    def reference_of(self, table: str) -> Reference | None:
        return self._reference_by_table.get(table)

    def value_table(self, name: str) -> ValueTable | None:
        return self.values.get(name)


def load_mapping(path: str | Path) -> Mapping:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"mapping file {p} does not exist (school.mapping_file)")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    return mapping_from_dict(raw, origin=str(p))


def _need(d: TMapping[str, Any], key: str, where: str, origin: str) -> Any:
    if key not in d:
        raise ConfigError(f"{origin}: {where} needs '{key}'")
    return d[key]


def _check_keys(d: TMapping[str, Any], allowed: set[str], where: str, origin: str) -> None:
    unknown = set(d) - allowed
    if unknown:
        raise ConfigError(f"{origin}: unknown key {where}.{sorted(unknown)[0]} (known: {', '.join(sorted(allowed))})")


def mapping_from_dict(raw: TMapping[str, Any], origin: str = "mapping") -> Mapping:
    """Build and validate a :class:`Mapping` from parsed TOML."""
    _check_keys(raw, {"version", "student", "international", "feed", "reference", "values"}, "", origin)
    if raw.get("version", 1) != 1:
        raise ConfigError(f"{origin}: unsupported mapping version {raw.get('version')} (this sevisflow reads 1)")
    st = _need(raw, "student", "the mapping", origin)
    _check_keys(st, {"table", "key", "id"}, "student", origin)
    student_table = _need(st, "table", "[student]", origin)
    student_key = _need(st, "key", "[student]", origin)
    student_id = st.get("id", student_key)
    intl = raw.get("international", {})
    _check_keys(intl, {"visa_types", "not_reported_visa_types"}, "international", origin)
    visas = frozenset(intl.get("visa_types", ["01", "02"]))
    other_visas = frozenset(intl.get("not_reported_visa_types", [])) - visas

    values: dict[str, ValueTable] = {}
    for name, spec in raw.get("values", {}).items():
        values[name] = _value_table(name, spec, origin)

    references = []
    for i, r in enumerate(raw.get("reference", [])):
        _check_keys(r, {"table", "name", "key"}, f"reference[{i}]", origin)
        references.append(
            Reference(
                _need(r, "table", f"reference[{i}]", origin),
                _need(r, "name", f"reference[{i}]", origin),
                _need(r, "key", f"reference[{i}]", origin),
            )
        )
    ref_names = {r.name for r in references}

    feeds = []
    for i, f in enumerate(raw.get("feed", [])):
        where = f"feed[{i}]"
        _check_keys(
            f, {"table", "section", "link", "slot", "slot_column", "slots", "where", "lookup", "fields"}, where, origin
        )
        table = _need(f, "table", where, origin)
        section = _need(f, "section", where, origin)
        if section not in SECTIONS:
            raise ConfigError(
                f"{origin}: {where} ({table}): unknown section {section!r} (known: {', '.join(SECTIONS)})"
            )
        sec = SECTIONS[section]
        link = f.get("link")
        if table != student_table and not link:
            raise ConfigError(f"{origin}: {where} ({table}) needs 'link', the column that points at the student")
        if sec.keyed and not (f.get("slot") or f.get("slot_column")):
            raise ConfigError(
                f"{origin}: {where} ({table}): section {section} has one entry per "
                f"{sec.slot_name}; give 'slot' or 'slot_column'"
            )
        if f.get("slot") and sec.slots and f["slot"] not in sec.slots:
            raise ConfigError(f"{origin}: {where} ({table}): slot {f['slot']!r} is not one of {sec.slots}")
        if f.get("slots") and sec.slots:
            bad = [v for v in f["slots"].values() if v not in sec.slots]
            if bad:
                raise ConfigError(f"{origin}: {where} ({table}): slot {bad[0]!r} is not one of {sec.slots}")
        lookup = None
        if "lookup" in f:
            lk = f["lookup"]
            _check_keys(lk, {"reference", "on"}, f"{where}.lookup", origin)
            lookup = Lookup(
                _need(lk, "reference", f"{where}.lookup", origin), _need(lk, "on", f"{where}.lookup", origin)
            )
            if lookup.reference not in ref_names:
                raise ConfigError(
                    f"{origin}: {where}.lookup names reference {lookup.reference!r}, which no [[reference]] defines"
                )
        specs = []
        for name, col in _need(f, "fields", where, origin).items():
            if name not in sec.fields:
                raise ConfigError(
                    f"{origin}: {where} ({table}): section {section} has no field {name!r} "
                    f"(known: {', '.join(sec.fields)})"
                )
            scale = None
            if isinstance(col, dict):
                _check_keys(col, {"column", "scale"}, f"{where}.fields.{name}", origin)
                scale = col.get("scale")
                col = _need(col, "column", f"{where}.fields.{name}", origin)
            if not isinstance(col, str) or not col:
                raise ConfigError(f"{origin}: {where}.fields.{name} must name a column")
            from_lookup = False
            if lookup and col.startswith(lookup.reference + "."):
                col, from_lookup = col[len(lookup.reference) + 1 :], True
            specs.append(FieldSpec(name, col, from_lookup, scale))
            ft = sec.fields[name]
            if ft.values and ft.values not in values and ft.builtin_default is None:
                raise ConfigError(f"{origin}: field {section}.{name} needs a [values.{ft.values}] table")
        feeds.append(
            Feed(
                table=table,
                section=section,
                fields=tuple(specs),
                link=link,
                slot=f.get("slot"),
                slot_column=f.get("slot_column"),
                slots=f.get("slots"),
                where=dict(f.get("where", {})),
                lookup=lookup,
            )
        )
    if not any(f.table == student_table for f in feeds):
        raise ConfigError(f"{origin}: no [[feed]] reads the student table {student_table}")
    # builtin defaults for value tables the mapping does not list
    for sec in SECTIONS.values():
        for ft in sec.fields.values():
            if ft.values and ft.values not in values and ft.builtin_default is not None:
                values[ft.values] = _value_table(ft.values, {"builtin": ft.builtin_default}, origin)
    if "us_state" not in values:
        values["us_state"] = _value_table("us_state", {"builtin": "us_state_names"}, origin)
    return Mapping(
        student_table, student_key, student_id, visas, tuple(feeds), tuple(references), values, origin, other_visas
    )


def _value_table(name: str, spec: Any, origin: str) -> ValueTable:
    if not isinstance(spec, dict):
        raise ConfigError(f"{origin}: [values.{name}] must be a table")
    _check_keys(spec, {"builtin", "map", "unmapped", "case_insensitive"}, f"values.{name}", origin)
    unmapped = spec.get("unmapped", "error")
    if unmapped not in UNMAPPED_POLICIES:
        raise ConfigError(f"{origin}: values.{name}.unmapped must be one of {UNMAPPED_POLICIES}")
    case_insensitive = bool(spec.get("case_insensitive", False))
    table: dict[str, Any] = {}
    builtin = spec.get("builtin")
    if builtin:
        if builtin == "identity":
            unmapped = "keep"
        elif builtin not in codes.BUILTINS:
            raise ConfigError(
                f"{origin}: values.{name}.builtin {builtin!r} is unknown (known: identity, {', '.join(codes.BUILTINS)})"
            )
        else:
            table.update(codes.BUILTINS[builtin])
            if builtin == "us_state_names":
                case_insensitive = True
    table.update(spec.get("map", {}))
    if case_insensitive:
        table = {k.lower(): v for k, v in table.items()}
    return ValueTable(name, table, unmapped, case_insensitive)


def describe_type(ft: FieldType) -> str:
    return ft.kind + (f"({ft.values})" if ft.values else "")
