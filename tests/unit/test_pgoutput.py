"""The pgoutput decoder: hand-built payloads (byte layouts from the protocol docs) and round trips."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sevisflow.connectors.postgres import pgoutput as pg
from sevisflow.connectors.postgres.pgoutput import UNCHANGED


def test_begin_and_commit_by_hand() -> None:
    ts_pg = 1_000_000  # one second after 2000-01-01
    begin = b"B" + struct.pack(">QqI", 0x16B3748, ts_pg, 742)
    msg = pg.decode(begin)
    assert msg == pg.Begin(final_lsn=0x16B3748, commit_ts_us=946_684_801_000_000, xid=742)
    commit = b"C" + struct.pack(">BQQq", 0, 0x16B3748, 0x16B3778, ts_pg)
    assert pg.decode(commit) == pg.Commit(0, 0x16B3748, 0x16B3778, 946_684_801_000_000)


def test_relation_by_hand() -> None:
    payload = (
        b"R"
        + struct.pack(">I", 16384)
        + b"public\0person\0"
        + b"f"
        + struct.pack(">H", 2)
        + b"\x01id\0"
        + struct.pack(">Ii", 20, -1)
        + b"\x00name\0"
        + struct.pack(">Ii", 1043, 104)
    )
    rel = pg.decode(payload)
    assert isinstance(rel, pg.Relation)
    assert (rel.relid, rel.namespace, rel.name, rel.replica_identity) == (16384, "public", "person", "f")
    assert rel.columns == (pg.Column(1, "id", 20, -1), pg.Column(0, "name", 1043, 104))
    assert rel.columns[0].is_key and not rel.columns[1].is_key


def test_insert_update_delete_tuples_by_hand() -> None:
    word = "Zoë €".encode()
    tup = (
        struct.pack(">H", 4)
        + b"t"
        + struct.pack(">I", 2)
        + b"42"
        + b"n"
        + b"u"
        + b"t"
        + struct.pack(">I", len(word))
        + word
    )
    ins = pg.decode(b"I" + struct.pack(">I", 7) + b"N" + tup)
    assert ins == pg.Insert(7, ["42", None, UNCHANGED, "Zoë €"])

    simple = struct.pack(">H", 1) + b"t" + struct.pack(">I", 1) + b"1"
    upd = pg.decode(b"U" + struct.pack(">I", 7) + b"O" + simple + b"N" + simple)
    assert upd == pg.Update(7, "O", ["1"], ["1"])
    upd_nokey = pg.decode(b"U" + struct.pack(">I", 7) + b"N" + simple)
    assert upd_nokey == pg.Update(7, None, None, ["1"])
    dele = pg.decode(b"D" + struct.pack(">I", 7) + b"K" + simple)
    assert dele == pg.Delete(7, "K", ["1"])


def test_truncate_message_type_origin() -> None:
    t = pg.decode(b"T" + struct.pack(">IB", 2, 3) + struct.pack(">II", 10, 11))
    assert t == pg.Truncate((10, 11), cascade=True, restart_identity=True)
    m = pg.decode(b"M" + struct.pack(">Bq", 0, 99) + b"sevisflow.heartbeat\0" + struct.pack(">I", 3) + b"abc")
    assert m == pg.Message(False, 99, "sevisflow.heartbeat", b"abc")
    y = pg.decode(b"Y" + struct.pack(">I", 70000) + b"public\0mood\0")
    assert y == pg.TypeInfo(70000, "public", "mood")
    o = pg.decode(b"O" + struct.pack(">q", 5) + b"node1\0")
    assert o == pg.Origin(5, "node1")


@pytest.mark.parametrize("payload", [b"", b"Z123", b"I\0\0\0\1X", b"B\0\0", b"U\0\0\0\1O\0\1t\0\0\0\x09"])
def test_malformed_payloads_raise_decode_error(payload: bytes) -> None:
    with pytest.raises(pg.DecodeError):
        pg.decode(payload)


def test_decode_error_never_shows_values() -> None:
    secret = "Jane Doe 1999-01-01"
    data = secret.encode()
    payload = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"t" + struct.pack(">I", len(data) + 5) + data
    with pytest.raises(pg.DecodeError) as err:
        pg.decode(payload)
    assert "Jane" not in str(err.value)


values = st.lists(st.one_of(st.none(), st.just(UNCHANGED), st.text(max_size=30)), max_size=12)
lsns = st.integers(min_value=0, max_value=2**63 - 1)


@settings(max_examples=200, deadline=None)
@given(relid=st.integers(1, 2**32 - 1), new=values, old=st.one_of(st.none(), values), kind=st.sampled_from(["K", "O"]))
def test_round_trip_changes(relid: int, new: list, old: list | None, kind: str) -> None:
    assert pg.decode(pg.encode(pg.Insert(relid, new))) == pg.Insert(relid, new)
    upd = pg.Update(relid, None if old is None else kind, old, new)
    assert pg.decode(pg.encode(upd)) == upd
    dele = pg.Delete(relid, kind, new)
    assert pg.decode(pg.encode(dele)) == dele


@settings(max_examples=100, deadline=None)
@given(
    lsn=lsns,
    end=lsns,
    xid=st.integers(0, 2**32 - 1),
    ts=st.integers(0, 2**52),
    cols=st.lists(
        st.tuples(
            st.integers(0, 1),
            st.text(
                alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=10
            ),
            st.integers(1, 2**32 - 1),
            st.integers(-1, 2**31 - 1),
        ),
        max_size=8,
    ),
)
def test_round_trip_control_messages(lsn: int, end: int, xid: int, ts: int, cols: list) -> None:
    for msg in [
        pg.Begin(lsn, ts, xid),
        pg.Commit(0, lsn, end, ts),
        pg.Relation(xid, "s", "t", "f", tuple(pg.Column(*c) for c in cols)),
        pg.Message(True, lsn, "p", b"\x00\xff"),
        pg.Truncate((1, 2, 3), False, True),
    ]:
        assert pg.decode(pg.encode(msg)) == msg


def test_lsn_format_round_trip() -> None:
    assert pg.format_lsn(0x16B3748) == "0/16B3748"
    assert pg.parse_lsn("1/0000FF00") == (1 << 32) | 0xFF00
    assert pg.parse_lsn(pg.format_lsn(123456789012)) == 123456789012
