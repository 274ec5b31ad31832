"""The exactly-once loop every processor runs in: kill -9 at random moments loses and duplicates nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from sevisflow.core.config import KafkaSettings
from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_producer, read_topic
from tests.helpers import REPO

pytestmark = pytest.mark.integration


def _start(kafka_stack, inp, out, state, group, state_dir=None):
    env = dict(os.environ, EOS_STATE_DIR=str(state_dir)) if state_dir else None
    return subprocess.Popen([sys.executable, "-m", "tests.integration.eos_worker", kafka_stack.bootstrap,
                             inp, out, state, group], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_kill_minus_9_loses_and_duplicates_nothing(kafka_stack, unique, backend, tmp_path):
    """With either state store: the RocksDB folder a killed worker leaves is never trusted (the next
    worker wipes it and replays the changelog), and the state still counts every input exactly once."""
    state_dir = tmp_path / "state" if backend == "rocksdb" else None
    kafka = KafkaSettings(bootstrap_servers=kafka_stack.bootstrap)
    inp, out, state, group = f"eos.in.{unique}", f"eos.out.{unique}", f"eos.state.{unique}", f"eos-{unique}"
    ensure_topics(kafka, [TopicSpec(inp, 2, 1), TopicSpec(out, 2, 1),
                          TopicSpec(state, 2, 1, {"cleanup.policy": "compact"})])
    producer = make_producer(kafka)
    keys = [f"student-{i}".encode() for i in range(20)]
    total = 3000
    rng = random.Random(42)
    sent = Counter()

    worker = _start(kafka_stack, inp, out, state, group, state_dir)
    kills = 0
    try:
        for i in range(total):
            key = keys[i % len(keys)]
            sent[key] += 1
            producer.produce(inp, key=key, value=f"m{i}".encode())
            if i % 300 == 299:
                producer.flush(30)
                time.sleep(rng.uniform(0.2, 1.2))
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)
                kills += 1
                worker = _start(kafka_stack, inp, out, state, group, state_dir)
        producer.flush(30)
        deadline = time.monotonic() + 120
        outputs = []
        while time.monotonic() < deadline:
            outputs = list(read_topic(kafka, out))
            if len(outputs) >= total:
                break
            time.sleep(1)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
    values = [m.value() for m in outputs]
    originals = Counter(v.split(b"#")[0] for v in values)
    assert kills == total // 300
    assert len(values) == total, f"expected {total} outputs, got {len(values)}"
    assert all(n == 1 for n in originals.values()), "an input was written twice"
    # the state survived every crash: per key the counts run 1..n without a gap or repeat
    per_key = {}
    for m in outputs:
        per_key.setdefault(m.key(), []).append(int(m.value().split(b"#")[1]))
    for key, counts in per_key.items():
        assert counts == list(range(1, sent[key] + 1)), key
    if state_dir is not None:
        # the killed workers' folders were swept by their successors; the last one removed its own on exit
        assert worker.returncode == 0 and list(state_dir.iterdir()) == []
