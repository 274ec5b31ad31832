"""The parts of the scale bench: settings of one run, the expected outcome, stage processes, their memory,
what reached the topics, and a steady SIS write load.

Everything here runs against real services (a PostgreSQL SIS and a Kafka); nothing is simulated. The
bench (``python -m bench.scale``) puts the parts together; the CI test runs it at a tiny size.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import orjson
import psycopg
from confluent_kafka import TopicPartition
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.common import TopicFollower
from bench.scale.hops import HopLog, lineage_commit_ms
from sevisflow.core import PACKAGE_ROOT
from sevisflow.core.config import Settings, settings_from_mapping, settings_toml
from sevisflow.core.serde import registry
from sevisflow.deploy.local.stack import free_port
from sevisflow.deploy.sis.activity import Transaction
from sevisflow.deploy.sis.model import TABLE_ORDER, Op, School
from sevisflow.deploy.sis.replay import MAPPING, PKS
from sevisflow.processors.batcher.view import BatchView, fold
from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline

ORG = "ZZZ214F99999000"  # the generated school's OrgID (ZZZ: not a real school), as the demo's
DSO = "dsobench01"  # a SEVIS user id (10 characters); no DSO command is sent by the bench
RECORD_TYPES = ("record_added", "record_replaced", "record_held", "record_released", "record_waiting")
PIPELINE_TOPICS = {
    "students": "sevisflow.students",
    "events": "sevis.events",
    "commands": "sevis.batch.commands",
    "batches": "sevis.batches",
    "results": "sevis.results",
    "dlq": "sevisflow.dlq",
    "open_batches": "sevis.batch.open",
    "worklist": "sevis.worklist",
    "ledger": "sevis.audit.ledger",
}


# --------------------------------------------------------------------------- settings and databases


def run_settings(bootstrap: str, pg: dict[str, Any], unique: str, work: Path, backend: str) -> dict[str, Any]:
    """The raw settings of one run: topics, groups, slot and publication all carry ``unique`` (a shared Kafka
    and PostgreSQL can hold many runs), state and connector offsets under ``work``."""
    return {
        "kafka": {"bootstrap_servers": bootstrap},
        "postgres": {
            "host": pg.get("host") or "127.0.0.1",
            "port": int(pg.get("port") or 5432),
            "dbname": pg["dbname"],
            "user": pg.get("user") or "postgres",
        },
        "connector": {
            "topic.prefix": f"sis{unique}",
            "slot.name": f"slot_{unique}",
            "publication.name": f"pub_{unique}",
            "name": f"conn-{unique}",
            "offsets_dir": str(work / "connector"),
            "heartbeat.interval.ms": 1000,
        },
        "school": {
            "org_id": ORG,
            "mapping_file": str(PACKAGE_ROOT / "deploy" / "sis" / "mapping.toml"),
            "dso_user_ids": [DSO],
        },
        "sevis": {"outbox_dir": str(work / "outbox"), "quarantine_dir": str(work / "quarantine")},
        "topics": {k: f"{v}.{unique}" for k, v in PIPELINE_TOPICS.items()},
        "state": {"backend": backend, "dir": str(work / "state")},
    }


def write_config(raw: dict[str, Any], path: Path) -> tuple[Settings, Path]:
    """The settings object and its file (0600: it names the SIS database) for the stage processes."""
    path.write_text(settings_toml(raw))
    path.chmod(0o600)
    return settings_from_mapping(raw, env={}), path


def create_database(server_dsn: str, name: str) -> dict[str, Any]:
    """A new empty database ``name`` on the server of ``server_dsn``; returns its connection parameters."""
    params = conninfo_to_dict(server_dsn)
    with psycopg.connect(make_conninfo(**{**params, "dbname": "postgres"}), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return {**params, "dbname": name}


def drop_database(params: dict[str, Any]) -> None:
    """Drop a run's database and its (inactive) replication slots: a slot left behind keeps WAL forever."""
    name = params["dbname"]
    with psycopg.connect(make_conninfo(**{**params, "dbname": "postgres"}), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s AND NOT active",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


# --------------------------------------------------------------------------- the expected outcome


@dataclass
class Expected:
    """What the pure pipeline derives from the school's snapshot: the students with a view, those with a Create."""

    views: set[str]
    creates: set[str]
    seconds: float
    creates_by_org: dict[str, set[str]] = field(default_factory=dict)
    """OrgID -> the students with a Create in its batch (one OrgID unless the SIS holds several schools)."""


def expected_snapshot(school: School, chunk: int = 20_000, schools: dict[str, str] | None = None) -> Expected:
    """The school's snapshot through the pure pipeline (normalize + sevis_events, no Kafka), fed in chunks so
    the Debezium records of a 100,000-student school never sit in memory at once. ``schools``: the member
    schools' SIS codes -> OrgIDs, when the SIS holds several ([[schools]])."""
    t0 = time.perf_counter()
    # the snapshot's rows carry the time they are read (source.ts_ms), as the connector's do: with the feed's
    # default (2026-01-01) a dependent born since then fails the "birth date after the change" check here
    # but not in the stages, and the run counted those students' Creates as unexpected
    now_ms = int(time.time() * 1000)
    feed, out = SisFeed(primary_keys=PKS, ts_ms=now_ms), PureOutput()
    pipe = PurePipeline(MAPPING, org_id=ORG, schools=schools or {})
    views: set[str] = set()
    creates: set[str] = set()
    by_org: dict[str, set[str]] = {}

    def take_events() -> None:
        for e in out.events:
            if e["kind"] == "Create":
                creates.add(e["student_key"])
                by_org.setdefault(e["org_id"], set()).add(e["student_key"])

    def drain() -> None:
        for r in feed.records:
            pipe.feed_one(r.topic, r.key, r.value, out)
        feed.records.clear()
        views.update(v.student_key for v in out.views)
        take_events()
        out.views.clear(), out.events.clear(), out.dead.clear(), out.issues.clear()

    for table in TABLE_ORDER:
        for row in school.get(table, []):
            feed.tx(("r", f"public.{table}", None, row), snapshot=True)
            if len(feed.records) >= chunk:
                drain()
    drain()
    pipe.finish(out)
    views.update(v.student_key for v in out.views)
    take_events()
    return Expected(views, creates, time.perf_counter() - t0, by_org)


# --------------------------------------------------------------------------- processes and their memory


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in MiB, and its CPU seconds (user + system); {} once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in status.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line[:5]] = int(line.split()[1]) / 1024
    fields = stat.rsplit(")", 1)[1].split()
    out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


STATE_MEMORY_METRIC = "sevisflow_state_store_memory_bytes"


def state_store_bytes(port: int, timeout_s: float = 2.0) -> float | None:
    """The sum of ``sevisflow_state_store_memory_bytes`` on a process's ``/metrics``; None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(STATE_MEMORY_METRIC + "{")
    )


@dataclass
class Stages:
    """The stage processes of one run (``python -m sevisflow …``), their logs, and their memory sampled from
    /proc every ``every_s`` by a thread: the latest VmHWM, CPU seconds, and (time, VmRSS) over time."""

    config: Path
    work: Path
    every_s: float = 1.0
    rss_limit_mib: float = 0.0
    """A process above this RSS stops the run (a shared box must not run out of memory); 0 = no limit."""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    peak_mib: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    state_every_s: float = 5.0
    """How often each process's ``/metrics`` is read for its state stores' memory (0 = never)."""
    metrics_ports: dict[str, int] = field(default_factory=dict)
    state_series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Per process, (seconds, MiB) its RocksDB stores hold by RocksDB's accounting
    (``sevisflow_state_store_memory_bytes``, summed): the part of its RSS that ``[state]`` bounds."""
    t0: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self, commands: dict[str, list[str]]) -> Stages:
        self.t0 = time.monotonic()
        self.spawn(commands)
        threading.Thread(target=self._sample, name="rss-sampler", daemon=True).start()
        return self

    def spawn(self, commands: dict[str, list[str]]) -> None:
        """Start ``commands`` as stage processes (``sevisflow --config … <args>``), each logging to ``<name>.log``;
        also after :meth:`start`, for a process that joins a running pipeline late."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEVISFLOW_")}
        for name, args in commands.items():
            log = (self.work / f"{name}.log").open("wb")
            self.series[name] = []
            own_env = dict(env)
            if self.state_every_s > 0:
                self.metrics_ports[name] = free_port()
                self.state_series[name] = []
                own_env["SEVISFLOW_METRICS_PORT"] = str(self.metrics_ports[name])
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "sevisflow", "--config", str(self.config), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=own_env,
            )

    def _sample(self) -> None:
        next_state = 0.0
        while not self._stop.is_set():
            self.sample_once()
            if self.state_every_s > 0 and time.monotonic() >= next_state:
                next_state = time.monotonic() + self.state_every_s
                self.sample_state_memory()
            self._stop.wait(self.every_s)

    def sample_state_memory(self) -> None:
        """Read each process's state-store memory from its ``/metrics`` (a process not serving yet is skipped)."""
        now = time.monotonic() - self.t0
        for name, port in list(self.metrics_ports.items()):
            total = state_store_bytes(port)
            if total is not None:
                self.state_series[name].append((round(now, 1), total / (1 << 20)))

    def sample_once(self) -> None:
        now = time.monotonic() - self.t0
        for name, p in list(self.procs.items()):  # spawn() may add one meanwhile
            st = proc_status(p.pid)
            if st:
                self.peak_mib[name] = max(self.peak_mib.get(name, 0.0), st.get("VmHWM", 0.0))
                self.cpu_s[name] = st["cpu_s"]
                self.series[name].append((round(now, 1), st.get("VmRSS", 0.0)))

    def failed(self) -> str:
        """The first stage process that exited on its own, with the end of its log; "" while all run."""
        for name, peak in self.peak_mib.items():
            if self.rss_limit_mib and peak > self.rss_limit_mib:
                return f"stage process {name} went over --rss-limit ({peak:.0f} > {self.rss_limit_mib:.0f} MiB)"
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.work / f"{name}.log").read_text(errors="replace")[-2000:]
                return f"stage process {name} exited {p.returncode}:\n{tail}"
        return ""

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM every process (they drain and stop), SIGKILL what is still there after ``timeout_s``."""
        self.sample_once()
        self._stop.set()
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


SEPARATE = {
    "connector": ["connector", "run"],
    "normalize": ["process", "normalize"],
    "events": ["process", "events", "--instance", "bench"],
    "batcher": ["process", "batcher", "--instance", "bench"],
}
"""Each stage in its own process, as in production (the sinks are not part of the measured path)."""
TOGETHER = {"all-in-one": ["run", "--stages", "connector,normalize,events,batcher"]}
"""Every stage of the measured path in one ``sevisflow run`` process."""


# --------------------------------------------------------------------------- what reached the topics


@dataclass
class Tail(TopicFollower):
    """Follows the student views, the SEVIS events and sevis.batches of one run from their beginning (read
    committed): the students with a view, the students with a Create event, the open batch (folded from
    sevis.batches as ``batch show --from-history`` does), and for every record that enters the open batch its
    latency from the SIS commit (the record's ``at_ms``, the latest source commit time of its lineage) to the
    moment this reader received it."""

    settings: Settings
    t0: float = field(default_factory=time.monotonic)
    views: set[str] = field(default_factory=set)
    create_events: set[str] = field(default_factory=set)
    latencies: list[tuple[int, int]] = field(default_factory=list)  # (commit ms, latency ms)
    first_seen: dict[str, float] = field(default_factory=dict)  # topic key -> seconds after t0 of its last growth
    hops: HopLog | None = None
    """Set for the steady phase: each output's times per (student, SIS commit), for the per-hop breakdown."""

    name: ClassVar[str] = "bench-scale-tail"

    def __post_init__(self) -> None:
        self.view = BatchView(ORG)

    def open_creates(self) -> set[str]:
        with self.lock:
            return {r["student_key"] for r in self.view.records.values() if r["section"] == "create"}

    def open_records(self) -> int:
        with self.lock:
            return len(self.view.records)

    def assignment(self, consumer: Any) -> list[TopicPartition]:
        t = self.settings.topics
        return self.from_beginning(consumer, (t.students, t.events, t.batches))

    def take(self, msg: Any) -> None:
        self._take(msg.topic(), msg)

    def _take(self, topic: str, msg: Any) -> None:
        t = self.settings.topics
        now = time.monotonic()
        now_ms = int(time.time() * 1000)
        if topic == t.students:
            self.views.add((msg.key() or b"").decode())
            self.first_seen["views"] = now - self.t0
            if self.hops is not None:  # only then decoded: the snapshot's views are not slowed down
                self._note_hop("normalize", msg, now_ms, lambda: self._view_times(msg))
            return
        rec = registry().decode(msg.value())
        if topic == t.events:
            if rec.get("kind") == "Create":
                self.create_events.add(rec["student_key"])
                self.first_seen["create_events"] = now - self.t0
            if self.hops is not None:
                self._note_hop(
                    "events", msg, now_ms, lambda: (rec["student_key"], lineage_commit_ms(rec.get("lineage")))
                )
            return
        with self.lock:
            fold(self.view, rec)
        if rec["type"] in RECORD_TYPES and rec.get("at_ms"):
            self.latencies.append((int(rec["at_ms"]), now_ms - int(rec["at_ms"])))
            self.first_seen["open_batch"] = now - self.t0
            if self.hops is not None and rec.get("record_json"):
                self._note_hop(
                    "batcher",
                    msg,
                    now_ms,
                    lambda: (orjson.loads(rec["record_json"]).get("student_key", ""), int(rec["at_ms"])),
                )

    @staticmethod
    def _view_times(msg: Any) -> tuple[str, int | None]:
        rec = registry().decode(msg.value())
        return rec["student_key"], rec.get("commit_ts_ms")

    def _note_hop(
        self, stage: str, msg: Any, seen_ms: int, key_and_commit: Callable[[], tuple[str, int | None]]
    ) -> None:
        """Note ``msg`` (a ``stage`` output) in the hop log: produced at its Kafka timestamp, seen now."""
        assert self.hops is not None
        began = time.thread_time()
        key, commit_ms = key_and_commit()
        self.hops.note(stage, key, commit_ms, int(msg.timestamp()[1]), seen_ms)
        self.hops.bookkeeping_s += time.thread_time() - began


# --------------------------------------------------------------------------- the steady SIS load


def contact_changes(people: list[int], tag: str) -> Iterator[Transaction]:
    """Endless e-mail changes, one person per commit, each of ``people`` in turn (a third of a school is
    international: their change is a SEVIS update; the others' are dropped by normalize, as in a real SIS).
    Always valid whatever ran before: persons are never deleted."""
    n = 0
    while people:
        for pid in people:
            n += 1
            at = datetime.now(UTC)
            yield Transaction(
                "contact_change",
                pid,
                False,
                at,
                (
                    Op(
                        "update",
                        "person",
                        {"person_id": pid},
                        {"email": f"scale.{tag}.{n}@example.org", "updated_at": at},
                    ),
                ),
            )


def write_load(
    dsn: str,
    transactions: list[Transaction],
    people: list[int],
    tag: str,
    rate: float,
    duration_s: float,
    start_at: float,
    results: Any,
    alone: bool = True,
) -> None:
    """One writer process: ``transactions`` then e-mail changes of ``people``, committed one by one from
    ``start_at`` (wall clock) at ``rate`` row changes per second for ``duration_s``; its counts go to
    ``results`` (a multiprocessing queue). With ``alone`` a one-statement transaction is sent as that statement
    (autocommit), as an application does: PostgreSQL commits it as one transaction, the same in the WAL and the
    change stream as BEGIN, statement, COMMIT, for a third of the round trips. The load generator shares the 2
    cores with the pipeline it measures: ``python -m bench.scale.writer_cpu`` measures both ways."""
    out: dict[str, Any] = {"committed_tx": 0, "committed_ops": 0, "missed_ops": 0, "kinds": {}, "error": ""}
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            time.sleep(max(0.0, start_at - time.time()))
            began = time.monotonic()
            for tx in itertools.chain(transactions, contact_changes(people, tag)):
                now = time.monotonic() - began
                if now >= duration_s:
                    break
                ahead = out["committed_ops"] / rate - now
                if ahead > 0:
                    time.sleep(ahead)
                if alone and len(tx.ops) == 1:  # one statement is one transaction by itself: one round trip
                    statement, params = tx.ops[0].sql()
                    cur = conn.execute(statement.encode(), params)
                    out["missed_ops"] += int(tx.ops[0].action != "insert" and cur.rowcount != 1)
                else:
                    with conn.transaction():
                        for op in tx.ops:
                            statement, params = op.sql()
                            cur = conn.execute(statement.encode(), params)
                            out["missed_ops"] += int(op.action != "insert" and cur.rowcount != 1)
                out["committed_tx"] += 1
                out["committed_ops"] += len(tx.ops)
                out["kinds"][tx.kind] = out["kinds"].get(tx.kind, 0) + 1
            out["elapsed_s"] = time.monotonic() - began
    except Exception as exc:  # noqa: BLE001 - reported by the bench
        out["error"] = f"{type(exc).__name__}: {exc}"
    results.put(out)


@dataclass
class Driver:
    """The steady SIS load: ``writers`` processes, each with its own connection, together committing
    ``rate`` row changes per second for ``duration_s`` — the generated activity first, split by person
    (a person's changes keep their order), then :func:`contact_changes`. One Python writer commits only a
    few hundred transactions per second on a loaded 2-core box, hence several."""

    dsn: str
    transactions: list[Transaction]
    people: list[int]
    rate: float
    duration_s: float
    writers: int = 4
    committed_tx: int = 0
    committed_ops: int = 0
    missed_ops: int = 0  # updates or deletes that matched no row (should stay 0)
    kinds: dict[str, int] = field(default_factory=dict)  # commits by kind of change
    elapsed_s: float = 0.0
    started_ms: int = 0
    error: str = ""

    def run(self) -> Driver:
        ctx = multiprocessing.get_context("spawn")  # the bench has Kafka client threads: no fork
        results = ctx.Queue()
        start_at = time.time() + 3.0  # every writer connected and ready by then
        self.started_ms = int(start_at * 1000)
        procs = []
        for w in range(self.writers):
            txs = [tx for tx in self.transactions if tx.person_id % self.writers == w]
            people = [p for p in self.people if p % self.writers == w]
            procs.append(
                ctx.Process(
                    target=write_load,
                    args=(self.dsn, txs, people, f"w{w}", self.rate / self.writers, self.duration_s, start_at, results),
                    daemon=True,
                )
            )
            procs[-1].start()
        outs = [results.get(timeout=self.duration_s + 120) for _ in procs]
        for proc in procs:
            proc.join(30)
        for out in outs:
            self.committed_tx += out["committed_tx"]
            self.committed_ops += out["committed_ops"]
            self.missed_ops += out["missed_ops"]
            self.elapsed_s = max(self.elapsed_s, out.get("elapsed_s", 0.0))
            self.error = self.error or out["error"]
            for k, n in out["kinds"].items():
                self.kinds[k] = self.kinds.get(k, 0) + n
        return self
