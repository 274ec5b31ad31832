"""The snapshot's source.snapshot marks over any chunking: Debezium 3's rule, whatever the chunk sizes."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from sevisflow.connectors.postgres.snapshot import SnapshotMarks, snapshot_marker


@dataclass(frozen=True)
class _Table:
    """The one thing the marks read of a table's meta: its name."""

    full_name: str


def _marks(tables: list[list[list[int]]], first: bool = True, resumed: str | None = None) -> list[tuple[str, int, str]]:
    """(table, row, mark) in the order the runs hand them out, for chunks per table."""
    m = SnapshotMarks(first=first, resumed_table=resumed)
    out = []
    for t, chunks in enumerate(tables):
        meta = _Table(f"public.t{t}")
        for chunk in chunks:
            for run_meta, rows, mark in m.runs(meta, chunk):  # type: ignore[arg-type]
                out += [(run_meta.full_name, r, mark) for r in rows]
    for run_meta, rows, mark in m.finish():
        out += [(run_meta.full_name, r, mark) for r in rows]
    return out


def _expected(tables: list[list[list[int]]], resumed: str | None = None) -> list[tuple[str, int, str]]:
    rows = [(f"public.t{t}", r) for t, chunks in enumerate(tables) for chunk in chunks for r in chunk]
    out = []
    for i, (name, r) in enumerate(rows):
        first_in = (i == 0 or rows[i - 1][0] != name) and name != resumed
        last_in = i == len(rows) - 1 or rows[i + 1][0] != name
        out.append((name, r, snapshot_marker(i == 0, first_in, last_in, i == len(rows) - 1)))
    return out


_chunks = st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=4), min_size=0, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(_chunks, min_size=1, max_size=4))
def test_every_row_once_in_order_with_debeziums_mark(tables: list[list[list[int]]]) -> None:
    assert _marks(tables) == _expected(tables)


def test_a_one_row_snapshot_is_first() -> None:
    assert _marks([[[1]]]) == [("public.t0", 1, "first")]


def test_a_resumed_snapshot_has_no_first_and_the_resumed_table_no_first_in_table() -> None:
    got = _marks([[[1, 2]], [[3], [4]]], first=False, resumed="public.t0")
    assert got == [
        ("public.t0", 1, "true"),
        ("public.t0", 2, "last_in_data_collection"),
        ("public.t1", 3, "first_in_data_collection"),
        ("public.t1", 4, "last"),
    ]


def test_the_held_row_is_not_finished_until_the_next_chunk_or_the_end() -> None:
    m = SnapshotMarks(first=True)
    runs = list(m.runs(_Table("public.a"), [1, 2, 3]))  # type: ignore[arg-type]
    assert [(list(rows), mark) for _, rows, mark in runs] == [([1], "first"), ([2], "true")]
    assert m.held_table == "public.a"
    assert [(list(rows), mark) for _, rows, mark in m.finish()] == [([3], "last")]
    assert m.held_table is None
