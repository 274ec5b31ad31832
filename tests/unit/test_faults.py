"""sevisflow.core.faults.crash_point: a no-op unless SEVISFLOW_CRASH_AT arms it; then it ends the process (137)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sevisflow.core import faults
from tests.helpers import REPO

SCRIPT = ("from sevisflow.core.faults import crash_point\n"
          "for i in range(1, 6):\n"
          "    crash_point('other')\n"
          "    print('before', i, flush=True)\n"
          "    crash_point('here')\n"
          "print('done', flush=True)\n")


def _run(env_value: str | None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k != faults.ENV_VAR}
    if env_value is not None:
        env[faults.ENV_VAR] = env_value
    return subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


def test_unarmed_it_does_nothing():
    res = _run(None)
    assert res.returncode == 0 and res.stdout.split().count("before") == 5 and "done" in res.stdout


def test_the_nth_call_of_the_armed_point_ends_the_process_with_137():
    res = _run("here:3")
    assert res.returncode == faults.EXIT_CODE
    assert res.stdout.split().count("before") == 3 and "done" not in res.stdout
    assert '"point":"here"' in res.stderr


def test_several_points_and_the_default_first_call():
    res = _run("nowhere:2, other")
    assert res.returncode == faults.EXIT_CODE and "before" not in res.stdout


def test_a_malformed_value_names_the_variable_and_the_fix(monkeypatch):
    monkeypatch.setenv(faults.ENV_VAR, "here:third")
    with pytest.raises(ValueError, match="SEVISFLOW_CRASH_AT"):
        faults.crash_point("here")
    monkeypatch.delenv(faults.ENV_VAR)
    faults.crash_point("here")  # unset again: a no-op
