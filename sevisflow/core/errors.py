"""Error classes, each classified once as expected (the user can fix it) or not.

The CLI maps :class:`SevisflowError` subclasses to exit code 1 with their message,
anything else to exit code 2. Adapters translate third-party errors (psycopg
SQLSTATEs, Kafka error codes, HTTP statuses) into :class:`TransientError` (retry
with backoff) or :class:`TerminalError` (stop and tell the operator) exactly once,
at the edge, so the retry decision lives in one place.
"""

from __future__ import annotations


class SevisflowError(Exception):
    """An expected failure with a message that names the thing and the fix."""


class ConfigError(SevisflowError):
    """A setting is missing, unknown or has a bad value."""


class StackError(SevisflowError):
    """The local stack could not start a service; says which step and shows its log tail."""

    def __init__(self, step: str, detail: str, log_tail: str = "") -> None:
        self.step = step
        self.log_tail = log_tail
        msg = f"local stack: {step} failed: {detail}"
        if log_tail:
            msg += "\n--- last lines of the log ---\n" + log_tail
        super().__init__(msg)


class TransientError(SevisflowError):
    """Retrying later may succeed (network, broker unavailable, SEVIS S0001)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TerminalError(SevisflowError):
    """Retrying will not help until someone changes something (auth, privileges, config)."""


class UnreachableError(TransientError):
    """Kafka or PostgreSQL cannot be reached; the CLI says so plainly."""
