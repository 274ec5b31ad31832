"""Every PostgreSQL / Kafka failure of the connector is classified here, once.

:func:`classify` maps an exception to :class:`~sevisflow.core.errors.TransientError` (the task is
restarted from the slot after a backoff: nothing is lost because nothing unacknowledged was
confirmed) or :class:`~sevisflow.core.errors.TerminalError` (an operator must change something).
The decision is by SQLSTATE class, like Debezium's PostgresErrorHandler:

* ``08`` connection exception, ``57P01-03`` server shutting down / starting, no SQLSTATE at all
  (socket closed, connection refused), ``55006`` slot in use (bounded by slot.max.retries),
  ``40001``/``40P01`` serialization failure / deadlock → transient;
* ``28`` authentication, ``42501`` missing privilege, ``3D000`` no such database, ``42704``
  undefined object, ``53`` out of resources (e.g. max_replication_slots), ``55000`` object not in
  prerequisite state (e.g. wal_level), anything else → terminal.
"""

from __future__ import annotations

import psycopg
from confluent_kafka import KafkaError, KafkaException

from sevisflow.core.errors import SevisflowError, TerminalError, TransientError

TRANSIENT_SQLSTATES = {"55006", "57P01", "57P02", "57P03", "40001", "40P01", "53300"}


class SlotInUseError(TransientError):
    """The replication slot is active for another process (pid in the message)."""


def classify(exc: BaseException, what: str) -> SevisflowError:
    """The connector's error for ``exc`` raised while doing ``what`` (no row values in the message)."""
    if isinstance(exc, SevisflowError):
        return exc
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        first = (str(exc).strip().splitlines() or [""])[0]
        msg = f"PostgreSQL: {what} failed: {first}" + (f" (SQLSTATE {state})" if state else "")
        if state == "55006":
            return SlotInUseError(msg, retry_after_s=2.0)
        if not state or state.startswith("08") or state in TRANSIENT_SQLSTATES:
            return TransientError(msg, retry_after_s=1.0)
        if state.startswith("28"):
            return TerminalError(msg + " — check database.user / database.password")
        if state == "42501":
            return TerminalError(
                msg + " — the user needs REPLICATION (or superuser), SELECT on the captured "
                "tables, and ownership of the tables or CREATE on the database to manage the publication"
            )
        return TerminalError(msg)
    if isinstance(exc, KafkaException):
        err: KafkaError = exc.args[0]
        msg = f"Kafka: {what} failed: {err.str()}"
        if err.fatal() and not err.retriable():
            return TransientError(msg + " (producer will be recreated)", retry_after_s=2.0)
        return TransientError(msg, retry_after_s=1.0)
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return TransientError(f"{what} failed: {exc}", retry_after_s=1.0)
    return TerminalError(f"{what} failed unexpectedly: {type(exc).__name__}: {exc}")
