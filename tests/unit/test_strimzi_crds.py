"""Every Kubernetes manifest sevisflow ships or renders is valid for today's Strimzi and Kubernetes.

Strimzi resources (Kafka, KafkaNodePool, KafkaTopic, KafkaUser, KafkaConnector) are validated against
the openAPIV3Schema of the version their apiVersion names, in CRDs made by Strimzi's own generator
from Strimzi's published API model (tests/strimzi_crds.py, Strimzi STRIMZI_VERSION): a resource whose
apiVersion the CRD does not serve fails, and so does an unknown field (as `kubectl apply`'s strict
field validation would). Kubernetes built-ins (Namespace, Secret, ConfigMap, Deployment,
StatefulSet) are validated, strictly, against the Kubernetes OpenAPI schemas that the
kubernetes-validate package ships. Each validator is also fed broken resources, to show it rejects.
"""

from __future__ import annotations

import copy
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sevisflow.core.acls import kafka_user_resources
from sevisflow.core.config import settings_from_mapping
from sevisflow.core.topics import all_topics, kafka_topic_resources
from sevisflow.deploy.local.stack import cache_dir
from tests.helpers import REPO
from tests.strimzi_crds import STRIMZI_VERSION, ensure_crds, load_crds, served_schema

K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
"""Kubernetes releases whose schemas the built-ins are validated against (oldest and newest checked)."""


def _strict(schema: Any) -> Any:
    """The schema with unknown fields rejected and Kubernetes' OpenAPI extensions made plain JSON Schema.

    The API server prunes unknown fields (or rejects them under strict field validation); plain JSON
    Schema would let them pass silently, so every object with declared properties gets
    ``additionalProperties: false`` unless it says ``x-kubernetes-preserve-unknown-fields``.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crds() -> dict[str, dict[str, Any]]:
    return load_crds()


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _rendered() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every resource `kubectl apply -k deploy/k8s` would send, plus the generators' output."""
    kust = _kustomization()
    images = {i["name"]: i for i in kust.get("images", [])}
    for f in kust["resources"]:
        for doc in _docs(K8S / f):
            doc = copy.deepcopy(doc)
            doc.setdefault("metadata", {}).setdefault("namespace", kust["namespace"])
            for pod in _pod_specs(doc):
                for c in pod.get("containers", []):
                    img = images.get(c["image"])
                    if img:
                        c["image"] = f"{img.get('newName', img['name'])}:{img['newTag']}"
            yield f"{f}:{doc['kind']}/{doc['metadata']['name']}", doc
    for gen in kust.get("configMapGenerator", []):
        data = {Path(f).name: (K8S / f).read_text() for f in gen["files"]}
        yield (
            f"configMapGenerator:{gen['name']}",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": gen["name"], "namespace": kust["namespace"]},
                "data": data,
            },
        )
    settings = settings_from_mapping(tomllib.loads((K8S / "sevisflow.toml").read_text()), env={})
    for doc in kafka_topic_resources(all_topics(settings), cluster="sevisflow", namespace=kust["namespace"]):
        yield f"topics manifests:{doc['metadata']['name']}", doc
    for doc in kafka_user_resources(settings, cluster="sevisflow", namespace=kust["namespace"]):
        yield f"acls manifests:{doc['metadata']['name']}", doc
    for path in sorted((REPO / "deploy").rglob("*.yaml")):
        if path.parent != K8S:
            for doc in _docs(path):
                if str(doc.get("apiVersion", "")).startswith("kafka.strimzi.io/"):
                    yield f"{path.relative_to(REPO)}:{doc['kind']}/{doc['metadata']['name']}", doc


def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    tmpl = spec.get("template", {}).get("spec") if isinstance(spec, dict) else None
    return [tmpl] if isinstance(tmpl, dict) and "containers" in tmpl else []


def _strimzi_errors(doc: dict[str, Any], crds: dict[str, dict[str, Any]]) -> list[str]:
    crd = crds.get(doc["kind"])
    if crd is None:
        return [f"no Strimzi {STRIMZI_VERSION} CRD for kind {doc['kind']}"]
    schema = served_schema(crd, doc["apiVersion"])
    if schema is None:
        served = [v["name"] for v in crd["spec"]["versions"] if v.get("served")]
        return [f"{doc['apiVersion']} is not served by Strimzi {STRIMZI_VERSION} (serves {served})"]
    validator = jsonschema.Draft7Validator(_strict(schema))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _k8s_errors(doc: dict[str, Any], version: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"no Kubernetes {version} schema for {doc['apiVersion']} {doc['kind']}: {exc}"]
    return []


def test_crds_come_from_strimzi_generator(crds: dict[str, dict[str, Any]]) -> None:
    """The CRDs are Strimzi's (group, served v1 as storage version), not hand-written."""
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "KafkaConnector"} <= set(crds)
    for kind, crd in crds.items():
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == "kafka.strimzi.io"
        assert [v["name"] for v in crd["spec"]["versions"] if v.get("storage")] == ["v1"], kind
        assert served_schema(crd, "kafka.strimzi.io/v1") is not None, kind


def test_every_strimzi_resource_is_valid_v1(crds: dict[str, dict[str, Any]]) -> None:
    seen: set[str] = set()
    problems = {}
    for where, doc in _rendered():
        if not doc["apiVersion"].startswith("kafka.strimzi.io/"):
            continue
        seen.add(doc["kind"])
        assert doc["apiVersion"] == "kafka.strimzi.io/v1", where
        errors = _strimzi_errors(doc, crds)
        if errors:
            problems[where] = errors
    assert not problems, problems
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"} <= seen


@pytest.mark.parametrize("k8s_version", KUBERNETES_VERSIONS)
def test_every_builtin_resource_is_valid(k8s_version: str) -> None:
    seen: set[str] = set()
    problems = {}
    for where, doc in _rendered():
        if doc["apiVersion"].startswith("kafka.strimzi.io/"):
            continue
        seen.add(doc["kind"])
        errors = _k8s_errors(doc, k8s_version)
        if errors:
            problems[where] = errors
    assert not problems, problems
    assert {"Namespace", "Secret", "ConfigMap", "Deployment", "StatefulSet"} <= seen


def test_kafka_version_is_strimzis_own() -> None:
    """spec.kafka.version is the Kafka release Strimzi STRIMZI_VERSION is built with (its parent POM)."""
    ensure_crds()
    pom = ET.parse(cache_dir() / f"strimzi-{STRIMZI_VERSION}" / "strimzi-parent.pom")
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    strimzi_kafka = pom.getroot().find("m:properties/m:kafka.version", ns)
    assert strimzi_kafka is not None and strimzi_kafka.text
    kafka = [d for d in _docs(K8S / "kafka.yaml") if d["kind"] == "Kafka"]
    assert len(kafka) == 1
    assert kafka[0]["spec"]["kafka"]["version"] == strimzi_kafka.text


def test_strimzi_validation_rejects_bad_resources(crds: dict[str, dict[str, Any]]) -> None:
    topic = next(d for w, d in _rendered() if d["kind"] == "KafkaTopic")
    assert _strimzi_errors(topic, crds) == []
    old = dict(topic, apiVersion="kafka.strimzi.io/v1beta2")
    assert any("not served" in e for e in _strimzi_errors(old, crds))
    typo = copy.deepcopy(topic)
    typo["spec"]["partition"] = typo["spec"].pop("partitions")
    assert any("partition" in e for e in _strimzi_errors(typo, crds))
    wrong_type = copy.deepcopy(topic)
    wrong_type["spec"]["replicas"] = "three"
    assert any("replicas" in e for e in _strimzi_errors(wrong_type, crds))
    user = next(d for w, d in _rendered() if d["kind"] == "KafkaUser")
    bad_op = copy.deepcopy(user)
    bad_op["spec"]["authorization"]["acls"][0]["operations"] = ["Scribble"]
    assert _strimzi_errors(bad_op, crds)


def test_builtin_validation_rejects_bad_resources() -> None:
    deployment = next(d for w, d in _rendered() if d["kind"] == "Deployment")
    assert _k8s_errors(deployment, KUBERNETES_VERSIONS[-1]) == []
    typo = copy.deepcopy(deployment)
    typo["spec"]["replica"] = typo["spec"].pop("replicas")
    assert _k8s_errors(typo, KUBERNETES_VERSIONS[-1])
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "metrics"}]
    assert _k8s_errors(wrong_type, KUBERNETES_VERSIONS[-1])
