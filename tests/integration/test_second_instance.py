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
import subprocess
import sys
import time
from collections import Counter

import pytest

from sevisflow.deploy.local.stack import free_port
from sevisflow.core.config import KafkaSettings
from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_producer, read_topic
from tests.helpers import REPO, http_get

pytestmark = pytest.mark.integration


def _start(kafka_stack, names, port, log_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEVISFLOW_")}
    env.update({"EOS_METRICS_PORT": str(port), "EOS_SESSION_TIMEOUT_MS": "10000", "EOS_STANDBY_CHECK_S": "1"})
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.integration.eos_worker", kafka_stack.bootstrap,
                                 *names], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
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
    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap)
    inp, out, state, group = f"si.in.{unique}", f"si.out.{unique}", f"si.state.{unique}", f"si-{unique}"
    ensure_topics(kafka, [TopicSpec(inp, 2, 1), TopicSpec(out, 2, 1),
                          TopicSpec(state, 2, 1, {"cleanup.policy": "compact"})])
    names = (inp, out, state, group)
    producer = make_producer(kafka)
    keys = [f"k{i}".encode() for i in range(6)]
    sent: Counter = Counter()
    n = 0

    def feed(count):
        nonlocal n
        for _ in range(count):
            sent[keys[n % len(keys)]] += 1
            producer.produce(inp, key=keys[n % len(keys)], value=f"m{n}".encode())
            n += 1
        assert producer.flush(30) == 0

    def outputs():
        return list(read_topic(kafka, out))

    pa, pb = free_port(), free_port()
    feed(100)
    a = _start(kafka_stack, names, pa, tmp_path / "a.log")
    b = None
    try:
        _until(lambda: len(outputs()) >= 100 and _ready(pa)[0] == 200, 90, "A to process", [a])
        b = _start(kafka_stack, names, pb, tmp_path / "b.log")
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
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    a_log, b_log = (tmp_path / "a.log").read_text(), (tmp_path / "b.log").read_text()
    assert a_log.count('"stage.standby"') == 1, a_log[-3000:]
    assert a_log.count('"stage.taking_over"') == 1, a_log[-3000:]
    assert '"stage.standby"' not in b_log, "the active instance was fenced back"
    assert '"kafka.standby_check_failed"' not in a_log, "the standby must have seen B in the group, not guessed"
    assert a.returncode == 0, a_log[-2000:]
    originals = Counter(m.value().split(b"#")[0] for m in final)
    assert len(final) == 300 and set(originals) == {f"m{i}".encode() for i in range(300)}
    assert all(c == 1 for c in originals.values()), "an input was written twice"
    per_key: dict = {}
    for m in final:
        per_key.setdefault(m.key(), []).append(int(m.value().split(b"#")[1]))
    for key, counts in per_key.items():
        assert counts == list(range(1, sent[key] + 1)), (key, counts)
