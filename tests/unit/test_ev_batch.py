"""EV batches per J-1 program number: kept apart from the school's F/M batches, ≤250 creates + ≤250 updates per
document, BatchIDs per OrgID, signed by the program's RO/ARO; the guard refuses everyone else and every program
that is not configured, with a dead letter; EV.Reprint is reported like the F/M Reprint."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevisflow.core.config import settings_from_mapping
from sevisflow.core.errors import ConfigError
from sevisflow.processors.batcher.core import CommandIn, EventIn, Publish, Reject, ResultIn, School, Tick, apply
from sevisflow.processors.batcher.guard import CommandPolicy
from sevisflow.processors.batcher.stage import command_policy
from testkit.batcher import BASE_MS, ORG, command, event, result

PROGRAM, OTHER_PROGRAM = "P-1-12345", "G-3-54321"
RO, ARO, DSO = "ROUSER0001", "AROUSER001", "DSOUSER001"
POLICY = CommandPolicy(frozenset({DSO}), {}, close_dso="SCHEDDSO01", programs={PROGRAM: (RO, ARO)})
AT = BASE_MS + 3_600_000


def run(state, *inputs):
    outs = []
    for inp in inputs:
        state, o = apply(state, inp)
        outs += o
    return state, outs


def published(outs):
    return [o.event for o in outs if isinstance(o, Publish)]


def closed(outs):
    return [e for e in published(outs) if e["type"] == "closed"]


def ev_event(student: str, kind: str = "EV.Biographical", n: int = 0, **kw):
    payload = kw.pop("payload", None) or {"@printForm": "false", "EmailAddress": f"v{n}@example.edu"}
    return event(student, kind, n=n, org=PROGRAM, payload=payload, **kw)


def close_cmd(cid: str, user: str = RO, org: str = PROGRAM, **kw):
    return CommandIn(command("close", cid, org=org, dso_user_id=user, at_ms=AT, **kw), log_ms=AT, policy=POLICY)


def test_ev_and_fm_records_never_share_a_batch():
    """One state per OrgID: the EV program's records close into its own batch, signed by the RO; the school's
    F/M records stay in the school's open batch."""
    ev, _ = run(School(PROGRAM), EventIn(ev_event("J1", n=1), BASE_MS), EventIn(ev_event("J2", n=2), BASE_MS))
    fm, _ = run(School(ORG), EventIn(event("F1", n=3), BASE_MS))
    ev2, outs = apply(ev, close_cmd("c-ev"))
    (doc,) = closed(outs)
    assert doc["org_id"] == PROGRAM and doc["closed_by"] == RO
    assert {r["student_key"] for r in orjson.loads(doc["records_json"])} == {"J1", "J2"}
    assert not ev2.records and len(fm.records) == 1 and fm.org_id == ORG


def test_ev_create_is_a_create_and_its_sevis_id_releases_waiting_updates():
    s, _ = run(
        School(PROGRAM),
        EventIn(ev_event("J1", "EV.Create", payload={"@printForm": "true"}, n=1, sevis_id=None), BASE_MS),
        EventIn(
            ev_event(
                "J1",
                "EV.Validate",
                n=2,
                sevis_id=None,
                payload={"USAddress": {"Address1": "1 Main St", "PostalCode": "60601"}},
            ),
            BASE_MS,
        ),
    )
    assert s.records["J1:EV.Create"]["section"] == "create"
    assert s.records["J1:EV.Validate"]["status"] == "waiting"
    s, outs = apply(s, close_cmd("c1"))
    (doc,) = closed(outs)
    create = orjson.loads(doc["records_json"])[0]
    s, _ = apply(
        s,
        ResultIn(
            result(
                doc["batch_id"],
                create["request_id"],
                org=PROGRAM,
                student="J1",
                kind="EV.Create",
                sevis_id="N0012345678",
            ),
            AT,
        ),
    )
    assert s.sevis_ids == {"J1": "N0012345678"}
    assert s.records["J1:EV.Validate"]["status"] == "open" and s.records["J1:EV.Validate"]["sevis_id"] == "N0012345678"


def test_250_creates_and_250_updates_per_ev_document():
    events = [
        EventIn(ev_event(f"C{i:03d}", "EV.Create", n=i, payload={"@printForm": "true"}, sevis_id=None), BASE_MS)
        for i in range(260)
    ]
    events += [EventIn(ev_event(f"U{i:03d}", n=1000 + i), BASE_MS) for i in range(520)]
    s, _ = run(School(PROGRAM), *events)
    s, outs = apply(s, close_cmd("c-big"))
    docs = closed(outs)
    sections = [[r["section"] for r in orjson.loads(d["records_json"])] for d in docs]
    assert [(x.count("create"), x.count("update")) for x in sections] == [(250, 250), (10, 250), (0, 20)]
    ids = [d["batch_id"] for d in docs]
    assert len(set(ids)) == 3 and ids == sorted(ids) and all(len(i) == 14 for i in ids)


def test_batch_ids_are_unique_per_org_id():
    """Each OrgID has its own BatchID sequence (the last stamp lives in its own state)."""
    ev, fm = School(PROGRAM), School(ORG)
    ids: dict[str, list[str]] = {PROGRAM: [], ORG: []}
    for n in range(3):
        ev, _ = apply(ev, EventIn(ev_event(f"J{n}", n=n), BASE_MS))
        fm, _ = apply(fm, EventIn(event(f"F{n}", n=n), BASE_MS))
        ev, outs = apply(ev, close_cmd(f"ce{n}"))
        ids[PROGRAM] += [d["batch_id"] for d in closed(outs)]
        fm, outs = apply(fm, CommandIn(command("close", f"cf{n}", dso_user_id=DSO, at_ms=AT), log_ms=AT, policy=POLICY))
        ids[ORG] += [d["batch_id"] for d in closed(outs)]
    for got in ids.values():
        assert len(got) == 3 and len(set(got)) == 3 and got == sorted(got)


@pytest.mark.parametrize(
    "user,org,why",
    [
        (DSO, PROGRAM, "'DSOUSER001' is not the RO or an ARO of exchange program P-1-12345"),
        (RO, OTHER_PROGRAM, "OrgID G-3-54321 is not a configured exchange program"),
        (RO, ORG, "'ROUSER0001' is not one of the school's DSOs"),
    ],
)
def test_the_guard_refuses_others_with_a_dead_letter(user, org, why):
    s, _ = run(School(org), EventIn(event("J1", "EV.Biographical", n=1, org=org), BASE_MS))
    new, outs = apply(s, close_cmd("c-x", user=user, org=org))
    (ev,) = [e for e in published(outs) if e["type"] == "command_rejected"]
    assert why in ev["reason"]
    assert [o.code for o in outs if isinstance(o, Reject)] == ["unauthorized_command"]
    assert new.records == s.records and not closed(outs)


def test_an_unconfigured_program_is_refused_even_for_a_sinks_requeue():
    s = School(OTHER_PROGRAM)
    cmd = command("requeue", "requeue-X", org=OTHER_PROGRAM, batch_id="S1750000000000", at_ms=AT)
    _, outs = apply(s, CommandIn(cmd, log_ms=AT, policy=POLICY))
    assert [o.code for o in outs if isinstance(o, Reject)] == ["unauthorized_command"]


def test_an_aro_may_close_and_signs_the_batch():
    s, _ = run(School(PROGRAM), EventIn(ev_event("J1", n=1), BASE_MS))
    _, outs = apply(s, close_cmd("c-aro", user=ARO))
    (doc,) = closed(outs)
    assert doc["closed_by"] == ARO


def test_a_scheduled_close_of_a_program_carries_its_ro():
    s, _ = run(School(PROGRAM), EventIn(ev_event("J1", n=1), BASE_MS))
    tick = Tick(now_ms=BASE_MS + 86_400_000, timezone="America/Chicago", close_at="00:00", close_dso=RO)
    s, outs = apply(s, tick)
    (send,) = [o.command for o in outs if hasattr(o, "command")]
    assert send["org_id"] == PROGRAM and send["dso_user_id"] == RO
    _, outs = apply(s, CommandIn(send, log_ms=send["requested_at_ms"], policy=POLICY))
    assert closed(outs) and closed(outs)[0]["closed_by"] == RO
    forged = dict(send, command_id=send["command_id"] + "x", dso_user_id="SCHEDDSO01")
    _, outs = apply(s, CommandIn(forged, log_ms=forged["requested_at_ms"], policy=POLICY))
    assert "must carry its RO's user id (ROUSER0001)" in published(outs)[0]["reason"]


def test_ev_reprint_is_reported_by_the_ro():
    s, _ = run(School(PROGRAM), EventIn(ev_event("J1", n=1, sevis_id="N0012345678"), BASE_MS))
    body = {"kind": "EV.Reprint", "payload": {"Reason": "05"}, "sevis_id": "N0012345678", "after": {}}
    cmd = command(
        "report",
        "rep-1",
        org=PROGRAM,
        dso_user_id=RO,
        student_key="J1",
        at_ms=AT,
        payload_json=orjson.dumps(body).decode(),
    )
    s, _ = apply(s, CommandIn(cmd, log_ms=AT, policy=POLICY))
    rec = s.records["J1:EV.Reprint"]
    assert rec["origin"] == "dso" and rec["payload"] == {"Reason": "05"} and rec["sevis_id"] == "N0012345678"
    assert rec["lineage"][0]["dso_user_id"] == RO


def test_policy_from_settings_knows_the_programs_and_their_principals():
    raw = {
        "school": {
            "org_id": "ZZZ214F99999000",
            "dso_user_ids": [DSO],
            "dso_principals": ["User:alice=DSOUSER001", "User:rosa=ROUSER0001"],
        },
        "exchange_programs": [
            {"program_number": PROGRAM, "sis_program": "RSCH", "ro_user_id": RO, "aro_user_ids": [ARO]}
        ],
    }
    p = command_policy(settings_from_mapping(raw, env={}))
    assert p.programs == {PROGRAM: (RO, ARO)} and p.principals["User:rosa"] == RO
    raw["school"]["dso_principals"] = ["User:eve=EVEUSER001"]
    with pytest.raises(ConfigError, match=r"maps to EVEUSER001, which is not in school\.dso_user_ids"):
        command_policy(settings_from_mapping(raw, env={}))


def test_ev_batch_ids_carry_the_program_and_never_equal_another_orgs():
    """A scheduled close gives the school and every program the same clock: their BatchIDs still differ (the
    outbox and the SEVIS sink find a batch by its BatchID alone)."""
    from sevisflow.processors.batcher.ids import ev_batch_id, next_ev_stamp, org_batch_id

    ids = set()
    for org in (ORG, PROGRAM, OTHER_PROGRAM):
        s, _ = run(
            School(org),
            EventIn(event("X1", "EV.Biographical" if org != ORG else "PersonalInfo", n=1, org=org), BASE_MS),
        )
        user = DSO if org == ORG else RO
        policy = CommandPolicy(frozenset({DSO}), {}, programs={PROGRAM: (RO,), OTHER_PROGRAM: (RO,)})
        _, outs = apply(
            s, CommandIn(command("close", f"c-{org}", org=org, dso_user_id=user, at_ms=AT), log_ms=AT, policy=policy)
        )
        ids |= {d["batch_id"] for d in closed(outs)}
    assert len(ids) == 3 and all(len(i) == 14 for i in ids)
    assert {i[:7] for i in ids} == {"S" + str(AT)[:6], "P112345", "G354321"}
    assert ev_batch_id(PROGRAM, 35) == "P112345000000Z"
    assert next_ev_stamp(AT, 0) == AT // 1000 and next_ev_stamp(AT, AT // 1000 + 5) == AT // 1000 + 6
    assert org_batch_id(ORG, AT) == f"S{AT:013d}"
    with pytest.raises(ValueError):
        next_ev_stamp(10**20, 0)


def test_the_acl_model_lets_the_dso_principal_close_an_ev_batch_and_read_its_answer():
    """Kafka's ACLs are per topic, not per OrgID: an EV close is a command on the same commands topic, keyed by
    the program number; who may act for the program is the batcher's guard (above), not Kafka's."""
    from sevisflow.core.acls import READ, TOPIC, WRITE, acl_model, allowed

    raw = {
        "school": {"org_id": "ZZZ214F99999000", "dso_user_ids": [DSO]},
        "exchange_programs": [{"program_number": PROGRAM, "sis_program": "RSCH", "ro_user_id": RO}],
    }
    s = settings_from_mapping(raw, env={})
    acls = acl_model(s)
    dso = f"User:{s.acls.dso[0]}"
    assert allowed(acls, dso, WRITE, TOPIC, s.topics.commands)
    assert all(allowed(acls, dso, READ, TOPIC, t) for t in (s.topics.batches, s.topics.open_batches, s.topics.results))
    assert not allowed(acls, dso, WRITE, TOPIC, s.topics.batches)
    assert acls == acl_model(s.replace(exchange_programs=[]))  # programs add no rule and take none away


def test_the_stages_daily_tick_signs_the_programs_scheduled_close_with_its_ro():
    """One tick of the stage closes the school with school.close_dso and the program with the program's RO."""
    from sevisflow.core.serde import registry
    from sevisflow.processors.batcher.stage import BatcherStage, BatcherStore

    raw = {
        "school": {
            "org_id": ORG,
            "timezone": "America/Chicago",
            "close_at": "00:00",
            "close_dso": "SCHEDDSO01",
            "dso_user_ids": [DSO],
        },
        "exchange_programs": [{"program_number": PROGRAM, "sis_program": "RSCH", "ro_user_id": RO}],
    }
    settings = settings_from_mapping(raw, env={})
    stage, store = BatcherStage(settings), BatcherStore()
    store.load_partition(0, {})
    stage._apply(store, 0, ORG, EventIn(event("F1", n=1), BASE_MS), None)
    stage._apply(store, 0, PROGRAM, EventIn(ev_event("J1", n=2), BASE_MS), None)
    cmds = [
        registry().decode(o.value, "sevisflow.commands.BatchCommand")
        for o in stage._tick(store)
        if o.topic == settings.topics.commands
    ]
    assert {c["org_id"]: c["dso_user_id"] for c in cmds} == {ORG: "SCHEDDSO01", PROGRAM: RO}
    for c in cmds:  # each is accepted by the guard of the same settings and closes its own OrgID
        _, outs = apply(store.cache[(0, c["org_id"])], CommandIn(c, log_ms=c["requested_at_ms"], policy=stage.policy))
        assert [d["closed_by"] for d in closed(outs)] == [c["dso_user_id"]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    org=st.one_of(
        st.sampled_from([PROGRAM, OTHER_PROGRAM, "G-7-00001", "P-4-99999"]),
        st.from_regex(r"[PG]-[1-7]-\d{5}", fullmatch=True),
    ),
    kind=st.sampled_from(["close", "hold", "release", "report", "resend", "requeue"]),
    user=st.sampled_from([RO, ARO, DSO, "SCHEDDSO01", "INTRUDER01"]),
    scheduled=st.booleans(),
)
def test_no_command_acts_for_a_program_unless_configured_and_sent_by_its_officers(org, kind, user, scheduled):
    """Whatever the kind, user or id form: a program that is not configured is refused and dead-lettered; a configured
    one takes a person's command only from its RO/AROs (a scheduled close only from its RO); nothing crashes."""
    s, _ = run(School(org), EventIn(ev_event("J1", n=1) | {"org_id": org}, BASE_MS))
    cid = f"scheduled:{org}:2025-06-15" if scheduled and kind == "close" else f"{kind}-1"
    cmd = command(
        kind,
        cid,
        org=org,
        dso_user_id=user,
        at_ms=AT,
        student_key="J1",
        reason="why",
        batch_id="S1750000000000",
        payload_json=orjson.dumps(
            {"kind": "EV.Reprint", "payload": {"Reason": "05"}, "sevis_id": "N0000000001"}
        ).decode(),
    )
    new, outs = apply(s, CommandIn(cmd, log_ms=AT, policy=POLICY))
    codes = [o.code for o in outs if isinstance(o, Reject)]
    allowed = org == PROGRAM and (
        kind == "requeue" or (user == RO if cid.startswith("scheduled:") else user in (RO, ARO))
    )
    if not allowed:
        assert codes == ["unauthorized_command"] and new.records == s.records and not closed(outs)
    else:
        assert "unauthorized_command" not in codes
        assert all(d["closed_by"] == user for d in closed(outs))
