"""What the Kafka-backed bench suites share: a Kafka to run against, given or started for the run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def kafka_bootstrap(given: str | None, name: str) -> Iterator[str]:
    """``given`` when set (a running Kafka), else a throwaway local Kafka named ``name`` (deploy/local/stack.py,
    the tests' stack, without PostgreSQL), stopped and removed when the block ends."""
    if given:
        yield given
        return
    from sevisflow.deploy.local.stack import start_stack, stop_stack

    info = start_stack(name=name, postgres=False, progress=lambda *_: None)
    try:
        yield info.kafka.bootstrap
    finally:
        stop_stack(info, remove=True)
