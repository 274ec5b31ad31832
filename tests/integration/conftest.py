"""Fixtures shared by integration test modules (pytest finds them here; no imports needed).

The session fixtures of the real stack (kafka_stack, pg_stack, fresh_db, unique) are in tests/conftest.py.
"""

from __future__ import annotations

import pytest

from sevisflow.sinks.sevis_sim import SevisSimulator
from tests.batcher_support import batcher_settings, setup_topics
from tests.helpers import XSD_DIR


@pytest.fixture
def no_log_handler_swap(monkeypatch):
    """cli.main() installs a log handler on the (captured) stderr of the moment; keep pytest's instead.

    Not autouse: a module that calls the CLI in-process opts in with
    ``pytest.mark.usefixtures("no_log_handler_swap")`` in its pytestmark."""
    monkeypatch.setattr("sevisflow.core.log.configure", lambda *a, **k: None)


@pytest.fixture
def env(kafka_stack, unique):
    """Settings of a per-test batcher (org ORG, America/Chicago) whose topics exist."""
    settings = batcher_settings(kafka_stack, unique)
    setup_topics(settings)
    return settings


@pytest.fixture
def sim(tmp_path):
    """A SEVIS batch simulator (HTTPS, client certificates) that knows SEVIS ID N0000000002."""
    s = SevisSimulator(tmp_path / "certs", XSD_DIR, known_sevis_ids=["N0000000002"])
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def kafka_cluster():
    """One three-node KRaft cluster per session (replication factor 3, min.insync.replicas 2 for the
    internal topics), shared by the tests that kill a broker: each restarts the node it killed
    (``deploy.local.cluster.restart_node``) before it ends, so the next finds three nodes again."""
    from sevisflow.deploy.local.stack import start_stack, stop_stack
    from tests.helpers import REPO

    (REPO / ".local" / "stacks").mkdir(parents=True, exist_ok=True)
    info = start_stack(name="pytest-cluster", postgres=False, kafka_brokers=3, progress=lambda *_: None)
    assert info.kafka is not None and len(info.kafka.nodes) == 3
    try:
        yield info.kafka
    finally:
        stop_stack(info, remove=True)


@pytest.fixture(scope="session")
def secure_stack():
    """One Kafka per session that requires TLS + SASL/SCRAM and authorizes every request (KRaft's
    StandardAuthorizer): the operator is a super user (``info.env()``), every principal of the ACL
    model has its own SCRAM user (``info.kafka.kafka_settings(user)``). Tests apply the ACLs of their
    own topic names with ``sevisflow.deploy.local.stack.apply_stack_acls``."""
    from sevisflow.deploy.local.stack import start_stack, stop_stack
    from tests.helpers import REPO

    (REPO / ".local" / "stacks").mkdir(parents=True, exist_ok=True)
    info = start_stack(name="pytest-secure", postgres=False, kafka_security="sasl_ssl", progress=lambda *_: None)
    try:
        yield info
    finally:
        stop_stack(info, remove=True)
