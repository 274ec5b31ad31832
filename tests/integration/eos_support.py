"""The exactly-once worker's world (tests/integration/eos_worker.py), shared by the commit-boundary, kill -9,
second-instance and watchdog tests: its topics, an input feeder, the worker process, and the one
check they all make — every input once in the output, per-key counts 1..n without a gap or repeat."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sevisflow.core.config import KafkaSettings
from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_producer, read_topic
from tests.helpers import REPO


@dataclass
class EosWorld:
    """The worker's input, output and state topics and its group, with a producer that feeds the input."""

    kafka: KafkaSettings
    inp: str
    out: str
    state: str
    group: str
    keys: list[bytes]
    sent: Counter = field(default_factory=Counter)  # inputs sent per key
    n: int = 0  # inputs sent (values m0, m1, …)
    producer: Any = None

    @classmethod
    def create(cls, bootstrap: str, prefix: str, unique: str, keys: int, state: bool = True) -> EosWorld:
        kafka = KafkaSettings(bootstrap_servers=bootstrap)
        w = cls(
            kafka,
            f"{prefix}.in.{unique}",
            f"{prefix}.out.{unique}",
            f"{prefix}.state.{unique}",
            f"{prefix}-{unique}",
            [f"k{i}".encode() for i in range(keys)],
        )
        specs = [TopicSpec(w.inp, 2, 1), TopicSpec(w.out, 2, 1)]
        if state:
            specs.append(TopicSpec(w.state, 2, 1, {"cleanup.policy": "compact"}))
        ensure_topics(kafka, specs)
        w.producer = make_producer(kafka)
        return w

    @property
    def names(self) -> tuple[str, str, str, str]:
        return (self.inp, self.out, self.state, self.group)

    def feed(self, count: int) -> None:
        """``count`` more inputs, keys round-robin, acknowledged by Kafka when this returns."""
        for _ in range(count):
            key = self.keys[self.n % len(self.keys)]
            self.sent[key] += 1
            self.producer.produce(self.inp, key=key, value=f"m{self.n}".encode())
            self.n += 1
        assert self.producer.flush(30) == 0

    def outputs(self) -> list[Any]:
        return list(read_topic(self.kafka, self.out))

    def start(
        self, bootstrap: str, env: dict[str, str] | None = None, stderr: Any = subprocess.PIPE
    ) -> subprocess.Popen:
        """``python -m tests.integration.eos_worker`` on this world (``env``: the whole environment, or inherit)."""
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration.eos_worker", bootstrap, *self.names],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )

    def assert_exactly_once(self, outputs: list[Any]) -> None:
        """Every input once in ``outputs`` and, per key, the state's counts 1..n: nothing lost, nothing twice."""
        originals = Counter(m.value().split(b"#")[0] for m in outputs)
        assert len(outputs) == self.n, f"expected {self.n} outputs, got {len(outputs)} (lost or duplicated)"
        assert set(originals) == {f"m{i}".encode() for i in range(self.n)}, "an input was lost"
        assert all(c == 1 for c in originals.values()), "an input was written twice"
        per_key: dict[bytes, list[int]] = {}
        for m in outputs:
            per_key.setdefault(m.key(), []).append(int(m.value().split(b"#")[1]))
        for key, counts in per_key.items():
            assert counts == list(range(1, self.sent[key] + 1)), (key, counts)


def stop(proc: subprocess.Popen | None, timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL if it does not end within ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
