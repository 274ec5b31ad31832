"""The exactly-once loop every processor runs in: kill -9 at random moments loses and duplicates nothing."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.integration.eos_support import EosWorld, stop

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_kill_minus_9_loses_and_duplicates_nothing(kafka_stack, unique, backend, tmp_path):
    """With either state store: the RocksDB folder a killed worker leaves is never trusted (the next
    worker wipes it and replays the changelog), and the state still counts every input exactly once."""
    state_dir = tmp_path / "state" if backend == "rocksdb" else None
    env = dict(os.environ, EOS_STATE_DIR=str(state_dir)) if state_dir else None
    world = EosWorld.create(kafka_stack.bootstrap, "eos", unique, keys=20)
    total = 3000
    rng = random.Random(42)

    worker = world.start(kafka_stack.bootstrap, env=env)
    kills = 0
    try:
        for _ in range(total // 300):
            world.feed(300)
            time.sleep(rng.uniform(0.2, 1.2))
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            kills += 1
            worker = world.start(kafka_stack.bootstrap, env=env)
        deadline = time.monotonic() + 120
        outputs = []
        while time.monotonic() < deadline:
            outputs = world.outputs()
            if len(outputs) >= total:
                break
            time.sleep(1)
    finally:
        stop(worker, 20)
    assert kills == total // 300
    world.assert_exactly_once(outputs)  # the state survived every crash: per key, counts 1..n
    if state_dir is not None:
        # the killed workers' folders were swept by their successors; the last one removed its own on exit
        assert worker.returncode == 0 and list(state_dir.iterdir()) == []
