"""The production manifests (deploy/k8s, deploy/systemd) parse and agree with the code.

What this checks: every file parses; the KafkaTopic resources equal what the topic specs
generate; the KafkaUser resources (one per principal, with its ACLs) equal what the ACL model
generates, and every stage logs in as its own user with its own Secret; every container runs a command the real CLI parser accepts, for a stage the runner
knows, with its probes and metrics port where observability.py says; every SEVISFLOW_* variable
is a real setting; every Secret a pod mounts is declared (or made by Strimzi); no private key
is committed; every container names the one image that kustomization.yaml maps. Schema validation
against Strimzi's CRDs and Kubernetes' OpenAPI is in test_strimzi_crds.py, systemd's own checks in
test_systemd.py. What none can check: that a cluster or systemd runs them (see docs/OPERATIONS.md).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from sevisflow.app import runner
from sevisflow.app.cli import build_parser
from sevisflow.core.acls import kafka_user_resources, principals
from sevisflow.core.config import Settings, settings_from_mapping
from sevisflow.core.observability import METRICS_PORT, STAGE_METRICS_PORTS
from sevisflow.core.topics import all_topics, kafka_topic_resources, to_yaml
from tests.helpers import REPO

K8S = REPO / "deploy" / "k8s"
SYSTEMD = REPO / "deploy" / "systemd"

# The command each stage runs (`sevisflow …`), by runner stage name.
STAGE_COMMANDS = {
    "connector": ["connector", "run"],
    "normalize": ["process", "normalize"],
    "events": ["process", "events"],
    "batcher": ["process", "batcher"],
    "sink-xml": ["sink", "xml"],
    "sink-sevis": ["sink", "sevis"],
}
# Variables that are not settings: where the config is, the stage's stable instance name and the
# systemd unit's command line. SEVISFLOW_METRICS_PORT is the [metrics] port setting, checked as one.
NON_SETTING_VARS = {"SEVISFLOW_CONFIG", "SEVISFLOW_INSTANCE", "SEVISFLOW_STAGE_ARGS"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_k8s() -> list[dict[str, Any]]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [d for f in kust["resources"] for d in _docs(K8S / f)]


def _k8s_settings() -> Settings:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = [f for g in kust["configMapGenerator"] if g["name"] == "sevisflow-config" for f in g["files"]]
    assert files == ["sevisflow.toml"]
    return settings_from_mapping(tomllib.loads((K8S / files[0]).read_text()), env={})


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _all_k8s() if d["kind"] == kind]


def _stage_of(args: list[str]) -> str:
    for stage, cmd in STAGE_COMMANDS.items():
        if args[-len(cmd) :] == cmd:
            return stage
    raise AssertionError(f"{args} runs no known stage")


def _parses(cli_args: list[str]) -> bool:
    try:
        build_parser().parse_args(cli_args)
    except SystemExit:
        return False
    return True


def test_every_file_parses_and_kustomization_lists_them():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    for doc in _all_k8s():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]


def test_stage_table_matches_the_runner():
    assert set(STAGE_COMMANDS) == set(runner.STAGES)


def test_k8s_settings_are_valid_production_settings():
    s = _k8s_settings()
    assert s.kafka.replication_factor == 3 and s.kafka.min_insync_replicas == 2
    assert s.kafka.security_protocol == "SASL_SSL" and s.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert not s.kafka.sasl_password, "the password comes from a mounted Secret, not the ConfigMap"


def test_kafka_topics_are_generated_from_the_topic_specs():
    s = _k8s_settings()
    kafka = _kind("Kafka")[0]
    expected = to_yaml(kafka_topic_resources(all_topics(s), cluster=kafka["metadata"]["name"], namespace="sevisflow"))
    text = (K8S / "topics.yaml").read_text()
    body = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
    assert body == expected, (
        "deploy/k8s/topics.yaml is stale: sevisflow --config deploy/k8s/sevisflow.toml "
        "topics manifests > deploy/k8s/topics.yaml (and keep its header comment)"
    )
    for t in _docs(K8S / "topics.yaml"):
        assert t["spec"]["replicas"] == 3 and t["spec"]["config"]["min.insync.replicas"] == "2"


def test_strimzi_cluster_listener_and_user_match_the_settings():
    s = _k8s_settings()
    kafka = _kind("Kafka")[0]
    name = kafka["metadata"]["name"]
    pools = [p for p in _kind("KafkaNodePool") if p["metadata"]["labels"]["strimzi.io/cluster"] == name]
    assert sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"]) >= 3
    assert sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"]) in (3, 5)
    cfg = kafka["spec"]["kafka"]["config"]
    assert cfg["min.insync.replicas"] == 2 and cfg["transaction.state.log.min.isr"] == 2
    host, port = s.kafka.bootstrap_servers.rsplit(":", 1)
    assert host.startswith(f"{name}-kafka-bootstrap.")
    listener = next(lst for lst in kafka["spec"]["kafka"]["listeners"] if lst["port"] == int(port))
    assert listener["tls"] is True and listener["authentication"]["type"] == "scram-sha-512"
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"


def test_kafka_users_are_generated_from_the_acl_model():
    s = _k8s_settings()
    kafka = _kind("Kafka")[0]
    expected = to_yaml(kafka_user_resources(s, cluster=kafka["metadata"]["name"], namespace="sevisflow"))
    text = (K8S / "users.yaml").read_text()
    body = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
    assert body == expected, (
        "deploy/k8s/users.yaml is stale: sevisflow --config deploy/k8s/sevisflow.toml "
        "acls manifests > deploy/k8s/users.yaml (and keep its header comment)"
    )
    users = {u["metadata"]["name"]: u for u in _kind("KafkaUser")}
    assert set(users) == {n for names in principals(s).values() for n in names}
    for u in users.values():
        assert u["spec"]["authentication"]["type"] == "scram-sha-512"
        assert "password" not in u["spec"]["authentication"], "Strimzi makes each user's password Secret"
        for acl in u["spec"]["authorization"]["acls"]:
            assert acl["resource"]["type"] in ("topic", "group", "transactionalId"), "no cluster-wide right"
    # a DSO writes the commands topic (and the worklist), never sevis.events; an auditor writes nothing
    dso = users[principals(s)["dso"][0]]["spec"]["authorization"]["acls"]
    written = {a["resource"]["name"] for a in dso if "Write" in a["operations"]}
    assert s.topics.commands in written and s.topics.events not in written and s.topics.batches not in written
    auditor = users[principals(s)["auditor"][0]]["spec"]["authorization"]["acls"]
    assert all(set(a["operations"]) <= {"Read", "Describe"} for a in auditor)


def test_each_stage_logs_in_as_its_own_kafka_user():
    s = _k8s_settings()
    users = {u["metadata"]["name"] for u in _kind("KafkaUser")}
    seen = set()
    for w, c in _containers():
        stage = c["name"]
        env = {e["name"]: e.get("value", "") for e in c["env"]}
        user = env["SEVISFLOW_KAFKA_SASL_USERNAME"]
        assert user == principals(s)[stage][0] and user in users, stage
        path = env["SEVISFLOW_KAFKA_SASL_PASSWORD"][len("file:") :]
        mount = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        assert len(mount) == 1, f"{stage}: the password file {path} is on no single mount"
        volume = next(v for v in w["spec"]["template"]["spec"]["volumes"] if v["name"] == mount[0]["name"])
        assert volume["secret"]["secretName"] == user, f"{stage} mounts another user's Secret"
        assert volume["secret"]["defaultMode"] == 0o400
        seen.add(user)
    assert len(seen) == len(STAGE_COMMANDS), "one Kafka user per stage"


def _containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    out = []
    for w in _kind("Deployment") + _kind("StatefulSet"):
        for c in w["spec"]["template"]["spec"]["containers"]:
            out.append((w, c))
    return out


def test_every_stage_runs_once_with_a_command_the_cli_accepts():
    seen: dict[str, int] = {}
    pending = []
    for _w, c in _containers():
        assert "command" not in c, "the image's ENTRYPOINT is the CLI; containers pass only args"
        stage = _stage_of(c["args"])
        assert c["name"] == stage
        seen[stage] = seen.get(stage, 0) + 1
        if not _parses(c["args"]):
            pending.append(" ".join(STAGE_COMMANDS[stage]))
    assert seen == dict.fromkeys(STAGE_COMMANDS, 1)
    # a command the CLI does not have yet is allowed only for the stage still being built
    assert set(pending) <= {"process batcher"}, pending


def test_image_is_configured_in_one_place():
    """Every container names one image, which kustomization.yaml's `images:` maps to a registry and tag;
    that image's ENTRYPOINT (the repository's Dockerfile) is the CLI the containers' args are for."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    names = {c["image"] for _, c in _containers()}
    assert len(names) == 1, names
    (name,) = names
    assert ":" not in name and "/" not in name, "tag and registry belong in kustomization.yaml's images:"
    images = {i["name"]: i for i in kust["images"]}
    assert set(images) == {name}
    assert images[name]["newName"] and isinstance(images[name]["newTag"], str) and images[name]["newTag"]
    dockerfile = (REPO / "Dockerfile").read_text()
    entry = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile, re.M)
    assert entry and json.loads(entry[-1]) == ["sevisflow"], entry


def test_singletons_and_scaling():
    s = _k8s_settings()
    for w, c in _containers():
        stage = c["name"]
        if stage in ("connector", "sink-xml", "sink-sevis"):
            assert w["kind"] == "Deployment" and w["spec"]["replicas"] == 1
            assert w["spec"]["strategy"]["type"] == "Recreate", f"{stage}: never two at once"
        else:
            assert w["kind"] == "StatefulSet", f"{stage}: stable pod names = stable transactional ids"
            assert 1 <= w["spec"]["replicas"] <= s.kafka.partitions
            env = {e["name"]: e for e in c["env"]}
            assert env["SEVISFLOW_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        if stage == "normalize":
            assert w["spec"]["replicas"] == 1, "normalize is the sequencer: one instance"


def test_probes_and_ports_are_the_observability_ports():
    for w, c in _containers():
        stage = c["name"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        port = int(env["SEVISFLOW_METRICS_PORT"])
        pod = w["spec"]["template"]["spec"]["containers"]
        expected = METRICS_PORT if len(pod) == 1 else STAGE_METRICS_PORTS[stage]
        assert port == expected
        assert [p["containerPort"] for p in c["ports"]] == [port]
        assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": port}
        assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port}
        # one port per process ([metrics] port): the connector has no metrics port of its own any more
        assert "SEVISFLOW_CONNECTOR_METRICS_PORT" not in env
    for w in _kind("Deployment") + _kind("StatefulSet"):
        ports = [p["containerPort"] for c in w["spec"]["template"]["spec"]["containers"] for p in c["ports"]]
        assert len(ports) == len(set(ports)), "containers of one pod share its network namespace"


def _check_env_vars(names_values: dict[str, str], base: Settings | None = None) -> None:
    setting_vars = {k: v for k, v in names_values.items() if k not in NON_SETTING_VARS}
    assert all(k.startswith("SEVISFLOW_") for k in setting_vars)
    # every variable is a real setting: the config loader rejects unknown SEVISFLOW_<SECTION>_* names
    settings = settings_from_mapping({}, env=setting_vars)
    for key in setting_vars:
        section, _, field = key[len("SEVISFLOW_") :].lower().partition("_")
        assert hasattr(getattr(settings, section), field), key


def test_env_vars_are_settings_and_secrets_come_from_files():
    for _, c in _containers():
        env = {e["name"]: e.get("value", "") for e in c["env"]}
        _check_env_vars(env)
        for key, value in env.items():
            if key.endswith("PASSWORD"):
                assert value.startswith("file:/etc/sevisflow/"), key


def test_mounted_secrets_are_declared_or_made_by_strimzi():
    declared = {d["metadata"]["name"] for d in _kind("Secret")}
    kafka_name = _kind("Kafka")[0]["metadata"]["name"]
    # the cluster CA, and one password Secret per KafkaUser (the user operator makes them)
    made_by_strimzi = {f"{kafka_name}-cluster-ca-cert"} | {u["metadata"]["name"] for u in _kind("KafkaUser")}
    configmaps = {"sevisflow-config", "sevis-xsd"}
    for w in _kind("Deployment") + _kind("StatefulSet"):
        for v in w["spec"]["template"]["spec"]["volumes"]:
            if "secret" in v:
                assert v["secret"]["secretName"] in declared | made_by_strimzi, v
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in {
                    d["metadata"]["name"] for d in _kind("PersistentVolumeClaim")
                }


def test_no_private_key_or_real_password_is_committed():
    for path in list((REPO / "deploy").rglob("*")):
        if path.is_file() and path.suffix in (".yaml", ".toml", ".service", ".target", ".env", ".pem", ".key"):
            text = path.read_text(errors="replace")
            assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text), path
    for secret in _kind("Secret"):
        assert all(v.startswith("REPLACE") for v in secret["stringData"].values()), secret["metadata"]["name"]


# --------------------------------------------------------------------------- systemd


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as {section: [(key, value), …]} (keys may repeat, as systemd allows)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections[current] = []
            continue
        assert current is not None and "=" in line, f"{path.name}: bad line {raw!r}"
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def _values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_systemd_units_run_every_stage_with_its_port():
    template = _unit(SYSTEMD / "sevisflow@.service")
    assert _values(template, "Service", "ExecStart")[0].endswith("sevisflow --log-level INFO $SEVISFLOW_STAGE_ARGS")
    assert _values(template, "Service", "EnvironmentFile") == ["/etc/sevisflow/stages/%i.env"]
    assert _values(template, "Service", "KillSignal") == ["SIGTERM"]
    env = dict(v.split("=", 1) for v in _values(template, "Service", "Environment"))
    _check_env_vars(env)
    # no secret in the unit itself (it runs as is on a plaintext single server); the credential
    # drop-ins hand each password over as a systemd credential read through file:%d/<name>
    assert not _values(template, "Service", "LoadCredential")
    assert not [k for k in env if k.endswith("PASSWORD")]
    dropins = sorted(SYSTEMD.glob("*.service.d/*.conf"))
    assert {p.parent.name for p in dropins} == {
        "sevisflow@.service.d",
        "sevisflow@sink-sevis.service.d",
        "sevisflow-topics.service.d",
    }
    for path in dropins:
        dropin = _unit(path)
        denv = dict(v.split("=", 1) for v in _values(dropin, "Service", "Environment"))
        _check_env_vars(denv)
        credentials = {v.split(":", 1)[0] for v in _values(dropin, "Service", "LoadCredential")}
        secrets = {k: v for k, v in denv.items() if k.endswith("PASSWORD")}
        assert secrets, path
        for key, value in secrets.items():
            assert value.startswith("file:%d/") and value[len("file:%d/") :] in credentials, (path, key)
        for source in (v.split(":", 1)[1] for v in _values(dropin, "Service", "LoadCredential")):
            assert source.startswith("/etc/sevisflow/credentials/"), source

    stage_files = {p.stem: _env_file(p) for p in (SYSTEMD / "stages").glob("*.env")}
    assert set(stage_files) == set(STAGE_COMMANDS)
    for stage, values in stage_files.items():
        args = values["SEVISFLOW_STAGE_ARGS"].split()
        assert args == STAGE_COMMANDS[stage]
        assert _parses(args) or " ".join(args) == "process batcher", args
        assert int(values["SEVISFLOW_METRICS_PORT"]) == STAGE_METRICS_PORTS[stage]
        _check_env_vars(values)
        assert "SEVISFLOW_CONNECTOR_METRICS_PORT" not in values, "use SEVISFLOW_METRICS_PORT"
    target = _unit(SYSTEMD / "sevisflow.target")
    wanted = {w for v in _values(target, "Unit", "Wants") for w in v.split()}
    assert wanted == {f"sevisflow@{s}.service" for s in STAGE_COMMANDS} | {"sevisflow-topics.service"}


def test_systemd_topics_unit_applies_the_specs():
    unit = _unit(SYSTEMD / "sevisflow-topics.service")
    cmd = _values(unit, "Service", "ExecStart")[0].split()
    assert cmd[0].endswith("/sevisflow") and _parses(cmd[1:]) and cmd[1:] == ["topics", "apply"]
    before = {w for v in _values(unit, "Unit", "Before") for w in v.split()}
    assert before == {f"sevisflow@{s}.service" for s in STAGE_COMMANDS}


@pytest.mark.parametrize("path", sorted(p.name for p in SYSTEMD.glob("*.service")) + ["sevisflow.target"])
def test_systemd_files_parse(path):
    unit = _unit(SYSTEMD / path)
    assert "Unit" in unit and ("Install" in unit)
