"""Session fixtures: one real local stack (Kafka + PostgreSQL) per test session.

Services start lazily, the first time a test asks for them, and stop when the
session ends; unit tests that ask for neither start nothing. PostgreSQL runs in
an odd time zone (Pacific/Pago_Pago, UTC-11) so time-zone bugs show up.
Set SEVISFLOW_TEST_KAFKA / SEVISFLOW_TEST_PG_DSN to reuse services you started
yourself (e.g. `sevisflow stack up`) while iterating.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sevisflow.deploy.local.stack import ensure_os_user, start_stack, stop_stack
from tests.helpers import REPO, KafkaHandle, PgHandle

# The support modules are plain modules (not test modules): have pytest rewrite their asserts too, so a
# failing helper assert reports its values like one in the test that calls it.
pytest.register_assert_rewrite(
    "tests.audit_scenario",
    "tests.batcher_support",
    "tests.pipeline_support",
    "tests.upload_support",
    "tests.integration.connector_support",
)

PG_TIMEZONE = "Pacific/Pago_Pago"


@pytest.fixture(scope="session")
def _stack_dir() -> Iterator[Path]:
    # not pytest's tmp_path: that lives under a 0700 root folder the PostgreSQL user cannot enter
    root = REPO / ".local" / "stacks"
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="pytest-", dir=root))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _checkout_lock(name: str) -> Iterator[None]:
    """One test process of this checkout at a time (e.g. pytest-xdist's workers) inside the block."""
    import fcntl

    path = REPO / ".local" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def pg_stack(_stack_dir: Path) -> Iterator[PgHandle]:
    """A real PostgreSQL 15+ with wal_level=logical and a database ``sis``."""
    if os.environ.get("SEVISFLOW_TEST_PG_DSN"):
        dsn = os.environ["SEVISFLOW_TEST_PG_DSN"]
        port = int(dict(p.split("=", 1) for p in dsn.split())["port"])
        yield PgHandle(dsn=dsn, port=port)
        return
    with _checkout_lock("pg-os-user"):  # test processes started together (pytest -n) create it once
        ensure_os_user()
    info = start_stack(
        name="pytest-pg", base=_stack_dir / "pg", kafka=False, pg_timezone=PG_TIMEZONE, progress=lambda *_: None
    )
    assert info.postgres is not None
    try:
        yield PgHandle(dsn=info.postgres.dsn, port=info.postgres.port)
    finally:
        stop_stack(info, remove=True)


@pytest.fixture(scope="session")
def kafka_stack(_stack_dir: Path) -> Iterator[KafkaHandle]:
    """A real single-node Apache Kafka (KRaft) that supports transactions."""
    if os.environ.get("SEVISFLOW_TEST_KAFKA"):
        yield KafkaHandle(bootstrap=os.environ["SEVISFLOW_TEST_KAFKA"])
        return
    info = start_stack(name="pytest-kafka", base=_stack_dir / "kafka", postgres=False, progress=lambda *_: None)
    assert info.kafka is not None
    try:
        yield KafkaHandle(bootstrap=info.kafka.bootstrap)
    finally:
        stop_stack(info, remove=True)


@pytest.fixture(scope="session")
def sevisflow_wheel() -> Path:
    """sevisflow's wheel, built once per session from what a clone of the sources holds (cached by their
    content across sessions; tests/wheel_support.py)."""
    from tests.wheel_support import build_wheel

    return build_wheel()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for per-test topics, groups, slots and databases."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def fresh_db(pg_stack: PgHandle, unique: str) -> Iterator[PgHandle]:
    """A new empty database in the session's PostgreSQL, dropped after the test."""
    import psycopg

    name = f"t_{unique}"
    with psycopg.connect(pg_stack.dsn_for("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    handle = PgHandle(dsn=pg_stack.dsn_for(name), port=pg_stack.port, dbname=name)
    try:
        yield handle
    finally:
        with psycopg.connect(pg_stack.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE database = %s AND NOT active",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
