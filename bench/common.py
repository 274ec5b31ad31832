"""What the Kafka-backed bench suites share: a Kafka to run against, given or started for the run, and a
background reader of the topics a run writes."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
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


INTERPRETED = "interpreted"
"""``--compare-with interpreted``: the working tree without its compiled core, beside the working tree."""


def exported_tree(rev: str, repo: Path) -> tempfile.TemporaryDirectory[str]:
    """The files of git revision ``rev`` of ``repo`` in a temporary folder (``git archive``), to measure an
    older version side by side with the working tree, with its compiled parts built as an install builds them
    (:func:`compiled_parts`); the caller cleans it up."""
    tmp = tempfile.TemporaryDirectory(prefix="bench-tree-")
    archive = subprocess.run(["git", "archive", rev], cwd=repo, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", tmp.name], input=archive.stdout, check=True)
    if not os.environ.get("SEVISFLOW_INTERPRETED"):
        parts = compiled_parts(rev, repo)
        for so in parts.rglob("*.so"):
            shutil.copyfile(so, Path(tmp.name) / so.relative_to(parts))
    return tmp


def compiled_parts(rev: str, repo: Path) -> Path:
    """The compiled parts of git revision ``rev`` (its ``.so`` files, laid out as in the tree), built once and
    kept under ``repo/.local/bench-compiled/``: every ``--compare-with REV`` after the first skips the build
    (about a minute). Keyed by the revision's tree, the interpreter and ``SEVISFLOW_MYPYC_OPT`` (the build's
    inputs); a lock file makes a second process wanting the same build wait for the first and take its result."""
    tree_id = subprocess.run(
        ["git", "rev-parse", f"{rev}^{{tree}}"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    opt = os.environ.get("SEVISFLOW_MYPYC_OPT", "3")
    cache = repo / ".local" / "bench-compiled" / f"{tree_id}-{sys.implementation.cache_tag}-O{opt}"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / f"{cache.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cache.is_dir():
            with tempfile.TemporaryDirectory(prefix="bench-tree-") as src:
                archive = subprocess.run(["git", "archive", rev], cwd=repo, check=True, capture_output=True)
                subprocess.run(["tar", "-x", "-C", src], input=archive.stdout, check=True)
                building = Path(tempfile.mkdtemp(prefix=".building-", dir=cache.parent))
                try:
                    build_compiled(Path(src), building)
                    building.rename(cache)  # whole or not at all: a failed build leaves no cache behind
                except BaseException:
                    shutil.rmtree(building, ignore_errors=True)
                    raise
    return cache


def build_compiled(tree: Path, into: Path | None = None) -> None:
    """Build ``tree``'s compiled parts (the C decoder, and the compiled core where that version has one) and put
    them beside their sources (or at the same paths under ``into``), as ``pip install -e`` does: otherwise an
    older version would run interpreted beside a compiled working tree. A wheel build (about a minute)."""
    into = tree if into is None else into
    with tempfile.TemporaryDirectory(prefix="bench-wheel-") as out:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, str(tree)],
            check=True,
            capture_output=True,
        )
        (wheel,) = Path(out).glob("sevisflow-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.endswith(".so"):
                    target = into / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(name))  # sevisflow/processors/... is a link into the tree


def interpreted_tree(repo: Path) -> tempfile.TemporaryDirectory[str]:
    """A copy of the working tree without its compiled core (the C decoder kept), as a host without mypyc
    runs it; the caller cleans it up."""
    skip = {".venv", ".local", ".git", "build", "__pycache__", ".hypothesis", ".mypy_cache", ".ruff_cache"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n in skip or (n.endswith(".so") and not n.startswith("_pgtuple"))}

    tmp = tempfile.TemporaryDirectory(prefix="bench-tree-")
    shutil.copytree(repo, Path(tmp.name) / "t", symlinks=True, ignore=ignore)
    return tmp


def _compared_tree(compare_with: str, repo: Path) -> tuple[str, Path, tempfile.TemporaryDirectory[str]]:
    if compare_with == INTERPRETED:
        tmp = interpreted_tree(repo)
        return INTERPRETED, Path(tmp.name) / "t", tmp
    tmp = exported_tree(compare_with, repo)
    return f"before ({compare_with})", Path(tmp.name), tmp


def run_in_tree(tree: Path, module_file: str, function: str, *args: Any) -> dict[str, Any]:
    """``function(*args)`` of the bench module ``module_file`` in a fresh Python process over ``tree``'s code
    (its sevisflow and testkit first on the path); ``args`` and the returned dict travel as JSON, with
    ``compiled_core``: whether normalize ran compiled. A fresh child per measurement: no version's imports,
    caches or heap leak into another's."""
    code = (
        "import importlib.util, json, sys, types; sys.path.insert(0, sys.argv[1]); "
        "spec = importlib.util.spec_from_file_location('measured', sys.argv[2]); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "import sevisflow; assert sevisflow.__file__.startswith(sys.argv[1]), sevisflow.__file__; "
        "out = getattr(m, sys.argv[3])(*json.loads(sys.argv[4])); "
        "from sevisflow.processors.normalize import view; "
        "out['compiled_core'] = not isinstance(view.Normalizer.on_change, types.FunctionType); "
        "print(json.dumps(out))"
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
    working tree (``now``), and with ``compare_with`` also over that git revision (``before (REV)``, its compiled
    parts built) or, with ``interpreted``, over the working tree without its compiled core, interleaved so both
    see the same neighbours, the order alternating from repeat to repeat (neither always runs first). Every run's
    answer, per version. With ``SEVISFLOW_INTERPRETED`` set, every version runs interpreted (the benches' small
    cases in the tests: no builds)."""
    temps: list[tempfile.TemporaryDirectory[str]] = []
    trees = {"now": repo}
    if os.environ.get("SEVISFLOW_INTERPRETED"):
        temps.append(interpreted_tree(repo))
        trees["now"] = Path(temps[-1].name) / "t"
    if compare_with:
        name, tree, tmp = _compared_tree(compare_with, repo)
        temps.append(tmp)
        trees = {name: tree, **trees}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    try:
        for r in range(repeat):
            in_turn = list(trees.items())
            for name, tree in in_turn if r % 2 == 0 else in_turn[::-1]:
                runs[name].append(run_in_tree(tree, module_file, "measure", *args))
    finally:
        for tmp in temps:
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
    ap.add_argument(
        "--compare-with",
        default=None,
        help="a git revision (its compiled parts built), or `interpreted` (this tree without its compiled core), measured side by side with the working tree",
    )
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
