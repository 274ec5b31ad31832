"""How long `sevisflow batch show` and `batch close` take on a full (250-record) open batch.

``python -m bench.batcher [--rounds N] [--history N] [--repeat N] [--case rounds|history|all] [--kafka BOOTSTRAP] [--json]``
Without --kafka it starts a throwaway local Kafka (deploy/local/stack.py) and stops it after.

Case ``rounds``: each round, 250 UpdateStudent events (PersonalInfo with an address, fictional)
go to sevis.events; once the batcher (running in this process) has them all, the CLI's
``batch show`` (table and --json) and then ``batch close`` run in-process, timed end to end
(Kafka round trips, the batcher's transaction).

Case ``history``: ``--history`` closed batches of 250 records first (default 20), then an open
batch of 250; then ``batch show`` is timed ``--repeat`` times by both paths: the batcher's
open-batch view (sevis.batch.open, the default) and ``--from-history`` (folding sevis.batches).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from bench.common import kafka_bootstrap
from sevisflow.app.cli import main as cli_main
from sevisflow.app.cli.batch import read_open_batch
from sevisflow.core.kafka_io import delivery_raiser, ensure_topics, flush_or_raise, make_producer, produce, read_topic
from sevisflow.core.serde import registry
from sevisflow.core.topics import pipeline_topics
from sevisflow.processors.batcher import batcher_topics, run
from sevisflow.processors.batcher.view import build_view, from_open_batch
from testkit.batcher import ORG, event
from testkit.settings import KafkaHandle, make_settings

DSO = "BENCHDSO01"


def _payload(i: int) -> dict:
    return {
        "@printForm": "false",
        "Email": f"student{i}@example.edu",
        "USAddress": {
            "Address1": f"{100 + i} College Ave Apt {i % 40}",
            "City": "Springfield",
            "State": "IL",
            "PostalCode": "62701",
        },
    }


def _events(round_no: int) -> list[dict]:
    return [
        event(
            f"B{round_no:02d}{i:04d}",
            n=round_no * 1000 + i,
            display_name=f"Student{i}, Bench",
            payload=_payload(i),
            before={"us_address": "old"},
            after={"us_address": f"{100 + i} College Ave"},
        )
        for i in range(250)
    ]


def _timed(argv: list[str]) -> tuple[float, str]:
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli_main(argv)
    dt = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit code {code}")
    return dt, out.getvalue()


@contextlib.contextmanager
def _pipeline(bootstrap: str) -> Iterator[tuple[Any, list[str]]]:
    """Fresh topics, a CLI config for them and the batcher running in a thread: (settings, CLI argv prefix)."""
    unique = uuid.uuid4().hex[:8]
    settings = make_settings(KafkaHandle(bootstrap), unique=unique, school={"org_id": ORG})
    ensure_topics(settings.kafka, pipeline_topics(settings) + batcher_topics(settings))
    t = settings.topics
    cfg_dir = tempfile.mkdtemp(prefix="bench-batcher-cli-")
    cfg = Path(cfg_dir) / "sevisflow.toml"
    cfg.write_text(
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\n[school]\norg_id = "{ORG}"\n'
        f'[topics]\nevents = "{t.events}"\ncommands = "{t.commands}"\nbatches = "{t.batches}"\n'
        f'results = "{t.results}"\ndlq = "{t.dlq}"\nstudents = "{t.students}"\n'
        f'open_batches = "{t.open_batches}"\n'
    )
    stop = threading.Event()
    worker = threading.Thread(target=run, args=(settings, stop), kwargs={"instance": "bench"}, daemon=True)
    worker.start()
    try:
        yield settings, ["--config", str(cfg), "batch"]
    finally:
        stop.set()
        worker.join(30)
        shutil.rmtree(cfg_dir, ignore_errors=True)


def _send_round(settings: Any, producer: Any, round_no: int) -> None:
    errors: list = []
    for ev in _events(round_no):
        produce(
            producer,
            settings.topics.events,
            ORG.encode(),
            registry().encode("sevisflow.events.SevisEvent", ev),
            on_delivery=delivery_raiser(errors),
        )
    flush_or_raise(producer, errors)


def _wait_open_view(settings: Any, ready: int) -> None:
    while True:
        value = read_open_batch(settings, ORG)
        view = from_open_batch(value) if value else None
        if view is not None and view.counts()["ready"] == ready:
            return
        time.sleep(0.2)


def bench(bootstrap: str, rounds: int) -> dict:
    res: dict = {"show": [], "show_json": [], "close": [], "ingest": [], "batches_topic_records": []}
    with _pipeline(bootstrap) as (settings, base):
        t = settings.topics
        producer = make_producer(settings.kafka)
        for r in range(rounds):
            t0 = time.perf_counter()
            _send_round(settings, producer, r)
            while True:
                evs = [
                    registry().decode(m.value(), "sevisflow.batches.BatchEvent")
                    for m in read_topic(settings.kafka, t.batches)
                ]
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
    return res


def bench_history(bootstrap: str, closed_batches: int, repeat: int) -> dict:
    """`batch show` after ``closed_batches`` closed batches of 250, with 250 open: the view vs the history."""
    res: dict = {"closed_batches": closed_batches, "view": [], "history": [], "view_json": [], "history_json": []}
    with _pipeline(bootstrap) as (settings, base):
        producer = make_producer(settings.kafka)
        t0 = time.perf_counter()
        for r in range(closed_batches + 1):
            _send_round(settings, producer, r)
            _wait_open_view(settings, 250)
            if r < closed_batches:
                _, out = _timed(base + ["close", "--dso", DSO, "--json"])
                assert orjson.loads(out)["batches"][0]["records"] == 250
        res["build_s"] = time.perf_counter() - t0
        res["batches_topic_records"] = sum(1 for _ in read_topic(settings.kafka, settings.topics.batches))
        res["view_topic_records"] = sum(1 for _ in read_topic(settings.kafka, settings.topics.open_batches))
        for _ in range(repeat):
            for key, extra in (("view", []), ("history", ["--from-history"])):
                dt, out = _timed(base + ["show", *extra])
                assert "250 records" in out, out[:200]
                res[key].append(dt)
                dt, out = _timed(base + ["show", "--json", *extra])
                assert len(orjson.loads(out)["records"]) == 250
                res[key + "_json"].append(dt)
        _, fast = _timed(base + ["show", "--json"])
        _, slow = _timed(base + ["show", "--json", "--from-history"])
        assert fast == slow, "the view and the history disagree"
    return res


def summary(res: dict) -> dict:
    out = {}
    for k in ("show", "show_json", "close", "ingest"):
        v = res[k]
        out[k] = {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "rounds": v}
    out["batches_topic_records"] = res["batches_topic_records"]
    return out


def summary_history(res: dict) -> dict:
    out = {k: v for k, v in res.items() if not isinstance(v, list)}
    for k in ("view", "view_json", "history", "history_json"):
        v = res[k]
        out[k] = {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "runs": v}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.batcher", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--history", type=int, default=20, help="closed batches of 250 before the timed show (history case)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs of each show path (history case)")
    p.add_argument("--case", choices=["rounds", "history", "all"], default="all")
    p.add_argument(
        "--kafka", default=os.environ.get("SEVISFLOW_BENCH_KAFKA"), help="use this Kafka instead of starting one"
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    s: dict = {}
    h: dict = {}
    with kafka_bootstrap(args.kafka, "bench-batcher") as bootstrap:
        if args.case in ("rounds", "all"):
            s = summary(bench(bootstrap, args.rounds))
        if args.case in ("history", "all"):
            h = summary_history(bench_history(bootstrap, args.history, args.repeat))
    if args.json:
        print(orjson.dumps({"rounds": s, "history": h}, option=orjson.OPT_INDENT_2).decode())
        return 0
    if h:
        print(
            f"batcher bench, history case: {h['closed_batches']} closed batches of 250, then 250 open "
            f"(sevis.batches: {h['batches_topic_records']} records, view topic: {h['view_topic_records']}; "
            f"built in {h['build_s']:.0f}s); {args.repeat} runs each"
        )
        print(f"{'step':36} {'median':>8} {'min':>8} {'max':>8}")
        for k, label in (
            ("view", "batch show (view)"),
            ("view_json", "batch show --json (view)"),
            ("history", "batch show --from-history"),
            ("history_json", "batch show --json --from-history"),
        ):
            v = h[k]
            print(f"{label:36} {v['median_s'] * 1000:7.0f}ms {v['min_s'] * 1000:7.0f}ms {v['max_s'] * 1000:7.0f}ms")
    if not s:
        return 0
    print(f"batcher bench: {args.rounds} rounds of a 250-record open batch")
    print(f"{'step':28} {'median':>8} {'min':>8} {'max':>8}")
    for k, label in (
        ("show", "batch show (table)"),
        ("show_json", "batch show --json"),
        ("close", "batch close (until closed)"),
        ("ingest", "250 events → in open batch"),
    ):
        v = s[k]
        print(f"{label:28} {v['median_s'] * 1000:7.0f}ms {v['min_s'] * 1000:7.0f}ms {v['max_s'] * 1000:7.0f}ms")
    print(
        "per round, show:",
        ", ".join(f"{x * 1000:.0f}ms" for x in s["show"]["rounds"]),
        "| sevis.batches records read:",
        s["batches_topic_records"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
