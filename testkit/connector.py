"""A connector ``TableMeta`` from (column, type oid, typmod) triples: for the connector's tests and benches."""

from __future__ import annotations

from collections.abc import Sequence

from sevisflow.connectors.postgres import convert as cv
from sevisflow.connectors.postgres.envelope import TableMeta


def table_meta(
    columns: Sequence[tuple[str, int, int]], schema: str = "sis", table: str = "person", prefix: str = "sis"
) -> TableMeta:
    """``schema.table`` on topic ``<prefix>.<schema>.<table>``, keyed by ``id``, with these columns."""
    return TableMeta(
        schema=schema,
        table=table,
        topic=f"{prefix}.{schema}.{table}",
        columns=tuple(c for c, _, _ in columns),
        mappings=tuple(cv.column_mapping(oid, mod) for _, oid, mod in columns),
        key_columns=("id",),
    )
