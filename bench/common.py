"""What the Kafka-backed bench suites share: a Kafka to run against, given or started for the run, and a
background reader of the topics a run writes."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from sevisflow.core.kafka_io import make_consumer, topic_partitions


@contextmanager
def kafka_bootstrap(given: str | None, name: str) -> Iterator[str]:
    """``given`` when set (a running Kafka), else a throwaway local Kafka named ``name`` (deploy/local/stack.py,
    the tests' stack, without PostgreSQL), stopped and removed when the block ends."""
    if given:
        yield given
        return
    from sevisflow.deploy.local.stack import start_stack, stop_stack

    info = start_stack(name=name, postgres=False, progress=lambda *_: None)
    try:
        yield info.kafka.bootstrap
    finally:
        stop_stack(info, remove=True)


@dataclass
class TopicFollower:
    """Reads some of a run's topics in a background thread and hands each record with a value to :meth:`take`.

    Manual assignment and no group commits: it moves no offsets, so it never disturbs the stages it watches.
    Subclasses say where it starts (:meth:`assignment`) and what a record means to them (:meth:`take`). An
    exception ends the thread and is kept in ``error``, for the bench to report the run as incomplete.
    """

    settings: Any
    _: KW_ONLY
    error: str = ""
    cpu_s: float = 0.0
    """The reading thread's CPU seconds, noted when it ends (what following cost the box)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    name: ClassVar[str] = "bench-follower"
    """The thread's name and the prefix of the reader's (unused) group id."""

    def start(self, timeout_s: float = 30.0) -> Self:
        """Start reading; return once the reader is assigned (what is written from then on will be read)."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait(timeout_s)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def assignment(self, consumer: Consumer) -> list[TopicPartition]:
        """Where to read: every partition of the topics to follow, at the offset to start from."""
        raise NotImplementedError

    def take(self, msg: Message) -> None:
        """One record read (never an error, never a tombstone); runs on the reading thread."""
        raise NotImplementedError

    def from_beginning(self, consumer: Consumer, topics: Iterable[str]) -> list[TopicPartition]:
        """An :meth:`assignment` of every partition of ``topics`` from its first record."""
        assign = []
        for topic in topics:
            parts = topic_partitions(consumer, self.settings.kafka, topic, 30.0) or []
            assign += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts]
        return assign

    def _run(self) -> None:
        consumer = make_consumer(self.settings.kafka, group_id=f"{self.name}-{uuid.uuid4().hex[:8]}")
        try:
            consumer.assign(self.assignment(consumer))
            self._ready.set()
            while not self._stop.is_set():
                for msg in consumer.consume(1000, 0.2):
                    if msg.error() is None and msg.value() is not None:
                        self.take(msg)
        except Exception as exc:  # noqa: BLE001 - reported by the bench as an incomplete run
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._ready.set()
            self.cpu_s = time.thread_time()
            consumer.close()


def exported_tree(rev: str, repo: Path) -> tempfile.TemporaryDirectory[str]:
    """The files of git revision ``rev`` of ``repo`` in a temporary folder (``git archive``), to measure an
    older version side by side with the working tree; the caller cleans it up."""
    tmp = tempfile.TemporaryDirectory(prefix="bench-tree-")
    archive = subprocess.run(["git", "archive", rev], cwd=repo, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", tmp.name], input=archive.stdout, check=True)
    return tmp


def run_in_tree(tree: Path, module_file: str, function: str, *args: Any) -> dict[str, Any]:
    """``function(*args)`` of the bench module ``module_file`` in a fresh Python process over ``tree``'s code
    (its sevisflow and testkit first on the path); ``args`` and the returned dict travel as JSON. A fresh child per
    measurement: no version's imports, caches or heap leak into another's."""
    code = (
        "import importlib.util, json, sys; sys.path.insert(0, sys.argv[1]); "
        "spec = importlib.util.spec_from_file_location('measured', sys.argv[2]); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "import sevisflow; assert sevisflow.__file__.startswith(sys.argv[1]), sevisflow.__file__; "
        "print(json.dumps(getattr(m, sys.argv[3])(*json.loads(sys.argv[4]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tree), module_file, function, json.dumps(list(args))],
        env=dict(os.environ, PYTHONPATH=str(tree)),
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def runs_side_by_side(
    module_file: str, args: Sequence[Any], repeat: int, compare_with: str | None, repo: Path
) -> dict[str, list[dict[str, Any]]]:
    """Run ``measure(*args)`` of the bench module ``module_file`` ``repeat`` times in fresh children: over the
    working tree (``now``), and with ``compare_with`` also over that git revision (``before (REV)``),
    interleaved so both see the same neighbours, the order alternating from repeat to repeat (neither always
    runs first). Every run's answer, per version."""
    trees = {"now": repo}
    tmp = exported_tree(compare_with, repo) if compare_with else None
    if tmp is not None:
        trees = {f"before ({compare_with})": Path(tmp.name), **trees}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    try:
        for r in range(repeat):
            in_turn = list(trees.items())
            for name, tree in in_turn if r % 2 == 0 else in_turn[::-1]:
                runs[name].append(run_in_tree(tree, module_file, "measure", *args))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return runs


def medians(runs: dict[str, list[dict[str, Any]]], figures: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per version of :func:`runs_side_by_side`: the median of each of ``figures``, and ``samples``, every run."""
    return {
        name: {f: statistics.median(r[f] for r in got) for f in figures} | {"samples": got}
        for name, got in runs.items()
    }


def report_side_by_side(
    runs: dict[str, list[dict[str, Any]]],
    figures: Sequence[str],
    args: argparse.Namespace,
    describe: Callable[[dict[str, Any]], str],
) -> dict[str, dict[str, Any]]:
    """:func:`medians` of ``runs``, one line per version (``describe`` words its medians) and, with
    ``args.json_out``, the file: the arguments, the medians with every run, the load average. Returns the medians."""
    summary = medians(runs, figures)
    for name, fig in summary.items():
        print(f"{name}: {describe(fig)} (medians of {args.repeat})", flush=True)
    if args.json_out:
        out = {"args": vars(args), "summary": summary, "load_avg": os.getloadavg()}
        Path(args.json_out).write_text(json.dumps(out, indent=1))
    return summary


def parts_side_by_side(
    module_file: str, size: int, repeat: int, compare_with: str | None, repo: Path
) -> dict[str, dict[str, Any]]:
    """:func:`runs_side_by_side` of ``measure(size)``, which returns ``{"parts": [{figure: value}, …]}`` (a run
    cut in parts); the answer per version: ``parts``, the median of every figure part by part, and ``runs``,
    everything measured."""
    runs = runs_side_by_side(module_file, [size], repeat, compare_with, repo)
    out: dict[str, dict[str, Any]] = {}
    for name, got in runs.items():
        parts = []
        for k in range(len(got[0]["parts"])):
            at = [g["parts"][k] for g in got]
            parts.append({key: statistics.median(p[key] for p in at) for key in at[0]})
        out[name] = {"parts": parts, "runs": got}
    return out


def side_by_side_main(
    argv: list[str] | None,
    prog: str,
    module_file: str,
    size_flag: str,
    size_default: int,
    line: Callable[[dict[str, Any]], str],
    repo: Path,
) -> int:
    """The command line of a bench whose ``measure(size)`` cuts a run in parts (:func:`parts_side_by_side`):
    ``--<size_flag> N --repeat N --compare-with REV --json-out FILE``; prints each version's parts with
    ``line``."""
    ap = argparse.ArgumentParser(prog=prog)
    ap.add_argument(f"--{size_flag}", dest="size", type=int, default=size_default)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compare-with", default=None, help="git revision measured side by side with the working tree")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    versions = parts_side_by_side(module_file, args.size, args.repeat, args.compare_with, repo)
    for name, got in versions.items():
        print(f"{name}:")
        for part in got["parts"]:
            print("  " + line(part))
    if args.json_out:
        result = {size_flag: args.size, "repeat": args.repeat, "load_avg": os.getloadavg(), **versions}
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return 0
