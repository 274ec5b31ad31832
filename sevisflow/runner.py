"""Run several stages in one process (``sevisflow run``, and the demo), each in its own thread.

In production every stage is its own process (``sevisflow connector run``, ``sevisflow process …``,
``sevisflow sink …``); a small school can run them all together. Each stage is a function
``run(settings, stop_event)`` that returns when ``stop_event`` is set. If one stage fails, the
others are stopped too and the failure is reported, so a half-running pipeline never hides.
"""

from __future__ import annotations

import importlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from sevisflow.config import Settings
from sevisflow.log import get_logger
from sevisflow.observability import serve_for

log = get_logger(__name__)

STAGES: dict[str, str] = {
    "connector": "connectors.postgres:run_connector",
    "normalize": "processors.normalize:run",
    "events": "processors.sevis_events:run",
    "batcher": "processors.batcher:run",
    "sink-xml": "sinks.xml:run",
    "sink-sevis": "sinks.sevis:run",
}


def stage_function(name: str) -> Callable[[Settings, threading.Event], None]:
    module, _, attr = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


@dataclass
class StageThread:
    name: str
    thread: threading.Thread
    error: BaseException | None = None


@dataclass
class Pipeline:
    """A set of stages running in threads of this process."""

    settings: Settings
    names: list[str]
    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[StageThread] = field(default_factory=list)
    server: Any = None

    def start(self) -> "Pipeline":
        self.server = serve_for(self.settings.metrics.port, self.settings.metrics.host)
        for name in self.names:
            fn = stage_function(name)
            holder = StageThread(name, threading.Thread())
            holder.thread = threading.Thread(target=self._guard, args=(holder, fn), name=f"stage-{name}", daemon=True)
            self.threads.append(holder)
            holder.thread.start()
            log.info("stage.started", stage=name)
        return self

    def _guard(self, holder: StageThread, fn: Callable[[Settings, threading.Event], None]) -> None:
        try:
            fn(self.settings, self.stop_event)
        except BaseException as exc:  # noqa: BLE001 - reported by failed()/stop()
            holder.error = exc
            log.error("stage.failed", stage=holder.name, error=repr(exc))
            self.stop_event.set()

    def failed(self) -> list[StageThread]:
        return [t for t in self.threads if t.error is not None]

    def stop(self, timeout_s: float = 30.0) -> list[StageThread]:
        """Ask every stage to finish, wait at most ``timeout_s`` in all; return the failed ones."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.thread.join(max(0.0, deadline - time.monotonic()))
            if t.thread.is_alive():
                log.warning("stage.stop_timeout", stage=t.name)
        if self.server:
            self.server.stop()
            self.server = None
        return self.failed()
