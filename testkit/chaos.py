"""Chaos run of the whole pipeline: every stage its own OS process, ``kill -9`` at random moments.

A local stack (PostgreSQL + Kafka, deploy/local/stack.py) holds a generated school; the SEVIS
simulator (sinks/sevis_sim) answers over mutual TLS, with its fault knobs on (slow answers before and
after it took an upload, delayed registration and results, connections reset before and after it
took an upload, S0010/S0013/S0031 answers, HTTP 500). The six stages run as separate ``sevisflow``
processes —
``connector run``, ``process normalize|events|batcher``, ``sink xml``, ``sink sevis`` — while the
school's activity is committed to the SIS and a DSO closes batches with ``sevisflow batch close``.
A seeded schedule kills a random stage with SIGKILL and starts it again; some kills of
``sink sevis`` land while an upload or a download is in flight at the simulator.

At the end the run waits for quiescence (every expected event on ``sevis.events``, every closed
batch uploaded and its results published, nothing ready left in the open batch) and counts, per
change (SEVIS event) of the pure pipeline (deploy/sis/replay.py) for the same school and activity:

* lost: expected, but in no document SEVIS accepted, not in the open batch and not undone by a
  later change (the batcher's ``record_removed``);
* duplicated: on ``sevis.events`` twice, or in two closed batches that were not re-queued;
* sent twice: in two documents SEVIS accepted, or a POST of a BatchID SEVIS had already accepted;
* invalid: an outbox document (any state) that fails the XSD, or a quarantined batch.

Used by ``python -m bench.chaos`` (long run, figures in bench/README.md) and, shortened, by
tests/integration/test_chaos.py. The harness is test tooling, so it lives in testkit/ (outside the wheel).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from sevisflow.deploy.sis.replay import TODAY, compare_events, replay_events
from sevisflow.sinks.outbox import STATES, safe_name

REPO = Path(__file__).resolve().parents[1]
ORG_ID = "ZZZ214F99999000"  # a made-up OrgID (ZZZ: no real school)
DSO = "dsochaos01"  # the DSO's SEVIS user id (10 characters)
FAULTS: list[tuple[str, str]] = [
    ("any", "drop"),  # connection reset before SEVIS looks at the request
    ("upload", "drop_after"),  # SEVIS took the upload, the answer is lost
    ("upload", "S0010"),  # "BatchID already used" to our first POST, nothing registered
    ("upload", "S0013"),  # refused as a whole, nothing registered: the records are re-queued
    ("download", "S0031"),  # "no such batch" to a download of a batch SEVIS has
    ("any", "http500"),
]
"""The simulator faults armed now and then (those this simulator knows; see sinks/sevis_sim)."""
IN_FLIGHT: dict[str, tuple[str, ...]] = {"upload": ("slow", "slow_accept"), "download": ("slow",)}
"""Faults that hold a request at the simulator while ``sink sevis`` is killed: ``slow`` holds it before
SEVIS looks at it (SEVIS then takes it anyway), ``slow_accept`` after SEVIS took it."""
STAGES: dict[str, list[str]] = {
    "connector": ["connector", "run"],
    "normalize": ["process", "normalize"],
    "events": ["process", "events"],
    "batcher": ["process", "batcher"],
    "sink-xml": ["sink", "xml"],
    "sink-sevis": ["sink", "sevis"],
}


@dataclass
class Plan:
    """What one chaos run does. ``minutes`` is the length of the activity-and-kills phase."""

    students: int = 200
    share: float = 0.35
    activity: int = 200
    minutes: float = 7.0
    kills: int = 20
    seed: int = 7
    close_every_s: float = 40.0
    in_flight_share: float = 0.35  # of the kills: sink sevis while the simulator holds an upload/download
    results_delay_s: float = 3.0  # SEVIS's results are ready this long after the upload (S0030 before)
    registration_delay_s: float = 2.0  # an accepted upload is unknown to downloads (S0031) this long
    fault_every: int = 4  # every n-th kill also arms one SEVIS fault (FAULTS; 0 = never)
    settle_timeout_s: float = 420.0
    verify: bool = True  # end with `sevisflow verify --all` (re-derives every closed batch)


@dataclass
class Report:
    plan: dict[str, Any]
    kills: Counter = field(default_factory=Counter)
    in_flight_kills: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    unplanned_exits: list[dict[str, Any]] = field(default_factory=list)
    closes: Counter = field(default_factory=Counter)
    figures: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    @property
    def ok(self) -> bool:
        f = self.figures
        return (
            bool(f)
            and f["lost"] == f["duplicated"] == f["sent_twice"] == f["invalid"] == 0
            and f["events_unexpected"] == 0
            and f["results_missing"] == 0
            and not self.unplanned_exits
            and f.get("verify_all", "passed") == "passed"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "kills": dict(self.kills),
            "total_kills": self.total_kills,
            "in_flight_kills": dict(self.in_flight_kills),
            "sevis_faults": dict(self.faults),
            "unplanned_exits": self.unplanned_exits,
            "closes": dict(self.closes),
            "figures": self.figures,
            "details": self.details,
            "timings": self.timings,
            "ok": self.ok,
        }

    def table(self) -> str:
        f = self.figures
        rows = [
            ("kills", f"{self.total_kills} ({', '.join(f'{k} {n}' for k, n in sorted(self.kills.items()))})"),
            (
                "kills with an upload/download in flight",
                ", ".join(f"{k} {n}" for k, n in sorted(self.in_flight_kills.items())) or "0",
            ),
            ("SEVIS faults armed", ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items())) or "0"),
            ("stage exits not caused by a kill", str(len(self.unplanned_exits))),
            ("DSO closes (ok / refused or timed out)", f"{self.closes['ok']} / {self.closes['failed']}"),
            ("changes expected (pure pipeline)", str(f.get("events_expected"))),
            ("changes on sevis.events", str(f.get("events_on_topic"))),
            (
                "batches closed / accepted by SEVIS / re-queued",
                f"{f.get('batches_closed')} / {f.get('batches_accepted')} / {f.get('batches_requeued')}",
            ),
            ("records in accepted documents", str(f.get("records_accepted"))),
            ("lost", str(f.get("lost"))),
            ("duplicated", str(f.get("duplicated"))),
            ("sent twice", str(f.get("sent_twice"))),
            ("invalid documents", str(f.get("invalid"))),
            ("accepted batches without published results", str(f.get("results_missing"))),
            ("POSTs (all) / of a BatchID already accepted", f"{f.get('posts')} / {f.get('reposts_after_accept')}"),
            ("sevisflow verify --all", str(f.get("verify_all", "not run"))),
            ("wall time", f"{self.timings.get('total_s', 0):.0f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


# ----------------------------------------------------------------------------- settings and processes


def chaos_raw(
    bootstrap: str, pg: dict[str, Any], work: Path, unique: str, xsd_dir: str, sim: Any
) -> dict[str, dict[str, Any]]:
    """Settings of one run: per-run topic names, the simulator's URLs and certificates, quick retries."""
    topics = {
        name: f"{default}.{unique}"
        for name, default in [
            ("students", "sevisflow.students"),
            ("events", "sevis.events"),
            ("commands", "sevis.batch.commands"),
            ("batches", "sevis.batches"),
            ("results", "sevis.results"),
            ("dlq", "sevisflow.dlq"),
            ("open_batches", "sevis.batch.open"),
        ]
    }
    return {
        "kafka": {"bootstrap_servers": bootstrap},
        "postgres": pg,
        "connector": {
            "topic.prefix": f"sis{unique}",
            "slot.name": f"slot_{unique}",
            "publication.name": f"pub_{unique}",
            "name": f"conn-{unique}",
            "offsets_dir": str(work / "connector"),
            "heartbeat.interval.ms": 1000,
            "offset.flush.interval.ms": 200,
            "slot.retry.delay.ms": 1000,
            "slot.max.retries": 60,
        },
        "school": {
            "org_id": ORG_ID,
            "mapping_file": str(REPO / "deploy" / "sis" / "mapping.toml"),
            "dso_user_ids": [DSO],
        },
        "sevis": {
            "xsd_dir": xsd_dir,
            "outbox_dir": str(work / "outbox"),
            "quarantine_dir": str(work / "quarantine"),
            "upload_url": sim.upload_url,
            "download_url": sim.download_url,
            "client_cert": str(sim.certs.client_cert),
            "client_key": str(sim.certs.client_key),
            "ca_bundle": str(sim.certs.ca_cert),
            "user_id": DSO,
            "poll_interval_s": 1.0,
            "retry_base_s": 0.5,
            "retry_max_s": 4.0,
            "http_timeout_s": 20.0,
            # the harness stands in for an operator who allows re-posting (max_posts > 1, not the
            # default): the simulator registers an upload at once, so an unknown outcome that still
            # reads S0031 after 15 s and 3 checks was not taken; SEVIS refuses a used BatchID, so a
            # re-post is never processed twice (and the run counts it as "sent twice")
            "repost_after_s": 15.0,
            "repost_after_checks": 3,
            "max_posts": 3,
        },
        "topics": topics,
    }


class Stages:
    """The six stages as OS processes: start, SIGKILL, restart; exits nobody asked for are recorded."""

    def __init__(self, config: Path, logs: Path, report: Report, say: Callable[[str], None]) -> None:
        self.config, self.logs, self.report, self.say = config, logs, report, say
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.files: dict[str, TextIO] = {}
        self.starts: Counter = Counter()
        self.lock = threading.Lock()
        logs.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEVISFLOW_")}
        env["SEVISFLOW_CONFIG"] = str(self.config)
        return env

    def start(self, name: str) -> None:
        with self.lock:
            self.starts[name] += 1
            log = open(self.logs / f"{name}.log", "a")  # noqa: SIM115 - kept open while the process runs
            log.write(f"--- start {self.starts[name]} at {time.strftime('%H:%M:%S')}\n")
            log.flush()
            old = self.files.pop(name, None)
            if old:
                old.close()
            self.files[name] = log
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "sevisflow.app.cli.__main__", "--log-level", "INFO", *STAGES[name]],
                cwd=REPO,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def start_all(self) -> None:
        for name in STAGES:
            self.start(name)

    def kill(self, name: str) -> None:
        with self.lock:
            proc = self.procs[name]
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        self.report.kills[name] += 1

    def check(self) -> None:
        """Restart any stage that exited by itself, and record it: that is a finding, not chaos."""
        for name, proc in list(self.procs.items()):
            rc = proc.poll()
            if rc is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-1500:]
                self.report.unplanned_exits.append(
                    {"stage": name, "rc": rc, "at": time.strftime("%H:%M:%S"), "log_tail": tail}
                )
                self.say(f"  !! {name} exited by itself (rc {rc}); restarting it")
                self.start(name)

    def stop_all(self, timeout_s: float = 30.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # a stage that ignores SIGTERM is a finding too
                self.report.details.setdefault("sigterm_ignored", []).append(name)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for f in self.files.values():
            f.close()


def cli(config: Path, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """``sevisflow ARGS`` as the DSO runs it (its own process, no terminal)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEVISFLOW_")}
    env["SEVISFLOW_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "sevisflow.app.cli.__main__", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


_CLOSE_FLAGS: list[str] | None = None


def close_flags(config: Path) -> list[str]:
    """Which flags `batch close` takes without a terminal (it may want the reviewed revision and a --yes)."""
    global _CLOSE_FLAGS
    if _CLOSE_FLAGS is None:
        help_text = cli(config, "batch", "close", "--help").stdout
        _CLOSE_FLAGS = [f for f in ("--revision", "--yes") if f in help_text]
    return _CLOSE_FLAGS


def dso_close(config: Path, timeout_s: float = 60) -> tuple[bool, str]:
    """A DSO reviews the open batch (`batch show --json`) and closes what is ready (`batch close`)."""
    try:
        shown = cli(config, "batch", "show", "--json", timeout_s=timeout_s)
        if shown.returncode != 0:
            return False, "show: " + shown.stderr.strip()[-300:]
        data = orjson.loads(shown.stdout)
        counts = data.get("counts") or {}
        if not counts.get("ready"):
            return False, "nothing ready"
        args = ["batch", "close", "--dso", DSO, "--json", "--timeout", str(int(timeout_s))]
        flags = close_flags(config)
        if "--revision" in flags:
            args += ["--revision", str(data["revision"])]
        if "--yes" in flags:
            args.append("--yes")
        out = cli(config, *args, timeout_s=timeout_s + 30)
        return out.returncode == 0, (out.stdout if out.returncode == 0 else out.stderr).strip()[-300:]
    except (subprocess.TimeoutExpired, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"[:300]


# ----------------------------------------------------------------------------- reading the end state


def _decoded(settings: Any, topic: str) -> list[dict[str, Any]]:
    from sevisflow.core.kafka_io import read_topic
    from sevisflow.core.serde import registry

    return [registry().decode(value) for m in read_topic(settings.kafka, topic, timeout_s=60) if (value := m.value())]


def outbox_states(outbox_dir: Path) -> dict[str, list[Path]]:
    """Batch folders by state (``<day>/<state>/<B>``)."""
    found: dict[str, list[Path]] = {s: [] for s in STATES}
    if outbox_dir.is_dir():
        for day in outbox_dir.iterdir():
            for state in STATES:
                d = day / state
                if d.is_dir():
                    found[state].extend(p for p in d.iterdir() if p.is_dir())
    return found


def quarantined_names(quarantine_dir: Path) -> set[str]:
    """Folder names of the quarantined batches (``<day>/<B>``)."""
    if not quarantine_dir.is_dir():
        return set()
    return {b.name for day in quarantine_dir.iterdir() if day.is_dir() for b in day.iterdir() if b.is_dir()}


def invalid_documents(outbox_dir: Path, quarantine_dir: Path, xsd_dir: str) -> tuple[int, int, int]:
    """(documents checked, failing the XSD, quarantined batches)."""
    from lxml import etree

    from sevisflow.sinks.xml.xsd import load_schema

    schema = load_schema(xsd_dir)
    checked = bad = 0
    for folders in outbox_states(outbox_dir).values():
        for b in folders:
            for xml in b.glob("*.xml"):
                if xml.name.startswith(("upload-response", "post-")):
                    continue
                checked += 1
                try:
                    if schema.validate(etree.parse(str(xml))):  # the list of XSD errors
                        bad += 1
                except etree.XMLSyntaxError:
                    bad += 1
    quarantined = len(quarantined_names(quarantine_dir))
    return checked, bad, quarantined


@dataclass
class EndState:
    closed: dict[str, list[dict[str, Any]]]  # BatchID -> records, as the batcher closed them
    requeued: set[str]
    removed_event_ids: set[str]
    open_records: list[dict[str, Any]]
    results: dict[str, set[str]]  # BatchID -> request ids with a published result


def read_end_state(settings: Any) -> EndState:
    from sevisflow.processors.batcher.view import build_view

    closed: dict[str, list[dict[str, Any]]] = {}
    requeued: set[str] = set()
    removed: set[str] = set()
    batch_events = _decoded(settings, settings.topics.batches)
    for e in batch_events:
        if e.get("org_id") != settings.school.org_id:
            continue
        if e["type"] == "closed":
            closed[e["batch_id"]] = orjson.loads(e["records_json"] or "[]")
        elif e["type"] == "requeued":
            requeued.add(e["batch_id"])
        elif e["type"] == "record_removed":
            rec = orjson.loads(e["record_json"] or "{}")
            removed.update(rec.get("event_ids") or [])
            removed.update(re.findall(r"undone by event (\S+?)[ :]", e.get("reason") or ""))
    results: dict[str, set[str]] = {}
    for r in _decoded(settings, settings.topics.results):
        results.setdefault(r.get("batch_id") or "", set()).add(r.get("request_id") or "")
    view = build_view(settings.school.org_id, batch_events)
    return EndState(closed, requeued, removed, list(view.open_records()), results)


def count_outcome(
    settings: Any, sim: Any, expected: list[dict[str, Any]], snapshot_creates: set[str], xsd_dir: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The figures of a finished run (see the module docstring) and the ids behind any non-zero one."""
    events = _decoded(settings, settings.topics.events)
    cmp = compare_events(events, expected, snapshot_creates)
    end = read_end_state(settings)
    by_request = {(bid, r["request_id"]): r for bid, recs in end.closed.items() for r in recs}
    with sim.lock:
        accepted = {
            bid: [r["request_id"] for r in b.records]
            for (org, bid), b in sim.batches.items()
            if org == settings.school.org_id
        }
        requests = [dict(r) for r in sim.requests]
        posts = dict(getattr(sim, "posts", {}))  # every POST that reached it per BatchID, faults included
    in_accepted: Counter = Counter()
    unknown_at_sevis = []
    for bid, rids in accepted.items():
        for rid in rids:
            rec = by_request.get((bid, rid))
            if rec is None:
                unknown_at_sevis.append([bid, rid])
                continue
            in_accepted.update(set(rec["event_ids"]))
    in_closed: Counter = Counter()
    for bid, recs in end.closed.items():
        if bid not in end.requeued:
            in_closed.update({i for r in recs for i in r["event_ids"]})
    open_ids = {i for r in end.open_records for i in r.get("event_ids") or []}
    ids = Counter(e["event_id"] for e in events)
    lost_ids = sorted(i for i in ids if i not in in_accepted and i not in open_ids and i not in end.removed_event_ids)
    twice_closed = sorted(i for i, n in in_closed.items() if n > 1)
    twice_sent = sorted(i for i, n in in_accepted.items() if n > 1)
    accepted_at: dict[str, float] = {}
    for r in requests:
        if r["op"] == "upload" and r["code"] == "S0000":
            accepted_at.setdefault(r["batch_id"], r["at"])
    reposts = [
        r["batch_id"]
        for r in requests
        if r["op"] == "upload" and r["batch_id"] in accepted_at and r["at"] > accepted_at[r["batch_id"]]
    ]
    results_missing = sorted(bid for bid, rids in accepted.items() if not set(rids) <= end.results.get(bid, set()))
    checked, bad_xml, quarantined = invalid_documents(
        Path(settings.sevis.outbox_dir), Path(settings.sevis.quarantine_dir), xsd_dir
    )
    states = {k: len(v) for k, v in outbox_states(Path(settings.sevis.outbox_dir)).items()}
    figures = {
        "events_expected": cmp["events_expected"],
        "events_on_topic": cmp["events_on_topic"],
        "events_missing": cmp["events_missing"],
        "events_unexpected": cmp["events_unexpected"],
        "duplicate_event_ids": cmp["duplicate_event_ids"],
        "batches_closed": len(end.closed),
        "batches_requeued": len(end.requeued),
        "batches_accepted": len(accepted),
        "records_accepted": sum(len(v) for v in accepted.values()),
        "records_open": len(end.open_records),
        "changes_undone": len(end.removed_event_ids),
        "lost": len(lost_ids) + cmp["events_missing"],
        "duplicated": len(twice_closed) + cmp["duplicate_event_ids"],
        "sent_twice": len(twice_sent) + len(reposts),
        "reposts_after_accept": len(reposts),
        "posts": sum(1 for r in requests if r["op"] == "upload"),
        "downloads": sum(1 for r in requests if r["op"] == "download"),
        "batch_ids_posted_more_than_once": sum(1 for n in posts.values() if n > 1),
        "documents_checked": checked,
        "invalid": bad_xml + quarantined,
        "results_missing": len(results_missing),
        "unknown_at_sevis": len(unknown_at_sevis),
        "outbox_states": states,
    }
    details = {
        "lost_event_ids": lost_ids[:50],
        "twice_closed_event_ids": twice_closed[:50],
        "twice_sent_event_ids": twice_sent[:50],
        "reposted_batches": reposts,
        "results_missing_batches": results_missing,
        "unknown_at_sevis": unknown_at_sevis[:50],
        "events_missing_keys": cmp["events_missing_keys"][:50],
        "events_unexpected_keys": cmp["events_unexpected_keys"][:50],
        "open_by_status": dict(Counter(r.get("status") for r in end.open_records)),
        "sim_requests": Counter(f"{r['op']} {r['code']}" for r in requests),
        "posts_per_batch_id": {k: n for k, n in posts.items() if n > 1},
    }
    return figures, details


# ----------------------------------------------------------------------------- the run


class Chaos:
    """One run on a given Kafka and PostgreSQL database; ``run()`` returns the :class:`Report`."""

    def __init__(
        self,
        plan: Plan,
        bootstrap: str,
        pg: dict[str, Any],
        dsn: str,
        work: Path,
        xsd_dir: str,
        unique: str,
        say: Callable[[str], None] = print,
    ) -> None:
        self.plan, self.bootstrap, self.pg, self.dsn, self.work = plan, bootstrap, pg, dsn, work
        self.xsd_dir, self.unique, self.say = xsd_dir, unique, say
        self.rng = random.Random(plan.seed)
        self.report = Report(plan=dict(plan.__dict__))
        self.sim: Any = None
        self.stages: Stages | None = None
        self.settings: Any = None
        self.config = work / "sevisflow.toml"
        self.expected: list[dict[str, Any]] = []
        self.snapshot_creates: set[str] = set()
        self.activity_done = threading.Event()
        self.stop = threading.Event()

    # -- set-up

    def _setup(self) -> tuple[list[Any], list[dict[str, Any]], set[str]]:
        from sevisflow.core.config import settings_from_mapping, settings_toml
        from sevisflow.core.kafka_io import ensure_topics
        from sevisflow.core.topics import all_topics
        from sevisflow.deploy.sis.activity import generate_activity
        from sevisflow.deploy.sis.generator import generate_school
        from sevisflow.deploy.sis.load import create_schema, load_school
        from sevisflow.sinks.sevis_sim import SevisSimulator

        p = self.plan
        self.work.mkdir(parents=True, exist_ok=True)
        school = generate_school(p.students, p.share, p.seed, TODAY)
        create_schema(self.dsn)
        load_school(self.dsn, school)
        known = sorted({row["sevis_id"] for row in school["immigration"] if row.get("sevis_id")})
        self.sim = SevisSimulator(
            self.work / "sevis-certs",
            self.xsd_dir,
            known_sevis_ids=known,
            results_delay_s=p.results_delay_s,
            org_ids=[ORG_ID],
        )
        if hasattr(self.sim, "registration_delay_s"):
            self.sim.registration_delay_s = p.registration_delay_s
        self.sim.start()
        raw = chaos_raw(self.bootstrap, self.pg, self.work, self.unique, self.xsd_dir, self.sim)
        self.settings = settings_from_mapping(raw, env={})
        self.config.write_text(settings_toml(raw))
        self.config.chmod(0o600)
        ensure_topics(self.settings.kafka, all_topics(self.settings))
        activity = generate_activity(school, p.activity, p.seed, TODAY)
        snapshot, later = replay_events(p.students, p.share, p.seed, p.activity)
        self.n_snapshot_events = len(snapshot)
        return activity, snapshot + later, {e["student_key"] for e in snapshot if e["kind"] == "Create"}

    def _count(self, topic: str) -> int:
        from sevisflow.core.kafka_io import read_topic

        return sum(1 for _ in read_topic(self.settings.kafka, topic))

    def _events_on_topic(self) -> int:
        return self._count(self.settings.topics.events)

    def _await_snapshot(self, timeout_s: float = 300) -> None:
        """The SIS snapshot has flowed through (its views settled, its events out) before any activity:
        a change committed before the snapshot is part of the snapshot, not a change SEVIS must hear of."""
        assert self.stages is not None
        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            self.stages.check()
            views = self._count(self.settings.topics.students)
            if views != last:
                last, since = views, time.monotonic()
            elif views and time.monotonic() - since > 4 and self._events_on_topic() >= self.n_snapshot_events:
                return
            time.sleep(1)
        raise TimeoutError(
            f"the snapshot did not flow through in {timeout_s:.0f}s (views {last}, events "
            f"{self._events_on_topic()} of {self.n_snapshot_events}); logs in {self.work / 'logs'}"
        )

    # -- the actors

    def _play(self, activity: list[Any]) -> None:
        from sevisflow.deploy.sis.load import play_activity

        pace = self.plan.minutes * 60 * 0.8 / max(1, len(activity))
        try:
            for tx in activity:
                if self.stop.is_set():
                    return
                play_activity(self.dsn, [tx])
                self.stop.wait(pace)
        finally:
            self.activity_done.set()

    def _dso(self) -> None:
        while not self.stop.wait(self.plan.close_every_s):
            self._close()

    def _close(self) -> bool:
        ok, why = dso_close(self.config)
        why = why.replace("sevisflow: error: ", "")
        if why != "nothing ready":
            self.report.closes["ok" if ok else "failed"] += 1
            self.say("  DSO close: " + ("ok" if ok else f"not closed: {why[:240]}"))
        return ok

    def _in_flight_kill(self) -> bool:
        """Hold the next upload or download at the simulator, and kill ``sink sevis`` while it is held."""
        from sevisflow.sinks.sevis_sim.server import FAULT_MODES

        op = self.rng.choice(["upload", "download"])
        mode = self.rng.choice([m for m in IN_FLIGHT[op] if m in FAULT_MODES])
        hold = self.rng.uniform(3.0, 6.0)
        self.sim.fail(op, mode, 1, delay_s=hold)
        deadline = time.monotonic() + 40
        threading.Thread(target=self._close, daemon=True).start()  # something to upload (and then download)
        while time.monotonic() < deadline and not self.stop.is_set():
            with self.sim.lock:
                pending = any(f.op == op and f.mode == mode for f in self.sim.faults)
            if not pending:
                time.sleep(self.rng.uniform(0.2, hold * 0.6))
                assert self.stages is not None
                self.stages.kill("sink-sevis")
                self.report.in_flight_kills[f"{op} {mode}"] += 1
                self.say(f"  kill -9 sink-sevis while SEVIS holds its {op} ({mode}, {hold:.1f}s)")
                return True
            time.sleep(0.1)
        with self.sim.lock:  # nothing came: take the armed fault back
            self.sim.faults = [f for f in self.sim.faults if not (f.op == op and f.mode == mode)]
        return False

    def _chaos(self) -> None:
        assert self.stages is not None
        p = self.plan
        span = p.minutes * 60
        t0 = time.monotonic()
        deck: list[str] = []
        for k in range(p.kills):
            at = t0 + span * (k + self.rng.uniform(0.2, 0.9)) / p.kills
            while time.monotonic() < at:
                self.stages.check()
                time.sleep(0.2)
            if p.fault_every and k % p.fault_every == p.fault_every - 1:
                from sevisflow.sinks.sevis_sim.server import FAULT_MODES

                op, mode = self.rng.choice([f for f in FAULTS if f[1] in FAULT_MODES])
                self.sim.fail(op, mode, 1)
                self.report.faults[f"{op} {mode}"] += 1
                self.say(f"  SEVIS fault armed: next {op} → {mode}")
            killed = False
            every = max(1, round(1 / p.in_flight_share)) if p.in_flight_share > 0 else 0
            if every and k % every == every - 1:
                killed = self._in_flight_kill()
            if not killed:
                if not deck:  # every stage once per round, in a seeded order
                    deck = self.rng.sample(list(STAGES), len(STAGES))
                victim = deck.pop()
                self.stages.kill(victim)
                self.say(f"  kill -9 {victim}")
            down = self.rng.uniform(0.0, 4.0)
            time.sleep(down)
            for name, proc in self.stages.procs.items():
                if proc.poll() is not None and proc.returncode == -signal.SIGKILL:
                    self.stages.start(name)
            self.stages.check()

    # -- quiescence

    def _settle(self, n_expected: int) -> None:
        assert self.stages is not None
        deadline = time.monotonic() + self.plan.settle_timeout_s
        self.say(f"settling: waiting for {n_expected} events, closed batches uploaded, results published")
        last_close = 0.0
        stable_since: float | None = None
        while time.monotonic() < deadline:
            self.stages.check()
            n = self._events_on_topic()
            done = False
            if n >= n_expected:
                end = read_end_state(self.settings)
                ready = [r for r in end.open_records if r.get("status") == "open"]
                states = outbox_states(Path(self.settings.sevis.outbox_dir))
                pending = sum(len(states[s]) for s in ("ready", "sending", "uploaded"))
                written = {b.name for v in states.values() for b in v} | quarantined_names(
                    Path(self.settings.sevis.quarantine_dir)
                )
                unwritten = {safe_name(b) for b in end.closed} - written
                if ready and time.monotonic() - last_close > 10:
                    last_close = time.monotonic()
                    self._close()
                done = not ready and pending == 0 and not unwritten
            if done:
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since > 6:
                    return
            else:
                stable_since = None
            time.sleep(2)
        self.say("  !! not quiet before the settle timeout: counting what is there")
        self.report.details["settle_timed_out"] = True

    def count(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The figures of the end state as it is now (callable again after ``run``)."""
        return count_outcome(self.settings, self.sim, self.expected, self.snapshot_creates, self.xsd_dir)

    def run(self) -> Report:
        t_start = time.monotonic()
        try:
            activity, expected, snapshot_creates = self._setup()
            self.report.timings["setup_s"] = round(time.monotonic() - t_start, 1)
            self.say(
                f"school: {self.plan.students} students, {len(activity)} SIS transactions; "
                f"{len(expected)} SEVIS events expected; simulator at {self.sim.url}"
            )
            self.stages = Stages(self.config, self.work / "logs", self.report, self.say)
            self.stages.start_all()
            self._await_snapshot()
            self.report.timings["snapshot_s"] = round(time.monotonic() - t_start - self.report.timings["setup_s"], 1)
            self.say(f"snapshot through ({self.n_snapshot_events} events); activity, closes and kills start")
            t_chaos = time.monotonic()
            player = threading.Thread(target=self._play, args=(activity,), daemon=True)
            dso = threading.Thread(target=self._dso, daemon=True)
            player.start()
            dso.start()
            self._chaos()
            self.report.timings["chaos_s"] = round(time.monotonic() - t_chaos, 1)
            self.activity_done.wait(self.plan.minutes * 60)
            self.stop.set()
            player.join(60)
            dso.join(150)
            t_settle = time.monotonic()
            self._settle(len(expected))
            self.report.timings["settle_s"] = round(time.monotonic() - t_settle, 1)
            self.expected, self.snapshot_creates = expected, snapshot_creates
            self.stages.stop_all()
            figures, details = self.count()
            if self.plan.verify:
                t_verify = time.monotonic()
                proc = cli(self.config, "verify", "--all", "--no-seal", timeout_s=900)
                figures["verify_all"] = "passed" if proc.returncode == 0 else f"exit {proc.returncode}"
                details["verify_all_output"] = (proc.stdout + proc.stderr)[-3000:]
                self.report.timings["verify_s"] = round(time.monotonic() - t_verify, 1)
            self.report.figures = figures
            self.report.details.update(details)
        finally:
            self.stop.set()
            if self.stages is not None:
                self.stages.stop_all()
            if self.sim is not None:
                self.sim.stop()
            self.report.timings["total_s"] = round(time.monotonic() - t_start, 1)
            (self.work / "chaos-report.json").write_text(json.dumps(self.report.as_json(), indent=2, default=str))
        return self.report
