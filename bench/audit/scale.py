"""``verify <BatchID>`` with many closed batches in the log: the read up to the batch's close vs the whole log.

    .venv/bin/python -m bench.audit.scale [--batches 100] [--size 20] [--repeat 5] [--kafka BOOTSTRAP]
                                          [--xsd-dir DIR]

Builds one school's history with the real batcher (:func:`testkit.audit_scenario.batcher_run`:
``--batches`` rounds of ``--size`` update events + 2 Creates, each closed by a DSO), produces it to
topics of its own on a Kafka (a throwaway local one unless ``--kafka``), files every closed batch with
the XML sink's own function and seals it on the audit ledger. Then, for the first, middle and last
batch, it times, ``--repeat`` times each, alternating:

* ``scoped``  — what ``sevisflow verify <BatchID>`` does now (:func:`sevisflow.app.cli.verify.verify_one`):
  locate the closed event by the manifest's close time, read every topic up to it, verify;
* ``whole``   — the earlier behaviour: read every topic to its end, then verify the batch;
* ``cli``     — the command itself in a fresh process (``python -m sevisflow verify <BatchID>``),
  interpreter start and imports included: what an auditor waits for.

No change topics: the events and sources checks are skipped here (see bench/README.md).
"""

from __future__ import annotations

import argparse
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


def build(bootstrap: str, tmp: Path, batches: int, size: int, xsd_dir: str) -> tuple[Path, list[str], int]:
    """The school's topics and sealed outbox; returns (config file, batch ids, records produced)."""
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
    ids = []
    for _, value, _ in run["batches"]:
        ev = registry().decode(value)
        if ev["type"] == "closed":
            sink_closed_batch(ClosedBatch.from_event(ev, orjson.loads(ev["records_json"])), schema, outbox)
            writer.seal_archive(outbox.find(ev["batch_id"]), ev["batch_id"])
            ids.append(ev["batch_id"])
    return cfg, ids, n


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


def one_run(cfg: Path, bid: str) -> dict[str, float]:
    """One repeat of the three ways for one batch; every verdict must be ok."""
    from sevisflow.app.audit.verify import verify_batch
    from sevisflow.app.cli.verify import load_context, verify_one
    from sevisflow.core.config import load_settings

    settings = load_settings(cfg, env={})
    s, s_cpu, (v, read) = cpu_timed(lambda: verify_one(settings, bid, with_sources=False, timeout_s=60))
    assert v.ok and read.startswith("read the log up to"), (v.to_json(), read)
    w, w_cpu, v2 = cpu_timed(lambda: verify_batch(bid, load_context(settings, with_sources=False, timeout_s=60)))
    assert v2.ok, v2.to_json()
    c, c_cpu, out = cpu_timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "sevisflow", "--config", str(cfg), "verify", bid, "--no-sources", "--allow-skipped"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
    )
    assert out.returncode == 0 and "VERIFIED" in out.stdout, out.stdout + out.stderr
    return {"scoped": s, "whole": w, "cli": c, "scoped_cpu": s_cpu, "whole_cpu": w_cpu, "cli_cpu": c_cpu}


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
    args = ap.parse_args(argv)
    with kafka_bootstrap(args.kafka, "bench-audit") as bootstrap, tempfile.TemporaryDirectory() as tmp:
        t_build, (cfg, ids, n) = timed(lambda: build(bootstrap, Path(tmp), args.batches, args.size, args.xsd_dir))
        print(
            f"{len(ids)} closed batches, {n:,} records on the SEVIS-side topics; built in {t_build:.0f} s", flush=True
        )
        picks = {"first": ids[0], "middle": ids[len(ids) // 2], "last": ids[-1]}
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in picks}
        for i in range(args.repeat):
            for which, bid in picks.items():
                runs[which].append(one_run(cfg, bid))
            print(f"repeat {i + 1} done", flush=True)
    print(
        f"\nverify <BatchID>, {len(ids)} closed batches in the log, median of {args.repeat}, "
        f"wall seconds (CPU seconds); load average at the end {os.getloadavg()[0]:.1f}:"
    )
    print("| batch | read up to its close (now) | whole log (before) | `sevisflow verify <BatchID>` (new process) |")
    print("|---|---|---|---|")
    for which, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(
            f"| {which} ({picks[which]}) | {med['scoped']:.2f} ({med['scoped_cpu']:.2f}) "
            f"| {med['whole']:.2f} ({med['whole_cpu']:.2f}) | {med['cli']:.2f} ({med['cli_cpu']:.2f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
