"""Checkpoints are a no-op in the product; the tests' own handler (tests/crashing.py) ends the process at one (137)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sevisflow.core import checkpoints
from tests import crashing
from tests.helpers import REPO

SCRIPT = (
    "from sevisflow.core.checkpoints import checkpoint\n"
    "for i in range(1, 6):\n"
    "    checkpoint('other')\n"
    "    print('before', i, flush=True)\n"
    "    checkpoint('here')\n"
    "print('done', flush=True)\n"
)


def _run(tmp_path, env_value: str | None, launcher: bool = True) -> subprocess.CompletedProcess:
    """The script as its own process, through ``python -m tests.crashing`` (as the crash tests start stages)."""
    env = {k: v for k, v in os.environ.items() if k != crashing.ENV_VAR}
    if env_value is not None:
        env[crashing.ENV_VAR] = env_value
    (tmp_path / "checkpoint_target.py").write_text(SCRIPT)
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{REPO}"
    argv = ["-m", "tests.crashing", "checkpoint_target"] if launcher else [str(tmp_path / "checkpoint_target.py")]
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_without_a_handler_a_checkpoint_does_nothing_even_when_the_variable_is_set(tmp_path):
    res = _run(tmp_path, "here:1", launcher=False)
    assert res.returncode == 0 and res.stdout.split().count("before") == 5 and "done" in res.stdout


def test_the_launcher_unarmed_runs_the_module_to_its_end(tmp_path):
    res = _run(tmp_path, None)
    assert res.returncode == 0 and res.stdout.split().count("before") == 5 and "done" in res.stdout


def test_the_nth_call_of_the_armed_point_ends_the_process_with_137(tmp_path):
    res = _run(tmp_path, "here:3")
    assert res.returncode == crashing.EXIT_CODE
    assert res.stdout.split().count("before") == 3 and "done" not in res.stdout
    assert '"point":"here"' in res.stderr


def test_several_points_and_the_default_first_call(tmp_path):
    res = _run(tmp_path, "nowhere:2, other")
    assert res.returncode == crashing.EXIT_CODE and "before" not in res.stdout


def test_after_counts_only_the_calls_made_after_that_checkpoint(tmp_path):
    res = _run(tmp_path, "here:2@other")  # each round: other, before, here — 'other' opens the count at once
    assert res.returncode == crashing.EXIT_CODE and res.stdout.split().count("before") == 2
    assert _run(tmp_path, "here:1@never").returncode == 0  # never opened: never crashes


def test_a_malformed_value_names_the_variable_and_the_fix():
    with pytest.raises(ValueError, match="SEVISFLOW_CRASH_AT"):
        crashing.parse("here:third")
    assert crashing.parse("") == {}


def test_a_registered_handler_sees_every_checkpoint_and_can_be_removed():
    seen: list[str] = []
    previous = checkpoints.set_handler(seen.append)
    try:
        checkpoints.checkpoint("a")
        checkpoints.checkpoint("b")
    finally:
        assert checkpoints.set_handler(previous) == seen.append
    checkpoints.checkpoint("c")
    assert seen == ["a", "b"]
