"""``audit student`` decodes only what can concern the student: the byte test and its two passes (pure)."""

from __future__ import annotations

import orjson

from sevisflow.app.audit.decode import RawRecord
from sevisflow.app.audit.timeline import student_needle, student_records, student_timeline
from sevisflow.core.serde import registry
from testkit.audit_scenario import BATCH_1, OTHER, STUDENT, scenario_records

ORG = "ZZZ214F99999000"


def _raw(records: list[tuple[str, bytes, bytes | None, int]]) -> dict[str, list[RawRecord]]:
    out: dict[str, list[RawRecord]] = {}
    for topic, key, value, ts in records:
        lst = out.setdefault(topic, [])
        lst.append(RawRecord(topic, 0, len(lst), key, value, (1, ts)))
    return out


def _sevis(raw: dict[str, list[RawRecord]]) -> dict[str, list[RawRecord]]:
    return {
        "events": raw.get("sevis.events", []),
        "batches": raw.get("sevis.batches", []),
        "commands": raw.get("sevis.batch.commands", []),
        "results": raw.get("sevis.results", []),
    }


def test_only_plain_keys_get_a_byte_test():
    assert student_needle("S00000042") == b"S00000042"
    assert student_needle("42") == b"42"
    assert student_needle("N0001.a-b_c:d@e+f") == b"N0001.a-b_c:d@e+f"
    for escaped in ('S"1', "S\\1", "Sé1", "S 1", "S\n1", ""):
        assert student_needle(escaped) is None, escaped


def test_the_subset_gives_the_whole_logs_timeline_and_decodes_less():
    raw = _sevis(_raw(scenario_records()))
    whole = {k: [r.decode() for r in v] for k, v in raw.items()}
    for student in (STUDENT, OTHER, "S00000099"):
        recs = student_records(student, **raw)
        fast = student_timeline(
            student, events=recs.events, batches=recs.batches, commands=recs.commands, results=recs.results
        )
        assert fast.to_json() == student_timeline(student, **whole).to_json(), student
        assert recs.byte_test and recs.read == sum(len(v) for v in raw.values())
    recs = student_records(OTHER, **raw)
    # OTHER: its event, record, the close and its command, and both results of its batch (BatchID: a
    # superset, the timeline keeps its own); none of STUDENT's events, holds or batch 2
    assert [d.ref for d in recs.events + recs.batches + recs.commands + recs.results] == [
        "sevis.events[0]@2",
        "sevis.batches[0]@3",
        "sevis.batches[0]@8",
        "sevis.batch.commands[0]@2",
        "sevis.results[0]@0",
        "sevis.results[0]@1",
    ]


def test_records_without_the_key_are_found_by_the_batchid_and_close_command():
    """A result whose requestID does not hold the student key, a failed event, a requeue, the close command:
    none names the student, each is found by the BatchID or command id of the closed batch that does."""

    def batch(type_: str, **kw: object) -> bytes:
        ev = {"org_id": ORG, "type": type_, "revision": 1, "at_ms": 1000, **kw}
        return registry().encode("sevisflow.batches.BatchEvent", ev)

    def command(cid: str, kind: str, **kw: object) -> bytes:
        cmd = {"command_id": cid, "org_id": ORG, "kind": kind, "requested_at_ms": 900, **kw}
        return registry().encode("sevisflow.commands.BatchCommand", cmd)

    rec = {"record_id": "r", "request_id": "r-1", "student_key": STUDENT, "kind": "Registration", "section": "update"}
    other = dict(rec, request_id="r-2", student_key=OTHER)
    records = [
        (
            "sevis.batches",
            b"k",
            batch("closed", batch_id=BATCH_1, command_id="c-9", records_json=orjson.dumps([rec]).decode()),
            1,
        ),
        (
            "sevis.batches",
            b"k",
            batch("closed", batch_id="S0000000000009", records_json=orjson.dumps([other]).decode()),
            2,
        ),
        ("sevis.batches", b"k", batch("failed", batch_id=BATCH_1, reason="upload"), 3),
        ("sevis.batch.commands", b"k", command("c-9", "close"), 1),
        ("sevis.batch.commands", b"k", command("c-10", "requeue", batch_id=BATCH_1), 2),
        ("sevis.batch.commands", b"k", command("c-11", "close"), 3),
        (
            "sevis.results",
            b"k",
            registry().encode(
                "sevisflow.results.SevisResult",
                {"org_id": ORG, "batch_id": BATCH_1, "request_id": "r-1", "status": "success"},
            ),
            4,
        ),
        (
            "sevis.results",
            b"k",
            registry().encode(
                "sevisflow.results.SevisResult",
                {"org_id": ORG, "batch_id": "S0000000000009", "request_id": "r-2", "status": "success"},
            ),
            5,
        ),
    ]
    raw = _sevis(_raw(records))
    recs = student_records(STUDENT, **raw)
    assert [d.offset for d in recs.batches] == [0, 2]
    assert [d.offset for d in recs.commands] == [0, 1]
    assert [d.offset for d in recs.results] == [0]
    tl = student_timeline(STUDENT, batches=recs.batches, commands=recs.commands, results=recs.results)
    whole = {k: [r.decode() for r in v] for k, v in raw.items()}
    assert tl.to_json() == student_timeline(STUDENT, **whole).to_json()
    whats = [s.what for s in tl.steps]
    assert any(w.startswith(f"SEVIS result for {BATCH_1} request r-1: success") for w in whats)
    assert any(w.startswith(f"batch {BATCH_1} failed") for w in whats)
    assert any(w.startswith(f"requeue of batch {BATCH_1}") for w in whats)
    assert any(w.startswith(f"DSO command close of batch {BATCH_1}") for w in whats)


def test_a_key_json_may_escape_decodes_everything():
    raw = _sevis(_raw(scenario_records()))
    recs = student_records('S"42', **raw)
    assert not recs.byte_test and recs.decoded == recs.read == sum(len(v) for v in raw.values())
