"""A second processor with the same identity: the newest is active, the other stands by — no fencing loop.

Two real processes (``tests/integration/eos_worker.py`` under the runner, as every stage runs) use
the same ``transactional.id``/``group.instance.id``. Starting B fences A; A becomes a passive standby
(``/ready`` 503 "standby", ``/health`` 200) and never fences B back while B lives. When B is killed
(kill -9) and its group session expires, A takes over. Every input is in the output exactly once and
the per-key state counts have no gap or repeat across both hand-overs.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from sevisflow.deploy.local.stack import free_port
from tests.helpers import http_get
from tests.integration.eos_support import EosWorld, stop

pytestmark = pytest.mark.integration


def _start(kafka_stack, world, port, log_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEVISFLOW_")}
    env.update({"EOS_METRICS_PORT": str(port), "EOS_SESSION_TIMEOUT_MS": "10000", "EOS_STANDBY_CHECK_S": "1"})
    with open(log_path, "w") as log:
        proc = world.start(kafka_stack.bootstrap, env=env, stderr=log)
    proc.log_path = log_path
    return proc


def _until(pred, timeout_s, what, procs=()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        for p in procs:
            assert p.poll() is None, f"a worker exited ({p.returncode}) while waiting for {what}: {_tail(p)}"
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: " + " | ".join(_tail(p) for p in procs))


def _tail(p):
    return p.log_path.read_text()[-2500:]


def _ready(port):
    return http_get(f"http://127.0.0.1:{port}/ready")


def test_a_second_instance_takes_over_and_the_first_stands_by_without_fencing_back(kafka_stack, unique, tmp_path):
    world = EosWorld.create(kafka_stack.bootstrap, "si", unique, keys=6)
    feed, outputs = world.feed, world.outputs

    pa, pb = free_port(), free_port()
    feed(100)
    a = _start(kafka_stack, world, pa, tmp_path / "a.log")
    b = None
    try:
        _until(lambda: len(outputs()) >= 100 and _ready(pa)[0] == 200, 90, "A to process", [a])
        b = _start(kafka_stack, world, pb, tmp_path / "b.log")
        _until(lambda: _ready(pb)[0] == 200 and _ready(pa)[0] == 503, 90, "B active and A standing by", [a, b])
        assert "standby" in _ready(pa)[1]
        assert http_get(f"http://127.0.0.1:{pa}/health")[0] == 200, "a standby is alive"
        feed(100)
        _until(lambda: len(outputs()) >= 200, 60, "B to process", [a, b])
        # no fencing back and forth: for a while, B stays active and A stays standby
        for _ in range(8):
            time.sleep(1)
            assert _ready(pb)[0] == 200 and _ready(pa)[0] == 503
            assert a.poll() is None and b.poll() is None
        b.send_signal(signal.SIGKILL)
        b.wait(10)
        _until(lambda: _ready(pa)[0] == 200, 60, "A to take over after B's session expired", [a])
        feed(100)
        _until(lambda: len(outputs()) >= 300, 60, "A to process again", [a])
        time.sleep(2)  # a duplicate would show up now
        final = outputs()
    finally:
        for p in (a, b):
            stop(p)
    a_log, b_log = (tmp_path / "a.log").read_text(), (tmp_path / "b.log").read_text()
    assert a_log.count('"stage.standby"') == 1, a_log[-3000:]
    assert a_log.count('"stage.taking_over"') == 1, a_log[-3000:]
    assert '"stage.standby"' not in b_log, "the active instance was fenced back"
    assert '"kafka.standby_check_failed"' not in a_log, "the standby must have seen B in the group, not guessed"
    assert a.returncode == 0, a_log[-2000:]
    assert world.n == 300
    world.assert_exactly_once(final)
