"""Pre-flight checks, publication and slot management, and catalog look-ups (plain SQL, psycopg 3).

Every check fails with a :class:`~sevisflow.core.errors.TerminalError` that names the setting or the
privilege to fix: wal_level not logical, a server older than 10, a user without REPLICATION,
captured tables that do not exist or cannot be read, a publication that is missing while
``publication.autocreate.mode=disabled``, a slot that belongs to another database or plugin.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from sevisflow.connectors.postgres.columns import ColumnPolicy
from sevisflow.connectors.postgres.convert import ColumnMapping, PgType, column_mapping
from sevisflow.connectors.postgres.envelope import NO_DEFAULT, TableMeta
from sevisflow.core.errors import ConfigError, TerminalError

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


@dataclass(frozen=True)
class ServerInfo:
    version_num: int
    wal_level: str
    is_superuser: bool
    can_replicate: bool
    encoding: str
    dbname: str


@dataclass(frozen=True)
class SlotInfo:
    name: str
    plugin: str
    database: str
    active: bool
    active_pid: int | None
    confirmed_flush_lsn: int | None
    restart_lsn: int | None
    lag_bytes: int | None
    wal_status: str | None


def server_info(conn: psycopg.Connection[Any]) -> ServerInfo:
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), "
        "r.rolsuper, r.rolreplication, pg_encoding_to_char(d.encoding), current_database() "
        "FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()"
    ).fetchone()
    assert row is not None
    return ServerInfo(*row)


def check_server(info: ServerInfo) -> None:
    """Refuse to start on a server the connector cannot stream from, saying how to fix it."""
    if info.version_num < 100000:
        raise TerminalError(f"PostgreSQL {info.version_num} is too old: pgoutput needs PostgreSQL 10 or newer")
    if info.wal_level != "logical":
        raise TerminalError(
            f"PostgreSQL wal_level is '{info.wal_level}', logical decoding needs 'logical': "
            "set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart the server"
        )
    if not (info.is_superuser or info.can_replicate):
        raise TerminalError(
            "the database user lacks the REPLICATION attribute: ALTER ROLE <user> REPLICATION "
            "(and GRANT SELECT on the captured tables)"
        )
    if info.encoding != "UTF8":
        raise TerminalError(f"database encoding is {info.encoding}; the connector supports UTF8 databases only")


def compile_include_list(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """Debezium semantics: each entry is a regular expression matched against the whole ``schema.table``."""
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as exc:
            raise ConfigError(
                f"connector.table_include_list: {p!r} is not a valid regular expression ({exc})"
            ) from None
    return out


def included(name: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    return any(p.fullmatch(name) for p in patterns)


def resolve_tables(conn: psycopg.Connection[Any], patterns: Sequence[re.Pattern[str]]) -> list[str]:
    """The existing ordinary/partitioned tables matching the include list, as ``schema.table``, in Debezium's
    snapshot order: by the first include-list pattern each matches, then by name."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname <> ALL(%s) "
        "AND n.nspname NOT LIKE 'pg_temp%%' ORDER BY 1, 2",
        (list(SYSTEM_SCHEMAS),),
    ).fetchall()
    return include_list_order([f"{s}.{t}" for s, t in rows if included(f"{s}.{t}", patterns)], patterns)


def include_list_order(names: Sequence[str], patterns: Sequence[re.Pattern[str]]) -> list[str]:
    """Included ``names`` in Debezium's snapshot order: by the first pattern each matches, then by name."""
    return sorted(names, key=lambda n: (next(i for i, p in enumerate(patterns) if p.fullmatch(n)), n))


def check_select(conn: psycopg.Connection[Any], tables: Sequence[str]) -> None:
    for t in tables:
        schema, table = t.split(".", 1)
        ok = conn.execute(
            "SELECT has_table_privilege(format('%%I.%%I', %s::text, %s::text), 'SELECT')", (schema, table)
        ).fetchone()
        if not ok or not ok[0]:
            raise TerminalError(f"the database user cannot read {t}: GRANT SELECT ON {t} TO <user>")


def _ident(qualified: str) -> sql.Composable:
    schema, table = qualified.split(".", 1)
    return sql.Identifier(schema, table)


def ensure_publication(conn: psycopg.Connection[Any], name: str, mode: str, tables: Sequence[str]) -> str:
    """Create or align the publication per ``publication.autocreate.mode``; returns what it did."""
    row = conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    if mode == "disabled":
        if row is None:
            raise TerminalError(
                f"publication {name!r} does not exist and publication.autocreate.mode=disabled: "
                f"CREATE PUBLICATION {name} FOR TABLE …"
            )
        return "exists"
    if mode == "all_tables":
        if row is None:
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(sql.Identifier(name)))
            return "created"
        if not row[0]:
            raise TerminalError(
                f"publication {name!r} exists but is not FOR ALL TABLES "
                "(publication.autocreate.mode=all_tables): drop it or change the mode"
            )
        return "exists"
    # filtered: the publication holds exactly the captured tables
    if not tables:
        raise TerminalError("table.include.list matches no existing table; nothing to capture")
    tlist = sql.SQL(", ").join(_ident(t) for t in tables)
    if row is None:
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name), tlist))
        return "created"
    if row[0]:
        return "exists (all tables)"
    current = {
        f"{s}.{t}"
        for s, t in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,)
        ).fetchall()
    }
    if current != set(tables):
        conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(name), tlist))
        return "updated"
    return "exists"


def slot_info(conn: psycopg.Connection[Any], name: str) -> SlotInfo | None:
    row = conn.execute(
        "SELECT slot_name, plugin, database, active, active_pid, "
        "(confirmed_flush_lsn - '0/0'::pg_lsn)::int8, (restart_lsn - '0/0'::pg_lsn)::int8, "
        "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END "
        " - confirmed_flush_lsn)::int8, wal_status "
        "FROM pg_replication_slots WHERE slot_name = %s",
        (name,),
    ).fetchone()
    if row is None:
        return None
    return SlotInfo(row[0], row[1] or "", row[2] or "", bool(row[3]), row[4], row[5], row[6], row[7], row[8])


def check_slot(slot: SlotInfo, dbname: str) -> None:
    if slot.plugin != "pgoutput":
        raise TerminalError(
            f"replication slot {slot.name!r} uses plugin {slot.plugin!r}, not pgoutput: "
            "choose another slot.name or drop that slot"
        )
    if slot.database != dbname:
        raise TerminalError(
            f"replication slot {slot.name!r} belongs to database {slot.database!r}, "
            f"not {dbname!r}: choose another slot.name"
        )
    if slot.wal_status == "lost":
        raise TerminalError(
            f"replication slot {slot.name!r} has lost required WAL (wal_status=lost); "
            "drop it and restart with snapshot.mode=when_needed"
        )


def emit_heartbeat(conn: psycopg.Connection[Any], prefix: str, content: str) -> int:
    """A non-transactional logical message: it reaches the slot at once and lets it advance (LSN returned)."""
    row = conn.execute(
        "SELECT (pg_logical_emit_message(false, %s, %s) - '0/0'::pg_lsn)::int8", (prefix, content)
    ).fetchone()
    return int(row[0]) if row else 0


# --------------------------------------------------------------------------- catalog → TableMeta


class Catalog:
    """Cached catalog look-ups the decoder needs: key columns, nullability, non-builtin types."""

    def __init__(
        self, conn: psycopg.Connection[Any], topic_prefix: str, decimal_mode: str, columns: ColumnPolicy | None = None
    ) -> None:
        self.conn = conn
        self.topic_prefix = topic_prefix
        self.decimal_mode = decimal_mode
        self.columns = columns if columns is not None else ColumnPolicy()
        self._types: dict[int, PgType | None] = {}

    def lookup_type(self, oid: int) -> PgType | None:
        if oid not in self._types:
            row = self.conn.execute(
                "SELECT t.oid::int8, t.typname, t.typtype, t.typelem::int8, t.typbasetype::int8, t.typtypmod, "
                "t.typcategory = 'A', "
                "ARRAY(SELECT enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) "
                "FROM pg_type t WHERE t.oid = %s",
                (oid,),
            ).fetchone()
            self._types[oid] = (
                None
                if row is None
                else PgType(
                    oid=int(row[0]),
                    name=row[1],
                    kind=row[2],
                    element=int(row[3]),
                    base=int(row[4]),
                    base_typmod=int(row[5]),
                    is_array=bool(row[6]),
                    labels=tuple(row[7] or ()),
                )
            )
        return self._types[oid]

    def forget_type(self, oid: int) -> None:
        self._types.pop(oid, None)

    def table_columns(self, qualified: str) -> list[tuple[str, int, int, bool]]:
        """(name, type oid, typmod, not null) of the live, non-generated columns in attnum order."""
        schema, table = qualified.split(".", 1)
        return [
            (r[0], int(r[1]), int(r[2]), bool(r[3]))
            for r in self.conn.execute(
                "SELECT a.attname, a.atttypid::int8, a.atttypmod, a.attnotnull FROM pg_attribute a "
                "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
                "AND a.attgenerated = '' ORDER BY a.attnum",
                (schema, table),
            ).fetchall()
        ]

    def column_defaults(self, qualified: str) -> dict[str, str]:
        """Each column's default expression (``pg_get_expr``), for the Connect schema's ``default``."""
        schema, table = qualified.split(".", 1)
        return dict(
            self.conn.execute(
                "SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d "
                "JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
                "JOIN pg_class c ON c.oid = d.adrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND a.attgenerated = ''",
                (schema, table),
            ).fetchall()
        )

    def primary_key(self, qualified: str) -> list[str]:
        schema, table = qualified.split(".", 1)
        rows = self.conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
            "WHERE i.indisprimary AND n.nspname = %s AND c.relname = %s ORDER BY k.ord",
            (schema, table),
        ).fetchall()
        return [r[0] for r in rows]

    def column_types(self, qualified: str, names: Sequence[str]) -> list[str]:
        """SQL type names (format_type) of ``names``: used to cast snapshot chunk boundaries."""
        schema, table = qualified.split(".", 1)
        rows = dict(
            self.conn.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0",
                (schema, table),
            ).fetchall()
        )
        return [rows[n] for n in names]

    def estimate_rows(self, qualified: str) -> int:
        schema, table = qualified.split(".", 1)
        row = self.conn.execute(
            "SELECT c.reltuples::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (schema, table),
        ).fetchone()
        return max(int(row[0]), 0) if row else 0

    def topic_for(self, schema: str, table: str) -> str:
        return re.sub(r"[^a-zA-Z0-9._-]", "_", f"{self.topic_prefix}.{schema}.{table}")

    def table_meta(
        self,
        schema: str,
        table: str,
        columns: Sequence[tuple[str, int, int]],
        relid: int = 0,
        identity_keys: Sequence[str] = (),
    ) -> TableMeta:
        """A :class:`TableMeta` for ``columns`` (name, type oid, typmod) — from a Relation message or the catalog."""
        qualified = f"{schema}.{table}"
        try:
            pk = self.primary_key(qualified)
            notnull = {c[0]: c[3] for c in self.table_columns(qualified)}
            exprs = self.column_defaults(qualified)
        except psycopg.Error:
            pk, notnull, exprs = [], {}, {}
        names = [c[0] for c in columns]
        if not pk or any(k not in names for k in pk):
            pk = [k for k in identity_keys if k in names]
        mappings = tuple(column_mapping(oid, typmod, self.lookup_type, self.decimal_mode) for _, oid, typmod in columns)
        optional = tuple(not notnull.get(n, False) and n not in pk for n in names)
        # varchar(n) / char(n) carry n + 4 in their typmod: a hash mask is cut to the column's length, as Debezium does
        lengths = [typmod - 4 if oid in (1042, 1043) and typmod > 4 else None for _, oid, typmod in columns]
        policy = self.columns.for_table(schema, table, names, pk, lengths)
        defaults = tuple(default_value(exprs.get(n), m) for n, m in zip(names, mappings))
        return TableMeta(
            schema=schema,
            table=table,
            topic=self.topic_for(schema, table),
            columns=tuple(names),
            mappings=mappings,
            key_columns=tuple(pk),
            optional=optional,
            relid=relid,
            policy=policy,
            defaults=defaults,
        )


_QUOTED_DEFAULT = re.compile(r"^'((?:[^']|'')*)'(?:::[\w \".\[\]()]+)?$")
_NUMBER_DEFAULT = re.compile(r"^\(?(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\)?(?:::[\w ]+)?$")


def default_value(expr: str | None, mapping: ColumnMapping) -> Any:
    """A column's default as the Connect schema's ``default``: only for a constant (a literal, a number,
    true/false), converted like a value of the column; NO_DEFAULT for none, NULL, or an expression
    (``now()``, ``nextval(…)``) — evaluating those would need the server and could have side effects."""
    if expr is None:
        return NO_DEFAULT
    expr = expr.strip()
    text: str | None = None
    m = _QUOTED_DEFAULT.match(expr)
    if m:
        text = m.group(1).replace("''", "'")
    elif m := _NUMBER_DEFAULT.match(expr):
        text = m.group(1)
    elif expr in ("true", "false"):
        text = expr[0]
    if text is None:
        return NO_DEFAULT
    try:
        return mapping.convert(text) if mapping.convert is not None else text
    except (ValueError, TypeError, ArithmeticError):
        return NO_DEFAULT
