"""Many schools in one deployment ([[schools]]): each member school is its own F/M OrgID with its own DSOs.

* the settings: a member school's table is checked when the settings load, every error names the table and the fix;
* the events stage's rule: a student's events go under the OrgID of ``student.school_code`` (empty = the main
  school), an unknown code and a move between schools are dead letters, never events under the wrong OrgID;
* the batcher's guard: a DSO acts only for their own school, a scheduled close is signed by that school's
  close_dso, an F/M OrgID that is not configured is refused;
* the CLI: ``--org <member OrgID>`` resolves the member school and its DSOs.
"""

from __future__ import annotations

import copy
import io
import tomllib
from argparse import Namespace
from typing import Any

import orjson
import pytest

from sevisflow.core.config import MemberSchool, example_toml, load_settings, settings_from_mapping
from sevisflow.core.errors import ConfigError, SevisflowError
from sevisflow.core.serde import registry
from sevisflow.processors.batcher.core import CommandIn, EventIn, Publish, School, apply
from sevisflow.processors.batcher.stage import BatcherStage, BatcherStore, command_policy
from sevisflow.processors.sevis_events.derive import Context, derive
from testkit.batcher import BASE_MS, command, event
from tests.helpers import captured_logs
from tests.scenarios import School as SisSchool

MAIN, EAST, WEST = "ZZZ214F99999000", "EAS214F10000001", "WES214F20000002"
MAIN_DSO, EAST_DSO, WEST_DSO = "MAINDSO001", "EASTDSO001", "WESTDSO001"
SCHOOLS = [
    {"org_id": EAST, "sis_school": "EAST", "dso_user_ids": [EAST_DSO], "close_dso": EAST_DSO},
    {"org_id": WEST, "sis_school": "WEST", "dso_user_ids": [WEST_DSO]},
]


def load(*schools: dict[str, Any], **school: Any):
    raw = {"school": {"org_id": MAIN, "dso_user_ids": [MAIN_DSO], **school}, "schools": list(schools)}
    return settings_from_mapping(raw, env={})


# ----------------------------------------------------------------------------- settings


def test_member_schools_load_from_toml_and_route_school_codes(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(
        f'[school]\norg_id = "{MAIN}"\n\n'
        f'[[schools]]\norg_id = "{EAST}"\nsis_school = "EAST"\ndso_user_ids = ["{EAST_DSO}"]\nclose_dso = "{EAST_DSO}"\n\n'
        f'[[schools]]\norg_id = "{WEST}"\nsis_school = "WEST"\n'
    )
    s = load_settings(f, env={})
    assert [m.org_id for m in s.schools] == [EAST, WEST]
    assert s.member_school(EAST) == MemberSchool(EAST, "EAST", [EAST_DSO], EAST_DSO)
    assert s.member_school(MAIN) is None and s.member_school("P-1-12345") is None
    assert [s.org_for_school_code(c) for c in (None, "", "  ", "EAST", "WEST", "NORTH", "east")] == [
        MAIN,
        MAIN,
        MAIN,
        EAST,
        WEST,
        None,
        None,
    ]
    assert s.org_ids() == (MAIN, EAST, WEST) and s.school_codes() == {"EAST": EAST, "WEST": WEST}
    assert load().schools == () and load().org_ids() == (MAIN,)  # none = one school, nothing changes


@pytest.mark.parametrize(
    "change,message",
    [
        ({"org_id": ""}, '#1: org_id is missing: add org_id = "ABC214F12345000"'),
        ({"org_id": "P-1-12345"}, "#1 (P-1-12345): org_id = 'P-1-12345' is a J-1 program number, not a school code"),
        ({"org_id": "EAST"}, "org_id = 'EAST' is not a SEVIS school code: use it as SEVIS shows it"),
        ({"sis_school": " "}, f"sis_school is missing for {EAST}: add the value person.school_code has"),
        ({"sis_school": "EAST "}, "has blanks around it"),
        ({"dso_user_ids": ["short"]}, "dso_user_ids = 'short' is not a SEVIS user id: use the DSO's SEVIS user name"),
        ({"close_dso": "a b c d e "}, "close_dso = 'a b c d e ' is not a SEVIS user id"),
        ({"colour": "blue"}, "unknown key schools.colour (known: org_id, sis_school, dso_user_ids, close_dso)"),
        ({"dso_user_ids": 7}, "schools.dso_user_ids: expected list"),
    ],
)
def test_each_mistake_names_the_table_the_key_and_the_fix(change, message):
    with pytest.raises(ConfigError, match=r"\[\[schools\]\] #1") as err:
        load({**SCHOOLS[0], **change})
    assert message in str(err.value)


def test_duplicates_the_main_school_and_a_missing_main_school_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"#2: org_id 'EAS214F10000001' is also in #1"):
        load(SCHOOLS[0], {**SCHOOLS[1], "org_id": EAST})
    with pytest.raises(ConfigError, match=r"#2: sis_school 'EAST' is also in #1"):
        load(SCHOOLS[0], {**SCHOOLS[1], "sis_school": "EAST"})
    with pytest.raises(ConfigError, match=r"#1 \(ZZZ214F99999000\) is school\.org_id too: \[school\] is the main"):
        load({**SCHOOLS[0], "org_id": MAIN})
    with pytest.raises(ConfigError, match=r"school\.org_id is not: the main school's OrgID is used for students"):
        settings_from_mapping({"schools": [SCHOOLS[0]]}, env={})
    f = tmp_path / "s.toml"
    f.write_text(f'[school]\norg_id = "{MAIN}"\n[schools]\norg_id = "{EAST}"\n')
    with pytest.raises(ConfigError, match=r"write one \[\[schools\]\] \(two brackets\) per member school"):
        load_settings(f, env={})


def test_the_environment_replaces_the_list_and_the_example_documents_it():
    s = settings_from_mapping(
        {"school": {"org_id": MAIN}, "schools": SCHOOLS},
        env={"SEVISFLOW_SCHOOLS": f'[{{"org_id": "{WEST}", "sis_school": "W"}}]'},
    )
    assert [(m.org_id, m.sis_school) for m in s.schools] == [(WEST, "W")]
    with pytest.raises(ConfigError, match="SEVISFLOW_SCHOOLS is not JSON"):
        settings_from_mapping({}, env={"SEVISFLOW_SCHOOLS": "["})
    text = example_toml()
    assert "# [[schools]]" in text and '#   sis_school = "EAST"' in text


def _schools_block(text: str) -> str:
    """The example's [[schools]] block, uncommented: it must load as the table it shows."""
    lines = text.splitlines()
    start = lines.index("# [[schools]]")
    body = [
        ln.removeprefix("#   ") for ln in lines[start + 1 :] if ln.startswith("#   ") and not ln.startswith("#   #")
    ]
    return "\n".join(body)


def test_the_examples_schools_block_is_a_valid_member_school():
    table = tomllib.loads(_schools_block(example_toml()))
    s = load(table)
    assert s.member_school(table["org_id"]).close_dso == table["close_dso"]


# ----------------------------------------------------------------------------- the events stage's routing

CTX = Context(
    MAIN,
    "u1",
    [{"topic": "sis.public.person", "partition": 0, "offset": 1}],
    1_780_000_000_000,
    schools={"EAST": EAST, "WEST": WEST},
)
BASE: dict[str, Any] = SisSchool().pipe.last_view["S00000007"]  # F-1 with a SEVIS ID, active


def view(code: Any = None, *, key: str = "S00000007", email: str | None = None, **student: Any) -> dict[str, Any]:
    v = copy.deepcopy(BASE)
    v["student_key"] = key
    v["student"]["school_code"] = code
    v["student"].update(student)
    if email is not None:
        v["student"]["email"] = email
    return v


def admit(code: Any = None, **student: Any) -> dict[str, Any]:
    v = view(code, sevis_id=None, **student)
    v["program"]["status"] = "initial"
    return v


def test_each_students_events_go_under_their_schools_orgid():
    for code, org in ((None, MAIN), ("", MAIN), ("EAST", EAST), ("WEST", WEST)):
        create = derive(None, admit(code), CTX)
        assert [(e["kind"], e["org_id"]) for e in create.events] == [("Create", org)], code
        update = derive(view(code), view(code, email="new@example.edu"), CTX)
        assert [e["org_id"] for e in update.events] == [org] and update.events[0]["kind"] == "PersonalInfo"
    no_field = view(email="new@example.edu")
    del no_field["student"]["school_code"]  # a view written before the field existed: the main school
    old = view()
    del old["student"]["school_code"]
    assert [e["org_id"] for e in derive(old, no_field, CTX).events] == [MAIN]
    # the same student and change under two schools are two different events (the id includes the OrgID)
    ids = {derive(view(c), view(c, email="x@example.edu"), CTX).events[0]["event_id"] for c in (None, "EAST")}
    assert len(ids) == 2


def test_an_unknown_school_code_is_a_dead_letter_and_no_event():
    out = derive(view("NORTH"), view("NORTH", email="new@example.edu"), CTX)
    assert out.events == []
    (issue,) = out.issues
    assert issue.code == "unknown_school" and issue.field == "student.school_code"
    assert "S00000007" in issue.reason and 'add a [[schools]] entry with sis_school = "NORTH"' in issue.reason
    assert "correct person.school_code in the SIS row" in issue.reason
    assert [i.code for i in derive(None, admit("NORTH"), CTX).issues] == ["unknown_school"]  # no Create either
    # without member schools, any code is unknown: a deployment that did not configure [[schools]] sends nothing
    # under the main school for a student the SIS puts in another school
    bare = Context(MAIN, "u1", [], 1_780_000_000_000)
    assert derive(None, admit("EAST"), bare).events == []


def test_a_move_between_schools_is_a_dead_letter_then_later_changes_go_to_the_new_school():
    moved = view("WEST", email="new@example.edu")
    out = derive(view("EAST"), moved, CTX)
    assert out.events == []
    (issue,) = out.issues
    assert issue.code == "school_changed" and issue.field == "student.school_code"
    assert f"moved from {EAST} to {WEST}" in issue.reason and "transfer the student in SEVIS RTI" in issue.reason
    assert "S00000007" in issue.reason
    later = derive(moved, view("WEST", email="newer@example.edu"), CTX)
    assert [(e["kind"], e["org_id"]) for e in later.events] == [("PersonalInfo", WEST)] and later.issues == []
    # from the main school (no code) to a member, and back: the same rule
    assert [i.code for i in derive(view(None), view("EAST"), CTX).issues] == ["school_changed"]
    assert [i.code for i in derive(view("EAST"), view(""), CTX).issues] == ["school_changed"]
    # a Create already sent under EAST (no SEVIS ID yet) is a SEVIS record too
    assert [i.code for i in derive(admit("EAST"), admit("WEST"), CTX).issues] == ["school_changed"]


def test_an_applicant_without_a_sevis_record_just_moves():
    """No SEVIS ID and no Create sent (the record was incomplete): nothing to transfer, the Create goes to WEST."""
    incomplete = admit("EAST")
    incomplete["finance"]["tuition"] = None
    assert derive(None, incomplete, CTX).events == []
    out = derive(incomplete, admit("WEST"), CTX)
    assert [(e["kind"], e["org_id"]) for e in out.events] == [("Create", WEST)]
    assert "school_changed" not in [i.code for i in out.issues]


def test_the_pure_pipeline_routes_from_the_sis_rows_as_the_stage_does():
    """Through normalize: person.school_code set on a student SEVIS holds is a move (dead letter, no event); the
    next change goes to the member school."""
    sis = SisSchool()
    sis.pipe.schools = {"EAST": EAST}
    out = sis.tx(("u", "person", {"school_code": "EAST", "email": "a@example.edu"}))
    assert out.events == [] and [i.code for _, i in out.issues] == ["school_changed"]
    out = sis.tx(("u", "person", {"email": "b@example.edu"}))
    assert [(e["kind"], e["org_id"]) for e in out.events] == [("PersonalInfo", EAST)]
    out = sis.tx(("u", "person", {"school_code": "NORTH", "email": "c@example.edu"}))
    assert out.events == [] and [i.code for _, i in out.issues] == ["unknown_school", "school_changed"]
    out = sis.tx(("u", "person", {"email": "d@example.edu"}))
    assert out.events == [] and [i.code for _, i in out.issues] == ["unknown_school"]


def test_the_stage_dead_letters_an_unknown_school_naming_the_student_and_the_fix():
    from sevisflow.core.kafka_io import StateStore
    from sevisflow.processors.sevis_events.stage import EventsStage
    from tests.integration.events_support import view as record

    settings = load(*SCHOOLS)
    stage, state = EventsStage(settings), StateStore()

    class Msg:
        def __init__(self, rec: dict[str, Any]) -> None:
            self.rec = rec

        def key(self) -> bytes:
            return self.rec["student_key"].encode()

        def value(self) -> bytes:
            return registry().encode("sevisflow.students.StudentView", self.rec)

        def topic(self) -> str:
            return settings.topics.students

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return 1

        def timestamp(self) -> tuple[int, int]:
            return (1, BASE_MS)

    east = record("S1", 1, {("student", "school_code"): "EAST"})
    outs = stage.handle(Msg(east), state)
    assert outs == []  # the baseline: no event
    north = record("S1", 2, {("student", "school_code"): "NORTH"})
    outs = stage.handle(Msg(north), state)
    dead = [registry().decode(o.value, "sevisflow.dlq.DeadLetter") for o in outs if o.topic == settings.topics.dlq]
    assert [o.topic for o in outs] == [settings.topics.dlq] * 2
    assert [(d["code"], d["student_key"], d["field"]) for d in dead] == [
        ("unknown_school", "S1", "student.school_code"),
        ("school_changed", "S1", "student.school_code"),
    ]
    assert "moved from EAS214F10000001 to school code 'NORTH' (not configured)" in dead[1]["reason"]
    email = record("S1", 3, {("student", "school_code"): "NORTH", ("student", "email"): "n@example.edu"})
    outs = stage.handle(Msg(email), state)
    (d,) = [registry().decode(o.value, "sevisflow.dlq.DeadLetter") for o in outs]
    assert d["code"] == "unknown_school" and "S1" in d["reason"] and 'sis_school = "NORTH"' in d["reason"]
    west = record("S1", 4, {("student", "school_code"): "WEST", ("student", "email"): "w@example.edu"})
    stage.handle(Msg(west), state)  # a move again (dead letter); the next change goes to WEST
    west2 = record("S1", 5, {("student", "school_code"): "WEST", ("student", "email"): "w2@example.edu"})
    outs = stage.handle(Msg(west2), state)
    assert [(o.topic, o.key) for o in outs] == [(settings.topics.events, WEST.encode())]


# ----------------------------------------------------------------------------- the batcher's guard

SETTINGS = load(*SCHOOLS, close_dso="MAINDSO001", close_at="17:00")
POLICY = command_policy(SETTINGS)
AT = BASE_MS + 3_600_000


def _decision(org: str, user: str, cid: str = "c-1") -> str | None:
    """None when the close of ``org`` by ``user`` is applied, else the reason it was refused."""
    s, _ = apply(School(org), EventIn(event("S1", n=1, org=org), BASE_MS))
    _, outs = apply(s, CommandIn(command("close", cid, org=org, dso_user_id=user), log_ms=AT, policy=POLICY))
    evs = [o.event for o in outs if isinstance(o, Publish)]
    refused = [e["reason"] for e in evs if e["type"] == "command_rejected"]
    assert refused or [e["type"] for e in evs if e["type"] == "closed"] == ["closed"]
    return refused[0] if refused else None


def test_a_dso_closes_only_their_own_school():
    assert _decision(EAST, EAST_DSO) is None and _decision(WEST, WEST_DSO) is None and _decision(MAIN, MAIN_DSO) is None
    reason = _decision(WEST, EAST_DSO)
    assert f"'EASTDSO001' is not one of the DSOs of member school {WEST}" in reason
    assert "a DSO acts only for their own school" in reason
    assert "is not one of the school's DSOs (school.dso_user_ids)" in _decision(MAIN, EAST_DSO)
    assert f"not one of the DSOs of member school {EAST}" in _decision(EAST, MAIN_DSO)


def test_an_fm_orgid_that_is_not_configured_is_refused_naming_the_fix():
    reason = _decision("XYZ214F00001000", MAIN_DSO)
    assert "is neither school.org_id (ZZZ214F99999000) nor a member school" in reason
    assert "add the school as a [[schools]] entry" in reason


def test_scheduled_closes_are_signed_by_each_schools_close_dso():
    assert _decision(EAST, EAST_DSO, f"scheduled:{EAST}:2025-06-15") is None
    assert "must carry the close_dso of member school" in _decision(EAST, MAIN_DSO, f"scheduled:{EAST}:2025-06-15")
    # WEST has no close_dso: nobody signs its scheduled close
    assert "(not set)" in _decision(WEST, WEST_DSO, f"scheduled:{WEST}:2025-06-15")
    assert "must carry school.close_dso" in _decision(MAIN, EAST_DSO, f"scheduled:{MAIN}:2025-06-15")


def test_principals_may_map_to_member_dsos():
    s = load(*SCHOOLS, dso_principals=[f"User:east={EAST_DSO}"])
    assert command_policy(s).principals == {"User:east": EAST_DSO}
    with pytest.raises(ConfigError, match="nor a DSO of a \\[\\[schools\\]\\] member"):
        command_policy(load(*SCHOOLS, dso_principals=["User:x=NOBODY0001"]))


def test_the_stages_daily_tick_signs_each_schools_close_and_skips_one_without_close_dso():
    settings = load(*SCHOOLS, close_dso=MAIN_DSO, close_at="00:00", timezone="America/Chicago")
    stage, store = BatcherStage(settings), BatcherStore()
    store.load_partition(0, {})
    for i, org in enumerate((MAIN, EAST, WEST)):
        stage._apply(store, 0, org, EventIn(event(f"S{i}", n=i, org=org), BASE_MS), None)
    with captured_logs() as logs:
        cmds = [
            registry().decode(o.value, "sevisflow.commands.BatchCommand")
            for o in stage._tick(store)
            if o.topic == settings.topics.commands
        ]
        stage._last_tick = 0.0
        stage._tick(store)
    assert {c["org_id"]: c["dso_user_id"] for c in cmds} == {MAIN: MAIN_DSO, EAST: EAST_DSO}  # WEST: none
    warned = [orjson.loads(line) for line in logs.getvalue().splitlines() if "member_not_scheduled" in line]
    assert [(w["event"], w["org"]) for w in warned] == [("batcher.member_not_scheduled", WEST)]  # once
    for c in cmds:  # each is accepted by the guard of the same settings and closes its own OrgID only
        _, outs = apply(store.cache[(0, c["org_id"])], CommandIn(c, log_ms=c["requested_at_ms"], policy=stage.policy))
        closed = [o.event for o in outs if isinstance(o, Publish) and o.event["type"] == "closed"]
        assert [(d["org_id"], d["closed_by"]) for d in closed] == [(c["org_id"], c["dso_user_id"])]


# ----------------------------------------------------------------------------- the CLI


def test_org_resolves_a_member_school_and_its_dsos():
    from sevisflow.app.cli.batch import list_orgs, org_of
    from sevisflow.app.cli.dso import resolve_dso

    settings = load(*SCHOOLS, default_dso=MAIN_DSO)
    assert org_of(Namespace(org=None), settings) == MAIN and org_of(Namespace(org=EAST), settings) == EAST
    with pytest.raises(SevisflowError, match=r"--org XYZ214F00001000 is neither school\.org_id .* \[\[schools\]\]"):
        org_of(Namespace(org="XYZ214F00001000"), settings)
    assert list_orgs(Namespace(org=None), settings) == [MAIN, EAST, WEST]
    assert resolve_dso(EAST_DSO, settings, "closed", org=EAST) == EAST_DSO
    with pytest.raises(SevisflowError, match=f"{MAIN_DSO} is not one of the DSOs of member school {EAST}"):
        resolve_dso(MAIN_DSO, settings, "closed", org=EAST)
    with pytest.raises(SevisflowError, match=f"{EAST_DSO} is not one of the school's DSOs"):
        resolve_dso(EAST_DSO, settings, "closed", org=MAIN)
    # school.default_dso acts for a member only when it is one of its DSOs
    with pytest.raises(SevisflowError, match=f"say who you are with --dso .* member school {EAST}"):
        resolve_dso(None, settings, "closed", org=EAST)
    err = io.StringIO()
    shared = load(*SCHOOLS, default_dso=EAST_DSO, dso_user_ids=[EAST_DSO])
    assert resolve_dso(None, shared, "closed", err=err, org=EAST) == EAST_DSO and EAST in err.getvalue()


def test_a_schools_worklist_has_only_its_own_students():
    from sevisflow.app.cli.todo import of_school

    settings = load(*SCHOOLS)
    students = [
        {"student_key": "M1", "student": {"school_code": None}},
        {"student_key": "E1", "student": {"school_code": "EAST"}},
        {"student_key": "W1", "student": {"school_code": "WEST"}},
        {"student_key": "N1", "student": {"school_code": "NORTH"}},
        {"student_key": "O1", "student": {}},
    ]
    letters = [{"student_key": k, "code": "x"} for k in ("M1", "E1", "W1", "N1", "O1", None)]
    mine, kept = of_school(settings, EAST, students, letters)
    assert [v["student_key"] for v in mine] == ["E1"] and [d["student_key"] for d in kept] == ["E1"]
    mine, kept = of_school(settings, MAIN, students, letters)
    assert [v["student_key"] for v in mine] == ["M1", "N1", "O1"]  # an unknown code stays with the main school
    assert [d["student_key"] for d in kept] == ["M1", "N1", "O1", None]


# ----------------------------------------------------------------------------- verify re-derives as the stage does


def test_verify_rederives_member_schools_in_the_main_schools_run(monkeypatch):
    """verify re-runs normalize + sevis_events once from the main school with the [[schools]] routing: a member
    school's batch is checked against events derived under its OrgID, not under the main school's."""
    from types import SimpleNamespace

    from sevisflow.app.audit import verify as verify_mod

    calls: list[tuple[str, dict[str, str]]] = []

    def fake(changes, mapping, org_id, *rest):
        calls.append((org_id, dict(rest[-1] or {})))
        return {}

    monkeypatch.setattr(verify_mod, "rederive_events", fake)
    events = [SimpleNamespace(value={"org_id": o}) for o in (EAST, WEST, "P-1-12345")]

    def ctx(scope: str | None) -> verify_mod.VerifyContext:
        return verify_mod.VerifyContext(
            batches=[],
            events=events,
            commands=[],
            results=[],
            changes=[],
            outbox=None,
            schema=None,
            ev_programs={"RSCH": "P-1-12345"},
            schools={"EAST": EAST, "WEST": WEST},
            main_org=MAIN,
            org_scope=scope,
        )

    for scope in (None, EAST, MAIN):
        calls.clear()
        ctx(scope).rederived_events()
        assert calls == [(MAIN, {"EAST": EAST, "WEST": WEST})], scope


# ----------------------------------------------------------------------------- BatchIDs of member schools


def test_member_schools_batch_ids_never_equal_the_main_schools_at_the_same_close_time():
    """The scheduled close gives every school the same clock: the main school keeps ``S`` + ms, a member school's
    ids start with its own prefix, so the outbox and the sinks (which find a batch by its BatchID) never mix them."""
    from sevisflow.processors.batcher.ids import member_batch_prefix

    settings = load(*SCHOOLS, close_dso=MAIN_DSO, close_at="00:00", timezone="America/Chicago")
    stage, store = BatcherStage(settings), BatcherStore()
    store.load_partition(0, {})
    ids: dict[str, list[str]] = {}
    for i, org in enumerate((MAIN, EAST, WEST)):
        user = {MAIN: MAIN_DSO, EAST: EAST_DSO, WEST: WEST_DSO}[org]
        for n in range(3):  # three closes at the very same requested time: ids still increase
            stage._apply(store, 0, org, EventIn(event(f"S{i}{n}", n=10 * i + n, org=org), BASE_MS), None)
            cmd = command("close", f"c-{org}-{n}", org=org, dso_user_id=user, at_ms=AT)
            outs = stage._apply(store, 0, org, CommandIn(cmd, log_ms=AT, policy=stage.policy), None)
            closed = [
                e
                for o in outs
                if o.topic == settings.topics.batches
                and (e := registry().decode(o.value, "sevisflow.batches.BatchEvent"))["type"] == "closed"
            ]
            ids.setdefault(org, []).extend(e["batch_id"] for e in closed)
    assert ids[MAIN] == [f"S{AT + n:013d}" for n in range(3)]  # the main school's ids are unchanged
    for org in (EAST, WEST):
        assert all(len(b) == 14 and b.startswith(member_batch_prefix(org)) for b in ids[org])
        assert ids[org] == sorted(ids[org]) and len(set(ids[org])) == 3
    every = [b for got in ids.values() for b in got]
    assert len(set(every)) == len(every) == 9
    assert member_batch_prefix(EAST) != member_batch_prefix(WEST)
    assert member_batch_prefix(EAST)[:2].isalpha() and member_batch_prefix(EAST)[0] == "M"


def test_batch_status_finds_a_member_schools_batch_without_org():
    from sevisflow.app.cli.batch import org_of_batch
    from sevisflow.processors.batcher.ids import member_batch_id

    settings = load(*SCHOOLS)
    assert org_of_batch(Namespace(org=None), settings, member_batch_id(WEST, 1_750_000_000)) == WEST
    assert org_of_batch(Namespace(org=None), settings, f"S{AT:013d}") == MAIN


def test_verify_reproduces_a_member_schools_batch_next_to_the_main_schools(tmp_path):
    """The real batcher closes the main school's and a member school's batch at the same time on the same topics, the
    real XML sink writes both (two BatchIDs), and verify re-runs the batcher per OrgID with the member form: both
    verify; without [[schools]] in verify's settings the member's batch does not reproduce."""
    from sevisflow.app.audit.verify import VerifyContext, verify_batch
    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.xsd import load_schema
    from testkit.audit_scenario import batcher_run, batcher_verify_context, sealed_batcher_runs
    from tests.helpers import XSD_DIR

    schema = load_schema(XSD_DIR)
    main = batcher_run(updates=3, creates=1, org=MAIN)
    east = batcher_run(updates=3, creates=1, org=EAST, student_base=50, member_school=True)
    outbox = Outbox(tmp_path / "outbox", tmp_path / "quarantine", "America/Chicago")
    d, ids = sealed_batcher_runs([main, east], outbox, schema)
    assert set(ids) == {MAIN, EAST} and ids[MAIN] != ids[EAST]
    assert ids[EAST].startswith("M") and ids[MAIN].startswith("S")

    def ctx(schools: dict[str, str]) -> VerifyContext:
        return batcher_verify_context(d, outbox, schema, schools=schools, main_org=MAIN)

    for org, bid in ids.items():
        v = verify_batch(bid, ctx({"EAST": EAST}))
        assert {c.name: c.status for c in v.checks}["batching"] == "ok", (org, v.to_json())
    bare = verify_batch(ids[EAST], ctx({}))
    assert {c.name: c.status for c in bare.checks}["batching"] != "ok"


def test_a_school_with_millisecond_stamps_cannot_close_as_a_member():
    """An OrgID that closed batches as the main school (``S`` + ms) and is then made a member: its close is refused
    (no BatchID can be made), never sent under an id that could repeat one (docs/OPERATIONS.md says so)."""
    s, _ = apply(School(EAST, last_stamp=AT), EventIn(event("S1", n=1, org=EAST), BASE_MS))
    cmd = command("close", "c-1", org=EAST, dso_user_id=EAST_DSO)
    _, outs = apply(s, CommandIn(cmd, log_ms=AT, policy=POLICY, member_school=True))
    (ev,) = [o.event for o in outs if isinstance(o, Publish)]
    assert ev["type"] == "command_rejected" and "no BatchID can be made" in ev["reason"]
