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
false and names the failed stage. The ``stage.failed`` log line carries the error's class and its
traceback without the message (messages may quote a record: :func:`~sevisflow.core.log.safe_traceback`),
and ``pipeline.stopping`` names the stages stopped because of it.

Before any thread starts, :data:`PREFLIGHT` checks what a stage needs that can be checked at once
(the SEVIS client certificate): a problem there is a :class:`~sevisflow.core.errors.ConfigError`
naming the stage and the setting, and nothing is started. Then the start-up lines (at the default
log level): ``pipeline.starting`` (the stages, where /metrics is served), ``stage.started`` per
stage (what it does), ``pipeline.ready`` once every stage is ready, and a ``progress`` line every
``[metrics] progress_interval_s`` (records in/out and their rate, consumer lag, per stage).

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
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sevisflow import __version__
from sevisflow.core.collector import keep_old_objects_frozen
from sevisflow.core.config import Settings
from sevisflow.core.errors import ConfigError, SevisflowError, TransientError
from sevisflow.core.kafka_io import InstanceFenced
from sevisflow.core.log import get_logger, get_status_logger, safe_message, safe_traceback
from sevisflow.core.malloc import keep_trimming
from sevisflow.core.observability import (
    ProgressReporter,
    metrics_url,
    readiness,
    register_probe,
    serve_for,
    set_progress_interval,
    set_progress_lines,
    unregister_probe,
)

log = get_logger(__name__)
status = get_status_logger()

STAGES: dict[str, str] = {
    "connector": "sevisflow.connectors.postgres:run_connector",
    "normalize": "sevisflow.processors.normalize:run",
    "events": "sevisflow.processors.sevis_events:run",
    "batcher": "sevisflow.processors.batcher:run",
    "sink-xml": "sevisflow.sinks.xml:run",
    "sink-sevis": "sevisflow.sinks.sevis:run",
}


ROLES: dict[str, str] = {
    "connector": "SIS PostgreSQL → change topics (snapshot, then streaming)",
    "normalize": "change topics → student views (sevisflow.students)",
    "events": "student views → SEVIS events (sevis.events)",
    "batcher": "SEVIS events + DSO commands + results → batches (sevis.batches)",
    "sink-xml": "closed batches → XSD-valid XML in the outbox",
    "sink-sevis": "outbox → SEVIS upload, transaction logs → sevis.results",
}
"""What each stage does, for its start-up line."""

NO_UPLOAD_HINT = "to run without uploading to SEVIS: `sevisflow run --skip sink-sevis`"


def _check_sink_sevis(settings: Settings) -> None:
    """Load the SEVIS client certificate and endpoints the way the stage will (CertificateError names the key)."""
    from sevisflow.sinks.sevis.client import SevisClient

    SevisClient(settings.sevis)


PREFLIGHT: dict[str, Callable[[Settings], None]] = {"sink-sevis": _check_sink_sevis}
"""Checks run for every selected stage before any starts, so one stage's bad setting half-starts nothing."""


def preflight(settings: Settings, names: list[str]) -> None:
    """Run the :data:`PREFLIGHT` checks of ``names``; the first problem is a ConfigError naming the stage."""
    for name in names:
        check = PREFLIGHT.get(name)
        if check is None:
            continue
        try:
            check(settings)
        except SevisflowError as exc:
            why = safe_message(exc) or type(exc).__name__
            hint = f"; {NO_UPLOAD_HINT}" if name == "sink-sevis" else ""
            raise ConfigError(f"stage {name}: {why} — no stage was started{hint}") from None


def announce(names: list[str], server: Any) -> None:
    """The start-up line of a long-running command: which stages, where /metrics is served."""
    status.info("pipeline.starting", stages=names, metrics=metrics_url(server), pid=os.getpid(), version=__version__)


def stage_function(name: str) -> Callable[[Settings, threading.Event], None]:
    module, _, attr = STAGES[name].partition(":")
    fn: Callable[[Settings, threading.Event], None] = getattr(importlib.import_module(module), attr)
    return fn


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
    status_lines: bool = True
    """Start-up, ready and progress lines on the status logger (off for a caller with its own output: the demo)."""
    _progress: ProgressReporter | None = field(default=None, repr=False)

    def start(self) -> Pipeline:
        preflight(self.settings, [n for n in self.names if n not in self.functions])
        keep_trimming(self.stop_event)  # free memory back to the OS while the stages run (core/malloc.py)
        keep_old_objects_frozen(self.stop_event)  # the cyclic collector walks only young objects (core/collector.py)
        set_progress_interval(self.settings.metrics.progress_interval_s)
        set_progress_lines(self.status_lines)
        if self.serve_metrics:
            self.server = serve_for(self.settings.metrics.port, self.settings.metrics.host)
        if self.status_lines:
            announce(self.names, self.server)
        for name in self.names:
            fn = self.functions.get(name) or stage_function(name)
            holder = StageThread(name, threading.Thread())
            holder.thread = threading.Thread(target=self._guard, args=(holder, fn), name=f"stage-{name}", daemon=True)
            self.threads.append(holder)
            holder.thread.start()
            (status if self.status_lines else log).info("stage.started", stage=name, role=ROLES.get(name, name))
        if self.status_lines:
            self._progress = ProgressReporter(self.names, self.stop_event).start()
            threading.Thread(target=self._watch_ready, name="pipeline-ready", daemon=True).start()
        return self

    def _watch_ready(self, every_s: float = 1.0) -> None:
        """Log ``pipeline.ready`` when every stage is ready, and ``pipeline.not_ready`` (with the reason)
        when that changes: the operator sees when a healthy pipeline is up without polling /ready."""
        was: bool | None = None
        began = time.monotonic()
        while not self.stop_event.wait(every_s):
            ok, why = readiness()
            if ok and was is not True:
                status.info(
                    "pipeline.ready",
                    stages=self.names,
                    metrics=metrics_url(self.server),
                    after_s=round(time.monotonic() - began, 1),
                )
            elif not ok and was is True:
                log.warning("pipeline.not_ready", reason=why)
            was = ok

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
                log.warning(
                    "stage.restarting",
                    stage=holder.name,
                    error=type(exc).__name__,
                    attempt=attempt,
                    restarts=holder.restarts,
                    backoff_s=round(delay, 2),
                )
                if self.stop_event.wait(delay):
                    return
            except BaseException as exc:  # noqa: BLE001 - reported by failed()/stop()
                self._failed(holder, exc)
                return

    def _failed(self, holder: StageThread, exc: BaseException) -> None:
        """Report a stage's failure (class, traceback, no message that may quote data) and stop the others."""
        holder.error = exc
        # an expected error (SevisflowError: a setting, a lock, a refused login) names its fix in its
        # message; a traceback is for the unexpected, where the frames are what a maintainer needs
        trace = None if isinstance(exc, SevisflowError) else safe_traceback(exc)
        log.error(
            "stage.failed",
            stage=holder.name,
            error=type(exc).__name__,
            detail=safe_message(exc),
            traceback=trace,
        )
        why = f"stage {holder.name} failed: {type(exc).__name__}"
        register_probe(f"stage:{holder.name}", lambda: (False, why), lambda: (False, why))
        others = [n for n in self.names if n != holder.name]
        if not self.stop_event.is_set() and others:
            log.warning("pipeline.stopping", reason=f"stage {holder.name} failed", stopping=others)
        self.stop_event.set()

    def _stand_by(self, holder: StageThread, fenced: InstanceFenced) -> bool:
        """Wait, passive, until no live member holds the stage's identity; False when asked to stop."""
        holder.standbys += 1
        holder.standby = True
        probe = f"stage:{holder.name}:standby"
        why = f"standby: {fenced.instance_id} is active in another process"
        register_probe(probe, lambda: (True, "ok"), lambda: (False, why))
        log.warning(
            "stage.standby",
            stage=holder.name,
            instance=fenced.instance_id,
            group=fenced.group_id,
            check_every_s=self.standby_check_s,
            standbys=holder.standbys,
            detail=str(fenced)[:500],
        )
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
        return float(max(delay, min(self.restart_max_s, retry_after_s or 0.0)))

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
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.server:
            self.server.stop()
            self.server = None
        for t in self.threads:
            unregister_probe(f"stage:{t.name}")
        return self.failed()
