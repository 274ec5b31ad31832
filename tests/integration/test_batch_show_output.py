"""`sevisflow batch show` as a separate process against a running batcher on real Kafka: into a
pipe whose reader has gone (`| head`), through `| head -3`, and with filters — the way a DSO or a
script really calls it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sevisflow.processors.batcher.view import build_view
from testkit.batcher import ORG, event
from tests.batcher_support import Batcher, send_events, wait_for, write_config
from tests.helpers import REPO

pytestmark = [pytest.mark.integration]


def _run(cfg, *argv: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sevisflow.app.cli", "--config", str(cfg), "batch", "show", *argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_batch_show_into_a_pipe_head_and_filters(env, tmp_path):
    cfg = write_config(env, tmp_path / "sevisflow.toml")
    batcher = Batcher(env)
    try:
        send_events(
            env,
            [
                event(
                    f"S{i:03d}",
                    n=i,
                    display_name=f"Student{i:03d}, Given",
                    before={"email": f"old{i}@example.edu", "birth_country": "CN"},
                    after={"email": f"new{i}@example.edu", "birth_country": "CH"},
                )
                for i in range(1, 61)
            ],
        )
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["records"] == 60, timeout=90)

        # the reader went away before the first write: no BrokenPipeError, exit 0, nothing on stderr
        r, w = os.pipe()
        os.close(r)
        try:
            done = _run(cfg, stdout=w)
        finally:
            os.close(w)
        assert done.returncode == 0 and done.stderr.decode() == "", done.stderr.decode()

        done = subprocess.run(
            [
                "bash",
                "-c",
                "set -o pipefail; "
                + " ".join(
                    [
                        sys.executable,
                        "-m",
                        "sevisflow.app.cli",
                        "--config",
                        str(cfg),
                        "batch",
                        "show",
                        "|",
                        "head",
                        "-3",
                    ]
                ),
            ],
            capture_output=True,
            cwd=REPO,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert done.returncode == 0 and done.stderr.decode() == "", done.stderr.decode()
        lines = done.stdout.decode().splitlines()
        assert lines[0].startswith(f"Open batch of {ORG}, revision ") and lines[1].startswith("60 records")

        # a pipe gets plain lines: no colours, no table borders; codes with their labels
        done = _run(cfg)
        out = done.stdout.decode()
        assert done.returncode == 0 and "\x1b" not in out and "─" not in out
        assert "birth country: Comoros (CN) → China (CH)" in out and out.count("[ready]") == 60

        done = _run(cfg, "--width", "100")  # the terminal layout, e.g. for an e-mail or the demo
        lines = done.stdout.decode().splitlines()
        assert done.returncode == 0 and max(len(x.rstrip()) for x in lines) <= 100 and any("─" * 50 in x for x in lines)

        done = _run(cfg, "--student", "S007")
        out = done.stdout.decode()
        assert "Showing 1 of 60 (student S007)" in out and "Student007, Given" in out
        assert "SIS tables: public.address" in out and "Student008" not in out
        done = _run(cfg, "--name", "student01", "--status", "ready", "--element", "PersonalInfo")
        assert "Showing 10 of 60" in done.stdout.decode()
        done = _run(cfg, "--student", "NOPE")
        assert done.returncode == 1 and "student NOPE has no record in the open batch" in done.stderr.decode()
    finally:
        batcher.stop()
