"""The systemd units (deploy/systemd) pass systemd's own checks: `systemd-analyze verify` (syntax,
keys, drop-ins) and `systemd-analyze security --offline=yes` (exposure rated OK, at most 4.9, for every
stage and the topics unit). Both are fed a broken unit too, to show a pass means something.

What this cannot check: running the units (the test machines have no systemd as PID 1), so the
hardening's effect on the stages at run time is not exercised here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.unit.test_manifests import STAGE_COMMANDS

SYSTEMD = REPO / "deploy" / "systemd"
MAX_EXPOSURE = 4.9
"""systemd-analyze's "OK" band ends below 5.0 (MEDIUM starts there)."""
# The only complaint `verify` may make here: the install path /opt/sevisflow does not exist on the test machine.
MISSING_BINARY = re.compile(r"Command /opt/sevisflow/\.venv/bin/sevisflow is not executable")


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is missing: apt-get install -y systemd"
    return exe


@pytest.fixture()
def units(tmp_path: Path) -> Path:
    """deploy/systemd with its drop-in folders, as /etc/systemd/system would hold it."""
    shutil.copytree(SYSTEMD, tmp_path / "units")
    return tmp_path / "units"


def _exposure(unit: Path) -> float:
    proc = subprocess.run(
        [_analyze(), "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True, text=True, timeout=120
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr[-2000:]
    return float(m.group(1))


def _verify(*units: Path) -> list[str]:
    proc = subprocess.run(
        [_analyze(), "verify", "--no-pager", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=units[0].parent,
    )
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line and not MISSING_BINARY.search(line)]


@pytest.mark.parametrize("stage", sorted(STAGE_COMMANDS))
def test_each_stage_unit_is_rated_ok(units: Path, stage: str) -> None:
    instance = units / f"sevisflow@{stage}.service"
    shutil.copy(units / "sevisflow@.service", instance)
    assert _exposure(instance) <= MAX_EXPOSURE


def test_topics_unit_is_rated_ok(units: Path) -> None:
    assert _exposure(units / "sevisflow-topics.service") <= MAX_EXPOSURE


def test_an_unhardened_unit_is_rated_exposed(units: Path) -> None:
    text = (units / "sevisflow@.service").read_text()
    bare = "\n".join(
        line
        for line in text.splitlines()
        if not re.match(
            r"(Protect|Private|Restrict|SystemCall|Capability|NoNew|Lock|Remove|Keyring|"
            r"Device|ProcSubset|Ambient)",
            line,
        )
    )
    for d in units.glob("*.service.d"):
        shutil.rmtree(d)
    instance = units / "sevisflow@connector.service"
    instance.write_text(bare)
    assert _exposure(instance) > MAX_EXPOSURE


def test_units_and_dropins_verify(units: Path) -> None:
    """Every unit, each stage instance (with the credential drop-ins in place) and the target."""
    instances = [units / f"sevisflow@{stage}.service" for stage in sorted(STAGE_COMMANDS)]
    assert _verify(*instances, units / "sevisflow-topics.service", units / "sevisflow.target") == []


def test_verify_reports_a_bad_key(units: Path) -> None:
    dropin = units / "sevisflow@.service.d" / "credentials.conf"
    dropin.write_text(dropin.read_text() + "LoadCredentials=kafka-password:/nowhere\n")
    problems = _verify(units / "sevisflow@connector.service")
    assert any("LoadCredentials" in p for p in problems), problems


def test_plaintext_server_needs_no_credential_file() -> None:
    """Without the drop-ins, no unit names a credential or a file: secret (so none has to exist)."""
    for unit in [*SYSTEMD.glob("*.service"), SYSTEMD / "sevisflow.target"]:
        text = unit.read_text()
        body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert "LoadCredential" not in body and "file:%d" not in body, unit.name
