"""``verify <BatchID>`` and ``audit student`` with many closed batches in the log, each against the whole-log way.

    .venv/bin/python -m bench.audit.scale [--case verify|student|all] [--batches 100] [--size 20] [--repeat 5]
                                          [--kafka BOOTSTRAP] [--xsd-dir DIR]

Builds one school's history with the real batcher (:func:`testkit.audit_scenario.batcher_run`:
``--batches`` rounds of ``--size`` update events + 2 Creates, each closed by a DSO), produces it to
topics of its own on a Kafka (a throwaway local one unless ``--kafka``), files every closed batch with
the XML sink's own function and seals it on the audit ledger. Then, for the first, middle and last
batch, it times, ``--repeat`` times each, alternating:

* ``empty``   — ``sevisflow verify <BatchID> --from-start`` (:func:`sevisflow.app.cli.verify.verify_one`):
  every topic read from its beginning up to the batch's close, the batcher re-run from an empty state;
* ``all``     — the same without ``--from-start`` after one ``verify --all`` pass (it writes a checkpoint
  after every 10th batch and the last): the batcher resumes from the newest checkpoint before the batch
  and the topics are read from its offsets;
* ``prev``    — the same after the batch before it was verified (its checkpoint is the newest);
* ``cli``     — the command itself in a fresh process (``python -m sevisflow verify <BatchID>``), with the
  ``prev`` checkpoints: interpreter start and imports included, what an auditor waits for.

Each way has its own audit folder (``<outbox>/audit``, moved in place before each run), so the runs of
one repeat alternate. Every verdict must be VERIFIED, from the checkpoint the way says.

For a student of the first, middle and last batch (case ``student``), ``--repeat`` times each, alternating:

* ``subset``  — what ``sevisflow audit student <key>`` does now (:func:`sevisflow.app.cli.audit.student_from_log`):
  every topic read, only the records holding the student key or one of its BatchIDs decoded, the outbox
  looked up for the student's batches only;
* ``whole``   — the earlier behaviour: every record decoded, the outbox looked up for every closed batch;
* ``cli``     — ``python -m sevisflow audit student <key> --json`` in a fresh process, and the same with
  ``--decode-all`` (``cli_all``).

Every timeline must equal the whole log's. No change topics: the events and sources checks of verify are
skipped, and ``audit student`` has no SIS steps here (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]


def build(
    bootstrap: str, tmp: Path, batches: int, size: int, xsd_dir: str
) -> tuple[Path, list[str], int, dict[str, str]]:
    """The school's topics and sealed outbox; returns (config file, batch ids, records produced, the student
    key of each batch's last record)."""
    from sevisflow.core.config import load_settings
    from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_producer
    from sevisflow.core.ledger import Ledger, LedgerWriter
    from sevisflow.core.serde import registry
    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.render import ClosedBatch
    from sevisflow.sinks.xml.stage import sink_closed_batch
    from sevisflow.sinks.xml.xsd import load_schema
    from testkit.audit_scenario import batcher_run

    u = uuid.uuid4().hex[:8]
    cfg = tmp / "sevisflow.toml"
    cfg.write_text(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
[connector]
topic_prefix = "sis{u}"
[topics]
events = "sevis.events.{u}"
batches = "sevis.batches.{u}"
commands = "sevis.batch.commands.{u}"
results = "sevis.results.{u}"
ledger = "sevis.audit.ledger.{u}"
[sevis]
outbox_dir = "{tmp / "outbox"}"
quarantine_dir = "{tmp / "quarantine"}"
xsd_dir = "{xsd_dir}"
""")
    settings = load_settings(cfg, env={})
    t = settings.topics
    run = batcher_run(updates=size, creates=2, batches=batches)
    names = {"events": t.events, "commands": t.commands, "batches": t.batches}
    ensure_topics(settings.kafka, [TopicSpec(n, 1, 1) for n in [*names.values(), t.results]])
    producer = make_producer(settings.kafka)
    n = 0
    for k, recs in run.items():
        for key, value, ts in recs:
            producer.produce(names[k], key=key, value=value, timestamp=ts)
            n += 1
            if n % 5000 == 0:
                producer.poll(0)
    assert producer.flush(60) == 0
    outbox = Outbox(settings.sevis.outbox_dir, settings.sevis.quarantine_dir, settings.school.timezone)
    writer = LedgerWriter(Ledger(settings.sevis.outbox_dir), "sink-xml", settings.school.org_id)
    schema = load_schema(xsd_dir)
    ids, students = [], {}
    for _, value, _ in run["batches"]:
        ev = registry().decode(value)
        if ev["type"] == "closed":
            records = orjson.loads(ev["records_json"])
            sink_closed_batch(ClosedBatch.from_event(ev, records), schema, outbox)
            writer.seal_archive(outbox.find(ev["batch_id"]), ev["batch_id"])
            ids.append(ev["batch_id"])
            students[ev["batch_id"]] = records[-1]["student_key"]
    return cfg, ids, n, students


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def cpu_timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, CPU s of this process and of the children it waited for, result): on a shared machine the
    CPU time is the figure that does not depend on the neighbours."""

    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    c0 = cpu()
    wall, out = timed(fn)
    return wall, cpu() - c0, out


AUDIT_SETS = ("empty", "all", "prev")


def _use(outbox: Path, which: str) -> None:
    """Put the audit folder of ``which`` in place (``<outbox>/audit.<which>`` ↔ ``<outbox>/audit``)."""
    import shutil

    live = outbox / "audit"
    if live.exists():
        shutil.rmtree(live)  # what a run wrote in place of the empty set, or a copy of a kept set
    kept = outbox / f"audit.{which}"
    if kept.exists():
        shutil.copytree(kept, live)


def prepare_checkpoints(cfg: Path, ids: list[str], picks: dict[str, str]) -> tuple[float, float]:
    """The audit folders of the ``all`` and ``prev`` ways; returns the ``verify --all`` pass (wall s, CPU s)."""
    import shutil

    from sevisflow.app.cli import main as cli_main
    from sevisflow.app.cli.verify import verify_one
    from sevisflow.core.config import load_settings

    settings = load_settings(cfg, env={})
    outbox = Path(settings.sevis.outbox_dir)
    _use(outbox, "empty")
    with contextlib.redirect_stdout(io.StringIO()):  # its verdicts
        w, c, code = cpu_timed(
            lambda: cli_main(["--config", str(cfg), "verify", "--all", "--no-sources", "--allow-skipped"])
        )
    assert code == 0, code
    shutil.move(outbox / "audit", outbox / "audit.all")
    for bid in picks.values():
        k = ids.index(bid)
        if k:
            v, read = verify_one(settings, ids[k - 1], with_sources=False, timeout_s=60)
            assert v.ok and "checkpoint written" in read, read
    shutil.move(outbox / "audit", outbox / "audit.prev")
    return w, c


def one_run(cfg: Path, ids: list[str], bid: str) -> dict[str, float]:
    """One repeat of the four ways for one batch; every verdict must be ok, from the checkpoint expected."""
    from sevisflow.app.cli.verify import verify_one
    from sevisflow.core.config import load_settings

    settings = load_settings(cfg, env={})
    outbox = Path(settings.sevis.outbox_dir)
    k = ids.index(bid)
    out: dict[str, float] = {}
    for way in AUDIT_SETS:
        _use(outbox, way)
        fresh = way == "empty"
        w, c, (v, read) = cpu_timed(
            lambda fresh=fresh: verify_one(settings, bid, with_sources=False, timeout_s=60, from_start=fresh)
        )
        before = {"empty": None, "all": (k // 10) * 10 - 1, "prev": k - 1}[way]
        want = (
            f"resumed the batcher from the checkpoint after batch {ids[before]}"
            if before is not None and before >= 0
            else "read the log up to"
        )
        assert v.ok and read.startswith(want), (way, v.to_json(), read)
        out[way], out[f"{way}_cpu"] = w, c
    _use(outbox, "prev")
    c, c_cpu, proc = cpu_timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "sevisflow", "--config", str(cfg), "verify", bid, "--no-sources", "--allow-skipped"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
    )
    assert proc.returncode == 0 and "VERIFIED" in proc.stdout, proc.stdout + proc.stderr
    assert k == 0 or f"resumed the batcher from the checkpoint after batch {ids[k - 1]}" in proc.stdout, proc.stdout
    out["cli"], out["cli_cpu"] = c, c_cpu
    return out


def whole_log_timeline(settings: Any, student: str) -> dict[str, Any]:
    """``audit student`` as it was before the subset read: every record of every topic decoded, the outbox
    looked up for every closed batch of the log."""
    from sevisflow.app.audit.replay import StudentMatcher, layout_from_settings
    from sevisflow.app.audit.sources import load_inputs, outbox_info
    from sevisflow.app.audit.timeline import student_timeline

    inputs = load_inputs(settings, with_changes=True, timeout_s=60)
    closed_ids = {
        (d.value or {}).get("batch_id")
        for d in inputs.batches
        if isinstance(d.value, dict) and d.value.get("type") == "closed"
    }
    uploads = {b: info for b in closed_ids if b and (info := outbox_info(settings, b))}
    tl = student_timeline(
        student,
        changes=inputs.changes,
        events=inputs.events,
        batches=inputs.batches,
        results=inputs.results,
        commands=inputs.commands,
        uploads=uploads,
        matcher=StudentMatcher(student, layout_from_settings(settings)),
    )
    return tl.to_json()


def student_run(cfg: Path, student: str) -> dict[str, float]:
    """One repeat of the four ways for one student; every timeline must be the whole log's."""
    from sevisflow.app.cli.audit import student_from_log
    from sevisflow.core.config import load_settings

    settings = load_settings(cfg, env={})
    s, s_cpu, (tl, read) = cpu_timed(lambda: student_from_log(settings, student, timeout_s=60))
    assert read is not None and read.records.decoded < read.records.read, read.to_json()
    w, w_cpu, whole = cpu_timed(lambda: whole_log_timeline(settings, student))
    assert tl.to_json() == whole and whole["steps"], (student, whole)
    out: dict[str, float] = {
        "subset": s,
        "subset_cpu": s_cpu,
        "whole": w,
        "whole_cpu": w_cpu,
        "decoded": read.records.decoded,
        "read": read.records.read,
    }
    for name, extra in (("cli", []), ("cli_all", ["--decode-all"])):
        c, c_cpu, proc = cpu_timed(
            lambda extra=extra: subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "sevisflow",
                    "--config",
                    str(cfg),
                    "audit",
                    "student",
                    student,
                    "--json",
                    *extra,
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=600,
            )
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        got = orjson.loads(proc.stdout)
        got.pop("read")
        assert got == orjson.loads(orjson.dumps(whole)), (name, student)
        out[name], out[f"{name}_cpu"] = c, c_cpu
    return out


def _medians(rs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rs) for k in rs[0]}


def _cell(med: dict[str, float], k: str) -> str:
    return f"{med[k]:.2f} ({med[k + '_cpu']:.2f})"


def verify_case(cfg: Path, ids: list[str], repeat: int) -> None:
    picks = {"first": ids[0], "middle": ids[len(ids) // 2], "last": ids[-1]}
    all_wall, all_cpu = prepare_checkpoints(cfg, ids, picks)
    print(f"verify --all (writes the checkpoints): {all_wall:.2f} s ({all_cpu:.2f} CPU s)", flush=True)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in picks}
    for i in range(repeat):
        for which, bid in picks.items():
            runs[which].append(one_run(cfg, ids, bid))
        print(f"verify: repeat {i + 1} done", flush=True)
    print(
        f"\nverify <BatchID>, {len(ids)} closed batches in the log, median of {repeat}, "
        f"wall seconds (CPU seconds); load average at the end {os.getloadavg()[0]:.1f}:"
    )
    print(
        "| batch | from an empty state (`--from-start`) | from the checkpoints of one `verify --all` "
        "| from the previous batch's checkpoint | `sevisflow verify <BatchID>` (new process, previous batch's) |"
    )
    print("|---|---|---|---|---|")
    for which, rs in runs.items():
        med = _medians(rs)
        print(
            f"| {which} ({picks[which]}) | {_cell(med, 'empty')} | {_cell(med, 'all')} | {_cell(med, 'prev')} "
            f"| {_cell(med, 'cli')} |"
        )


def student_case(cfg: Path, ids: list[str], students: dict[str, str], repeat: int) -> None:
    picks = {"first": students[ids[0]], "middle": students[ids[len(ids) // 2]], "last": students[ids[-1]]}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in picks}
    for i in range(repeat):
        for which, student in picks.items():
            runs[which].append(student_run(cfg, student))
        print(f"student: repeat {i + 1} done", flush=True)
    print(
        f"\naudit student <key>, {len(ids)} closed batches in the log, median of {repeat}, "
        f"wall seconds (CPU seconds); load average at the end {os.getloadavg()[0]:.1f}:"
    )
    print(
        "| student of batch | records decoded | subset decoded (now) | whole log decoded (before) "
        "| `sevisflow audit student <key> --json` (new process) | same with `--decode-all` (new process) |"
    )
    print("|---|---|---|---|---|---|")
    for which, rs in runs.items():
        med = _medians(rs)
        print(
            f"| {which} ({picks[which]}) | {med['decoded']:.0f} of {med['read']:,.0f} "
            f"| {_cell(med, 'subset')} | {_cell(med, 'whole')} "
            f"| {_cell(med, 'cli')} | {_cell(med, 'cli_all')} |"
        )


def main(argv: list[str] | None = None) -> int:
    from bench.common import kafka_bootstrap
    from testkit.settings import XSD_DIR

    ap = argparse.ArgumentParser(prog="python -m bench.audit.scale")
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--size", type=int, default=20, help="update events per batch (plus 2 Creates)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--kafka", help="bootstrap servers of a running Kafka (default: start a local one)")
    ap.add_argument(
        "--xsd-dir",
        default=str(XSD_DIR),
        help="the SEVIS XSDs (default: $SEVISFLOW_TEST_XSD_DIR or ../shared/sevis/xsd)",
    )
    ap.add_argument("--case", choices=("verify", "student", "all"), default="all")
    args = ap.parse_args(argv)
    with kafka_bootstrap(args.kafka, "bench-audit") as bootstrap, tempfile.TemporaryDirectory() as tmp:
        t_build, (cfg, ids, n, students) = timed(
            lambda: build(bootstrap, Path(tmp), args.batches, args.size, args.xsd_dir)
        )
        print(
            f"{len(ids)} closed batches, {n:,} records on the SEVIS-side topics; built in {t_build:.0f} s", flush=True
        )
        if args.case in ("verify", "all"):
            verify_case(cfg, ids, args.repeat)
        if args.case in ("student", "all"):
            student_case(cfg, ids, students, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
