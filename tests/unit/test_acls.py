"""The pure ACL model (sevisflow/core/acls.py): who may do what, derived from the topics and the settings.

The broker-side proof (each right works, everything else is refused) is tests/integration/test_acls.py.
"""

from __future__ import annotations

import re

import pytest

from sevisflow.core.acls import (
    CREATE,
    DESCRIBE,
    GROUP,
    READ,
    ROLES,
    TOPIC,
    TXN,
    WRITE,
    Acl,
    acl_model,
    allowed,
    kafka_user_resources,
    message_topic,
    plan_acls,
    principals,
    role_grants,
    role_table,
    stage_groups,
    state_topics,
)
from sevisflow.core.config import Settings, settings_from_mapping
from sevisflow.core.errors import ConfigError
from sevisflow.core.topics import PIPELINE_KEYS, all_topics
from tests.helpers import REPO, make_settings

S = make_settings(unique="u1")


def _writers(settings, topic: str) -> set[str]:
    acls = acl_model(settings)
    return {
        role
        for role, names in principals(settings).items()
        if any(allowed(acls, f"User:{n}", WRITE, TOPIC, topic) for n in names)
    }


def _readers(settings, topic: str) -> set[str]:
    acls = acl_model(settings)
    return {
        role
        for role, names in principals(settings).items()
        if any(allowed(acls, f"User:{n}", READ, TOPIC, topic) for n in names)
    }


def test_who_writes_each_topic():
    t = S.topics
    changes = [s.name for s in all_topics(S) if s.name.startswith(S.connector.topic_prefix + ".")]
    assert changes and all(_writers(S, c) == {"connector"} for c in changes)
    assert _writers(S, message_topic(S)) == {"connector"}
    assert _writers(S, t.students) == {"normalize"}
    assert _writers(S, t.events) == {"events"}
    assert _writers(S, t.batches) == {"batcher"} and _writers(S, t.open_batches) == {"batcher"}
    assert _writers(S, t.results) == {"sink-sevis"}
    # DSOs write commands; the sinks write their requeue commands there too (docs/SECURITY.md)
    assert _writers(S, t.commands) == {"dso", "sink-xml", "sink-sevis"}
    assert _writers(S, t.dlq) == {"normalize", "events", "batcher", "sink-xml", "sink-sevis"}
    if "ledger" in PIPELINE_KEYS:
        assert _writers(S, t.ledger) == {"sink-xml", "sink-sevis"}
        assert _readers(S, t.ledger) == {"sink-xml", "sink-sevis", "dso", "auditor"}
    if "worklist" in PIPELINE_KEYS:
        assert _writers(S, t.worklist) == {"dso"} and _readers(S, t.worklist) == {"dso", "auditor"}
    for role, topics in state_topics(S).items():
        for name in topics:
            assert _writers(S, name) == {role} and _readers(S, name) == {role}


def test_auditors_only_read_and_dsos_read_what_they_need():
    acls = acl_model(S)
    auditor = [a for a in acls if a.principal == "User:sevisflow-auditor"]
    assert auditor and {a.operation for a in auditor} == {READ, DESCRIBE}
    t = S.topics
    for name in (t.events, t.commands, t.batches, t.results, t.dlq, t.students):
        assert "auditor" in _readers(S, name) and "dso" in _readers(S, name)
    assert _readers(S, t.dlq) == {"dso", "auditor"}, "the DLQ is read by DSOs and auditors"
    for name in state_topics(S)["batcher"]:
        assert "dso" not in _readers(S, name) and "auditor" not in _readers(S, name)


def test_each_stage_has_only_its_own_group_and_transactional_ids():
    acls = acl_model(S)
    groups = stage_groups(S)
    for role, group in groups.items():
        user = f"User:{principals(S)[role][0]}"
        assert allowed(acls, user, READ, GROUP, group)
        assert allowed(acls, user, WRITE, TXN, f"{group}-pod-0")
        for other_role, other in groups.items():
            if other_role != role:
                assert not allowed(acls, user, READ, GROUP, other), (role, other)
                assert not allowed(acls, user, WRITE, TXN, f"{other}-pod-0"), (role, other)
    for role in ("connector", "sink-sevis", "dso", "auditor"):
        user = f"User:{principals(S)[role][0]}"
        assert not any(a.principal == user and a.resource_type == TXN for a in acls)


def test_nobody_may_create_but_the_connector_its_own_topics():
    for a in acl_model(S):
        if a.operation == CREATE:
            assert a.principal == "User:sevisflow-connector"
            assert a.name.startswith(S.connector.topic_prefix + ".") and a.resource_type == TOPIC


def test_every_pipeline_topic_has_a_writer_so_a_new_topic_cannot_be_forgotten():
    for key in PIPELINE_KEYS:
        assert _writers(S, getattr(S.topics, key)), f"no principal writes [topics] {key}: add it to role_grants"


def test_names_follow_the_settings():
    s = settings_from_mapping(
        {
            "acls": {"dso": ["jsmith", "akhan"], "batcher": "b-1"},
            "topics": {"events": "x.events"},
            "connector": {"topic.prefix": "erp"},
        },
        env={},
    )
    acls = acl_model(s)
    assert allowed(acls, "User:jsmith", WRITE, TOPIC, s.topics.commands)
    assert allowed(acls, "User:akhan", WRITE, TOPIC, s.topics.commands)
    assert allowed(acls, "User:b-1", READ, TOPIC, "x.events")
    assert not allowed(acls, "User:sevisflow-batcher", READ, TOPIC, "x.events")
    assert allowed(acls, "User:sevisflow-connector", WRITE, TOPIC, "erp.public.person")
    assert not allowed(acls, "User:sevisflow-connector", WRITE, TOPIC, "sis.public.person")


def test_one_principal_for_every_stage_gets_the_union_for_sevisflow_run():
    stages = ("connector", "normalize", "events", "batcher", "sink_xml", "sink_sevis")
    s = settings_from_mapping({"acls": dict.fromkeys(stages, "sevisflow-run")}, env={})
    acls = acl_model(s)
    for a in acl_model(Settings()):
        if a.principal.startswith("User:sevisflow-") and a.principal not in (
            "User:sevisflow-dso",
            "User:sevisflow-auditor",
        ):
            assert allowed(acls, "User:sevisflow-run", a.operation, a.resource_type, a.name), a
    assert not allowed(acls, "User:sevisflow-run", WRITE, TOPIC, "sevis.worklist"), "not a DSO's right"
    users = [d["metadata"]["name"] for d in kafka_user_resources(s, cluster="c", namespace="n")]
    assert sorted(users) == ["sevisflow-auditor", "sevisflow-dso", "sevisflow-run"]


@pytest.mark.parametrize(
    "bad",
    [
        {"dso": ["sevisflow-batcher"]},
        {"auditor": ["User:x"]},
        {"events": ""},
        {"dso": ["a", "a"]},
        {"auditor": ["sevisflow-dso"]},
        {"batcher": "sevisflow-admin"},
    ],
)
def test_bad_principal_settings_are_refused(bad):
    with pytest.raises(ConfigError, match="acls"):
        settings_from_mapping({"acls": bad}, env={})


def test_plan_creates_missing_deletes_only_managed_and_is_idempotent():
    want = acl_model(S)
    foreign = Acl("User:someone-else", TOPIC, "their.topic", "literal", WRITE)
    stale = Acl("User:sevisflow-dso", TOPIC, S.topics.events, "literal", WRITE)
    have = want[5:] + [foreign, stale]
    managed = {a.principal for a in want}
    plan = plan_acls(want, have, managed)
    assert plan.creates == want[:5] and plan.deletes == [stale]
    assert foreign not in plan.deletes, "another application's ACLs are left alone"
    text = plan.render()
    assert text.count("\n+ allow") + text.startswith("+ allow") == 5 and "- allow User:sevisflow-dso" in text
    again = plan_acls(want, want + [foreign], managed)
    assert again.empty() and again.render().startswith("= nothing to change")


def test_kafka_users_carry_the_model():
    docs = kafka_user_resources(S, cluster="c", namespace="n")
    users = {d["metadata"]["name"]: d for d in docs}
    assert set(users) == {n for names in principals(S).values() for n in names}
    grants = role_grants(S)
    for role, names in principals(S).items():
        for n in names:
            spec = users[n]["spec"]
            assert spec["authentication"] == {"type": "scram-sha-512"} and spec["authorization"]["type"] == "simple"
            got = {
                (a["resource"]["type"], a["resource"]["name"], a["resource"]["patternType"], tuple(a["operations"]))
                for a in spec["authorization"]["acls"]
            }
            assert len(got) == len(grants[role])
            for a in spec["authorization"]["acls"]:
                assert a["resource"]["patternType"] in ("literal", "prefix")
                assert set(a["operations"]) <= {"Read", "Write", "Describe", "Create"}


def _doc_table() -> list[tuple[str, str, str]]:
    text = (REPO / "docs" / "SECURITY.md").read_text()
    block = text.split("<!-- acl-table:start -->")[1].split("<!-- acl-table:end -->")[0]
    rows = []
    for line in block.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append((cells[0], cells[1], cells[2]))
    return rows


def test_the_table_in_docs_security_is_the_model():
    """docs/SECURITY.md shows the rights of every role for the default settings; regenerate it with
    `python -m sevisflow.core.acls` when the model changes."""
    expected = [(r, ops, res) for r, ops, res, _ in role_table(Settings())]
    assert _doc_table() == expected, "docs/SECURITY.md's ACL table is stale: python -m sevisflow.core.acls"
    assert {r for r, _, _ in expected} == set(ROLES)
    assert re.search(r"sevisflow-dso", (REPO / "docs" / "SECURITY.md").read_text())
