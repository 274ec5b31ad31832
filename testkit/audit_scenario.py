"""A small synthetic audit scenario, encoded exactly as the stages write it (docs/CONTRACTS.md).

Used by the audit/replay tests, the benchmark and the worked example in docs/AUDIT.md.
No real person: the names are invented. One school, two students:

* ``S00000042`` (SIS person 42, SEVIS ID N0000000042): a name change is reported
  (record added), then an address change of the same kind replaces it; a DSO holds and
  releases the student; the DSO closes batch ``S1718791200000``; SEVIS rejects the record
  (S1056); the SIS data is fixed, a new event goes into batch ``S1718877600000``, which
  SEVIS accepts;
* ``S00000043`` (SIS person 43): a registration update in the first batch, accepted.

:func:`scenario_records` returns ``(topic, key, value, timestamp_ms)`` tuples in log order
per topic; :func:`decoded_scenario` the same records decoded (for pure tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sevisflow.app.audit.decode import Decoded, decode_record
from sevisflow.core.serde import registry

if TYPE_CHECKING:
    from sevisflow.app.audit.verify import VerifyContext

ORG = "ZZZ214F99999000"
DSO = "dsouser001"
STUDENT = "S00000042"
OTHER = "S00000043"
BATCH_1 = "S1718791200000"
BATCH_2 = "S1718877600000"
T0 = 1718780000000  # 2024-06-19T06:53:20Z


def _j(v: Any) -> str:
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()


def _change(
    prefix: str,
    table: str,
    op: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    lsn: int,
    tx: int,
    ts: int,
    key: dict[str, Any],
) -> tuple[str, bytes, bytes, int]:
    value = {
        "before": before,
        "after": after,
        "op": op,
        "ts_ms": ts + 5,
        "source": {
            "version": "sevisflow",
            "connector": "postgresql",
            "name": prefix,
            "db": "sis",
            "schema": "public",
            "table": table,
            "lsn": lsn,
            "txId": tx,
            "sequence": orjson.dumps([str(lsn - 8), str(lsn)]).decode(),
            "ts_ms": ts,
            "snapshot": "false",
        },
    }
    return f"{prefix}.public.{table}", orjson.dumps(key), orjson.dumps(value), ts + 10


def _pos(prefix: str, table: str, offset: int, lsn: int, tx: int, ts: int) -> dict[str, Any]:
    return {
        "topic": f"{prefix}.public.{table}",
        "partition": 0,
        "offset": offset,
        "table": f"public.{table}",
        "lsn": lsn,
        "sequence": None,
        "tx_id": tx,
        "commit_ts_ms": ts,
    }


def _event(
    event_id: str,
    student: str,
    sevis_id: str | None,
    kind: str,
    ckey: str,
    payload: dict[str, Any],
    before: dict[str, Any],
    after: dict[str, Any],
    lineage: list[dict[str, Any]],
) -> bytes:
    return registry().encode(
        "sevisflow.events.SevisEvent",
        {
            "event_id": event_id,
            "org_id": ORG,
            "student_key": student,
            "sevis_id": sevis_id,
            "kind": kind,
            "coalesce_key": ckey,
            "payload_json": _j(payload),
            "before_json": _j(before),
            "after_json": _j(after),
            "origin": "sis",
            "display_name": None,
            "problems": [],
            "processor_version": "test",
            "lineage": lineage,
        },
    )


def _record(
    seq: int,
    student: str,
    sevis_id: str | None,
    kind: str,
    ckey: str,
    payload: dict[str, Any],
    event_ids: list[str],
    lineage: list[dict[str, Any]],
    status: str = "open",
) -> dict[str, Any]:
    return {
        "record_id": f"{student}:{ckey}",
        "request_id": f"{seq}.{student}",
        "section": "update",
        "student_key": student,
        "sevis_id": sevis_id,
        "kind": kind,
        "coalesce_key": ckey,
        "payload": payload,
        "user_defined_a": student,
        "user_defined_b": None,
        "event_ids": event_ids,
        "lineage": lineage,
        "display_name": None,
        "before": None,
        "after": None,
        "problems": [],
        "status": status,
        "seq": seq,
    }


def _batch(
    type_: str,
    rev: int,
    at_ms: int,
    record: dict[str, Any] | None = None,
    records: list[dict[str, Any]] | None = None,
    batch_id: str | None = None,
    closed_by: str | None = None,
    command_id: str | None = None,
    reason: str | None = None,
) -> bytes:
    return registry().encode(
        "sevisflow.batches.BatchEvent",
        {
            "org_id": ORG,
            "batch_id": batch_id,
            "type": type_,
            "revision": rev,
            "at_ms": at_ms,
            "record_json": _j(record) if record is not None else None,
            "records_json": _j(records) if records is not None else None,
            "closed_by": closed_by,
            "command_id": command_id,
            "reason": reason,
        },
    )


def _command(
    cid: str, kind: str, at_ms: int, student: str | None = None, reason: str | None = None, revision: int | None = None
) -> bytes:
    return registry().encode(
        "sevisflow.commands.BatchCommand",
        {
            "command_id": cid,
            "org_id": ORG,
            "kind": kind,
            "dso_user_id": DSO,
            "student_key": student,
            "record_ids": [],
            "reviewed_revision": revision,
            "batch_id": None,
            "reason": reason,
            "requested_at_ms": at_ms,
            "payload_json": None,
        },
    )


def _result(
    batch_id: str, request_id: str, student: str, status: str, code: str | None = None, message: str | None = None
) -> bytes:
    return registry().encode(
        "sevisflow.results.SevisResult",
        {
            "org_id": ORG,
            "batch_id": batch_id,
            "request_id": request_id,
            "student_key": student,
            "kind": "PersonalInfo" if student == STUDENT else "Registration",
            "status": status,
            "sevis_id": None,
            "error_code": code,
            "error_message": message,
            "process_code": "S0000",
            "processed_at": "2024-06-20",
            "dependents_json": None,
        },
    )


def scenario_records(
    prefix: str = "sis",
    events: str = "sevis.events",
    batches: str = "sevis.batches",
    commands: str = "sevis.batch.commands",
    results: str = "sevis.results",
) -> list[tuple[str, bytes, bytes | None, int]]:
    """The whole scenario as ``(topic, key, value, timestamp_ms)``; per topic in offset order (partition 0)."""
    m = 60_000
    p42 = {"person_id": 42, "school_id": STUDENT, "first_name": "Ana", "last_name": "Example"}
    p43 = {"person_id": 43, "school_id": OTHER, "first_name": "Bo", "last_name": "Sample"}
    a42 = {"address_id": 420, "person_id": 42, "kind": "US", "street": "1 Main St", "city": "Springfield"}
    org = ORG.encode()
    recs: list[tuple[str, bytes, bytes | None, int]] = [
        # person topic: 0 snapshot 42, 1 snapshot 43, 2 name change of 42, 3 fix of 42's name
        _change(prefix, "person", "r", None, p42, 100, 1, T0, {"person_id": 42}),
        _change(prefix, "person", "r", None, p43, 100, 1, T0, {"person_id": 43}),
        _change(prefix, "person", "u", p42, dict(p42, last_name="Exampel"), 208, 7, T0 + 1 * m, {"person_id": 42}),
        _change(
            prefix,
            "person",
            "u",
            dict(p42, last_name="Exampel"),
            dict(p42, last_name="Example-Fixed"),
            408,
            9,
            T0 + 30 * m,
            {"person_id": 42},
        ),
        # address topic: 0 address change of 42
        _change(prefix, "address", "u", a42, dict(a42, street="2 Main St"), 308, 8, T0 + 2 * m, {"address_id": 420}),
        # enrollment of 43
        _change(
            prefix,
            "enrollment",
            "c",
            None,
            {"enrollment_id": 4301, "person_id": 43, "term_id": "2024FA"},
            310,
            8,
            T0 + 2 * m,
            {"enrollment_id": 4301},
        ),
    ]
    l1 = [_pos(prefix, "person", 2, 208, 7, T0 + m)]
    l2 = [_pos(prefix, "address", 0, 308, 8, T0 + 2 * m)]
    l3 = [_pos(prefix, "enrollment", 0, 310, 8, T0 + 2 * m)]
    l4 = [_pos(prefix, "person", 3, 408, 9, T0 + 30 * m)]
    pi1 = {"@printForm": "false", "FullName": {"LastName": "Exampel"}}
    pi2 = {"@printForm": "false", "FullName": {"LastName": "Exampel"}, "USAddress": {"Address1": "2 Main St"}}
    pi3 = {"@printForm": "false", "FullName": {"LastName": "Example-Fixed"}}
    reg = {"@printForm": "false", "Registration": {"CurrentSessionEndDate": "2024-12-15"}}
    recs += [
        (
            events,
            org,
            _event(
                "e-208",
                STUDENT,
                "N0000000042",
                "PersonalInfo",
                "PersonalInfo",
                pi1,
                {"last_name": "Example"},
                {"last_name": "Exampel"},
                l1,
            ),
            T0 + m + 100,
        ),
        (
            events,
            org,
            _event(
                "e-308",
                STUDENT,
                "N0000000042",
                "PersonalInfo",
                "PersonalInfo",
                pi2,
                {"street": "1 Main St"},
                {"street": "2 Main St"},
                l2,
            ),
            T0 + 2 * m + 100,
        ),
        (
            events,
            org,
            _event("e-310", OTHER, "N0000000043", "Registration", "Registration", reg, {}, {"term": "2024FA"}, l3),
            T0 + 2 * m + 200,
        ),
        (
            events,
            org,
            _event(
                "e-408",
                STUDENT,
                "N0000000042",
                "PersonalInfo",
                "PersonalInfo",
                pi3,
                {"last_name": "Exampel"},
                {"last_name": "Example-Fixed"},
                l4,
            ),
            T0 + 30 * m + 100,
        ),
    ]
    r1 = _record(1, STUDENT, "N0000000042", "PersonalInfo", "PersonalInfo", pi1, ["e-208"], l1)
    r2 = dict(
        _record(2, STUDENT, "N0000000042", "PersonalInfo", "PersonalInfo", pi2, ["e-208", "e-308"], l1 + l2),
        replaced=[{"event_id": "e-208", "by_event_id": "e-308"}],
    )
    r3 = _record(3, OTHER, "N0000000043", "Registration", "Registration", reg, ["e-310"], l3)
    r4 = _record(4, STUDENT, "N0000000042", "PersonalInfo", "PersonalInfo", pi3, ["e-408"], l4)
    close1, close2 = T0 + 10 * m, T0 + 24 * 3600_000 - 20 * m
    fin = [{k: v for k, v in r.items() if k != "status"} for r in (r2, r3)]
    recs += [
        (batches, org, _batch("opened", 1, T0 + m), T0 + m + 200),
        (batches, org, _batch("record_added", 2, T0 + m, record=r1), T0 + m + 201),
        (
            batches,
            org,
            _batch(
                "record_replaced",
                3,
                T0 + 2 * m,
                record=r2,
                reason="later change of PersonalInfo (event e-308) replaces event e-208",
            ),
            T0 + 2 * m + 201,
        ),
        (batches, org, _batch("record_added", 4, T0 + 2 * m, record=r3), T0 + 2 * m + 202),
        (
            batches,
            org,
            _batch(
                "record_held",
                5,
                T0 + 3 * m,
                record=dict(r2, status="held"),
                command_id="c-hold",
                reason=f"held by {DSO}: check passport",
            ),
            T0 + 3 * m + 1,
        ),
        (
            batches,
            org,
            _batch(
                "student_held",
                5,
                T0 + 3 * m,
                record={"student_key": STUDENT, "records": 1},
                command_id="c-hold",
                reason=f"held by {DSO}: check passport",
            ),
            T0 + 3 * m + 2,
        ),
        (
            batches,
            org,
            _batch("record_released", 6, T0 + 5 * m, record=r2, command_id="c-release", reason=f"released by {DSO}"),
            T0 + 5 * m + 1,
        ),
        (
            batches,
            org,
            _batch(
                "student_released",
                7,
                T0 + 5 * m,
                record={"student_key": STUDENT, "records": 1},
                command_id="c-release",
                reason=f"released by {DSO}",
            ),
            T0 + 5 * m + 2,
        ),
        (
            batches,
            org,
            _batch(
                "closed",
                8,
                close1,
                records=fin,
                batch_id=BATCH_1,
                closed_by=DSO,
                command_id="c-close-1",
                reason="document 1 of 1",
            ),
            close1 + 1,
        ),
        (batches, org, _batch("opened", 9, T0 + 30 * m), T0 + 30 * m + 200),
        (batches, org, _batch("record_added", 10, T0 + 30 * m, record=r4), T0 + 30 * m + 201),
        (
            batches,
            org,
            _batch(
                "closed",
                11,
                close2,
                records=[{k: v for k, v in r4.items() if k != "status"}],
                batch_id=BATCH_2,
                closed_by=DSO,
                command_id="c-close-2",
                reason="document 1 of 1",
            ),
            close2 + 1,
        ),
    ]
    recs += [
        (commands, org, _command("c-hold", "hold", T0 + 3 * m, STUDENT, "check passport"), T0 + 3 * m),
        (commands, org, _command("c-release", "release", T0 + 5 * m, STUDENT), T0 + 5 * m),
        (commands, org, _command("c-close-1", "close", close1, revision=7), close1),
        (commands, org, _command("c-close-2", "close", close2, revision=10), close2),
    ]
    recs += [
        (
            results,
            org,
            _result(BATCH_1, f"2.{STUDENT}", STUDENT, "failure", "S1056", "the name does not match"),
            T0 + 20 * m,
        ),
        (results, org, _result(BATCH_1, f"3.{OTHER}", OTHER, "success"), T0 + 20 * m + 1),
        (results, org, _result(BATCH_2, f"4.{STUDENT}", STUDENT, "success"), close2 + 60 * m),
    ]
    return recs


def decoded_scenario(**topics: str) -> dict[str, list[Decoded]]:
    """The scenario decoded, grouped by topic (offsets numbered per topic from 0)."""
    out: dict[str, list[Decoded]] = {}
    for topic, key, value, ts in scenario_records(**topics):
        lst = out.setdefault(topic, [])
        lst.append(decode_record(topic, 0, len(lst), key, value, (1, ts)))
    return out


def batcher_run(
    updates: int = 6,
    creates: int = 1,
    batches: int = 1,
    org: str = "ZZZ214F99999000",
    dso: str = DSO,
    base_ms: int = 1_750_000_000_000,
    student_base: int = 0,
    member_school: bool = False,
) -> dict[str, list[tuple[bytes, bytes, int]]]:
    """Inputs and outputs of the *real* batcher (:func:`sevisflow.processors.batcher.core.apply`), encoded.

    ``batches`` rounds of ``creates`` Create + ``updates`` update events (payloads from
    :mod:`testkit.xml_samples`, valid against the SEVIS XSD), each round closed by a DSO
    command. Returns ``{"events"|"commands"|"batches": [(key, value, timestamp_ms)]}`` in
    log order, ready to produce to Kafka or to decode for pure tests. ``member_school``: ``org`` is a member school
    ([[schools]]), closed with the member form of BatchIDs as the batcher does.
    """
    from sevisflow.processors.batcher.core import CommandIn, EventIn, Publish, School, apply
    from testkit.xml_samples import UPDATE_KINDS, create_payload, update_record

    key = org.encode()
    out: dict[str, list[tuple[bytes, bytes, int]]] = {"events": [], "commands": [], "batches": []}
    state = School(org_id=org)
    ts = base_ms
    n = 0

    def run(inp: Any, topic: str, value: bytes) -> None:
        nonlocal state
        out[topic].append((key, value, ts))
        state, outs = apply(state, inp)
        for o in outs:
            if isinstance(o, Publish):
                out["batches"].append((key, registry().encode("sevisflow.batches.BatchEvent", o.event), ts))

    for b in range(batches):
        items = [("Create", None)] * creates + [(UPDATE_KINDS[i % len(UPDATE_KINDS)], i) for i in range(updates)]
        for kind, _ in items:
            n += 1
            ts += 1000
            student = f"S{n + student_base:08d}"
            payload = create_payload() if kind == "Create" else update_record(n, kind)["payload"]
            ev = {
                "event_id": f"ev-{n}",
                "org_id": org,
                "student_key": student,
                "sevis_id": None if kind == "Create" else f"N{n:010d}",
                "kind": kind,
                "coalesce_key": kind,
                "payload_json": _j(payload),
                "before_json": None,
                "after_json": None,
                "origin": "sis",
                "display_name": None,
                "problems": [],
                "processor_version": "test",
                "lineage": [
                    {
                        "topic": "sis.public.person",
                        "partition": 0,
                        "offset": n,
                        "table": "public.person",
                        "lsn": 1000 + n,
                        "sequence": None,
                        "tx_id": 500 + n,
                        "commit_ts_ms": ts - 500,
                    }
                ],
            }
            run(EventIn(ev, ts), "events", registry().encode("sevisflow.events.SevisEvent", ev))
        ts += 60_000
        cmd = {
            "command_id": f"close-{b}",
            "org_id": org,
            "kind": "close",
            "dso_user_id": dso,
            "student_key": None,
            "record_ids": [],
            "reviewed_revision": None,
            "batch_id": None,
            "reason": None,
            "requested_at_ms": ts,
            "payload_json": None,
        }
        run(
            CommandIn(cmd, member_school=member_school),
            "commands",
            registry().encode("sevisflow.commands.BatchCommand", cmd),
        )
    return out


def produce_batcher_run(kafka: Any, topics: Any, run: dict[str, list[tuple[bytes, bytes, int]]]) -> None:
    """Create the batcher's topics (one partition each) and produce a :func:`batcher_run` onto them, with the
    records' own timestamps. ``kafka``/``topics``: the settings' ``kafka`` and ``topics`` sections."""
    from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_producer

    names = {"events": topics.events, "commands": topics.commands, "batches": topics.batches}
    ensure_topics(kafka, [TopicSpec(n, 1, 1) for n in [*names.values(), topics.results]])
    producer = make_producer(kafka)
    for k, recs in run.items():
        for key, value, ts in recs:
            producer.produce(names[k], key=key, value=value, timestamp=ts)
    if producer.flush(30) != 0:
        raise RuntimeError("the scenario's records were not all acknowledged within 30 s")


def sealed_batcher_runs(
    runs: list[dict[str, list[tuple[bytes, bytes, int]]]], outbox: Any, schema: Any
) -> tuple[dict[str, list[Decoded]], dict[str, str]]:
    """Several :func:`batcher_run` outputs as one log per topic (their records interleaved by time, as on shared
    topics), every closed batch written by the real XML sink into ``outbox`` and sealed in its ledger, as the sink
    does: (decoded logs by short name — events, commands, batches —, OrgID → BatchID of its closed batch)."""
    from sevisflow.core.ledger import Ledger, LedgerWriter
    from sevisflow.sinks.xml.render import ClosedBatch
    from sevisflow.sinks.xml.stage import sink_closed_batch

    names = {"events": "sevis.events", "commands": "sevis.batch.commands", "batches": "sevis.batches"}
    logs: dict[str, list[Decoded]] = {}
    for k, topic in names.items():
        merged = sorted((r for run in runs for r in run[k]), key=lambda r: r[2])
        logs[k] = [decode_record(topic, 0, i, key, value, (1, ts)) for i, (key, value, ts) in enumerate(merged)]
    writer = LedgerWriter(Ledger(outbox.root), "sink-xml", "ZZZ")
    ids: dict[str, str] = {}
    for c in (x for x in logs["batches"] if x.value["type"] == "closed"):
        e = registry().decode(c.raw)
        out = sink_closed_batch(ClosedBatch.from_event(e, orjson.loads(e["records_json"])), schema, outbox)
        if out.status != "written":
            raise AssertionError(f"the XML sink did not write batch {e['batch_id']}: {out}")
        writer.seal_archive(outbox.find(e["batch_id"]), e["batch_id"])
        ids[e["org_id"]] = e["batch_id"]
    return logs, ids


def batcher_verify_context(logs: dict[str, list[Decoded]], outbox: Any, schema: Any, **options: Any) -> VerifyContext:
    """What verify reads for batcher runs: the decoded ``logs`` (events, commands, batches, as
    :func:`sealed_batcher_runs` gives them), no results and no change records (so the events and sources checks
    are skipped), and the outbox and schema the batches were written with. ``options``: further
    :class:`~sevisflow.app.audit.verify.VerifyContext` fields (e.g. ``schools``, ``main_org``)."""
    from sevisflow.app.audit.verify import VerifyContext

    return VerifyContext(
        batches=logs["batches"],
        events=logs["events"],
        commands=logs["commands"],
        results=[],
        changes=[],
        outbox=outbox,
        schema=schema,
        **options,
    )
