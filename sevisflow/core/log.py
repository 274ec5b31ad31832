"""Structured, PII-free logging.

Every log line is one JSON object: ``{"ts":…, "level":…, "logger":…, "event":…, …fields}``.
Callers pass an event name and identifiers only (student key, topic, offset, counts),
never row values: names, birth dates and passport numbers stay out of logs.
:func:`get_logger` returns a small adapter with ``info(event, **fields)``.

Exceptions are logged by class and frames only (:func:`safe_traceback`): an exception's message
may quote the record being processed, so it is left out unless it is about a setting.
:func:`get_status_logger` is for start-up and progress lines: they show at the default level
(WARNING) too, so a healthy long-running command is never silent.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from typing import Any

import orjson

_CONFIGURED = False
STATUS_LOGGER = "sevisflow.status"
"""The logger of start-up and progress lines (see :func:`get_status_logger`)."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            payload.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            payload.setdefault("error", type(record.exc_info[1]).__name__)
            payload["traceback"] = safe_traceback(record.exc_info[1])
        return orjson.dumps(payload, default=str).decode()


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (a replaced or closed stream of the
    moment ``configure`` ran would lose the record, or fail with "I/O operation on closed file")."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure(level: str = "INFO", stream: Any = None) -> None:
    """Install the JSON formatter on the root logger once (idempotent)."""
    global _CONFIGURED
    root = logging.getLogger()
    if _CONFIGURED:
        root.setLevel(level)
        _set_status_level()
        return
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderr()
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level)
    _set_status_level()
    _CONFIGURED = True


def _set_status_level() -> None:
    """Status lines at INFO while the root shows WARNING or more; quiet when ERROR or less is asked for."""
    root_level = logging.getLogger().level
    logging.getLogger(STATUS_LOGGER).setLevel(
        min(logging.INFO, root_level) if root_level <= logging.WARNING else root_level
    )


class StructLogger:
    """``log.info("batch.closed", batch_id=…, records=…)``: an event name plus fields."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, exc_info: bool = False, **fields: Any) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, **fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info=exc_info, **fields)


def get_logger(name: str) -> StructLogger:
    return StructLogger(name)


def get_status_logger() -> StructLogger:
    """The logger of start-up and progress lines (``info``): shown at the default log level."""
    return StructLogger(STATUS_LOGGER)


def safe_message(exc: BaseException) -> str | None:
    """The exception's message when it cannot quote record values (it is about a setting), else None.

    A class may vouch for its messages with ``pii_free_message = True`` (e.g. a certificate error
    that names a file and the setting)."""
    from sevisflow.core.errors import ConfigError

    if isinstance(exc, ConfigError) or getattr(type(exc), "pii_free_message", False):
        return str(exc)
    return None


def safe_traceback(exc: BaseException, limit: int = 40) -> str:
    """The traceback of ``exc`` and its causes: every frame (file, line, function, source line) and
    exception class, but no message (unless :func:`safe_message` allows it).

    A message may quote the record being processed — a name, a birth date, a passport number —
    while the classes and frames are enough to find the bug."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 10:
        seen.add(id(cur))
        frames = traceback.extract_tb(cur.__traceback__, limit=limit)
        lines = [
            f'  File "{f.filename}", line {f.lineno}, in {f.name}' + (f"\n    {f.line}" if f.line else "")
            for f in frames
        ]
        msg = safe_message(cur)
        name = f"{type(cur).__module__}.{type(cur).__qualname__}".removeprefix("builtins.")
        tail = f": {msg}" if msg is not None else " (message left out: it may quote record values)"
        parts.append("\n".join(["Traceback (most recent call last):", *lines, name + tail]))
        nxt = cur.__cause__ if cur.__cause__ is not None else (None if cur.__suppress_context__ else cur.__context__)
        if nxt is not None:
            parts.append(
                "The above exception was the direct cause of the following exception:"
                if cur.__cause__ is not None
                else "During handling of the above exception, another exception occurred:"
            )
        cur = nxt
    return "\n\n".join(reversed(parts))
