"""Plain helpers for tests: handles to the stack's services and settings that point at them."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sevisflow.core.config import Settings
from testkit.settings import (  # noqa: F401 - shared with bench/, which must not import tests/
    REPO,
    TEST_DSO_USER_IDS,
    TEST_ORG_ID,
    XSD_DIR,
    KafkaHandle,
    PgHandle,
    connector_section,
    make_settings,
)

EXAMPLES_DIR = REPO.parent / "shared" / "sevis" / "examples"


# --------------------------------------------------------------------------- waiting on a running pipeline


def settled(read: Callable[[], int], quiet_s: float, at_least: int = 1) -> Callable[[], int]:
    """A predicate: true once ``read()`` is ≥ ``at_least`` and has not changed for ``quiet_s``."""
    import time

    state = {"value": -1, "since": time.monotonic()}

    def check() -> int:
        value, now = read(), time.monotonic()
        if value != state["value"]:
            state["value"], state["since"] = value, now
            return 0
        return value if value >= at_least and now - state["since"] >= quiet_s else 0

    return check


def wait_for(what: str, pred: Callable[[], Any], timeout_s: float, pipeline: Any, every_s: float = 0.5) -> Any:
    """Poll ``pred`` until it is truthy; fail at once if a pipeline stage failed, or after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        failed = pipeline.failed()
        assert not failed, f"a stage failed while waiting for {what}: {[(t.name, t.error) for t in failed]}"
        assert time.monotonic() < deadline, (
            f"timed out after {timeout_s:.0f}s waiting for {what}; stage threads now:\n{stage_stacks()}"
        )
        time.sleep(every_s)


def stage_stacks() -> str:
    """Where each ``stage-*`` thread is right now: the first thing to read when a pipeline test hangs."""
    import sys
    import threading
    import traceback

    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        name = names.get(ident, "")
        if name.startswith("stage-"):
            stack = "".join(traceback.format_stack(frame)[-6:])
            parts.append(f"--- {name}\n{stack}")
    return "\n".join(parts) or "(no stage threads)"


def count(settings: Settings, topic: str) -> int:
    """Committed records on ``topic`` (read-only, no group offsets moved)."""
    from sevisflow.core.kafka_io import read_topic

    return sum(1 for _ in read_topic(settings.kafka, topic))


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Every log record of the process (DEBUG and up, librdkafka's included) as sevisflow's JSON lines."""
    from sevisflow.core import log as sflog

    sflog.configure("DEBUG")  # install the JSON handler first: later configure() calls keep ours
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(sflog.JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET; 0 when nothing answers (a probe endpoint not up yet, or gone)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def stage_env(settings: Settings, metrics_port: int) -> dict[str, str]:
    """The environment of a stage started as its own process: this test's Kafka, topics and metrics port.

    Inherited ``SEVISFLOW_*`` variables are dropped, so only what the test sets counts.
    """

    env = {k: v for k, v in os.environ.items() if not k.startswith("SEVISFLOW_")}
    env.update(
        {
            "SEVISFLOW_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "SEVISFLOW_METRICS_PORT": str(metrics_port),
            "SEVISFLOW_METRICS_HOST": "127.0.0.1",
            **{
                f"SEVISFLOW_TOPICS_{k.upper()}": getattr(settings.topics, k)
                for k in ("students", "events", "commands", "batches", "results", "dlq", "ledger")
            },
        }
    )
    return env


def bench_results(module: str, json_out: Any, *args: str, timeout_s: float = 240, interpreted: bool = True) -> Any:
    """Run ``python -m <module> <args> --json-out <json_out>`` from the repository (a bench's small case) and
    return what it wrote. ``interpreted``: a side-by-side bench runs every version interpreted, so it builds no
    older version's compiled core (a minute each; tests/integration/test_compiled_core_build.py does build)."""
    import json
    import os
    import subprocess
    import sys

    from testkit.settings import REPO

    cmd = [sys.executable, "-m", module, *args, "--json-out", str(json_out)]
    env = {k: v for k, v in os.environ.items() if k != "SEVISFLOW_INTERPRETED"}
    if interpreted:
        env["SEVISFLOW_INTERPRETED"] = "1"
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=timeout_s)
    return json.loads(open(json_out).read())


def side_by_side_runs(
    module: str, json_out: Any, *args: str, repeat: int = 2, compare_with: str = "HEAD", interpreted: bool = True
) -> list[dict[str, Any]]:
    """A side-by-side bench's small case against the last commit (``--compare-with HEAD``): checks that it
    measured both versions ``repeat`` times and returns every run, both versions'."""
    summary = bench_results(
        module, json_out, *args, "--repeat", str(repeat), "--compare-with", compare_with, interpreted=interpreted
    )["summary"]
    before = "interpreted" if compare_with == "interpreted" else f"before ({compare_with})"
    assert sorted(summary) == sorted([before, "now"]), summary.keys()
    assert all(len(fig["samples"]) == repeat for fig in summary.values())
    return [run for fig in summary.values() for run in fig["samples"]]


def source_of(module_name: str) -> Path:
    """A product module's .py file in the checkout, from its name (``sevisflow.processors.normalize.view``):
    when it runs compiled its __file__ is the .so, or, first imported by another compiled module, a path that
    does not exist. The stages' folders are reached through their links in sevisflow/."""
    return (REPO / module_name.replace(".", "/")).with_suffix(".py")
