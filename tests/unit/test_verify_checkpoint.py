"""Checkpoints of the batcher re-run (``sevisflow.app.audit.checkpoint``): a replay resumed from one is the
replay from an empty state; an altered, truncated, deleted or forged checkpoint is found and not used.

Pure: the batches are made by the real batcher (:func:`testkit.audit_scenario.batcher_run`) and decoded by
hand; the Kafka read of ``verify <BatchID>`` is simulated by leaving out what it does not read (records
before the checkpoint's offsets minus one). ``tests/integration/test_verify_checkpoint.py`` runs it on Kafka.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import stat

import orjson
import pytest

from sevisflow.app.audit.checkpoint import (
    CheckpointError,
    CheckpointStore,
    check_anchors,
    decode,
    encode,
    reconcile,
    sha256,
)
from sevisflow.app.audit.decode import Decoded, decode_record
from sevisflow.app.audit.verify import VerifyContext, guided_batcher_replay, verify_batch
from sevisflow.core.serde import registry
from testkit.audit_scenario import batcher_run
from tests.helpers import XSD_DIR

ORG = "ZZZ214F99999000"
OTHER = "ZZZ214F99999111"
N = 6
TOPICS = {"events": "sevis.events", "commands": "sevis.batch.commands", "batches": "sevis.batches"}


def _log(two_schools: bool) -> dict[str, list[Decoded]]:
    """Each topic's records in log order (one partition); with ``two_schools`` a second school's history is
    interleaved by time, so the school's records are not consecutive offsets."""
    runs = [batcher_run(updates=4, creates=1, batches=N, org=ORG)]
    if two_schools:
        runs.append(
            batcher_run(updates=3, creates=1, batches=N, org=OTHER, base_ms=1_750_000_000_500, student_base=9000)
        )
    out = {}
    for k, topic in TOPICS.items():
        recs = sorted((ts, n, key, value) for n, run in enumerate(runs) for key, value, ts in run[k])
        out[k] = [decode_record(topic, 0, i, key, value, (1, ts)) for i, (ts, _, key, value) in enumerate(recs)]
    return out


def _replay(log, **kw):
    return guided_batcher_replay(ORG, log["events"], log["commands"], [], log["batches"], **kw)


def _read_from(log, cp):
    """What verify reads when it resumes: each topic from the checkpoint's offset minus one."""
    return {
        k: [d for d in lst if d.offset >= cp.offsets.get(d.topic, {}).get(d.partition, 0) - 1] for k, lst in log.items()
    }


def _closed_ids(log) -> list[str]:
    return [d.value["batch_id"] for d in log["batches"] if d.value["type"] == "closed" and d.value["org_id"] == ORG]


@pytest.mark.parametrize("two_schools", [False, True])
def test_a_replay_resumed_from_each_checkpoint_is_the_replay_from_empty(two_schools):
    log = _log(two_schools)
    ids = _closed_ids(log)
    full = _replay(log, snapshots=True)
    assert full.divergence is None and full.reproduced == full.recorded and list(full.snapshots) == ids
    for prev, bid in itertools.pairwise(ids):
        cp = decode(encode(full.snapshots[prev]))  # through the file format
        assert cp == full.snapshots[prev]
        part = _read_from(log, cp)
        assert len(part["events"]) < len(log["events"])  # it really reads less
        got = _replay(part, start=cp, snapshots=True)
        assert got.divergence is None and got.resumed_from == cp
        assert got.closed[bid] == full.closed[bid]
        assert (got.reproduced, got.recorded) == (full.reproduced, full.recorded)
        # the checkpoint it leaves is byte for byte the one the replay from empty leaves
        assert encode(got.snapshots[bid]) == encode(full.snapshots[bid])
        assert (
            check_anchors(cp, {(d.topic, d.partition, d.offset): d.value_sha256 for v in part.values() for d in v})
            is None
        )


@pytest.mark.skipif(not (XSD_DIR / "Create-UpdateStudent.xsd").exists(), reason="SEVIS XSDs not present")
def test_verify_from_a_checkpoint_gives_the_same_verdict_and_documents(tmp_path):
    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.document import check_document
    from sevisflow.sinks.xml.render import ClosedBatch
    from sevisflow.sinks.xml.stage import sink_closed_batch
    from sevisflow.sinks.xml.xsd import load_schema

    schema = load_schema(XSD_DIR)
    log = _log(two_schools=True)
    outbox = Outbox(tmp_path / "outbox", tmp_path / "quarantine", "America/Chicago")
    for d in log["batches"]:
        if d.value["type"] == "closed":
            ev = registry().decode(d.raw)
            sink_closed_batch(ClosedBatch.from_event(ev, orjson.loads(ev["records_json"])), schema, outbox)

    def ctx(lst, start=None):
        return VerifyContext(
            batches=lst["batches"], events=lst["events"], commands=lst["commands"], results=[], changes=[],
            outbox=outbox, schema=schema, resume=start, snapshots=True,
        )  # fmt: skip

    def document(c, bid):
        ev = c.replay_for(ORG).closed[bid]
        return check_document(ClosedBatch.from_event(ev, orjson.loads(ev["records_json"])), schema)[0].xml

    ids = _closed_ids(log)
    empty = ctx(log)
    for prev, bid in itertools.pairwise(ids):
        cp = decode(encode(empty.replay_for(ORG).snapshots[prev]))
        resumed = ctx(_read_from(log, cp), cp)
        a, b = verify_batch(bid, empty), verify_batch(bid, resumed)
        assert a.ok and b.ok
        assert [(c.name, c.status) for c in a.checks] == [(c.name, c.status) for c in b.checks]
        assert [c.message for c in a.checks if c.name != "batching"] == [
            c.message for c in b.checks if c.name != "batching"
        ]
        batching = next(c.message for c in b.checks if c.name == "batching")
        assert f"resumed from the checkpoint after batch {prev}" in batching
        assert "from an empty state" in next(c.message for c in a.checks if c.name == "batching")
        assert document(empty, bid) == document(resumed, bid)


def test_a_wrong_state_in_a_checkpoint_does_not_reproduce_the_batch():
    log = _log(two_schools=False)
    ids = _closed_ids(log)
    full = _replay(log, snapshots=True)
    cp = full.snapshots[ids[0]]
    forged = dataclasses.replace(cp, state=dataclasses.replace(cp.state, seq=cp.state.seq + 1))
    got = _replay(_read_from(log, forged), start=forged)
    assert ids[1] not in got.closed and got.divergence and "cannot reproduce" in got.divergence


def test_encoding_is_deterministic_and_refuses_a_state_json_would_change():
    log = _log(two_schools=False)
    cp = next(iter(_replay(log, snapshots=True).snapshots.values()))
    assert encode(cp) == encode(decode(encode(cp)))
    bad = dataclasses.replace(cp, state=dataclasses.replace(cp.state, records={"x": {"ids": ("a", "b")}}))
    with pytest.raises(CheckpointError, match="does not survive JSON"):
        encode(bad)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        decode(encode(cp)[:-20])


def _store_with_checkpoints(tmp_path):
    log = _log(two_schools=False)
    full = _replay(log, snapshots=True)
    store = CheckpointStore(tmp_path / "outbox")
    ids = _closed_ids(log)
    for bid in ids[:3]:
        store.write(full.snapshots[bid], "verify")
    return store, full, ids


def test_store_round_trip_permissions_and_choice(tmp_path):
    store, full, ids = _store_with_checkpoints(tmp_path)
    target = full.snapshots[ids[4]]
    found = store.find(ORG, target.closed_topic, target.closed_partition, target.closed_offset)
    assert found.problem is None and found.checkpoint == full.snapshots[ids[2]]  # the newest before the batch
    first = full.snapshots[ids[1]]
    assert store.find(ORG, first.closed_topic, 0, first.closed_offset).checkpoint == full.snapshots[ids[0]]
    assert store.find(ORG, first.closed_topic, 0, full.snapshots[ids[0]].closed_offset).checkpoint is None
    assert store.find(OTHER, target.closed_topic, 0, target.closed_offset).checkpoint is None
    for p in [store.index.path, *store.root.rglob("*.json.gz")]:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700


@pytest.mark.parametrize("how", ["flip", "truncate", "delete", "swap"])
def test_an_altered_checkpoint_is_reported_and_not_used(tmp_path, how):
    store, full, ids = _store_with_checkpoints(tmp_path)
    path = store.path_of(ORG, ids[2])
    blob = path.read_bytes()
    if how == "flip":
        path.write_bytes(blob[:40] + bytes([blob[40] ^ 1]) + blob[41:])
    elif how == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif how == "delete":
        path.unlink()
    else:  # another batch's (genuine) checkpoint put in its place
        path.write_bytes(store.path_of(ORG, ids[0]).read_bytes())
    target = full.snapshots[ids[4]]
    found = store.find(ORG, target.closed_topic, 0, target.closed_offset)
    assert found.checkpoint is None and found.problem and f"checkpoint of batch {ids[2]}" in found.problem
    assert ("deleted" if how == "delete" else "altered or truncated") in found.problem


def test_an_edited_index_distrusts_every_checkpoint(tmp_path):
    store, full, ids = _store_with_checkpoints(tmp_path)
    lines = store.index.path.read_bytes().splitlines()
    e = orjson.loads(lines[1])
    e["sha256"] = "0" * 64
    lines[1] = orjson.dumps(e, option=orjson.OPT_SORT_KEYS)
    store.index.path.write_bytes(b"\n".join(lines) + b"\n")
    target = full.snapshots[ids[4]]
    found = store.find(ORG, target.closed_topic, 0, target.closed_offset)
    assert (
        found.checkpoint is None
        and "index line 2" in (found.problem or "")
        and "no checkpoint is trusted" in (found.problem or "")
    )


def test_the_log_under_a_checkpoint_must_still_be_the_same():
    log = _log(two_schools=False)
    cp = next(iter(_replay(log, snapshots=True).snapshots.values()))
    seen = {(d.topic, d.partition, d.offset): d.value_sha256 for v in log.values() for d in v}
    assert check_anchors(cp, seen) is None
    t = TOPICS["events"]
    key = (t, 0, cp.offsets[t][0] - 1)
    assert "is no longer on the log" in (check_anchors(cp, {k: v for k, v in seen.items() if k != key}) or "")
    assert "another sha256" in (check_anchors(cp, {**seen, key: "f" * 64}) or "")


def test_verify_all_reconcile_finds_a_forged_checkpoint_and_writes_every_tenth(tmp_path):
    store, full, ids = _store_with_checkpoints(tmp_path)
    cp = full.snapshots[ids[1]]
    forged = dataclasses.replace(cp, state=dataclasses.replace(cp.state, seq=cp.state.seq + 5))
    store.write(forged, "someone")  # consistent with its index line: only a re-derivation shows it
    problems, notes = reconcile(store, full.snapshots.values(), every=2)
    assert len(problems) == 1 and f"checkpoint of batch {ids[1]}" in problems[0] and "forged" in problems[0]
    assert notes == [f"2 checkpoint(s) written under {store.root}"]
    latest = store.latest()
    assert latest[(ORG, ids[1])]["sha256"] == sha256(encode(cp))  # replaced by the re-derived one
    # every 2nd and the last batch of the school now have one (ids[0..2] were there already)
    assert {b for _, b in latest} == set(ids[:3]) | {ids[3], ids[5]}
    assert reconcile(store, full.snapshots.values(), every=2) == ([], [])


@pytest.mark.skipif(not (XSD_DIR / "Create-UpdateStudent.xsd").exists(), reason="SEVIS XSDs not present")
def test_a_verified_batch_leaves_its_checkpoint_and_an_unwritable_folder_only_a_note(tmp_path):
    from sevisflow.app.cli.verify import _save
    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.render import ClosedBatch
    from sevisflow.sinks.xml.stage import sink_closed_batch
    from sevisflow.sinks.xml.xsd import load_schema

    schema = load_schema(XSD_DIR)
    log = _log(two_schools=False)
    outbox = Outbox(tmp_path / "outbox", tmp_path / "quarantine", "America/Chicago")
    for d in log["batches"]:
        if d.value["type"] == "closed":
            ev = registry().decode(d.raw)
            sink_closed_batch(ClosedBatch.from_event(ev, orjson.loads(ev["records_json"])), schema, outbox)
    ctx = VerifyContext(
        batches=log["batches"], events=log["events"], commands=log["commands"], results=[], changes=[],
        outbox=outbox, schema=schema, snapshots=True,
    )  # fmt: skip
    bid = _closed_ids(log)[2]
    assert verify_batch(bid, ctx).ok
    store = CheckpointStore(tmp_path / "outbox")
    assert _save(store, ctx, bid, True) == [f"checkpoint written: {store.path_of(ORG, bid)}"]
    assert _save(store, ctx, bid, True) == [f"checkpoint after this batch already recorded ({store.path_of(ORG, bid)})"]
    assert decode(store.path_of(ORG, bid).read_bytes()) == ctx.replay_for(ORG).snapshots[bid]
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "audit").write_text("not a folder")
    (note,) = _save(CheckpointStore(tmp_path / "ro"), ctx, bid, True)
    assert note.startswith("checkpoint not written (")


def test_verify_all_reconcile_moves_a_broken_index_aside_and_starts_a_new_one(tmp_path):
    store, full, ids = _store_with_checkpoints(tmp_path)
    lines = store.index.path.read_bytes().splitlines()
    store.index.path.write_bytes(b"\n".join([lines[0], lines[2]]) + b"\n")  # line 2 removed
    problems, notes = reconcile(store, full.snapshots.values(), every=2)
    assert problems and all("checkpoint index line" in p for p in problems)
    (aside,) = store.root.glob("checkpoints.jsonl.broken-*")
    assert aside.read_bytes().splitlines() == [lines[0], lines[2]] and "moved to" in notes[0]
    assert store.lines()[1] == [] and {b for _, b in store.latest()} == {ids[1], ids[3], ids[5]}
    target = full.snapshots[ids[4]]
    assert store.find(ORG, target.closed_topic, 0, target.closed_offset).checkpoint == full.snapshots[ids[3]]


def test_where_a_resumed_verify_reads_from():
    from types import SimpleNamespace

    from sevisflow.app.cli.verify import resume_offsets

    log = _log(two_schools=False)
    cp = _replay(log, snapshots=True).snapshots[_closed_ids(log)[2]]
    topics = SimpleNamespace(
        events=TOPICS["events"], commands=TOPICS["commands"], batches=TOPICS["batches"], results="sevis.results"
    )
    minus_one = {t: {p: o - 1 for p, o in ps.items()} for t, ps in cp.offsets.items()}
    assert set(cp.offsets) == set(TOPICS.values())  # no result applied: sevis.results is read from its start
    assert resume_offsets(cp, topics, with_history=False) == minus_one
    # with the change topics, the events and sources checks look up the batch's events and reports: whole
    assert resume_offsets(cp, topics, with_history=True) == {TOPICS["batches"]: minus_one[TOPICS["batches"]]}
