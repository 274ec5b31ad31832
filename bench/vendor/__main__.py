"""Vendor scale bench: many schools in one SIS and one pipeline, two instances per processor, one killed.

``python -m bench.vendor [--schools 100] [--students 2000] [--instances 2] [--rate 300] [--duration 120]
[--kill-after 40] [--partitions 6] [--kafka B --pg DSN]``

One SIS database holds every school (``generate_vendor``: ``person.school_code`` names the school), the
settings list each as a ``[[schools]]`` member with its own OrgID and DSO; one connector and one normalize
(a replication slot is one ordered stream) feed ``--instances`` sevis_events and ``--instances`` batcher
processes that share the partitions. What it measures, in order:

1. **snapshot**: seconds until every Create the pure pipeline derives from the SIS (per school, with the same
   school routing) is in the open batch of its school's OrgID; Creates in a wrong school's batch count as
   misrouted; peak RSS per process.
2. **close isolation**: a DSO close of one school alone (``--baseline`` schools, one after another), the same
   while another school is onboarded (its whole SIS load committed at once and streaming through the
   pipeline), and every other school closed at the same moment: seconds from the command to its
   ``closed`` event. "Delay" is against the median of the solo closes.
3. **kill**: e-mail changes of every person at ``--rate`` for ``--duration`` s; ``--kill-after`` s in, instance
   ``b`` of sevis_events and of the batcher is killed with SIGKILL and not restarted (its partitions move to
   instance ``a``). Then every school is closed and the run checks, on the topics: every event on
   ``sevis.events`` is in exactly one closed batch or still open (lost, duplicated), no event id twice on
   ``sevis.events``, and every student view on ``sevisflow.students`` derives (pure sevis_events, same
   routing) exactly the events that are on the topic.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition
from psycopg.conninfo import make_conninfo

from bench.common import TopicFollower
from bench.scale.__main__ import TODAY, _code_version, _load_avg, _say, services
from bench.scale.harness import (
    ORG,
    Driver,
    Stages,
    create_database,
    drop_database,
    expected_snapshot,
    run_settings,
    write_config,
)
from sevisflow.app.cli.batch import COMMAND_SCHEMA, new_command
from sevisflow.app.cli.dso import plan_close
from sevisflow.core.kafka_io import ensure_topics, make_consumer, make_producer, topic_partitions
from sevisflow.core.serde import registry
from sevisflow.core.topics import all_topics, change_topics, stage_group
from sevisflow.deploy.sis.generator import generate_vendor
from sevisflow.deploy.sis.load import create_schema, load_school
from sevisflow.deploy.sis.model import School
from sevisflow.deploy.sis.replay import MAPPING
from sevisflow.processors.batcher.view import BatchView, fold
from sevisflow.processors.normalize.view import StudentUpdate
from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline

REPO = Path(__file__).resolve().parents[2]


def org_of(i: int) -> str:
    """The i-th member school's OrgID (VND: not a real school)."""
    return f"VND214F{i:08d}"


def dso_of(i: int) -> str:
    return f"vdso{i:06d}"  # a SEVIS user id: 10 characters


def code_of(i: int) -> str:
    return f"S{i:03d}"


def split_school(school: School, code: str) -> tuple[School, School]:
    """(everything but school ``code``, school ``code`` alone): its persons and every row pointing at them;
    the shared reference rows (terms) stay with the rest."""
    ids = {p["person_id"] for p in school["person"] if p.get("school_code") == code}
    rest: dict[str, list[dict[str, Any]]] = {}
    one: dict[str, list[dict[str, Any]]] = {}
    for table, rows in school.items():
        if table == "person" or (rows and "person_id" in rows[0]):
            rest[table] = [r for r in rows if r["person_id"] not in ids]
            one[table] = [r for r in rows if r["person_id"] in ids]
        else:
            rest[table] = rows
    return rest, one


# --------------------------------------------------------------------------- what reached the topics


@dataclass
class VendorTail(TopicFollower):
    """Follows sevis.events and sevis.batches from the beginning (read committed): every school's open batch
    (folded as ``batch show --from-history`` does), each event id and its OrgID, each closed batch's records,
    and when each close command's ``closed`` event arrived."""

    views: dict[str, BatchView] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)  # (event id, OrgID), as on the topic
    closed: list[dict[str, Any]] = field(default_factory=list)
    closed_at: dict[str, float] = field(default_factory=dict)  # command id -> monotonic time seen
    rejected: dict[str, str] = field(default_factory=dict)  # command id -> reason

    name: ClassVar[str] = "bench-vendor-tail"

    def view(self, org: str) -> BatchView:
        with self.lock:
            return copy.deepcopy(self.views.get(org) or BatchView(org))

    def open_creates(self) -> set[tuple[str, str]]:
        with self.lock:
            return {
                (org, r["student_key"])
                for org, v in self.views.items()
                for r in v.records.values()
                if r["section"] == "create"
            }

    def open_records(self) -> int:
        with self.lock:
            return sum(len(v.records) for v in self.views.values())

    def assignment(self, consumer: Any) -> list[TopicPartition]:
        t = self.settings.topics
        return self.from_beginning(consumer, (t.events, t.batches))

    def take(self, msg: Any) -> None:
        self._take(msg.topic(), registry().decode(msg.value()))

    def _take(self, topic: str, rec: dict[str, Any]) -> None:
        now = time.monotonic()
        with self.lock:
            if topic == self.settings.topics.events:
                self.events.append((rec["event_id"], rec["org_id"]))
                return
            org = rec["org_id"]
            fold(self.views.setdefault(org, BatchView(org)), rec)
            if rec["type"] == "closed":
                self.closed.append(rec)
                if rec.get("command_id"):
                    self.closed_at.setdefault(rec["command_id"], now)
            elif rec["type"] == "command_rejected" and rec.get("command_id"):
                self.rejected[rec["command_id"]] = str(rec.get("reason") or "")


def close_commands(tail: VendorTail, schools: list[int]) -> list[dict[str, Any]]:
    """A ``batch close --yes`` command per school with ready records (as the CLI builds it): the ready records
    of the open batch this reader sees, on its revision."""
    cmds = []
    for i in schools:
        view = tail.view(org_of(i))
        ready = plan_close(view, view).ready
        if ready:
            cmds.append(
                new_command(
                    org_of(i),
                    "close",
                    dso_user_id=dso_of(i),
                    record_ids=[r["record_id"] for r in ready],
                    basis_revision=view.revision,
                    reason="vendor bench close",
                )
            )
    return cmds


def send_and_time(settings: Any, tail: VendorTail, cmds: list[dict[str, Any]], timeout_s: float) -> list[float]:
    """Send ``cmds`` at once; seconds from the send to each one's ``closed`` event (a refused or unanswered
    command is an error: the bench stops)."""
    if not cmds:
        return []
    producer = make_producer(settings.kafka)
    sent = time.monotonic()
    for cmd in cmds:
        producer.produce(
            settings.topics.commands, key=cmd["org_id"].encode(), value=registry().encode(COMMAND_SCHEMA, cmd)
        )
    if producer.flush(30) != 0:
        raise RuntimeError("close commands not delivered within 30 s")
    ids = [c["command_id"] for c in cmds]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with tail.lock:
            bad = [tail.rejected[c] for c in ids if c in tail.rejected]
            done = all(c in tail.closed_at for c in ids)
        if bad:
            raise RuntimeError(f"the batcher refused a close: {bad[0]}")
        if done:
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"closes not answered within {timeout_s:.0f} s")
    with tail.lock:
        return [round(tail.closed_at[c] - sent, 3) for c in ids]


def lagging(settings: Any, stage: str, topics: list[str], slack: int) -> int:
    """Records of ``topics`` that ``stage``'s consumer group has not committed yet (read from the group's committed
    offsets; the bench never joins the group), or -1 while they cannot be read: a killed instance's open
    transaction holds offsets the broker will not answer for until that transaction times out. ``slack``: offsets
    at a partition's end nobody reads — the commit marker that ends a transactional producer's last transaction."""
    consumer = make_consumer(settings.kafka, group_id=stage_group(settings, stage))
    try:
        tps = [TopicPartition(t, p) for t in topics for p in topic_partitions(consumer, settings.kafka, t, 30.0) or []]
        lag = 0
        try:
            committed = consumer.committed(tps, timeout=10)
        except KafkaException:
            return -1
        for tp in committed:
            high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=30)[1]
            lag += max(0, high - slack - max(tp.offset, 0))
        return lag
    finally:
        consumer.close()


def drain(settings: Any, tail: VendorTail, settle_s: float, max_s: float) -> dict[str, Any]:
    """Wait until normalize, sevis_events and the batcher have committed everything before them (a killed
    instance's partitions move only after its session times out) and no event arrived for ``settle_s``."""
    t0 = time.monotonic()
    change = [s.name for s in change_topics(settings)]
    lags: dict[str, int] = {}
    seen, quiet_since = -1, time.monotonic()
    while time.monotonic() - t0 < max_s:
        lags = {
            "normalize": lagging(settings, "normalize", change, 0),
            "events": lagging(settings, "events", [settings.topics.students], 1),
            "batcher": lagging(settings, "batcher", [settings.topics.events], 1),
        }
        with tail.lock:
            now_seen = len(tail.events)
        if now_seen != seen:
            seen, quiet_since = now_seen, time.monotonic()
        if not any(lags.values()) and time.monotonic() - quiet_since >= settle_s:
            break
        time.sleep(1.0)
    return {"seconds": round(time.monotonic() - t0, 1), "lag_at_end": lags}


def start_late(stages: Stages, commands: dict[str, list[str]], after_s: float) -> None:
    """Start ``commands`` ``after_s`` after the others, as a slow or restarted instance joins a running group
    (the group rebalances while records flow)."""
    time.sleep(after_s)
    stages.spawn(commands)
    _say(f"started late ({after_s:g} s): {sorted(commands)}")


def _dist(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median_s": None, "max_s": None}
    return {"n": len(values), "median_s": round(statistics.median(values), 3), "max_s": round(max(values), 3)}


# --------------------------------------------------------------------------- the phases


def wait_creates(tail: VendorTail, stages: Stages, want: set[tuple[str, str]], timeout_s: float) -> dict[str, Any]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        have = tail.open_creates()
        if want <= have or stages.failed() or tail.error:
            break
        time.sleep(0.5)
    have = tail.open_creates()
    school_of = {key: org for org, key in want}
    return {
        "seconds": round(time.monotonic() - t0, 1),
        "complete": want <= have,
        "creates_expected": len(want),
        "creates_missing": len(want - have),
        "creates_in_a_wrong_schools_batch": sum(1 for org, key in have if school_of.get(key, org) != org),
    }


def check_exactly_once(settings: Any, tail: VendorTail, schools: dict[str, str]) -> dict[str, Any]:
    """Every event in exactly one closed batch (or still open), none twice on the topic; and the events the
    pure sevis_events derives from every student view on the topic, compared with the events there."""
    with tail.lock:
        events = list(tail.events)
        placed = [
            (eid, c["org_id"]) for c in tail.closed for r in orjson.loads(c["records_json"]) for eid in r["event_ids"]
        ]
        open_records = [r for v in tail.views.values() for r in v.records.values()]
        still_open = {eid for r in open_records for eid in r.get("event_ids") or []}
        open_by_status = Counter(str(r.get("status")) for r in open_records)
    on_topic = Counter(eid for eid, _ in events)
    in_closed = Counter(eid for eid, _ in placed)
    org_of_event = dict(events)
    derived_events = derive_from_views(settings, schools)
    derived = set(derived_events)
    missing = sorted(derived - set(on_topic))
    return {
        "events_on_topic": len(events),
        "events_twice_on_topic": sum(n - 1 for n in on_topic.values() if n > 1),
        "events_in_closed_batches": sum(in_closed.values()),
        "events_in_two_closed_batches": sum(n - 1 for n in in_closed.values() if n > 1),
        "events_still_open": len(still_open),
        "open_records_by_status": dict(open_by_status),
        "lost": len(set(on_topic) - set(in_closed) - still_open),
        "in_a_wrong_schools_batch": sum(1 for eid, org in placed if org_of_event.get(eid, org) != org),
        "derived_from_views": len(derived),
        "derived_not_on_topic": len(derived - set(on_topic)),
        "on_topic_not_derived": len(set(on_topic) - derived),
        "derived_not_on_topic_sample": [
            {k: derived_events[eid].get(k) for k in ("kind", "org_id", "student_key", "unit_id", "snapshot")}
            for eid in missing[:5]
        ],
    }


def derive_from_views(settings: Any, schools: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The event ids the pure sevis_events derives from ``sevisflow.students`` (each partition in order, as the
    stage reads it): what the events stage instances should have written, kill or no kill."""
    pipe = PurePipeline(MAPPING, org_id=ORG, schools=schools)
    out = PureOutput()
    consumer = make_consumer(settings.kafka, group_id=f"bench-vendor-views-{uuid.uuid4().hex[:8]}")
    topic = settings.topics.students
    try:
        parts = topic_partitions(consumer, settings.kafka, topic, 30.0) or []
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
        for p in parts:
            if ends[p] == 0:
                continue
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
            done, idle = False, 0
            while not done and idle < 5:  # the last offsets may be transaction markers: no message reaches them
                msgs = consumer.consume(1000, 1.0)
                idle = 0 if msgs else idle + 1
                for msg in msgs:
                    if msg.error() is None and msg.value() is not None:
                        rec = registry().decode(msg.value())
                        upd = StudentUpdate(
                            rec["student_key"],
                            orjson.loads(rec["view_json"]),
                            list(rec.get("lineage") or []),
                            rec["unit_id"],
                            bool(rec.get("snapshot")),
                        )
                        pipe.apply_view(upd, out)
                    if msg.offset() >= ends[p] - 1:
                        done = True
    finally:
        consumer.close()
    return {e["event_id"]: e for e in out.events}


def run(args: argparse.Namespace, bootstrap: str, server: str) -> dict[str, Any]:
    n = args.schools
    t0 = time.perf_counter()
    vendor = generate_vendor([(code_of(i), args.students) for i in range(n + 1)], args.share, args.seed, TODAY)
    loaded, onboarding = split_school(vendor, code_of(n))  # school n joins later (phase 2)
    schools = {code_of(i): org_of(i) for i in range(n + 1)}
    exp = expected_snapshot(loaded, schools=schools)
    want = {(org, key) for org, keys in exp.creates_by_org.items() for key in keys}
    exp_new = expected_snapshot(onboarding, schools=schools)
    want_new = {(org, key) for org, keys in exp_new.creates_by_org.items() for key in keys}
    _say(
        f"{n} schools x {args.students} students generated, {len(want)} Creates expected ({time.perf_counter() - t0:.0f}s)"
    )
    unique = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="vendor-", dir=args.work_dir))
    pg = create_database(server, f"vendor_{unique}")
    stages: Stages | None = None
    tail: VendorTail | None = None
    out: dict[str, Any] = {"schools": n, "students_per_school": args.students, "instances": args.instances}
    try:
        dsn = make_conninfo(**pg)
        create_schema(dsn)
        load_school(dsn, loaded)
        raw = run_settings(bootstrap, pg, unique, work, args.backend)
        raw["kafka"]["partitions"] = args.partitions
        raw["schools"] = [
            {"org_id": org_of(i), "sis_school": code_of(i), "dso_user_ids": [dso_of(i)]} for i in range(n + 1)
        ]
        settings, config = write_config(raw, work / "sevisflow.toml")
        ensure_topics(settings.kafka, all_topics(settings))
        level = ["--log-level", args.stage_log_level] if args.stage_log_level else []
        commands = {"connector": [*level, "connector", "run"], "normalize": [*level, "process", "normalize"]}
        for stage in ("events", "batcher"):
            for k in range(args.instances):
                commands[f"{stage}-{'ab'[k] if k < 2 else k}"] = [*level, "process", stage, "--instance", f"v{k}"]
        late = {name: commands.pop(name) for name in args.start_late if name in commands}
        stages = Stages(config, work, every_s=args.sample, rss_limit_mib=args.rss_limit).start(commands)
        if late:
            start_late(stages, late, args.start_late_after)
        tail = VendorTail(settings).start()
        out["snapshot"] = wait_creates(tail, stages, want, args.timeout)
        out["snapshot"]["peak_rss_mib"] = dict(stages.peak_mib)
        _say(f"snapshot: {json.dumps(out['snapshot'])}")
        if not out["snapshot"]["complete"]:
            out["failure"] = stages.failed()[-3000:] or tail.error
            return out

        # 2. close isolation
        base: list[float] = []
        for i in range(args.baseline):
            base += send_and_time(settings, tail, close_commands(tail, [i]), args.close_timeout)
        solo = statistics.median(base) if base else 0.0
        joiner = threading.Thread(target=load_school, args=(dsn, onboarding), daemon=True)
        joined_at = time.monotonic()
        joiner.start()
        during: list[float] = []
        others = list(range(args.baseline, min(n, args.baseline + args.during)))
        for i in others:
            during += send_and_time(settings, tail, close_commands(tail, [i]), args.close_timeout)
        joiner.join()
        onboard = wait_creates(tail, stages, want_new, args.timeout)
        onboard["seconds_from_commit"] = round(time.monotonic() - joined_at, 1)
        rest = [i for i in range(n) if i not in others and i >= args.baseline]
        at_once = send_and_time(settings, tail, close_commands(tail, rest), args.close_timeout)
        out["closes"] = {
            "solo": _dist(base),
            "during_onboarding": _dist(during),
            "during_onboarding_delay_max_s": round(max(during) - solo, 3) if during else None,
            "all_at_once": _dist(at_once),
            "all_at_once_delay_max_s": round(max(at_once) - solo, 3) if at_once else None,
            "onboarded_school": onboard,
        }
        _say(f"closes: {json.dumps(out['closes'])}")

        # 3. steady load, kill instance b of events and batcher
        # every school's persons in a seeded random order: the load reaches every school, not the first few
        people = [r["person_id"] for r in vendor["person"]]
        random.Random(args.seed).shuffle(people)
        killed: dict[str, int] = {}

        def kill_later() -> None:
            time.sleep(args.kill_after + 3.0)  # the driver starts its writers 3 s after it is created
            for name in ("events-b", "batcher-b"):
                proc = stages.procs.pop(name, None) if stages else None
                if proc is not None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    killed[name] = proc.pid
            _say(f"killed {sorted(killed)}")

        killer = threading.Thread(target=kill_later, daemon=True)
        if args.instances >= 2 and args.kill_after >= 0:
            killer.start()
        driver = Driver(dsn, [], people, args.rate, args.duration, args.writers).run()
        killer.join(timeout=60)
        drained = drain(settings, tail, args.settle, args.drain_max)
        final = send_and_time(settings, tail, close_commands(tail, list(range(n + 1))), args.close_timeout)
        out["kill"] = {
            "committed_row_changes": driver.committed_ops,
            "rate_achieved": round(driver.committed_ops / driver.elapsed_s, 1) if driver.elapsed_s else 0.0,
            "driver_error": driver.error,
            "killed": sorted(killed),
            "drain": drained,
            "final_closes": _dist(final),
            **check_exactly_once(settings, tail, schools),
        }
        out["peak_rss_mib"] = dict(stages.peak_mib)
        out["cpu_s"] = dict(stages.cpu_s)
        out["failure"] = stages.failed()[-3000:] or tail.error
        _say(f"kill: {json.dumps(out['kill'])}")
        return out
    finally:
        if stages:
            stages.stop()
        if tail:
            tail.stop()
        drop_database(pg)
        if args.keep:
            _say(f"logs and state kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.vendor", description=__doc__.split("\n")[0])
    p.add_argument("--schools", type=int, default=100)
    p.add_argument("--students", type=int, default=2000, help="students per school (default 2000)")
    p.add_argument("--share", type=float, default=0.35, help="international share (default 0.35)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--instances", type=int, default=2, help="sevis_events and batcher processes each (default 2)")
    p.add_argument("--partitions", type=int, default=6, help="partitions of the pipeline topics (default 6)")
    p.add_argument("--backend", default="rocksdb", help="[state] backend (default rocksdb)")
    p.add_argument("--baseline", type=int, default=5, help="schools closed alone, one after another (default 5)")
    p.add_argument("--during", type=int, default=10, help="schools closed one by one while one is onboarded")
    p.add_argument("--rate", type=float, default=300.0, help="kill phase: SIS row changes per second")
    p.add_argument("--duration", type=float, default=120.0, help="kill phase: seconds of load")
    p.add_argument("--kill-after", type=float, default=40.0, help="kill phase: seconds into the load (-1 = no kill)")
    p.add_argument("--writers", type=int, default=2, help="SIS writer processes (default 2)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds a snapshot may take")
    p.add_argument("--close-timeout", type=float, default=300.0, help="seconds a close may take")
    p.add_argument("--settle", type=float, default=20.0, help="after the load: seconds without a new event")
    p.add_argument("--drain-max", type=float, default=300.0, help="after the load: wait at most this long")
    p.add_argument("--rss-limit", type=float, default=12_000, help="MiB: a process above it stops the run")
    p.add_argument("--sample", type=float, default=1.0, help="seconds between RSS samples")
    p.add_argument("--kafka", help="bootstrap servers of a running Kafka (with --pg; default: start a local stack)")
    p.add_argument("--pg", help="libpq conninfo of a PostgreSQL with wal_level=logical")
    p.add_argument("--work-dir", help="folder for the run's state, logs and settings (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the run's folder")
    p.add_argument("--stage-log-level", default="", help="the stage processes' --log-level (default theirs)")
    p.add_argument(
        "--start-late",
        nargs="*",
        default=[],
        help="stage processes started --start-late-after s after the others (e.g. batcher-b events-b)",
    )
    p.add_argument("--start-late-after", type=float, default=3.0, help="seconds (default 3)")
    p.add_argument("--json-out", default=str(REPO / "bench" / "results" / "vendor.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.schools < args.baseline + 1:
        raise SystemExit("--schools must be larger than --baseline")
    with services(args) as (bootstrap, server):
        result = {
            "args": vars(args),
            "code": _code_version(),
            "load_avg_start": _load_avg(),
            **run(args, bootstrap, server),
            "load_avg_end": _load_avg(),
        }
    Path(args.json_out).write_text(json.dumps(result, indent=2, default=str))
    _say(f"results in {args.json_out}")
    ok = (
        result.get("snapshot", {}).get("complete")
        and not result.get("failure")
        and "kill" in result
        and result["kill"]["lost"] == 0
        and result["kill"]["events_in_two_closed_batches"] == 0
        and result["kill"]["events_twice_on_topic"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
