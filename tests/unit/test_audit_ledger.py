"""The audit ledger's pure parts: sealing once, evidence and states, concurrent writers, anchors; forward-only moves."""

from __future__ import annotations

import threading

import orjson
import pytest

from sevisflow.core.errors import TerminalError
from sevisflow.core.ledger import (
    Ledger,
    LedgerWriter,
    anchor_key,
    anchored_head,
    anchors_for,
    chain,
    check_anchors,
    check_chain,
    latest_anchors,
    seal_archive,
    seal_evidence,
    sealed_by_batch,
)
from sevisflow.sinks.outbox import Outbox


def _batch(tmp_path, bid="SLEDGER0000001"):
    ob = Outbox(tmp_path / "outbox", tmp_path / "q", "America/Chicago")
    bd, _ = ob.write_ready("2025-06-03", bid, b"<xml/>", {"batch_id": bid, "file": f"{bid}.xml", "sha256": "x"})
    return ob, bd


def test_archive_is_sealed_once_and_evidence_file_by_file_with_the_state(tmp_path):
    ob, bd = _batch(tmp_path)
    ledger = Ledger(ob.root)
    _, new = seal_archive(ledger, bd, "SLEDGER0000001")
    assert [e["kind"] for e in new] == ["archive"]
    assert seal_archive(ledger, bd, "SLEDGER0000001")[1] == [], "a re-delivered batch adds no line"
    bd = ob.move(bd, "sending")
    (bd.path / "post-1.json").write_bytes(b"{}")
    (bd.path / "state.json").write_bytes(b"{}")
    _, new = seal_evidence(ledger, bd, "SLEDGER0000001")
    assert new[0]["files"].keys() == {"post-1.json"} and new[0]["state"] == "sending", "state.json is not evidence"
    assert seal_evidence(ledger, bd, "SLEDGER0000001")[1] == []
    bd = ob.move(bd, "uploaded")
    _, new = seal_evidence(ledger, bd, "SLEDGER0000001")
    assert new[0]["files"] == {} and new[0]["state"] == "uploaded", "a move forward alone is sealed"
    sealed = sealed_by_batch(ledger.entries())["SLEDGER0000001"]
    assert sealed["state"] == "uploaded" and sealed["archive"]["seq"] == 1
    assert check_chain(ledger.entries())[0] == []


def test_concurrent_writers_keep_one_chain(tmp_path):
    ob = Outbox(tmp_path / "outbox", tmp_path / "q", "America/Chicago")
    dirs = [ob.write_ready("2025-06-03", f"SCONC{i:09d}", b"<x/>", {"batch_id": f"SCONC{i:09d}"})[0] for i in range(20)]
    ledger = Ledger(ob.root)
    threads = [threading.Thread(target=seal_archive, args=(Ledger(ob.root), bd, bd.name)) for bd in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = ledger.entries()
    assert len(entries) == 20 and check_chain(entries)[0] == []


def test_anchors_catch_truncation_an_older_copy_and_relinking(tmp_path):
    ob, bd = _batch(tmp_path)
    ledger = Ledger(ob.root)
    w = LedgerWriter(ledger, "sink-xml", "ORG")
    key, value = w.seal_archive(bd, "SLEDGER0000001")
    bd2 = ob.write_ready("2025-06-03", "SLEDGER0000002", b"<y/>", {"batch_id": "SLEDGER0000002"})[0]
    key, value = w.seal_archive(bd2, "SLEDGER0000002")
    anchors = latest_anchors([(key, value)])
    assert anchors_for(anchors, ledger.path) == anchors and anchors_for(anchors, tmp_path / "other.jsonl") == {}
    entries = ledger.entries()
    assert check_anchors(entries, anchors) == [] and anchored_head(anchors) == (2, entries[1]["hash"])
    assert "older copy" in check_anchors(entries[:1], anchors)[0]
    assert "older copy" in check_anchors([], anchors)[0]
    # a batch removed and the chain re-linked (a forged second line): same length, another hash at line 2
    relinked = [
        entries[0],
        chain(
            entries[:1],
            {k: v for k, v in entries[1].items() if k not in ("seq", "prev", "hash")} | {"batch_id": "SFORGED0000002"},
        ),
    ]
    assert check_chain(relinked)[0] == [], "the chain alone looks intact"
    assert "rewritten" in check_anchors(relinked, anchors)[0]
    assert "unreadable" in check_anchors(entries, {key.decode(): {"unreadable": True}})[0]
    # a writer refuses to extend a ledger that lost its anchor (it would re-anchor the forgery)
    ledger.path.write_bytes(orjson.dumps(entries[0], option=orjson.OPT_SORT_KEYS) + b"\n")
    restarted = LedgerWriter(ledger, "sink-xml", "ORG", anchors)
    with pytest.raises(TerminalError, match="not the one anchored"):
        restarted.head()
    with pytest.raises(TerminalError, match="not the one anchored"):
        restarted.seal_archive(bd2, "SLEDGER0000002")
    assert len(ledger.entries()) == 1, "nothing appended"
    assert key == anchor_key("ORG", "sink-xml", ledger.path)


def test_outbox_moves_only_forward(tmp_path):
    ob, bd = _batch(tmp_path)
    bd = ob.move(bd, "sending")
    bd = ob.move(bd, "uploaded")
    bd = ob.move(bd, "processed")
    for back in ("ready", "sending", "uploaded", "failed"):
        with pytest.raises(ValueError, match="backwards"):
            ob.move(bd, back)
    assert ob.find("SLEDGER0000001").state == "processed"
