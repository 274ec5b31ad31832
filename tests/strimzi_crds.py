"""Strimzi's own CRD schemas, made from Strimzi's published artifacts, for the manifest tests.

Strimzi publishes no artifact holding the CRD YAML (the operator's install bundle is not on any
registry reachable here). What Maven Central does hold is ``io.strimzi:api`` (the Java model the
operator itself serves) and ``io.strimzi:crd-generator`` (the tool Strimzi's build runs over that
model to write ``packaging/install/cluster-operator/04*-Crd-*.yaml``). This module runs that
generator with the arguments of Strimzi's own build (the api pom's ``generate-crd-co-install-v1``
step), once per Strimzi version, into ``~/.cache/sevisflow/strimzi-<version>/crds``. Nothing it
fetches or writes is committed.

The generator of 1.x is compiled for Java 21+; the local stack's Java 17 cannot run it, so a newer
JDK is looked for (``JAVA_HOME``, then /usr/lib/jvm).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from sevisflow.deploy.local.stack import cache_dir

STRIMZI_VERSION = "1.2.0"
"""The Strimzi release whose CRDs the manifests are validated against (tests/strimzi/pom.xml)."""
POM = Path(__file__).resolve().parent / "strimzi" / "pom.xml"
CRD_CLASSES = {
    "Kafka": "io.strimzi.api.kafka.model.kafka.Kafka",
    "KafkaNodePool": "io.strimzi.api.kafka.model.nodepool.KafkaNodePool",
    "KafkaTopic": "io.strimzi.api.kafka.model.topic.KafkaTopic",
    "KafkaUser": "io.strimzi.api.kafka.model.user.KafkaUser",
    "KafkaConnect": "io.strimzi.api.kafka.model.connect.KafkaConnect",
    "KafkaConnector": "io.strimzi.api.kafka.model.connector.KafkaConnector",
}
MIN_JAVA = 21


class CrdError(RuntimeError):
    """The CRDs could not be made; the message names the step and the fix."""


def _java_major(java: Path) -> int:
    out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=60)
    m = re.search(r'version "(\d+)', out.stderr + out.stdout)
    return int(m.group(1)) if m else 0


def find_java(min_major: int = MIN_JAVA) -> Path:
    """A java binary of at least ``min_major``: JAVA_HOME first, then every JDK under /usr/lib/jvm."""
    candidates: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates += sorted(jvm.glob("*/bin/java"), reverse=True)
    if shutil.which("java"):
        candidates.append(Path(shutil.which("java")))  # type: ignore[arg-type]
    for java in candidates:
        if java.exists() and _java_major(java) >= min_major:
            return java
    raise CrdError(
        f"Strimzi {STRIMZI_VERSION}'s CRD generator needs Java {min_major}+; none found in "
        f"JAVA_HOME or /usr/lib/jvm (install e.g. openjdk-21-jdk-headless and set JAVA_HOME)"
    )


def _run(step: str, cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        detail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise CrdError(f"{step}: `{' '.join(cmd[:4])} …` exited {proc.returncode}\n{detail}")


def ensure_crds(version: str = STRIMZI_VERSION) -> Path:
    """The folder of Strimzi ``version``'s CRD YAML files (one per kind), made once and cached."""
    root = cache_dir() / f"strimzi-{version}"
    crds = root / "crds"
    if (crds / ".complete").exists():
        return crds
    if not shutil.which("mvn"):
        raise CrdError("Maven (mvn) is not installed; apt-get install -y maven")
    libs = root / "libs"
    if not (libs / ".complete").exists():
        tmp = root / "libs.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _run(
            "fetch io.strimzi:api and crd-generator",
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}",
                "-DincludeScope=runtime",
                f"-Dstrimzi.version={version}",
            ],
        )
        if not (tmp / f"api-{version}.jar").exists():
            raise CrdError(f"Maven finished but api-{version}.jar is not in {tmp}")
        (tmp / ".complete").write_text(version)
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
    parent = root / "strimzi-parent.pom"
    if not parent.exists():  # its <kafka.version> is the Kafka release this Strimzi is built with
        _run(
            "fetch io.strimzi:strimzi (parent POM)",
            [
                "mvn",
                "-q",
                "-B",
                "dependency:copy",
                f"-Dartifact=io.strimzi:strimzi:{version}:pom",
                f"-DoutputDirectory={root}",
            ],
        )
        (root / f"strimzi-{version}.pom").rename(parent)
    tmp = root / "crds.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # The arguments of Strimzi's own build (api pom, execution generate-crd-co-install-v1).
    _run(
        "generate the CRDs with Strimzi's CrdGenerator",
        [
            str(find_java()),
            "-cp",
            f"{libs}/*",
            "io.strimzi.crdgenerator.CrdGenerator",
            "--label",
            "app:strimzi",
            "--label",
            "strimzi.io/crd-install:true",
            "--target-kube",
            "1.16+",
            "--crd-api-version",
            "v1",
            "--api-versions",
            "v1",
            "--storage-version",
            "v1",
            "--yaml",
            *(f"{cls}={tmp / (kind + '.yaml')}" for kind, cls in CRD_CLASSES.items()),
        ],
    )
    (tmp / ".complete").write_text(version)
    shutil.rmtree(crds, ignore_errors=True)
    tmp.rename(crds)
    return crds


def load_crds(version: str = STRIMZI_VERSION) -> dict[str, dict[str, Any]]:
    """Each generated CustomResourceDefinition by kind."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(ensure_crds(version).glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        out[crd["spec"]["names"]["kind"]] = crd
    return out


def served_schema(crd: dict[str, Any], api_version: str) -> dict[str, Any] | None:
    """The openAPIV3Schema of the served version named by a resource's ``apiVersion`` (None: not served)."""
    group, _, version = api_version.partition("/")
    if group != crd["spec"]["group"]:
        return None
    for v in crd["spec"]["versions"]:
        if v["name"] == version and v.get("served"):
            return v["schema"]["openAPIV3Schema"]
    return None
