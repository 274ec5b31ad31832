"""Least privilege on Kafka as code: which principal may do what, derived from the pipeline's topics.

Why a pure module: the same model feeds ``sevisflow acls apply`` (Kafka's admin API), the local
secure stack (``sevisflow stack up --secure``), the Strimzi ``KafkaUser`` manifests and the table
in docs/SECURITY.md, so the four cannot drift apart. Nothing here talks to Kafka except
:func:`apply_acls`, which goes through the one Kafka wrapper's admin client.

Roles and their principals (SASL user names, ``[acls]`` settings; defaults in brackets; stage
roles may share one principal, which then holds the union — ``sevisflow run`` in one process):

* ``connector`` [sevisflow-connector] writes (and may create) only its change topics
  ``<prefix>.<schema>.<table>``, ``<prefix>.transaction`` and ``<prefix>.message``;
* ``normalize``, ``events``, ``batcher``, ``sink-xml`` — transactional stages: read their inputs,
  write their outputs, their own state changelog and the dead-letter topic, with their own consumer
  group and transactional ids (``<group>-…``);
* ``sink-sevis`` writes ``sevis.results``, ``requeue`` commands and dead letters;
* ``dso`` [sevisflow-dso] (a list): reads what the DSO commands show, writes only
  ``sevis.batch.commands`` and the worklist's done marks;
* ``auditor`` [sevisflow-auditor] (a list): reads every history topic, writes nothing.

The requeue decision: the two sinks keep WRITE on ``sevis.batch.commands`` for their ``requeue``
commands (the batcher applies requeues from there today). Kafka cannot say which principal wrote a
record, so docs/SECURITY.md lists what that leaves open. Nobody but the batcher writes
``sevis.batches`` and ``sevis.batch.open``.

normalize, events and the batcher also get DESCRIBE on every pipeline topic: at start they check that the
pipeline topics exist (``ensure_topics``), and a topic a principal may not describe looks missing.
DESCRIBE shows a topic's partitions and offsets, never its records. Topics are created by the
operator (``sevisflow topics apply`` as the admin principal, or Strimzi's topic operator).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sevisflow.core.config import Settings
from sevisflow.core.topics import PIPELINE_KEYS, STAGE_GROUPS, STATE_TOPICS, change_topics, stage_group, state_topic

ROLES = ("connector", "normalize", "events", "batcher", "sink-xml", "sink-sevis", "dso", "auditor")
"""Every role, in the order tables list them."""
STAGE_ROLES = ROLES[:6]

TOPIC, GROUP, TXN = "topic", "group", "transactional_id"
LITERAL, PREFIXED = "literal", "prefixed"
READ, WRITE, DESCRIBE, CREATE = "read", "write", "describe", "create"

READER_GROUP_PREFIX = "sevisflow-reader-"
"""``read_topic`` (CLI, audit, tests) reads with a fresh group of this prefix and never commits."""
RESTORE_GROUP_PREFIX = "sevisflow-restore-"
"""State restores read changelogs with a fresh group of this prefix and never commit."""
CLI_GROUP_PREFIX = "sevisflow-cli-"
AUDIT_GROUP_PREFIX = "sevisflow-audit-"


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule: ``principal`` may do ``operation`` on a resource (any host)."""

    principal: str
    resource_type: str
    name: str
    pattern: str
    operation: str

    def render(self) -> str:
        shown = self.name + ("*" if self.pattern == PREFIXED else "")
        return f"{self.principal:28} {self.operation.upper():9} {self.resource_type} {shown}"


@dataclass(frozen=True)
class Grant:
    """What a role may do on one resource (before it is expanded to each of the role's principals)."""

    resource_type: str
    name: str
    pattern: str
    operations: frozenset[str]
    why: str = ""


# --------------------------------------------------------------------------- names from the code


def principals(settings: Settings) -> dict[str, list[str]]:
    """``{role: [SASL user name, …]}`` from the ``[acls]`` settings."""
    a = settings.acls
    return {
        "connector": [a.connector],
        "normalize": [a.normalize],
        "events": [a.events],
        "batcher": [a.batcher],
        "sink-xml": [a.sink_xml],
        "sink-sevis": [a.sink_sevis],
        "dso": list(a.dso),
        "auditor": list(a.auditor),
    }


def principal_role(settings: Settings) -> dict[str, str]:
    """``{SASL user name: role}`` (``a+b`` for a principal several stages share)."""
    out: dict[str, str] = {}
    for role, names in principals(settings).items():
        for name in names:
            out[name] = f"{out[name]}+{role}" if name in out else role
    return out


def stage_groups(settings: Settings) -> dict[str, str]:
    """The consumer group of each transactional stage, as the stage computes it."""
    return {stage: stage_group(settings, stage) for stage in STAGE_GROUPS}


def state_topics(settings: Settings) -> dict[str, list[str]]:
    """The state changelog(s) each processor keeps."""
    return {stage: [state_topic(settings, stage)] for stage in STATE_TOPICS}


def message_topic(settings: Settings) -> str:
    """Where the connector writes PostgreSQL logical-decoding messages other than its heartbeat."""
    return f"{settings.connector.topic_prefix}.message"


# --------------------------------------------------------------------------- the model


def _g(rtype: str, name: str, ops: Iterable[str], why: str, pattern: str = LITERAL) -> Grant:
    return Grant(rtype, name, pattern, frozenset(ops), why)


def role_grants(settings: Settings) -> dict[str, list[Grant]]:
    """What each role may do, resource by resource: the whole policy."""
    t = settings.topics
    changes = [s.name for s in change_topics(settings)]
    pipeline = [getattr(t, key) for key in PIPELINE_KEYS]
    worklist = [t.worklist] if "worklist" in PIPELINE_KEYS else []  # the DSO worklist's done marks
    groups = stage_groups(settings)
    state = state_topics(settings)
    out: dict[str, list[Grant]] = {}

    out["connector"] = [
        _g(TOPIC, n, (WRITE, DESCRIBE, CREATE), "its change topics (created on first use)")
        for n in changes + [message_topic(settings)]
    ]

    def stage(role: str, inputs: Sequence[str], outputs: Sequence[str], why_in: str, why_out: str) -> list[Grant]:
        grants = [_g(TOPIC, n, (READ, DESCRIBE), why_in) for n in inputs]
        grants += [_g(TOPIC, n, (WRITE, DESCRIBE), why_out) for n in outputs]
        for n in state.get(role, []):
            grants.append(_g(TOPIC, n, (READ, WRITE, DESCRIBE), "its own state changelog"))
        grants.append(_g(TOPIC, t.dlq, (WRITE, DESCRIBE), "dead letters"))
        grants.append(_g(GROUP, groups[role], (READ, DESCRIBE), "its consumer group"))
        grants.append(_g(TXN, f"{groups[role]}-", (WRITE, DESCRIBE), "its transactional ids", PREFIXED))
        if state.get(role):
            grants.append(_g(GROUP, RESTORE_GROUP_PREFIX, (READ, DESCRIBE), "state restore (never commits)", PREFIXED))
        if role != "sink-xml":
            grants += [_g(TOPIC, n, (DESCRIBE,), "checks at start that the pipeline topics exist") for n in pipeline]
        return grants

    out["normalize"] = stage("normalize", changes, [t.students], "change topics", "the student view")
    out["events"] = stage("events", [t.students], [t.events], "the student view", "SEVIS events")
    out["batcher"] = stage(
        "batcher",
        [t.events, t.commands, t.results],
        [t.batches, t.open_batches],
        "events, commands, results",
        "batches and the open-batch view",
    )
    out["sink-xml"] = stage("sink-xml", [t.batches], [t.commands], "closed batches", "requeue commands")
    ledger = [t.ledger] if "ledger" in PIPELINE_KEYS else []  # the audit ledger's anchored head
    anchors_reader = (
        [
            _g(
                GROUP,
                READER_GROUP_PREFIX,
                (READ, DESCRIBE),
                "reads the ledger's anchors at start (one-shot reader, never commits)",
                PREFIXED,
            )
        ]
        if ledger
        else []
    )
    out["sink-xml"] += [
        _g(TOPIC, n, (READ, WRITE, DESCRIBE), "anchors the audit ledger's head") for n in ledger
    ] + anchors_reader
    out["sink-sevis"] = [
        _g(TOPIC, n, (READ, WRITE, DESCRIBE), "anchors the audit ledger's head") for n in ledger
    ] + anchors_reader
    out["sink-sevis"] += [
        _g(TOPIC, t.results, (WRITE, DESCRIBE), "SEVIS results"),
        _g(TOPIC, t.commands, (WRITE, DESCRIBE), "requeue commands"),
        _g(TOPIC, t.dlq, (WRITE, DESCRIBE), "dead letters"),
    ]
    if ledger:  # both sinks read the anchored head at start with a one-shot reader (read_topic)
        for role in ("sink-xml", "sink-sevis"):
            out[role].append(
                _g(GROUP, READER_GROUP_PREFIX, (READ, DESCRIBE), "one-shot reader (never commits)", PREFIXED)
            )
    dso_reads = [t.students, t.events, t.commands, t.batches, t.open_batches, t.results, t.dlq] + worklist + ledger
    out["dso"] = (
        [_g(TOPIC, n, (READ, DESCRIBE), "what the DSO commands show") for n in dso_reads]
        + [_g(TOPIC, t.commands, (WRITE,), "close, hold, release, report")]
        + [_g(TOPIC, n, (WRITE,), "marks worklist items done") for n in worklist]
        + [
            _g(GROUP, p, (READ, DESCRIBE), "the CLI's one-shot readers", PREFIXED)
            for p in (CLI_GROUP_PREFIX, READER_GROUP_PREFIX, AUDIT_GROUP_PREFIX)
        ]
    )
    out["auditor"] = [_g(TOPIC, n, (READ, DESCRIBE), "history") for n in changes + pipeline] + [
        _g(GROUP, p, (READ, DESCRIBE), "one-shot readers", PREFIXED) for p in (READER_GROUP_PREFIX, AUDIT_GROUP_PREFIX)
    ]
    return {role: _merge(grants) for role, grants in out.items()}


def _merge(grants: Iterable[Grant]) -> list[Grant]:
    """One grant per resource, operations united (a topic can be both input and output)."""
    by: dict[tuple[str, str, str], Grant] = {}
    for g in grants:
        key = (g.resource_type, g.name, g.pattern)
        prev = by.get(key)
        by[key] = (
            g
            if prev is None
            else Grant(
                g.resource_type,
                g.name,
                g.pattern,
                prev.operations | g.operations,
                prev.why if g.why in prev.why else f"{prev.why}; {g.why}",
            )
        )
    return list(by.values())


def acl_model(settings: Settings) -> list[Acl]:
    """Every ALLOW rule of the deployment, sorted (``User:<name>`` principals)."""
    grants = role_grants(settings)
    out = {
        Acl(f"User:{name}", g.resource_type, g.name, g.pattern, op)
        for role, names in principals(settings).items()
        for name in names
        for g in grants[role]
        for op in g.operations
    }
    return sorted(out)


def allowed(acls: Iterable[Acl], principal: str, operation: str, resource_type: str, name: str) -> bool:
    """Would Kafka's StandardAuthorizer allow this (ALLOW rules only; READ/WRITE imply DESCRIBE)?"""
    implied = {operation} | ({READ, WRITE} if operation == DESCRIBE else set())
    for a in acls:
        if a.principal != principal or a.resource_type != resource_type or a.operation not in implied:
            continue
        if (a.pattern == LITERAL and a.name == name) or (a.pattern == PREFIXED and name.startswith(a.name)):
            return True
    return False


# --------------------------------------------------------------------------- plan (pure) and apply


@dataclass
class AclPlan:
    """What :func:`apply_acls` would do: rules to create, managed rules to delete, rules in place."""

    creates: list[Acl] = field(default_factory=list)
    deletes: list[Acl] = field(default_factory=list)
    unchanged: list[Acl] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.creates or self.deletes)

    def render(self) -> str:
        """The diff, like ``topics apply``'s: ``+`` create, ``-`` delete, ``=`` a count of unchanged rules."""
        lines = [f"+ allow {a.render()}" for a in self.creates] + [f"- allow {a.render()}" for a in self.deletes]
        if not lines:
            return f"= nothing to change ({len(self.unchanged)} ACLs as specified)"
        if self.unchanged:
            lines.append(f"= {len(self.unchanged)} ACLs already as specified")
        return "\n".join(lines)


def plan_acls(wanted: Iterable[Acl], existing: Iterable[Acl], managed: Iterable[str]) -> AclPlan:
    """Compare the model with the cluster's ALLOW rules. Only rules of ``managed`` principals are ever
    deleted: another application's ACLs on the same cluster are left alone."""
    want, have, ours = set(wanted), set(existing), set(managed)
    return AclPlan(
        creates=sorted(want - have),
        deletes=sorted(a for a in have - want if a.principal in ours),
        unchanged=sorted(want & have),
    )


def managed_principals(settings: Settings) -> list[str]:
    return sorted(f"User:{n}" for names in principals(settings).values() for n in names)


def _binding(a: Acl) -> Any:
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    return AclBinding(
        ResourceType[a.resource_type.upper()],
        a.name,
        ResourcePatternType[a.pattern.upper()],
        a.principal,
        "*",
        AclOperation[a.operation.upper()],
        AclPermissionType.ALLOW,
    )


def _from_binding(b: Any) -> Acl | None:
    if (
        b.permission_type.name != "ALLOW"
        or b.host != "*"
        or b.restype.name not in ("TOPIC", "GROUP", "TRANSACTIONAL_ID")
    ):
        return None
    return Acl(
        b.principal, b.restype.name.lower(), b.name, b.resource_pattern_type.name.lower(), b.operation.name.lower()
    )


def current_acls(kafka: Any, timeout_s: float = 30.0) -> list[Acl]:
    """The cluster's ALLOW rules (any host) on topics, groups and transactional ids."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    from sevisflow.core.errors import TerminalError, UnreachableError
    from sevisflow.core.kafka_io import make_admin

    admin = make_admin(kafka)
    # None matches any name, principal and host (AclBindingFilter's docs), though its annotations say str
    anything: Any = None
    flt = AclBindingFilter(
        ResourceType.ANY, anything, ResourcePatternType.ANY, anything, anything, AclOperation.ANY, AclPermissionType.ANY
    )
    try:
        bindings = admin.describe_acls(flt, request_timeout=timeout_s).result()
    except KafkaException as exc:
        err = exc.args[0]
        if err.name() in ("SECURITY_DISABLED", "CLUSTER_AUTHORIZATION_FAILED"):
            raise TerminalError(
                f"Kafka at {kafka.bootstrap_servers} refused to list ACLs ({err.name()}): "
                + (
                    "the brokers run without an authorizer (authorizer.class.name)"
                    if err.name() == "SECURITY_DISABLED"
                    else f"run this as the admin principal, not {kafka.sasl_username or 'anonymous'}"
                )
            ) from exc
        raise UnreachableError(f"could not list the ACLs of {kafka.bootstrap_servers}: {err.str()}") from exc
    return [a for a in (_from_binding(b) for b in bindings) if a is not None]


def apply_acls(
    settings: Settings, dry_run: bool = False, timeout_s: float = 30.0, show: Callable[[str], None] | None = None
) -> AclPlan:
    """Make the cluster's ACLs for sevisflow's principals match the model; idempotent.

    Order: list the rules, plan, show the diff, stop on ``dry_run``; create the missing rules
    first, then delete the stale ones (a stage never loses a right it still has in the model).
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AclBindingFilter

    from sevisflow.core.errors import TerminalError
    from sevisflow.core.kafka_io import make_admin
    from sevisflow.core.log import get_logger

    plan = plan_acls(acl_model(settings), current_acls(settings.kafka, timeout_s), managed_principals(settings))
    if show:
        show(plan.render())
    if dry_run or plan.empty():
        return plan
    admin = make_admin(settings.kafka)

    def wait(futures: Mapping[Any, Any], what: str) -> None:
        for binding, fut in futures.items():
            try:
                fut.result()
            except KafkaException as exc:
                err = exc.args[0]
                acl = _from_binding(binding)
                shown = acl.render() if acl is not None else str(binding)
                if err.code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED:
                    raise TerminalError(
                        f"could not {what} ({shown}): Kafka refused it (CLUSTER_AUTHORIZATION_FAILED); "
                        f"run `sevisflow acls apply` as the admin principal (acls.admin), not "
                        f"{settings.kafka.sasl_username or 'anonymous'}"
                    ) from exc
                raise TerminalError(f"could not {what} ({shown}): {err.str()[:300]}") from exc

    if plan.creates:
        wait(admin.create_acls([_binding(a) for a in plan.creates], request_timeout=timeout_s), "create ACL")
    if plan.deletes:
        filters = []
        for a in plan.deletes:
            b = _binding(a)
            filters.append(
                AclBindingFilter(
                    b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation, b.permission_type
                )
            )
        wait(admin.delete_acls(filters, request_timeout=timeout_s), "delete ACL")
    # return once the broker answers with the new rules: a stage started right after sees them
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = set(current_acls(settings.kafka, timeout_s))
        if set(plan.creates) <= now and not (set(plan.deletes) & now):
            break
        time.sleep(0.2)
    get_logger(__name__).info("acls.applied", created=len(plan.creates), deleted=len(plan.deletes))
    return plan


# --------------------------------------------------------------------------- Strimzi KafkaUser resources


def kafka_user_resources(settings: Settings, cluster: str, namespace: str) -> list[dict[str, Any]]:
    """One Strimzi ``KafkaUser`` per principal (SCRAM-SHA-512; the user operator makes its password
    Secret, named like the user) with its ACLs from :func:`role_grants`."""
    grants = role_grants(settings)
    by_user: dict[str, list[Grant]] = {}
    for role, names in principals(settings).items():
        for name in names:
            by_user.setdefault(name, []).extend(grants[role])
    roles = principal_role(settings)
    docs = []
    for name, user_grants in by_user.items():
        acls = []
        for g in sorted(_merge(user_grants), key=lambda g: (g.resource_type, g.name, g.pattern)):
            resource: dict[str, Any] = {
                "type": {TOPIC: "topic", GROUP: "group", TXN: "transactionalId"}[g.resource_type],
                "name": g.name,
                "patternType": "prefix" if g.pattern == PREFIXED else "literal",
            }
            ops = [
                {READ: "Read", WRITE: "Write", DESCRIBE: "Describe", CREATE: "Create"}[o] for o in sorted(g.operations)
            ]
            acls.append({"resource": resource, "operations": ops})
        docs.append(
            {
                "apiVersion": "kafka.strimzi.io/v1",
                "kind": "KafkaUser",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {
                        "strimzi.io/cluster": cluster,
                        "app.kubernetes.io/part-of": "sevisflow",
                        "app.kubernetes.io/component": roles[name].replace("+", "."),
                    },
                },
                "spec": {
                    "authentication": {"type": "scram-sha-512"},
                    "authorization": {"type": "simple", "acls": acls},
                },
            }
        )
    return docs


def role_table(settings: Settings) -> list[tuple[str, str, str, str]]:
    """(role, operations, resource, why) rows: the table docs/SECURITY.md shows (a test compares them)."""
    rows = []
    grants = role_grants(settings)
    for role in ROLES:
        for g in sorted(grants[role], key=lambda g: (g.resource_type, g.name)):
            shown = f"{g.name}*" if g.pattern == PREFIXED else g.name
            rows.append(
                (role, ", ".join(o.upper() for o in sorted(g.operations)), f"{g.resource_type} `{shown}`", g.why)
            )
    return rows


def markdown_table(settings: Settings) -> str:
    """:func:`role_table` as the Markdown table of docs/SECURITY.md (``python -m sevisflow.core.acls``)."""
    lines = ["| Role | Operations | Resource | Why |", "|---|---|---|---|"]
    lines += [f"| {role} | {ops} | {res} | {why} |" for role, ops, res, why in role_table(settings)]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - prints the docs table for the default settings
    print(markdown_table(Settings()))
