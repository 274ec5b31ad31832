"""How long `sevisflow batch show` and `batch close` take on a full (250-record) open batch.

``python -m bench.batcher [--rounds N] [--kafka BOOTSTRAP] [--json]``
Without --kafka it starts a throwaway local Kafka (deploy/local/stack.py) and stops it after.
Each round: 250 UpdateStudent events (PersonalInfo with an address, fictional) go to
sevis.events; once the batcher (running in this process) has them all, the CLI's
``batch show`` (table and --json) and then ``batch close`` run in-process, timed end to end
(reading sevis.batches from the start, Kafka round trips, the batcher's transaction). Rounds
accumulate history on sevis.batches, so later rounds show how `show` grows with it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

from processors.batcher import batcher_topics, run
from processors.batcher.fixtures import ORG, event
from processors.batcher.view import build_view
from sevisflow.cli import main as cli_main
from sevisflow.kafka_io import delivery_raiser, ensure_topics, flush_or_raise, make_producer, produce, read_topic
from sevisflow.serde import registry
from sevisflow.topics import pipeline_topics
from tests.helpers import KafkaHandle, make_settings

DSO = "BENCHDSO01"


def _payload(i: int) -> dict:
    return {"@printForm": "false", "Email": f"student{i}@example.edu",
            "USAddress": {"Address1": f"{100 + i} College Ave Apt {i % 40}", "City": "Springfield",
                          "State": "IL", "PostalCode": "62701"}}


def _events(round_no: int) -> list[dict]:
    return [event(f"B{round_no:02d}{i:04d}", n=round_no * 1000 + i, display_name=f"Student{i}, Bench",
                  payload=_payload(i), before={"us_address": "old"}, after={"us_address": f"{100 + i} College Ave"})
            for i in range(250)]


def _timed(argv: list[str]) -> tuple[float, str]:
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli_main(argv)
    dt = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit code {code}")
    return dt, out.getvalue()


def bench(bootstrap: str, rounds: int) -> dict:
    unique = uuid.uuid4().hex[:8]
    settings = make_settings(KafkaHandle(bootstrap), unique=unique, school={"org_id": ORG})
    ensure_topics(settings.kafka, pipeline_topics(settings) + batcher_topics(settings))
    t = settings.topics
    cfg = Path(tempfile.mkdtemp()) / "sevisflow.toml"
    cfg.write_text(f'[kafka]\nbootstrap_servers = "{bootstrap}"\n[school]\norg_id = "{ORG}"\n'
                   f'[topics]\nevents = "{t.events}"\ncommands = "{t.commands}"\nbatches = "{t.batches}"\n'
                   f'results = "{t.results}"\ndlq = "{t.dlq}"\nstudents = "{t.students}"\n')
    base = ["--config", str(cfg), "batch"]
    stop = threading.Event()
    worker = threading.Thread(target=run, args=(settings, stop), kwargs={"instance": "bench"}, daemon=True)
    worker.start()
    res: dict = {"show": [], "show_json": [], "close": [], "ingest": [], "batches_topic_records": []}
    producer = make_producer(settings.kafka)
    try:
        for r in range(rounds):
            errors: list = []
            t0 = time.perf_counter()
            for ev in _events(r):
                produce(producer, t.events, ORG.encode(), registry().encode("sevisflow.events.SevisEvent", ev),
                        on_delivery=delivery_raiser(errors))
            flush_or_raise(producer, errors)
            while True:
                evs = [registry().decode(m.value(), "sevisflow.batches.BatchEvent")
                       for m in read_topic(settings.kafka, t.batches)]
                if build_view(ORG, evs).counts()["ready"] == 250:
                    break
                time.sleep(0.2)
            res["ingest"].append(time.perf_counter() - t0)
            res["batches_topic_records"].append(len(evs))
            dt, out = _timed(base + ["show"])
            assert "250 records" in out, out[:200]
            res["show"].append(dt)
            dt, out = _timed(base + ["show", "--json"])
            assert len(orjson.loads(out)["records"]) == 250
            res["show_json"].append(dt)
            dt, out = _timed(base + ["close", "--dso", DSO, "--json"])
            assert orjson.loads(out)["batches"][0]["records"] == 250
            res["close"].append(dt)
    finally:
        stop.set()
        worker.join(30)
    return res


def summary(res: dict) -> dict:
    out = {}
    for k in ("show", "show_json", "close", "ingest"):
        v = res[k]
        out[k] = {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "rounds": v}
    out["batches_topic_records"] = res["batches_topic_records"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.batcher", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--kafka", default=os.environ.get("SEVISFLOW_BENCH_KAFKA"), help="use this Kafka instead of starting one")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    info = None
    bootstrap = args.kafka
    if not bootstrap:
        from deploy.local.stack import start_stack

        info = start_stack(name="bench-batcher", postgres=False, progress=lambda *_: None)
        bootstrap = info.kafka.bootstrap
    try:
        s = summary(bench(bootstrap, args.rounds))
    finally:
        if info is not None:
            from deploy.local.stack import stop_stack

            stop_stack(info, remove=True)
    if args.json:
        print(orjson.dumps(s, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"batcher bench: {args.rounds} rounds of a 250-record open batch")
    print(f"{'step':28} {'median':>8} {'min':>8} {'max':>8}")
    for k, label in (("show", "batch show (table)"), ("show_json", "batch show --json"),
                     ("close", "batch close (until closed)"), ("ingest", "250 events → in open batch")):
        v = s[k]
        print(f"{label:28} {v['median_s'] * 1000:7.0f}ms {v['min_s'] * 1000:7.0f}ms {v['max_s'] * 1000:7.0f}ms")
    print("per round, show:", ", ".join(f"{x * 1000:.0f}ms" for x in s["show"]["rounds"]),
          "| sevis.batches records read:", s["batches_topic_records"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
