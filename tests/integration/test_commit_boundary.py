"""The Kafka commit boundary: a processor that dies just before or just after its transaction's
``send_offsets_to_transaction`` / ``commit_transaction`` loses and duplicates nothing.

A real processor process (``tests/integration/eos_worker.py``: copy + a per-key count in state) is
armed with ``SEVISFLOW_CRASH_AT=<point>:<nth>`` (``tests/crashing.py``), so it ends itself with
exit code 137, like ``kill -9``, exactly at that boundary; the next process restores its state from
the changelog and goes on. The end state is compared with the pure expectation: every input once
in the output, per-key counts 1..n (a lost or replayed state write shows as a gap or a repeat).
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.crashing import ENV_VAR, EXIT_CODE
from tests.integration.eos_support import EosWorld, stop

pytestmark = pytest.mark.integration

CRASHES = [
    ("kafka.before_send_offsets", 2),
    ("kafka.before_commit", 2),
    ("kafka.after_commit", 2),
    ("kafka.before_commit", 1),
    ("kafka.after_commit", 1),
    ("kafka.before_send_offsets", 1),
]


def test_crash_just_before_and_after_each_commit_step_loses_and_duplicates_nothing(kafka_stack, unique):
    crash_at_each_commit_step(kafka_stack, EosWorld.create(kafka_stack.bootstrap, "cb", unique, keys=7), {})


def test_records_held_back_for_produce_order_are_neither_lost_nor_doubled_by_a_crash(kafka_stack, unique):
    """With a reorder window larger than a batch (sevisflow/core/source_order.py), records fetched but held
    back are in no transaction yet: a crash on either side of a commit must leave them to the next process,
    which fetches them again from the committed offsets."""
    world = EosWorld.create(kafka_stack.bootstrap, "cbw", unique, keys=7)
    # a record weighs ~7 bytes (key "k3", value "m123"): ~60 held, more than a batch of 50
    crash_at_each_commit_step(kafka_stack, world, {"EOS_REORDER_WINDOW_BYTES": "420"})


def crash_at_each_commit_step(kafka_stack, world: EosWorld, extra_env: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR} | extra_env
    crashed = []
    for point, nth in CRASHES:
        world.feed(120)  # more than one batch of 50 per partition: the nth transaction has records
        proc = world.start(kafka_stack.bootstrap, env={**env, ENV_VAR: f"{point}:{nth}"})
        try:
            rc = proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(
                f"the worker armed at {point}:{nth} did not reach it: {proc.stderr.read()[-2000:]}"
            ) from None
        err = proc.stderr.read().decode()
        assert rc == EXIT_CODE, f"{point}:{nth}: exit {rc}\n{err[-2000:]}"
        assert f'"point":"{point}"' in err, err[-1000:]
        crashed.append(point)

    world.feed(60)
    proc = world.start(kafka_stack.bootstrap, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(world.outputs()) < world.n:
            time.sleep(1)
        time.sleep(2)  # a duplicate would show up now
        outputs = world.outputs()
    finally:
        stop(proc)
    assert crashed == [p for p, _ in CRASHES]
    world.assert_exactly_once(outputs)
