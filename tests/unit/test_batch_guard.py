"""What a command may do: every refusal of the batcher's guard, closing exactly a reviewed revision, a poisoned
stamp, and a property test of thousands of malformed, forged and replayed commands through the stage's decode path."""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevisflow.core.config import settings_from_mapping
from sevisflow.core.errors import ConfigError
from sevisflow.core.serde import registry
from sevisflow.processors.batcher.core import CommandIn, EventIn, Publish, Reject, School, apply
from sevisflow.processors.batcher.guard import (
    MAX_FUTURE_MS,
    MAX_PAST_MS,
    MAX_RECORD_IDS,
    CommandPolicy,
    parse_principals,
)
from sevisflow.processors.batcher.ids import _MAX_STAMP, next_batch_stamp
from sevisflow.processors.batcher.stage import (
    BatcherStage,
    BatcherStore,
    _clock_problem,
    command_policy,
    load_school,
    save_diff,
)
from testkit.batcher import BASE_MS, ORG, command, event

DSO, OTHER = "DSOUSER001", "DSOUSER002"
POLICY = CommandPolicy(frozenset({DSO, OTHER}), {"User:alice": DSO, "User:bob": OTHER}, close_dso="SCHEDDSO01")
AT = BASE_MS + 3_600_000  # the fixtures' requested_at_ms


def run(state, *inputs):
    outs = []
    for inp in inputs:
        state, o = apply(state, inp)
        outs += o
    return state, outs


def published(outs):
    return [o.event for o in outs if isinstance(o, Publish)]


def rejected_reason(outs) -> str:
    (ev,) = [e for e in published(outs) if e["type"] == "command_rejected"]
    return ev["reason"]


def cmd_in(cmd, log_ms=AT, policy=POLICY):
    return CommandIn(cmd, log_ms=log_ms, policy=policy)


def school_with_two_ready():
    s, _ = run(School(ORG), EventIn(event("S1", n=1), BASE_MS), EventIn(event("S2", n=2), BASE_MS))
    return s


# ----------------------------------------------------------------------------- refusals, one by one


@pytest.mark.parametrize(
    "fields,why,code",
    [
        (
            {"kind": "result", "payload_json": '{"student_key": "S1", "sevis_id": "N6666666666", "status": "success"}'},
            "results (and the SEVIS IDs they assign) come only from sevis.results",
            "malformed_command",
        ),
        ({"kind": "explode"}, "unknown command kind 'explode'", "malformed_command"),
        ({"kind": "hold", "student_key": "S1"}, "hold: the reason is missing", "malformed_command"),
        (
            {"kind": "hold", "student_key": "S1", "reason": "x" * 501},
            "501 characters long; at most 500",
            "malformed_command",
        ),
        (
            {"kind": "hold", "student_key": "S1", "reason": "ok\x1b[2J"},
            "control or invisible character (U+001B",
            "malformed_command",
        ),
        ({"kind": "hold", "student_key": "S1", "reason": "   "}, "the reason is blank", "malformed_command"),
        ({"kind": "hold", "reason": "why"}, "hold: the student key is missing", "malformed_command"),
        ({"kind": "release", "student_key": "S" * 101}, "the student key is 101 characters", "malformed_command"),
        ({"kind": "close", "dso_user_id": "short"}, "has 5 characters; SEVIS needs exactly 10", "malformed_command"),
        ({"kind": "close", "dso_user_id": None}, "a SEVIS user id is required", "malformed_command"),
        (
            {"kind": "close", "record_ids": ["r"] * (MAX_RECORD_IDS + 1)},
            f"at most {MAX_RECORD_IDS}",
            "malformed_command",
        ),
        ({"kind": "close", "requested_at_ms": 0}, "requested_at_ms is missing", "malformed_command"),
        ({"kind": "close", "reviewed_revision": -3}, "reviewed_revision -3 is not a revision", "malformed_command"),
        (
            {"kind": "close", "dso_user_id": "INTRUDER01"},
            "'INTRUDER01' is not one of the school's DSOs",
            "unauthorized_command",
        ),
        ({"kind": "close", "principal": None}, "carries no authenticated principal", "unauthorized_command"),
        (
            {"kind": "close", "principal": "User:mallory"},
            "'User:mallory' is not mapped to a DSO",
            "unauthorized_command",
        ),
        (
            {"kind": "close", "principal": "User:bob"},
            "'User:bob' acts as DSOUSER002, not as 'DSOUSER001'",
            "unauthorized_command",
        ),
        (
            {"kind": "close", "requested_at_ms": AT + MAX_FUTURE_MS + 60_000},
            "minutes after the command's Kafka timestamp",
            "untimely_command",
        ),
        (
            {"kind": "close", "requested_at_ms": 9_223_372_036_854_775_807},
            "after the command's Kafka timestamp",
            "untimely_command",
        ),
        ({"kind": "close", "requested_at_ms": AT - MAX_PAST_MS - 1}, "a stale or replayed command", "untimely_command"),
        (
            {"kind": "close", "command_id": "scheduled:ABC214F12345000:2025-06-15"},
            "a scheduled close must carry school.close_dso",
            "unauthorized_command",
        ),
    ],
)
def test_each_bad_command_is_refused_with_its_reason_and_dead_lettered(fields, why, code):
    s = school_with_two_ready()
    cmd = dict(command("close", "c-bad", dso_user_id=DSO, principal="User:alice"), **fields)
    new, outs = apply(s, cmd_in(cmd))
    assert why in rejected_reason(outs)
    assert [o.code for o in outs if isinstance(o, Reject)] == [code]
    assert new.records == s.records and new.sevis_ids == s.sevis_ids and new.last_stamp == s.last_stamp
    # a well-formed refused command is remembered (a later replay cannot take effect); garbage is not kept
    assert (cmd["command_id"] in new.commands) == (code != "malformed_command")


def test_a_forged_result_command_never_sets_a_sevis_id():
    s, _ = run(
        School(ORG),
        EventIn(event("S1", "Create", n=1), BASE_MS),
        EventIn(event("S1", "Registration", n=2, sevis_id=None), BASE_MS),
    )
    forged = command(
        "result",
        "r-1",
        payload_json=orjson.dumps(
            {
                "batch_id": "S1750000000000",
                "request_id": "x",
                "student_key": "S1",
                "kind": "Create",
                "status": "success",
                "sevis_id": "N6666666666",
            }
        ).decode(),
    )
    new, outs = apply(s, CommandIn(forged))  # refused even without a policy: results come only from sevis.results
    assert "only from sevis.results" in rejected_reason(outs) and not new.sevis_ids
    assert new.records["S1:Registration"]["status"] == "waiting"


def test_missing_command_id_is_only_dead_lettered():
    s = school_with_two_ready()
    new, outs = apply(s, cmd_in(command("close", "", dso_user_id=DSO, principal="User:alice")))
    assert published(outs) == [] and [o.code for o in outs] == ["malformed_command"] and new == s


def test_a_replayed_command_is_dead_lettered_and_changes_nothing():
    s = school_with_two_ready()
    cmd = command("close", "c1", dso_user_id=DSO, principal="User:alice")
    s, outs = apply(s, cmd_in(cmd))
    assert [e["type"] for e in published(outs)].count("closed") == 1
    s, _ = run(s, EventIn(event("S3", n=3), BASE_MS))
    again, outs = apply(s, cmd_in(cmd))
    assert published(outs) == [] and [o.code for o in outs] == ["duplicate_command"] and again.records == s.records


def test_a_refused_command_stays_refused_when_replayed_after_the_settings_changed():
    s = school_with_two_ready()
    cmd = command("close", "c1", dso_user_id="NEWDSO0001", principal=None)
    s, outs = apply(s, cmd_in(cmd, policy=CommandPolicy(frozenset({DSO}))))
    assert "not one of the school's DSOs" in rejected_reason(outs)
    s2, outs = apply(s, cmd_in(cmd, policy=CommandPolicy(frozenset({DSO, "NEWDSO0001"}))))
    assert [o.code for o in outs] == ["duplicate_command"] and s2.records == s.records


def test_no_dso_configured_refuses_every_dso_command_with_the_fix():
    s = school_with_two_ready()
    _, outs = apply(s, cmd_in(command("close", "c1", dso_user_id=DSO), policy=CommandPolicy()))
    assert "add the DSOs' SEVIS user ids to school.dso_user_ids" in rejected_reason(outs)


def test_scheduled_close_carries_close_dso_and_records_that_nobody_reviewed_it():
    s = school_with_two_ready()
    sched = command("close", "scheduled:ABC214F12345000:2025-06-15", dso_user_id="SCHEDDSO01")
    _, outs = apply(s, cmd_in(sched))
    (closed,) = [e for e in published(outs) if e["type"] == "closed"]
    assert "scheduled close: no person reviewed these records" in closed["reason"]
    _, outs = apply(s, cmd_in(dict(sched, reviewed_revision=s.revision)))
    assert "cannot claim a reviewed revision" in rejected_reason(outs)


# ----------------------------------------------------------------------------- hold / release / SEVIS ID


def test_already_on_hold_is_said_as_such_and_release_of_a_student_not_held_is_refused():
    s = school_with_two_ready()
    s, outs = apply(
        s,
        cmd_in(
            command("hold", "h1", student_key="S1", dso_user_id=DSO, principal="User:alice", reason="check the I-20")
        ),
    )
    held = next(e for e in published(outs) if e["type"] == "student_held")
    assert orjson.loads(held["record_json"]) == {"student_key": "S1", "records": 1, "by": DSO, "why": "check the I-20"}
    s2, outs = apply(
        s, cmd_in(command("hold", "h2", student_key="S1", dso_user_id=OTHER, principal="User:bob", reason="again"))
    )
    assert rejected_reason(outs) == (
        "student S1 is already on hold (held by DSOUSER001: check the I-20); nothing changed"
    )
    assert s2.held == s.held
    _, outs = apply(s, cmd_in(command("release", "r1", student_key="S2", dso_user_id=DSO, principal="User:alice")))
    assert rejected_reason(outs) == "student S2 is not on hold; nothing to release"


def test_the_open_view_carries_who_held_when_and_why_also_without_records():
    from sevisflow.processors.batcher.core import open_view
    from sevisflow.processors.batcher.view import from_open_batch

    s = school_with_two_ready()
    s, _ = apply(
        s,
        cmd_in(
            command("hold", "h1", student_key="S9", dso_user_id=DSO, principal="User:alice", reason="no record yet")
        ),
    )
    view = from_open_batch(registry().decode(registry().encode("sevisflow.batches.OpenBatch", open_view(s))))
    assert view.held_students() == [
        {
            "student_key": "S9",
            "display_name": None,
            "by": DSO,
            "why": "no record yet",
            "at_ms": AT,
            "reason": "held by DSOUSER001: no record yet",
            "records": 0,
        }
    ]


def test_a_dso_supplied_sevis_id_that_differs_is_refused_and_retargets_nothing():
    s, _ = run(School(ORG), EventIn(event("S1", n=1, sevis_id="N0000000042"), BASE_MS))
    body = {
        "kind": "PersonalInfo",
        "coalesce_key": "PersonalInfo.PassportName",
        "sevis_id": "N0000000099",
        "payload": {"FullName": {"LastName": "Chen", "PassportName": "CHEN WEI"}},
        "after": {},
    }
    cmd = command(
        "report",
        "a1",
        student_key="S1",
        dso_user_id=DSO,
        principal="User:alice",
        payload_json=orjson.dumps(body).decode(),
    )
    new, outs = apply(s, cmd_in(cmd))
    assert "SEVIS ID N0000000099 differs from N0000000042" in rejected_reason(outs)
    assert new.sevis_ids == {"S1": "N0000000042"} and new.records == s.records
    # the same through sevis.events (an add-info event of an older CLI): dead-lettered, nothing re-targeted
    ev = event("S1", n=5, sevis_id="N0000000099", origin="dso")
    new, outs = apply(s, EventIn(ev, BASE_MS))
    assert [o.code for o in outs] == ["sevis_id_mismatch"] and new.records == s.records
    assert new.records["S1:PersonalInfo"]["sevis_id"] == "N0000000042"
    # the right ID is accepted, with the DSO as lineage
    new, outs = apply(
        s, cmd_in(dict(cmd, command_id="a2", payload_json=orjson.dumps(dict(body, sevis_id="N0000000042")).decode()))
    )
    rec = new.records["S1:PersonalInfo.PassportName"]
    assert rec["origin"] == "dso" and rec["lineage"][0]["dso_user_id"] == DSO


# ----------------------------------------------------------------------------- close what was reviewed


def test_close_of_a_revision_closes_only_what_was_ready_and_unchanged_at_it():
    s = school_with_two_ready()
    reviewed, ready = s.revision, sorted(s.records)
    s, _ = run(
        s,
        EventIn(event("S3", n=3), BASE_MS),  # arrived after the review
        EventIn(event("S2", n=4), BASE_MS),
    )  # a reviewed record changed: new content nobody saw
    cmd = command("close", "c1", dso_user_id=DSO, principal="User:alice", record_ids=ready, reviewed_revision=reviewed)
    s, outs = apply(s, cmd_in(cmd))
    (closed,) = [e for e in published(outs) if e["type"] == "closed"]
    assert [r["record_id"] for r in orjson.loads(closed["records_json"])] == ["S1:PersonalInfo"]
    assert "1 reviewed record(s) changed after revision" in closed["reason"]
    assert f"{DSO} reviewed revision {reviewed}" in closed["reason"]
    assert sorted(s.records) == ["S2:PersonalInfo", "S3:PersonalInfo"]
    assert s.commands["c1"]["reviewed_revision"] == reviewed


def test_close_of_a_revision_that_does_not_exist_is_refused():
    s = school_with_two_ready()
    _, outs = apply(
        s, cmd_in(command("close", "c1", dso_user_id=DSO, principal="User:alice", reviewed_revision=s.revision + 5))
    )
    assert f"revision {s.revision + 5} does not exist" in rejected_reason(outs)


def test_close_without_review_is_bound_to_the_revision_it_was_read_at():
    s = school_with_two_ready()
    basis = s.revision
    s, _ = run(s, EventIn(event("S1", n=9), BASE_MS))
    _, outs = apply(s, cmd_in(command("close", "c1", dso_user_id=DSO, principal="User:alice", basis_revision=basis)))
    (closed,) = [e for e in published(outs) if e["type"] == "closed"]
    assert [r["record_id"] for r in orjson.loads(closed["records_json"])] == ["S2:PersonalInfo"]
    assert f"closed without a reviewed revision (as read at revision {basis})" in closed["reason"]


# ----------------------------------------------------------------------------- BatchID stamps


def test_a_poisoned_far_future_stamp_in_the_state_moves_to_a_new_letter_instead_of_crashing():
    s = school_with_two_ready()
    import dataclasses

    poisoned = dataclasses.replace(s, last_stamp=_MAX_STAMP)
    new, outs = apply(poisoned, cmd_in(command("close", "c1", dso_user_id=DSO, principal="User:alice")))
    (closed,) = [e for e in published(outs) if e["type"] == "closed"]
    assert closed["batch_id"] == f"T{AT:013d}" and new.id_prefix == "T" and new.last_stamp == AT
    assert "BatchIDs now start with T" in closed["reason"]
    # and it survives the state store (a restart)
    store = BatcherStore()
    save_diff(store, 0, School(ORG), new)
    assert load_school(store, 0, ORG).id_prefix == "T"


def test_next_batch_stamp_never_overflows():
    assert next_batch_stamp(AT, 5) == ("S", AT)
    assert next_batch_stamp(AT, AT + 10) == ("S", AT + 11)
    assert next_batch_stamp(AT, _MAX_STAMP) == ("T", AT)
    assert next_batch_stamp(AT, _MAX_STAMP, "Z") == ("A", AT)
    with pytest.raises(ValueError):
        next_batch_stamp(_MAX_STAMP + 1, 0)


# ----------------------------------------------------------------------------- settings


def test_policy_from_settings_and_its_errors():
    def policy(**school):
        return command_policy(settings_from_mapping({"school": {"org_id": "ZZZ214F99999000", **school}}, env={}))

    p = policy(dso_user_ids=[DSO], dso_principals=["User:CN=alice,O=Uni=DSOUSER001"], close_dso="SCHEDDSO01")
    assert p.principals == {"User:CN=alice,O=Uni": DSO} and p.dso_user_ids == {DSO}
    with pytest.raises(ConfigError, match=r"school\.dso_user_ids: SEVIS user id 'short'"):
        policy(dso_user_ids=["short"])
    with pytest.raises(ConfigError, match="not principal=SEVISUSER"):
        policy(dso_user_ids=[DSO], dso_principals=["User:alice"])
    with pytest.raises(ConfigError, match=r"maps to DSOUSER002, which is not in school\.dso_user_ids"):
        policy(dso_user_ids=[DSO], dso_principals=["User:bob=DSOUSER002"])
    assert parse_principals([]) == {}


def test_a_kafka_timestamp_ahead_of_the_batchers_clock_is_refused_before_the_core():
    now = 1_800_000_000_000
    assert _clock_problem(now + 60_000, now) is None
    assert "ahead of the batcher's clock" in _clock_problem(now + MAX_FUTURE_MS + 60_000, now)


# ----------------------------------------------------------------------------- property test: the decode path


class Msg:
    """The parts of a confluent_kafka Message the stage reads."""

    def __init__(self, topic: str, value: bytes | None, key: bytes | None, ts: int, offset: int) -> None:
        self._t, self._v, self._k, self._ts, self._o = topic, value, key, ts, offset

    def topic(self):
        return self._t

    def value(self):
        return self._v

    def key(self):
        return self._k

    def partition(self):
        return 0

    def offset(self):
        return self._o

    def timestamp(self):
        return (1, self._ts)

    def error(self):
        return None

    def headers(self):
        return None


SETTINGS = settings_from_mapping(
    {
        "school": {
            "org_id": ORG,
            "dso_user_ids": [DSO, OTHER],
            "dso_principals": ["User:alice=DSOUSER001", "User:bob=DSOUSER002"],
            "close_dso": "SCHEDDSO01",
        }
    },
    env={},
)
T = SETTINGS.topics

text = st.text(st.characters(codec="utf-8"), max_size=30)
kinds = st.sampled_from(["close", "hold", "release", "requeue", "report", "result", "", "CLOSE", "drop", "x" * 300])
users = st.one_of(st.sampled_from([DSO, OTHER, "INTRUDER01", "short", "", "SCHEDDSO01", "DSO\x00SER01"]), text)
principals = st.one_of(st.none(), st.sampled_from(["User:alice", "User:bob", "User:mallory", "User:alice\n"]), text)
times = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -1, 2**63 - 1, 10**13, 10**13 - 1]),
    st.integers(-MAX_PAST_MS * 2, MAX_FUTURE_MS * 2),
)  # the last: an offset to the Kafka timestamp
payloads = st.one_of(
    st.none(),
    text,
    st.sampled_from(
        [
            '{"kind": "Reprint", "payload": {"Reason": "02"}, "sevis_id": "N0000000001"}',
            '{"batch_id": "S1750000000000", "request_id": "1.S1", "student_key": "S1", "kind": "Create", '
            '"status": "success", "sevis_id": "N6666666666"}',
            '{"kind": "PersonalInfo", "coalesce_key": "PersonalInfo.PassportName", "sevis_id": "N9999999999", '
            '"payload": {"FullName": {"LastName": "X", "PassportName": "Y"}}}',
            '{"kind": "Dependent.Add", "payload": []}',
            "[1, 2]",
            '{"kind": {"a": 1}}',
            "{" * 50,
        ]
    ),
)


@st.composite
def a_command(draw):
    """A command a forger, a broken client or a replay could put on sevis.batch.commands."""
    offset = draw(times)
    return {
        "command_id": draw(
            st.one_of(
                st.sampled_from(["c-1", "c-2", "scheduled:ABC214F12345000:2025-06-15", ""]), text, st.just("x" * 500)
            )
        ),
        "org_id": draw(st.sampled_from([ORG, ORG, "", "A|B", "ZZZ214F99999000", "x" * 50])),
        "kind": draw(kinds),
        "dso_user_id": draw(st.one_of(st.none(), users)),
        "student_key": draw(st.one_of(st.none(), st.sampled_from(["S1", "S2", "S9", "", "S" * 200]), text)),
        "record_ids": draw(
            st.one_of(
                st.just([]),
                st.lists(st.sampled_from(["S1:PersonalInfo", "S2:PersonalInfo", ""]), max_size=5),
                st.just(["r"] * (MAX_RECORD_IDS + 1)),
            )
        ),
        "reviewed_revision": draw(st.one_of(st.none(), st.integers(-5, 10**6), st.just(2**63 - 1))),
        "batch_id": draw(st.one_of(st.none(), st.sampled_from(["S1750000000000", ""]), text)),
        "reason": draw(st.one_of(st.none(), text, st.just("r" * 600), st.just("line\nbreak"))),
        "requested_at_ms": offset,
        "payload_json": draw(payloads),
        "principal": draw(principals),
        "basis_revision": draw(st.one_of(st.none(), st.integers(-1, 100))),
    }


VALID = {
    "close": dict(command("close", "x"), dso_user_id=DSO, principal="User:alice", requested_at_ms=0),
    "hold": dict(
        command("hold", "x"),
        dso_user_id=DSO,
        principal="User:alice",
        student_key="S1",
        reason="check it",
        requested_at_ms=0,
    ),
    "release": dict(
        command("release", "x"), dso_user_id=OTHER, principal="User:bob", student_key="S2", requested_at_ms=0
    ),
    "report": dict(
        command("report", "x"),
        dso_user_id=DSO,
        principal="User:alice",
        student_key="S1",
        requested_at_ms=0,
        payload_json='{"kind": "Reprint", "payload": {"Reason": "02"}, "sevis_id": "N0000000001"}',
    ),
    "requeue": dict(command("requeue", "x"), batch_id="S1750000000000", requested_at_ms=0),
}
MUTATIONS = {
    "none": {},
    "intruder": {"dso_user_id": "INTRUDER01"},
    "other_dso": {"dso_user_id": OTHER},
    "no_principal": {"principal": None},
    "mallory": {"principal": "User:mallory"},
    "bob": {"principal": "User:bob"},
    "future_10min": {"requested_at_ms": 10 * 60_000},
    "future_year": {"requested_at_ms": 365 * 86_400_000},
    "stale": {"requested_at_ms": -2 * 86_400_000},
    "revision_ahead": {"reviewed_revision": 10**6},
    "scheduled": {"command_id": "scheduled:ABC214F12345000:2025-06-15"},
    "wrong_sevis_id": {"payload_json": '{"kind": "Reprint", "payload": {"Reason": "02"}, "sevis_id": "N0000000666"}'},
    "far_future_absolute": {"requested_at_ms": 9_999_999_999_999},
}


@st.composite
def a_forgery(draw):
    """A well-formed command of each kind with one thing forged (or nothing: a real one, maybe replayed)."""
    kind, mutation = draw(st.sampled_from(sorted(VALID))), draw(st.sampled_from(sorted(MUTATIONS)))
    cmd = dict(VALID[kind], command_id=f"f-{draw(st.integers(0, 30))}")
    cmd.update(MUTATIONS[mutation])
    forged_time = mutation in ("future_10min", "future_year", "far_future_absolute")
    forged_who = mutation in ("intruder", "no_principal", "mallory") and kind != "requeue"
    return cmd, forged_time or forged_who


inputs = st.lists(
    st.one_of(
        st.tuples(st.just("command"), a_command(), st.booleans()),  # bool: requested_at_ms relative to the log time
        st.tuples(st.just("forged"), a_forgery(), st.just(True)),
        st.tuples(st.just("forged"), a_forgery(), st.just(True)),
        st.tuples(st.just("bytes"), st.binary(max_size=64), st.just(False)),
        st.tuples(st.just("replay"), st.integers(0, 50), st.just(False)),
        st.tuples(st.just("event"), st.integers(1, 4), st.just(False)),
        st.tuples(st.just("wrong_schema"), st.just(None), st.just(False)),
    ),
    min_size=8,
    max_size=30,
)


def _command_value(cmd) -> bytes | None:
    try:
        return registry().encode("sevisflow.commands.BatchCommand", cmd)
    except Exception:  # noqa: BLE001 - a value Avro cannot hold: send it truncated instead (undecodable)
        return registry().encode("sevisflow.commands.BatchCommand", dict(cmd, requested_at_ms=1))[:-3]


def test_property_no_command_crashes_the_batcher_and_each_is_dead_lettered_or_refused():
    """≥1,000 malformed, forged and replayed commands through BatcherStage.handle: 0 crashes, each one dead-lettered
    or refused with a reason, and the school's next real close still works."""
    counts: Counter[str] = Counter()

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(inputs)
    def check(program):
        stage, store = BatcherStage(SETTINGS), BatcherStore()
        store.partitions.add(0)
        now = int(time.time() * 1000)
        sent: list[bytes] = []
        offset = 0

        def feed(topic: str, value: bytes | None, key: bytes | None, ts: int = now) -> list:
            nonlocal offset
            offset += 1
            try:
                outs = stage.handle(Msg(topic, value, key, ts, offset), store)
            except Exception:
                counts["crashes"] += 1
                raise
            store.commit()
            return outs

        feed(T.events, registry().encode("sevisflow.events.SevisEvent", event("S1", n=0)), ORG.encode())
        for what, item, relative in program:
            if what == "event":
                feed(
                    T.events, registry().encode("sevisflow.events.SevisEvent", event(f"S{item}", n=item)), ORG.encode()
                )
                continue
            must_refuse = what != "replay"
            if what == "bytes":
                value = item
            elif what == "wrong_schema":
                value = registry().encode("sevisflow.events.SevisEvent", event("S1", n=1))
            elif what == "replay":
                if not sent:
                    continue
                value = sent[item % len(sent)]
            else:
                cmd, must_refuse = (item[0], item[1]) if what == "forged" else (item, False)
                cmd = dict(cmd)
                if relative and abs(cmd["requested_at_ms"]) < 10**12:
                    cmd["requested_at_ms"] = now + cmd["requested_at_ms"]
                value = _command_value(cmd)
                sent.append(value)
            counts[what] += 1
            counts["commands"] += 1
            counts["forged_who_or_time"] += what == "forged" and must_refuse
            outs = feed(T.commands, value, ORG.encode())
            dead = [o for o in outs if o.topic == T.dlq]
            events = [registry().decode(o.value) for o in outs if o.topic == T.batches]
            refused = [e for e in events if e["type"] == "command_rejected" and e["reason"]]
            if dead:
                counts["dead_lettered"] += 1
                assert all(registry().decode(o.value)["reason"] for o in dead)
            elif refused:
                counts["refused"] += 1
            else:
                assert not must_refuse, (what, value)
                counts["applied"] += 1  # a generated command that happens to be valid (e.g. a well-formed hold)
        # the school's next real close works
        school = load_school(store, 0, ORG)
        feed(T.events, registry().encode("sevisflow.events.SevisEvent", event("S77", n=77)), ORG.encode())
        school = load_school(store, 0, ORG)
        close = command(
            "close",
            f"real-close-{offset}",
            dso_user_id=DSO,
            principal="User:alice",
            reviewed_revision=school.revision,
            at_ms=now,
            record_ids=[r for r, rec in school.records.items() if rec["status"] == "open"],
        )
        outs = feed(
            T.commands,
            registry().encode("sevisflow.commands.BatchCommand", dict(close, basis_revision=None)),
            ORG.encode(),
        )
        closed = [
            e for e in (registry().decode(o.value) for o in outs if o.topic == T.batches) if e["type"] == "closed"
        ]
        assert closed and len(closed[0]["batch_id"]) == 14, [registry().decode(o.value) for o in outs]
        assert "S77:PersonalInfo" in [r["record_id"] for c in closed for r in orjson.loads(c["records_json"])]
        counts["real_closes"] += 1

    check()
    print(f"\nproperty test counts: {dict(sorted(counts.items()))}")
    assert counts["crashes"] == 0 and counts["commands"] >= 1000
    assert counts["dead_lettered"] + counts["refused"] + counts["applied"] == counts["commands"]
    assert counts["dead_lettered"] >= 500 and counts["refused"] >= 50 and counts["forged"] >= 300


def test_an_input_that_makes_the_core_raise_is_dead_lettered_and_the_state_is_kept(monkeypatch):
    """The adapter's last line: whatever a future bug makes ``apply`` raise stops one input, not the school."""
    import sevisflow.processors.batcher.stage as stage_mod

    stage, store = BatcherStage(SETTINGS), BatcherStore()
    now = int(time.time() * 1000)
    stage.handle(
        Msg(T.events, registry().encode("sevisflow.events.SevisEvent", event("S1", n=1)), ORG.encode(), now, 1), store
    )
    before = load_school(store, 0, ORG)

    def broken(state, inp):
        raise KeyError("a bug")

    monkeypatch.setattr(stage_mod, "apply", broken)
    outs = stage.handle(
        Msg(T.events, registry().encode("sevisflow.events.SevisEvent", event("S2", n=2)), ORG.encode(), now, 2), store
    )
    (dead,) = [registry().decode(o.value) for o in outs]
    assert dead["code"] == "batcher_error" and "KeyError" in dead["reason"] and dead["source_offset"] == 2
    assert load_school(store, 0, ORG) == before


def test_verify_replays_a_log_with_refusals_whatever_the_settings_are_today():
    """Who may act is a setting of the day: `sevisflow verify` takes a refusal the batcher recorded as recorded,
    and re-derives everything else (the close that followed) from the log."""
    from sevisflow.app.audit.decode import decode_record
    from sevisflow.app.audit.verify import guided_batcher_replay

    ts = 1_767_300_000_000
    s, recorded, events, commands = School(ORG), [], [], []
    for i in range(2):
        raw = registry().encode("sevisflow.events.SevisEvent", event(f"S{i}", n=i))
        events.append(decode_record("sevis.events", 0, i, ORG.encode(), raw, (1, ts + i)))
        s, outs = apply(s, EventIn(registry().decode(raw), ts + i))
        recorded += published(outs)
    for i, (cid, user) in enumerate((("c-intruder", "INTRUDER01"), ("c-real", DSO))):
        cmd = dict(
            command("close", cid, dso_user_id=user, principal="User:alice", at_ms=ts + 10_000 + i), basis_revision=None
        )
        raw = registry().encode("sevisflow.commands.BatchCommand", cmd)
        commands.append(decode_record("sevis.batch.commands", 0, i, ORG.encode(), raw, (1, ts + 10_000 + i)))
        s, outs = apply(s, CommandIn(registry().decode(raw), log_ms=ts + 10_000 + i, policy=POLICY))
        recorded += published(outs)
    assert [e["type"] for e in recorded][-2:] == ["command_rejected", "closed"]
    batches = [
        decode_record(
            "sevis.batches", 0, i, ORG.encode(), registry().encode("sevisflow.batches.BatchEvent", b), (1, ts + 20_000)
        )
        for i, b in enumerate(recorded)
    ]
    replay = guided_batcher_replay(ORG, events, commands, [], batches)
    assert replay.divergence is None and replay.reproduced == replay.recorded == len(recorded)
    assert list(replay.closed) == [recorded[-1]["batch_id"]]
