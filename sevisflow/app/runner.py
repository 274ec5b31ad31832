"""Run several stages in one process (``sevisflow run``, and the demo), each in its own thread.

In production every stage is its own process (``sevisflow connector run``, ``sevisflow process …``,
``sevisflow sink …``); a small school can run them all together. Each stage is a function
``run(settings, stop_event)`` that returns when ``stop_event`` is set.

A stage that raises :class:`~sevisflow.core.errors.TransientError` (``UnreachableError`` included: Kafka
or PostgreSQL cannot be reached, a broker died, a transaction timed out) is started again after a
backoff (``restart_base_s`` doubling up to ``restart_max_s``, at least the error's ``retry_after_s``),
and each restart is logged as ``stage.restarting`` with the stage name and the error *class* only
(messages may quote data). A stage that ran for ``restart_reset_s`` without failing starts its
backoff from the beginning again. Any other error (``TerminalError``, a bug) stops the others too
and is reported, so a half-running pipeline never hides: until the process ends, ``/health`` is
false and names the failed stage.

Second instance with the same identity: a stage whose loop raises
:class:`~sevisflow.core.kafka_io.InstanceFenced` (another process started with the same
``transactional.id``/``group.instance.id`` and fenced it) becomes a **passive standby**: it is
not restarted at once (that would fence the other back, and so on), ``/ready`` says
``standby`` (``/health`` stays true), and every ``standby_check_s`` it asks the group whether a
member with its identity is still there; only when none is (the active one stopped or died and its
session timed out) does it start again and take over. So the newest instance is the active one,
and two instances never fence each other in a loop.
"""

from __future__ import annotations

import importlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from sevisflow.core.config import Settings
from sevisflow.core.errors import TransientError
from sevisflow.core.kafka_io import InstanceFenced
from sevisflow.core.log import get_logger
from sevisflow.core.observability import register_probe, serve_for, unregister_probe

log = get_logger(__name__)

STAGES: dict[str, str] = {
    "connector": "sevisflow.connectors.postgres:run_connector",
    "normalize": "sevisflow.processors.normalize:run",
    "events": "sevisflow.processors.sevis_events:run",
    "batcher": "sevisflow.processors.batcher:run",
    "sink-xml": "sevisflow.sinks.xml:run",
    "sink-sevis": "sevisflow.sinks.sevis:run",
}


def stage_function(name: str) -> Callable[[Settings, threading.Event], None]:
    module, _, attr = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


@dataclass
class StageThread:
    name: str
    thread: threading.Thread
    error: BaseException | None = None
    restarts: int = 0
    """How often the stage was started again after a transient error."""
    last_transient: str | None = None
    """Class name of the last transient error the stage was restarted after."""
    standbys: int = 0
    """How often the stage was fenced by another instance of the same identity and stood by."""
    standby: bool = False
    """True while the stage waits as a passive standby."""


@dataclass
class Pipeline:
    """A set of stages running in threads of this process."""

    settings: Settings
    names: list[str]
    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[StageThread] = field(default_factory=list)
    server: Any = None
    restart_base_s: float = 1.0
    restart_max_s: float = 30.0
    restart_reset_s: float = 120.0
    standby_check_s: float = 15.0
    """How often a standby stage asks whether the active instance of its identity is gone."""
    functions: dict[str, Callable[[Settings, threading.Event], None]] = field(default_factory=dict)
    """Stage functions by name instead of :data:`STAGES` (tests)."""
    serve_metrics: bool = True

    def start(self) -> "Pipeline":
        if self.serve_metrics:
            self.server = serve_for(self.settings.metrics.port, self.settings.metrics.host)
        for name in self.names:
            fn = self.functions.get(name) or stage_function(name)
            holder = StageThread(name, threading.Thread())
            holder.thread = threading.Thread(target=self._guard, args=(holder, fn), name=f"stage-{name}", daemon=True)
            self.threads.append(holder)
            holder.thread.start()
            log.info("stage.started", stage=name)
        return self

    def _guard(self, holder: StageThread, fn: Callable[[Settings, threading.Event], None]) -> None:
        attempt = 0
        while True:
            began = time.monotonic()
            try:
                fn(self.settings, self.stop_event)
                return
            except InstanceFenced as exc:
                if self.stop_event.is_set() or not self._stand_by(holder, exc):
                    return
                attempt = 0
            except TransientError as exc:
                if self.stop_event.is_set():
                    log.info("stage.stopped_after_error", stage=holder.name, error=type(exc).__name__)
                    return
                attempt = 1 if time.monotonic() - began >= self.restart_reset_s else attempt + 1
                delay = self.backoff_s(attempt, exc.retry_after_s)
                holder.restarts += 1
                holder.last_transient = type(exc).__name__
                log.warning("stage.restarting", stage=holder.name, error=type(exc).__name__, attempt=attempt,
                            restarts=holder.restarts, backoff_s=round(delay, 2))
                if self.stop_event.wait(delay):
                    return
            except BaseException as exc:  # noqa: BLE001 - reported by failed()/stop()
                holder.error = exc
                log.error("stage.failed", stage=holder.name, error=type(exc).__name__, detail=str(exc)[:500])
                why = f"stage {holder.name} failed: {type(exc).__name__}"
                register_probe(f"stage:{holder.name}", lambda: (False, why), lambda: (False, why))
                self.stop_event.set()
                return

    def _stand_by(self, holder: StageThread, fenced: InstanceFenced) -> bool:
        """Wait, passive, until no live member holds the stage's identity; False when asked to stop."""
        holder.standbys += 1
        holder.standby = True
        probe = f"stage:{holder.name}:standby"
        why = f"standby: {fenced.instance_id} is active in another process"
        register_probe(probe, lambda: (True, "ok"), lambda: (False, why))
        log.warning("stage.standby", stage=holder.name, instance=fenced.instance_id, group=fenced.group_id,
                    check_every_s=self.standby_check_s, standbys=holder.standbys, detail=str(fenced)[:500])
        try:
            while not self.stop_event.wait(self.standby_check_s):
                if not fenced.identity_in_use():
                    log.warning("stage.taking_over", stage=holder.name, instance=fenced.instance_id)
                    return True
            return False
        finally:
            holder.standby = False
            unregister_probe(probe)

    def backoff_s(self, attempt: int, retry_after_s: float = 0.0) -> float:
        """Seconds to wait before restart number ``attempt`` (1, 2, …) of a stage."""
        delay = min(self.restart_max_s, self.restart_base_s * 2 ** max(0, attempt - 1))
        return max(delay, min(self.restart_max_s, retry_after_s or 0.0))

    def restarts(self) -> dict[str, int]:
        """Restarts after transient errors, by stage name."""
        return {t.name: t.restarts for t in self.threads}

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
        for t in self.threads:
            unregister_probe(f"stage:{t.name}")
        return self.failed()
