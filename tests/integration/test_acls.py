"""Least privilege on a real broker with KRaft's StandardAuthorizer on (``stack up --secure``).

Every principal of sevisflow/core/acls.py logs in with its own SCRAM user and tries, against the broker:

* to write every topic of the deployment: exactly the topics the model allows take the record,
  every other one answers TOPIC_AUTHORIZATION_FAILED (a DSO cannot write sevis.events, an auditor
  cannot write anything, a stage cannot write another stage's topics);
* to read every topic: exactly the topics the model allows deliver the seeded record;
* its own exactly-once transaction (consumer group, transactional id, outputs, offsets) and its
  state restore, which succeed, and another stage's transactional id and group, which are refused.

``sevisflow acls apply`` itself is checked too: the diff it prints, idempotence, and that it
restores a deleted ACL and removes one the model does not have.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

from sevisflow.app.cli import main
from sevisflow.core.acls import (
    READ,
    TOPIC,
    WRITE,
    acl_model,
    allowed,
    message_topic,
    principals,
    stage_groups,
    state_topics,
)
from sevisflow.core.config import Settings, settings_toml
from sevisflow.core.errors import TerminalError
from sevisflow.core.kafka_io import (
    TopicSpec,
    client_config,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
    restore_partitions,
)
from sevisflow.core.topics import all_topics
from sevisflow.deploy.local.stack import StackInfo, _settings_kafka, apply_stack_acls
from tests.helpers import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_log_handler_swap")]


@pytest.fixture(scope="module")
def world(secure_stack: StackInfo) -> Iterator[dict]:
    """Topics of this module (unique names) created and seeded by the operator, their ACLs applied."""
    assert secure_stack.kafka is not None
    unique = uuid.uuid4().hex[:8]
    op = _settings_kafka(secure_stack.kafka.kafka_settings())
    tables = Settings().connector.table_include_list + [NEW_TABLE]
    settings = dataclasses.replace(make_settings(unique=unique, connector={"table.include.list": tables}), kafka=op)
    new_topic = f"{settings.connector.topic_prefix}.{NEW_TABLE}"  # left for the connector to create
    specs = [s for s in all_topics(settings) if s.name != new_topic] + [TopicSpec(message_topic(settings), 1, 1)]
    topics = [s.name for s in specs]
    ensure_topics(op, specs)
    producer = make_producer(op)
    for t in topics:
        producer.produce(t, key=b"seed", value=b"seed", partition=0)
    assert producer.flush(30) == 0
    apply_stack_acls(secure_stack, settings)
    yield {
        "settings": settings,
        "topics": topics,
        "acls": acl_model(settings),
        "info": secure_stack,
        "new_topic": new_topic,
    }


NEW_TABLE = "public.table_added_later"


def _as(world: dict, user: str) -> Settings:
    """The module's settings with the Kafka credentials of ``user``."""
    return dataclasses.replace(world["settings"], kafka=_settings_kafka(world["info"].kafka.kafka_settings(user)))


def _user(world: dict, role: str) -> str:
    return principals(world["settings"])[role][0]


def _write_results(kafka, topics: list[str]) -> dict[str, int | None]:
    """Produce one record to each topic (plain producer: no idempotence, so no cluster right is
    needed first); ``{topic: None | Kafka error code}``."""
    conf = client_config(
        kafka,
        **{
            "acks": "all",
            "enable.idempotence": False,
            "message.timeout.ms": 20000,
            "topic.metadata.refresh.interval.ms": 1000,
        },
    )
    producer = Producer(conf)
    result: dict[str, int | None] = {}

    def report(err, msg) -> None:
        result[msg.topic()] = err.code() if err is not None else None

    for t in topics:
        producer.produce(t, key=b"probe", value=b"probe", partition=0, on_delivery=report)
    producer.flush(40)
    assert set(result) == set(topics), f"no delivery report for {set(topics) - set(result)}"
    return result


ROLES = ("connector", "normalize", "events", "batcher", "sink-xml", "sink-sevis", "dso", "auditor")


@pytest.mark.parametrize("role", ROLES)
def test_each_principal_writes_exactly_the_topics_the_model_allows(world, role):
    user = _user(world, role)
    got = _write_results(_as(world, user).kafka, world["topics"])
    wrong = []
    for topic, err in sorted(got.items()):
        may = allowed(world["acls"], f"User:{user}", WRITE, TOPIC, topic)
        if may and err is not None:
            wrong.append(f"{topic}: refused ({KafkaError(err).name()}) although the model allows WRITE")
        if not may and err != KafkaError.TOPIC_AUTHORIZATION_FAILED:
            wrong.append(
                f"{topic}: {'written' if err is None else KafkaError(err).name()}, expected TOPIC_AUTHORIZATION_FAILED"
            )
    assert not wrong, f"{role} ({user}):\n" + "\n".join(wrong)
    t = world["settings"].topics
    writable = {topic for topic, err in got.items() if err is None}
    # the cases, spelled out
    if role == "dso":
        assert writable == {t.commands} | ({t.worklist} if hasattr(t, "worklist") else set())
        assert got[t.events] == KafkaError.TOPIC_AUTHORIZATION_FAILED
    if role == "auditor":
        assert writable == set()
    if role != "batcher":
        assert t.batches not in writable and t.open_batches not in writable
    if role == "events":
        assert writable == {t.events, t.dlq} | set(state_topics(world["settings"])["events"])
    if role == "normalize":
        assert t.events not in writable and t.students in writable
    if role == "connector":
        assert t.students not in writable and t.dlq not in writable
        assert writable == {
            name for name in world["topics"] if name.startswith(world["settings"].connector.topic_prefix + ".")
        }


def _group_for(world: dict, role: str) -> str:
    groups = stage_groups(world["settings"])
    return (
        groups.get(role)
        or {"dso": "sevisflow-cli-", "auditor": "sevisflow-audit-"}.get(role, "sevisflow-reader-")
        + uuid.uuid4().hex[:6]
    )


@pytest.mark.parametrize("role", ROLES)
def test_each_principal_reads_exactly_the_topics_the_model_allows(world, role):
    user = _user(world, role)
    kafka = _as(world, user).kafka
    expected = {t for t in world["topics"] if allowed(world["acls"], f"User:{user}", READ, TOPIC, t)}
    consumer = make_consumer(kafka, _group_for(world, role))
    try:
        consumer.assign([TopicPartition(t, 0, OFFSET_BEGINNING) for t in world["topics"]])
        seen: set[str] = set()
        deadline = time.monotonic() + (30 if expected else 8)
        while time.monotonic() < deadline and not (expected and seen >= expected):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                seen.add(msg.topic())
    finally:
        consumer.close()
    assert seen == expected, (
        f"{role}: read {sorted(seen - expected)} without a right; could not read {sorted(expected - seen)}"
    )
    if role == "auditor":
        t = world["settings"].topics
        assert {t.events, t.commands, t.batches, t.results, t.dlq} <= seen


TRANSACTIONAL = {
    # role: (inputs, outputs) — the role's real inputs and outputs, from the settings
    "normalize": (lambda s: [f"{s.connector.topic_prefix}.transaction"], lambda s: [s.topics.students]),
    "events": (lambda s: [s.topics.students], lambda s: [s.topics.events]),
    "batcher": (
        lambda s: [s.topics.events, s.topics.commands, s.topics.results],
        lambda s: [s.topics.batches, s.topics.open_batches],
    ),
    "sink-xml": (lambda s: [s.topics.batches], lambda s: [s.topics.commands, s.topics.ledger]),
}


def _transaction(kafka, group: str, txn_id: str, inputs: list[str], outputs: list[str]) -> None:
    """Consume the seeded record of each input in ``group``, write every output in one transaction
    with the input offsets (what TransactionalLoop does). Raises KafkaException when refused."""
    consumer = make_consumer(kafka, group)
    producer = make_producer(kafka, transactional_id=txn_id)
    try:
        consumer.subscribe(inputs)
        got: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + 40
        while {t for t, _ in got} != set(inputs) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            got[(msg.topic(), msg.partition())] = msg.offset() + 1
        assert {t for t, _ in got} == set(inputs), f"{group} read {sorted(got)} of {inputs}"
        producer.init_transactions(30)
        producer.begin_transaction()
        for t in outputs:
            producer.produce(t, key=b"txn", value=b"txn")
        producer.send_offsets_to_transaction(
            [TopicPartition(t, p, o) for (t, p), o in got.items()], consumer.consumer_group_metadata(), 30
        )
        producer.commit_transaction(30)
    finally:
        consumer.close()


@pytest.mark.parametrize("role", sorted(TRANSACTIONAL))
def test_each_stage_runs_its_own_transaction_and_restore_but_not_another_stages(world, role):
    s = world["settings"]
    kafka = _as(world, _user(world, role)).kafka
    inputs, outputs = (f(s) for f in TRANSACTIONAL[role])
    group = stage_groups(s)[role]
    outputs = outputs + [s.topics.dlq] + state_topics(s).get(role, [])
    _transaction(kafka, group, f"{group}-test-0", inputs, outputs)
    for st in state_topics(s).get(role, []):
        assert restore_partitions(kafka, st, [0], timeout_s=30)[0], f"{role} restores {st}"

    # another stage's transactional id and consumer group are refused
    other = "batcher" if role != "batcher" else "events"
    other_group = stage_groups(s)[other]
    producer = make_producer(kafka, transactional_id=f"{other_group}-stolen")
    with pytest.raises(KafkaException) as refused:
        producer.init_transactions(20)
    assert refused.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    with pytest.raises(KafkaException) as refused:
        _transaction(kafka, other_group, f"{group}-test-1", inputs, outputs)
    assert refused.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED


def test_idempotent_producers_of_the_non_transactional_roles(world):
    """The connector, the SEVIS sink and a DSO use sevisflow's idempotent producer (make_producer):
    it needs no cluster-wide right, only WRITE on a topic."""
    s = world["settings"]
    cases = {
        "connector": [f"{s.connector.topic_prefix}.public.person"],
        "sink-sevis": [s.topics.results, s.topics.commands, s.topics.ledger],
        "dso": [s.topics.commands],
    }
    for role, topics in cases.items():
        producer = make_producer(_as(world, _user(world, role)).kafka)
        errors: list = []
        for t in topics:
            producer.produce(
                t, key=b"k", value=b"v", on_delivery=lambda e, m, errors=errors: errors.append(e) if e else None
            )
        assert producer.flush(30) == 0 and not errors, (role, errors)


def test_only_the_connector_creates_topics_and_only_its_own(world):
    """A table added to the include list: the connector creates its topic on first use (as it does);
    no other principal can create a topic, and the connector cannot create anyone else's."""
    s = world["settings"]
    spec = TopicSpec(world["new_topic"], 1, 1, {"cleanup.policy": "delete"})
    for role in ("normalize", "batcher", "dso", "auditor"):
        with pytest.raises(TerminalError, match="Authorization failed"):
            ensure_topics(_as(world, _user(world, role)).kafka, [spec], timeout_s=20)
    connector = _as(world, _user(world, "connector")).kafka
    assert ensure_topics(connector, [spec], timeout_s=30) == [world["new_topic"]]
    with pytest.raises(TerminalError, match="Authorization failed"):
        ensure_topics(connector, [TopicSpec(f"{s.topics.events}.forged", 1, 1)], timeout_s=20)
    got = _write_results(connector, [world["new_topic"]])
    assert got == {world["new_topic"]: None}


def test_acls_apply_shows_the_diff_is_idempotent_and_repairs_drift(world, tmp_path, capsys):
    s = world["settings"]
    info = world["info"]
    config = tmp_path / "sevisflow.toml"
    raw = {
        "kafka": dict(info.kafka.kafka_settings().items()),
        "topics": dataclasses.asdict(s.topics),
        "connector": {"topic.prefix": s.connector.topic_prefix, "table.include.list": s.connector.table_include_list},
        "school": {"org_id": s.school.org_id},
    }
    config.write_text(settings_toml(raw))
    capsys.readouterr()
    assert main(["--config", str(config), "acls", "apply", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "= nothing to change" in out, out

    # drift: one model ACL deleted by hand, one extra right given by hand to a managed principal
    dso = f"User:{_user(world, 'dso')}"
    admin = make_admin(_settings_kafka(info.kafka.kafka_settings()))
    from confluent_kafka.admin import AclBindingFilter

    gone = AclBindingFilter(
        ResourceType.TOPIC,
        s.topics.commands,
        ResourcePatternType.LITERAL,
        dso,
        "*",
        AclOperation.WRITE,
        AclPermissionType.ALLOW,
    )
    for fut in admin.delete_acls([gone]).values():
        fut.result()
    extra = AclBinding(
        ResourceType.TOPIC,
        s.topics.events,
        ResourcePatternType.LITERAL,
        dso,
        "*",
        AclOperation.WRITE,
        AclPermissionType.ALLOW,
    )
    for fut in admin.create_acls([extra]).values():
        fut.result()
    time.sleep(1)
    assert main(["--config", str(config), "acls", "apply", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"+ allow {dso}" in out and f"WRITE     topic {s.topics.commands}" in out, out
    assert f"- allow {dso}" in out and f"WRITE     topic {s.topics.events}" in out, out
    # the dry run changed nothing: the DSO can still write sevis.events, not the commands
    got = _write_results(_as(world, _user(world, "dso")).kafka, [s.topics.events, s.topics.commands])
    assert got == {s.topics.events: None, s.topics.commands: KafkaError.TOPIC_AUTHORIZATION_FAILED}

    assert main(["--config", str(config), "acls", "apply"]) == 0
    assert "applied" in capsys.readouterr().out
    time.sleep(1)
    got = _write_results(_as(world, _user(world, "dso")).kafka, [s.topics.events, s.topics.commands])
    assert got == {s.topics.events: KafkaError.TOPIC_AUTHORIZATION_FAILED, s.topics.commands: None}
    assert main(["--config", str(config), "acls", "apply"]) == 0
    assert "= nothing to change" in capsys.readouterr().out

    # a principal without rights on ACLs sees none of them and cannot give itself any
    raw["kafka"] = dict(info.kafka.kafka_settings(_user(world, "dso")))
    config.write_text(settings_toml(raw))
    assert main(["--config", str(config), "acls", "apply"]) == 1
    assert "admin principal" in capsys.readouterr().err
    got = _write_results(_as(world, _user(world, "dso")).kafka, [s.topics.events, s.topics.commands])
    assert got == {s.topics.events: KafkaError.TOPIC_AUTHORIZATION_FAILED, s.topics.commands: None}
