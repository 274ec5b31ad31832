"""The Kafka commit boundary: a processor that dies just before or just after its transaction's
``send_offsets_to_transaction`` / ``commit_transaction`` loses and duplicates nothing.

A real processor process (``tests/integration/eos_worker.py``: copy + a per-key count in state) is
armed with ``SEVISFLOW_CRASH_AT=<point>:<nth>`` (``sevisflow/core/faults.py``), so it ends itself with
exit code 137, like ``kill -9``, exactly at that boundary; the next process restores its state from
the changelog and goes on. The end state is compared with the pure expectation: every input once
in the output, per-key counts 1..n (a lost or replayed state write shows as a gap or a repeat).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from sevisflow.core.config import KafkaSettings
from sevisflow.core.faults import ENV_VAR, EXIT_CODE
from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_producer, read_topic
from tests.helpers import REPO

pytestmark = pytest.mark.integration

CRASHES = [("kafka.before_send_offsets", 2), ("kafka.before_commit", 2), ("kafka.after_commit", 2),
           ("kafka.before_commit", 1), ("kafka.after_commit", 1), ("kafka.before_send_offsets", 1)]


def _worker(kafka_stack, names, crash_at=None):
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if crash_at:
        env[ENV_VAR] = crash_at
    return subprocess.Popen([sys.executable, "-m", "tests.integration.eos_worker", kafka_stack.bootstrap, *names],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_crash_just_before_and_after_each_commit_step_loses_and_duplicates_nothing(kafka_stack, unique):
    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap)
    inp, out, state, group = f"cb.in.{unique}", f"cb.out.{unique}", f"cb.state.{unique}", f"cb-{unique}"
    ensure_topics(kafka, [TopicSpec(inp, 2, 1), TopicSpec(out, 2, 1),
                          TopicSpec(state, 2, 1, {"cleanup.policy": "compact"})])
    names = (inp, out, state, group)
    producer = make_producer(kafka)
    keys = [f"student-{i}".encode() for i in range(7)]
    sent: Counter = Counter()
    n = 0

    def feed(count: int) -> None:
        nonlocal n
        for _ in range(count):
            key = keys[n % len(keys)]
            sent[key] += 1
            producer.produce(inp, key=key, value=f"m{n}".encode())
            n += 1
        assert producer.flush(30) == 0

    crashed = []
    for point, nth in CRASHES:
        feed(120)  # more than one batch of 50 per partition: the nth transaction has records
        proc = _worker(kafka_stack, names, f"{point}:{nth}")
        try:
            rc = proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"the worker armed at {point}:{nth} did not reach it: {proc.stderr.read()[-2000:]}")
        err = proc.stderr.read()
        assert rc == EXIT_CODE, f"{point}:{nth}: exit {rc}\n{err[-2000:]}"
        assert f'"point":"{point}"' in err, err[-1000:]
        crashed.append(point)

    feed(60)
    total = n
    proc = _worker(kafka_stack, names)
    try:
        deadline = time.monotonic() + 120
        outputs: list = []
        while time.monotonic() < deadline:
            outputs = list(read_topic(kafka, out))
            if len(outputs) >= total:
                break
            time.sleep(1)
        time.sleep(2)  # a duplicate would show up now
        outputs = list(read_topic(kafka, out))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert crashed == [p for p, _ in CRASHES]
    originals = Counter(m.value().split(b"#")[0] for m in outputs)
    assert len(outputs) == total, f"expected {total} outputs, got {len(outputs)} (lost or duplicated)"
    assert set(originals) == {f"m{i}".encode() for i in range(total)}, "an input was lost"
    assert all(c == 1 for c in originals.values()), "an input was written twice"
    per_key: dict = {}
    for m in outputs:
        per_key.setdefault(m.key(), []).append(int(m.value().split(b"#")[1]))
    for key, counts in per_key.items():
        assert counts == list(range(1, sent[key] + 1)), (key, counts)
