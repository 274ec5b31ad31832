"""Per-process observability: Prometheus ``/metrics``, ``/health`` (liveness), ``/ready`` (readiness).

A stage process does three things (see docs/OPERATIONS.md, "Observability")::

    from sevisflow.core.observability import Heartbeat, ObservabilityServer, StageMetrics

    metrics = StageMetrics("normalize")                     # families live in one per-process registry
    beat = Heartbeat()
    server = ObservabilityServer(port, metrics.registry,
                                 ready=lambda: loop_has_assignment,   # or (False, "restoring state")
                                 health=lambda: beat.alive(60)).start()
    try:
        while running:
            beat.beat()
            … metrics.records_in(topic, n); metrics.records_out(topic, n)
            … metrics.transaction("commit"); metrics.dead_letter("unmapped_code"); metrics.error("kafka")
            lag.maybe_sample()                               # ConsumerLagSampler(consumer, metrics)
    finally:
        server.stop()

``/health`` answers 200 while the process's main loop keeps beating (Kubernetes restarts the
pod when it does not); ``/ready`` answers 200 only when the ``ready`` callable says so (e.g.
partitions assigned and state restored), 503 with a short reason otherwise. Labels carry
identifiers only (stage, topic, partition, error kind, DLQ code): never record values, so no
personal data can reach the metrics.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from sevisflow.core.errors import ConfigError
from sevisflow.core.log import get_logger, get_status_logger
from sevisflow.core.state import state_memory

log = get_logger(__name__)
status = get_status_logger()

# The ``*_created`` series prometheus_client adds next to every counter double the scrape and say
# nothing a dashboard uses (a counter's reset shows in ``rate()`` already).
disable_created_metrics()  # type: ignore[no-untyped-call]

# The metrics port of each stage when several run on one host (systemd units); in Kubernetes
# every pod has its own network namespace and uses the same port, METRICS_PORT.
METRICS_PORT = 9400
STAGE_METRICS_PORTS: dict[str, int] = {
    "connector": 9400,
    "normalize": 9401,
    "events": 9402,
    "batcher": 9403,
    "sink-xml": 9404,
    "sink-sevis": 9405,
    "run": 9409,  # `sevisflow run`: every stage in one process
}

BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000)

ReadyResult = bool | tuple[bool, str]


# --------------------------------------------------------------------------- metrics


class _Families:
    """The metric families of one registry; every stage in the process shares them (label ``stage``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.records_in = Counter(
            "sevisflow_records_in", "records read, by stage and topic", ["stage", "topic"], registry=r
        )
        self.records_out = Counter(
            "sevisflow_records_out", "records written, by stage and topic", ["stage", "topic"], registry=r
        )
        self.errors = Counter(
            "sevisflow_errors",
            "errors by stage and kind (kafka, postgres, sevis_http, validation, serialization, …)",
            ["stage", "kind"],
            registry=r,
        )
        self.dlq = Counter(
            "sevisflow_dlq_records",
            "records sent to the dead-letter topic, by stage and code",
            ["stage", "code"],
            registry=r,
        )
        self.transactions = Counter(
            "sevisflow_transactions", "Kafka transactions by outcome (commit/abort)", ["stage", "outcome"], registry=r
        )
        self.batch_size = Histogram(
            "sevisflow_batch_records",
            "records per batch (poll batches of a processor, records per SEVIS batch document of the sinks)",
            ["stage", "kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "sevisflow_consumer_lag",
            "records between the group's position and the end of the partition",
            ["stage", "topic", "partition"],
            registry=r,
        )
        self.last_progress = Gauge(
            "sevisflow_last_progress_timestamp_seconds", "when the stage last did work", ["stage"], registry=r
        )
        self.remote_answers = Counter(
            "sevisflow_remote_answers",
            "answers of a remote service (SEVIS) by operation "
            "(upload, probe, download, process) and result code (S0000, S0010, …)",
            ["stage", "op", "code"],
            registry=r,
        )
        self.sevis_results = Counter(
            "sevisflow_sevis_results",
            "per-record results in SEVIS's transaction logs: "
            "result (accepted, rejected) and SEVIS's error code (none when accepted)",
            ["stage", "result", "code"],
            registry=r,
        )
        # the DSO's worklist, from the batcher's open batch and kept batches (processors/batcher/gauges.py)
        self.deadline_records = Gauge(
            "sevisflow_deadline_records",
            "open-batch records by legal deadline band (overdue, urgent, soon, ok; none = no legal limit)",
            ["stage", "band"],
            registry=r,
        )
        self.oldest_ready = Gauge(
            "sevisflow_oldest_ready_record_age_seconds",
            "age of the oldest record ready to send, from the SIS change that started its legal clock (0 = none)",
            ["stage"],
            registry=r,
        )
        self.rejections_open = Gauge(
            "sevisflow_rejections_open",
            "records SEVIS rejected and no later batch got accepted (resent ones included until accepted)",
            ["stage"],
            registry=r,
        )
        self.oldest_rejection = Gauge(
            "sevisflow_oldest_open_rejection_age_seconds",
            "age of the oldest open SEVIS rejection, from its result (0 = none)",
            ["stage"],
            registry=r,
        )


_FAMILIES: dict[int, _Families] = {}
_FAMILIES_LOCK = threading.Lock()
_PROCESS_REGISTRY: CollectorRegistry | None = None


class StateStoreMemoryCollector(Collector):
    """``sevisflow_state_store_memory_bytes{stage, part}``: what the stage's RocksDB state store holds in memory,
    read from RocksDB at each scrape — the part of the resident size that ``[state]`` bounds. Served only while
    a store is open (a process without one, e.g. ``connector run``, has no such family)."""

    def collect(self) -> Iterable[Metric]:
        memory = state_memory()
        if not memory:
            return
        family = GaugeMetricFamily(
            "sevisflow_state_store_memory_bytes",
            "Memory of a stage's RocksDB state store by part: block_cache (bounded by state.block_cache_mb), "
            "memtables (state.write_buffer_mb, two), table_readers (index and filter blocks of the files on disk)",
            labels=["stage", "part"],
        )
        for (stage, part), n in sorted(memory.items()):
            family.add_metric([stage, part], n)
        yield family


def register_runtime_collectors(registry: CollectorRegistry) -> None:
    """Add prometheus_client's process (CPU, memory, open files), platform (Python version) and
    garbage-collector metrics: ``process_*``, ``python_info``, ``python_gc_*``; and the state stores'
    memory (:class:`StateStoreMemoryCollector`)."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(StateStoreMemoryCollector())


def process_registry() -> CollectorRegistry:
    """The registry of this process (one per process, shared by the stages of ``sevisflow run``)."""
    global _PROCESS_REGISTRY
    with _FAMILIES_LOCK:
        if _PROCESS_REGISTRY is None:
            _PROCESS_REGISTRY = CollectorRegistry()
            register_runtime_collectors(_PROCESS_REGISTRY)
        return _PROCESS_REGISTRY


def _families(registry: CollectorRegistry) -> _Families:
    with _FAMILIES_LOCK:
        fam = _FAMILIES.get(id(registry))
        if fam is None:
            fam = _FAMILIES[id(registry)] = _Families(registry)
        return fam


class StageMetrics:
    """The metrics of one stage: small verbs over shared families, labelled with the stage name."""

    def __init__(self, stage: str, registry: CollectorRegistry | None = None) -> None:
        self.stage = stage
        self.registry = registry if registry is not None else process_registry()
        self._f = _families(self.registry)

    def records_in(self, topic: str, n: int = 1) -> None:
        self._f.records_in.labels(self.stage, topic).inc(n)
        self._f.last_progress.labels(self.stage).set(time.time())
        tally(self.stage).add(records_in=n)

    def records_out(self, topic: str, n: int = 1) -> None:
        self._f.records_out.labels(self.stage, topic).inc(n)
        tally(self.stage).add(records_out=n)

    def error(self, kind: str) -> None:
        """Count an error by kind (a short code, never a message: messages may hold values)."""
        self._f.errors.labels(self.stage, kind).inc()

    def dead_letter(self, code: str, n: int = 1) -> None:
        self._f.dlq.labels(self.stage, code).inc(n)

    def transaction(self, outcome: str) -> None:
        self._f.transactions.labels(self.stage, outcome).inc()

    def batch(self, size: int, kind: str = "poll") -> None:
        self._f.batch_size.labels(self.stage, kind).observe(size)

    def consumer_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        for (topic, partition), lag in lags.items():
            self._f.consumer_lag.labels(self.stage, topic, str(partition)).set(lag)
        tally(self.stage).set(lag=sum(lags.values()), partitions=len(lags))

    def forget_partitions(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop the lag series of partitions this instance no longer owns (after a rebalance)."""
        for topic, partition in partitions:
            try:
                self._f.consumer_lag.remove(self.stage, topic, str(partition))
            except KeyError:
                pass

    def worklist(
        self, by_band: Mapping[str, int], oldest_ready_s: float, rejections_open: int, oldest_rejection_s: float
    ) -> None:
        """Set the worklist gauges (counts and ages only: no student is named)."""
        for band, n in by_band.items():
            self._f.deadline_records.labels(self.stage, band).set(n)
        self._f.oldest_ready.labels(self.stage).set(oldest_ready_s)
        self._f.rejections_open.labels(self.stage).set(rejections_open)
        self._f.oldest_rejection.labels(self.stage).set(oldest_rejection_s)

    def remote_answer(self, op: str, code: str) -> None:
        """Count a remote service's answer by its result code (a code such as S0000, never a message)."""
        self._f.remote_answers.labels(self.stage, op, code).inc()

    def sevis_results(self, results: Iterable[Mapping[str, Any]]) -> None:
        """Count SEVIS's per-record results (``status`` success/failure, ``error_code``): codes only."""
        counts: dict[tuple[str, str], int] = {}
        for r in results:
            ok = r.get("status") == "success"
            key = ("accepted" if ok else "rejected", result_code_label(None if ok else r.get("error_code")))
            counts[key] = counts.get(key, 0) + 1
        per_result: dict[str, int] = {}
        for (result, code), n in counts.items():
            self._f.sevis_results.labels(self.stage, result, code).inc(n)
            per_result[f"sevis_{result}"] = per_result.get(f"sevis_{result}", 0) + n
        tally(self.stage).add(**per_result)


RESULT_CODE = re.compile(r"[A-Z]{1,3}[0-9]{3,5}")


def result_code_label(code: Any) -> str:
    """A label value for SEVIS's error code: the code itself when it looks like one (S1011), ``none``
    when there is none, ``other`` for anything else — a hostile or garbled answer cannot blow up the
    number of series nor put text into a label."""
    if code is None or code == "":
        return "none"
    text = str(code).strip()
    return text if RESULT_CODE.fullmatch(text) else "other"


def compute_lag(
    positions: Mapping[tuple[str, int], int], high_watermarks: Mapping[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """Lag per partition: end offset minus position; a partition without a position yet counts from 0."""
    out = {}
    for tp, high in high_watermarks.items():
        pos = positions.get(tp, -1)
        out[tp] = max(0, high - pos) if pos >= 0 else max(0, high)
    return out


class ConsumerLagSampler:
    """Samples a confluent-kafka consumer's lag at most every ``interval_s`` (from the last fetch responses).

    ``held``: records per partition the stage has fetched but not handled yet (its reorder window,
    sevisflow/core/source_order.py): the consumer's position is past them, they are still to do."""

    def __init__(
        self,
        consumer: Any,
        metrics: StageMetrics,
        interval_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        held: Callable[[], Mapping[tuple[str, int], int]] | None = None,
    ) -> None:
        self.consumer = consumer
        self.held = held
        self.metrics = metrics
        self.interval_s = interval_s
        self.clock = clock
        self._next = 0.0
        self._owned: set[tuple[str, int]] = set()

    def maybe_sample(self) -> dict[tuple[str, int], int] | None:
        now = self.clock()
        if now < self._next:
            return None
        self._next = now + self.interval_s
        try:
            assignment = self.consumer.assignment()
            positions = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(assignment)}
            highs = {}
            for tp in assignment:
                # the high watermark of the last fetch response: no broker round trip. A query from a consumer
                # that is fetching waits behind its long-poll fetch on the same connection (fetch.wait.max.ms,
                # 0.5 s) — 13 s per sample for normalize's 28 input partitions, the loop stopped meanwhile
                marks = self.consumer.get_watermark_offsets(tp, cached=True)
                if marks is not None and marks[1] >= 0:
                    highs[(tp.topic, tp.partition)] = marks[1]
        except Exception:  # noqa: BLE001 - lag is best effort; count it, keep processing
            self.metrics.error("lag_sample")
            return None
        lags = compute_lag(positions, highs)
        if self.held is not None:
            for tp, n in self.held().items():
                if tp in lags:
                    lags[tp] += n
        self.metrics.forget_partitions(self._owned - set(lags))
        self._owned = set(lags)
        self.metrics.consumer_lag(lags)
        return lags


class Heartbeat:
    """Liveness from the main loop: ``beat()`` each iteration, ``alive(max_age_s)`` for /health."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self.clock()

    def age(self) -> float:
        return self.clock() - self._last

    def alive(self, max_age_s: float) -> bool:
        return self.age() <= max_age_s


# --------------------------------------------------------------------------- progress lines

DEFAULT_PROGRESS_INTERVAL_S = 60.0
_progress_interval_s = DEFAULT_PROGRESS_INTERVAL_S


def set_progress_interval(seconds: float) -> None:
    """How often long-running commands print a progress line (``[metrics] progress_interval_s``)."""
    global _progress_interval_s
    _progress_interval_s = max(0.1, float(seconds))


def progress_interval() -> float:
    return _progress_interval_s


_progress_lines = True


def set_progress_lines(enabled: bool) -> None:
    """Turn the stages' own progress lines (the connector's snapshot) on or off for this process: off
    for a caller that narrates itself (the demo)."""
    global _progress_lines
    _progress_lines = enabled


def progress_lines() -> bool:
    return _progress_lines


class RateLimit:
    """True at the first ``due()``, then at most once per ``interval_s`` (default: ``scale`` times the
    progress interval), so a progress line never floods the log however often the work reports."""

    def __init__(
        self, interval_s: float | None = None, clock: Callable[[], float] = time.monotonic, scale: float = 1.0
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.scale = scale
        self._last: float | None = None

    def due(self) -> bool:
        now = self.clock()
        every = self.interval_s if self.interval_s is not None else _progress_interval_s * self.scale
        if self._last is not None and now - self._last < every:
            return False
        self._last = now
        return True


@dataclass
class Tally:
    """What a stage did, in plain numbers for the progress line: counters only grow, facts are the latest."""

    counters: dict[str, int] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, **counts: int) -> None:
        with _TALLY_LOCK:
            for k, n in counts.items():
                self.counters[k] = self.counters.get(k, 0) + int(n)

    def set(self, **facts: Any) -> None:
        with _TALLY_LOCK:
            self.facts.update(facts)


_TALLIES: dict[str, Tally] = {}
_TALLY_LOCK = threading.Lock()


def tally(stage: str) -> Tally:
    """The process-wide tally of ``stage`` (created on first use)."""
    with _TALLY_LOCK:
        t = _TALLIES.get(stage)
        if t is None:
            t = _TALLIES[stage] = Tally()
        return t


def tallies() -> dict[str, tuple[dict[str, int], dict[str, Any]]]:
    """A consistent copy of every stage's tally: (counters, facts) by stage."""
    with _TALLY_LOCK:
        return {s: (dict(t.counters), dict(t.facts)) for s, t in _TALLIES.items()}


def progress_fields(stages: Iterable[str], before: Mapping[str, Mapping[str, int]], elapsed_s: float) -> dict[str, Any]:
    """Per stage: each counter's total and its rate since ``before``, and the latest facts (lag, …)."""
    now = tallies()
    out: dict[str, Any] = {}
    for stage in stages:
        counters, facts = now.get(stage, ({}, {}))
        entry: dict[str, Any] = dict(facts)
        for k, total in sorted(counters.items()):
            entry[k] = total
            delta = total - before.get(stage, {}).get(k, 0)
            if elapsed_s > 0 and k.startswith("records_"):
                entry[f"{k}_per_s"] = round(delta / elapsed_s, 1)
        out[stage] = entry
    return out


class ProgressReporter:
    """A daemon thread that logs ``progress`` (records in/out and their rate, consumer lag, …, per stage)
    every progress interval, at the default log level, until stopped."""

    def __init__(self, stages: Iterable[str], stop_event: threading.Event | None = None) -> None:
        self.stages = list(stages)
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._own_stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ProgressReporter:
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        before = {s: c for s, (c, _) in tallies().items()}
        last = time.monotonic()
        while not self._wait(progress_interval()):
            now = time.monotonic()
            status.info(
                "progress", interval_s=round(now - last, 1), stages=progress_fields(self.stages, before, now - last)
            )
            before = {s: c for s, (c, _) in tallies().items()}
            last = now

    def _wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._stop.is_set() or self._own_stop.is_set():
                return True
            self._own_stop.wait(min(0.5, max(0.0, deadline - time.monotonic())))
        return self._stop.is_set() or self._own_stop.is_set()

    def stop(self) -> None:
        self._own_stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def metrics_url(server: ObservabilityServer | None) -> str:
    """Where the process serves /metrics, for the start-up line ("off" when ``metrics.port`` is 0)."""
    if server is None:
        return "off (set [metrics] port)"
    host = "127.0.0.1" if server.host in ("0.0.0.0", "") else server.host
    return f"http://{host}:{server.port}/metrics"


# --------------------------------------------------------------------------- process-wide probes


@dataclass
class _Probe:
    health: Callable[[], ReadyResult]
    ready: Callable[[], ReadyResult]


_PROBES: dict[str, _Probe] = {}
_PROBES_LOCK = threading.Lock()


def register_probe(name: str, health: Callable[[], ReadyResult], ready: Callable[[], ReadyResult]) -> None:
    """Let a loop of this process take part in /health and /ready (e.g. each stage of ``sevisflow run``)."""
    with _PROBES_LOCK:
        _PROBES[name] = _Probe(health, ready)


def unregister_probe(name: str) -> None:
    with _PROBES_LOCK:
        _PROBES.pop(name, None)


def probe_names() -> list[str]:
    """The loops that currently take part in /health and /ready."""
    with _PROBES_LOCK:
        return sorted(_PROBES)


def readiness() -> tuple[bool, str]:
    """What /ready answers for this process: (ready, reason naming the first stage that is not)."""
    return _verdict(lambda: _all_probes("ready"))


def _all_probes(kind: str) -> ReadyResult:
    """Healthy/ready when every registered probe is; the reason names the first that is not."""
    with _PROBES_LOCK:
        probes = dict(_PROBES)
    if not probes and kind == "ready":
        # the process answers before its stages have built their clients: not ready to be routed to yet
        return False, "no stage has started yet"
    for name, probe in sorted(probes.items()):
        ok, why = _verdict(probe.health if kind == "health" else probe.ready)
        if not ok:
            return False, f"{name}: {why}"
    return True, "ok"


def serve_for(port: int, host: str = "0.0.0.0") -> ObservabilityServer | None:
    """Start the process's /metrics, /health and /ready on ``port`` (0 = off), backed by the probes."""
    if port <= 0:
        return None
    return ObservabilityServer(
        port, process_registry(), ready=lambda: _all_probes("ready"), health=lambda: _all_probes("health"), host=host
    ).start()


# --------------------------------------------------------------------------- HTTP server


def _verdict(check: Callable[[], ReadyResult] | None) -> tuple[bool, str]:
    if check is None:
        return True, "ok"
    try:
        result = check()
    except Exception as exc:  # noqa: BLE001 - a failing check means "not ready", with the error's class only
        return False, f"check failed: {type(exc).__name__}"
    if isinstance(result, tuple):
        return bool(result[0]), str(result[1]) if len(result) > 1 else ("ok" if result[0] else "not ready")
    return bool(result), "ok" if result else "not ready"


class _Sampled:
    """The registry as served: a family with no sample yet (its stage runs elsewhere, or nothing happened
    to count) is left out instead of showing as a HELP/TYPE pair with no value."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return (m for m in self.registry.collect() if m.samples)


@dataclass
class _Routes:
    registry: CollectorRegistry
    ready: Callable[[], ReadyResult] | None
    health: Callable[[], ReadyResult] | None


class _Handler(BaseHTTPRequestHandler):
    routes: _Routes  # set on the subclass made per server
    server_version = "sevisflow"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(_Sampled(self.routes.registry)), CONTENT_TYPE_LATEST)
        elif path in ("/health", "/healthz", "/livez"):
            ok, why = _verdict(self.routes.health)
            self._send(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
        elif path in ("/ready", "/readyz"):
            ok, why = _verdict(self.routes.ready)
            self._send(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found: try /metrics, /health or /ready\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes every few seconds would flood the logs; errors are counted instead


class ObservabilityServer:
    """``/metrics``, ``/health`` and ``/ready`` on one port, served by a daemon thread.

    ``port=0`` lets the OS pick a free port (tests); :attr:`port` tells which. ``ready`` and
    ``health`` are callables returning ``bool`` or ``(bool, reason)``; an exception counts as
    not ready / not healthy (its class name is shown, never its message). Without ``health``
    the process is alive as long as it can answer.
    """

    def __init__(
        self,
        port: int = METRICS_PORT,
        registry: CollectorRegistry | None = None,
        ready: Callable[[], ReadyResult] | None = None,
        health: Callable[[], ReadyResult] | None = None,
        host: str = "0.0.0.0",
    ) -> None:
        self.host = host
        self.requested_port = port
        self.registry = registry if registry is not None else process_registry()
        self.routes = _Routes(self.registry, ready, health)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            return self.requested_port
        return int(self._httpd.server_address[1])

    def start(self) -> ObservabilityServer:
        handler = type("Handler", (_Handler,), {"routes": self.routes})
        try:
            self._httpd = ThreadingHTTPServer((self.host, self.requested_port), handler)
        except OSError as exc:
            raise ConfigError(
                f"metrics.port {self.requested_port} on {self.host}: cannot listen ({exc.strerror}); "
                "another process (another sevisflow stage?) uses it: pick a free port or 0 to "
                "turn the metrics server off"
            ) from None
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"observability-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("observability.listening", host=self.host, port=self.port)
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> ObservabilityServer:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
