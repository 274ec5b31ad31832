"""What one state read-modify-write costs in each committed layer: dicts, and RocksDB with each compression.

``python -m bench.state.read_modify_write [--keys 100000] [--value-bytes 3000] [--ops 300000]
[--per-transaction 600] [--repeat 2] [--json-out F]``

The steady-state access of sevis_events (and of normalize, for a value out of its decoded cache): a change
reads its student's JSON value, decodes it, changes it, encodes it and stages it; each transaction's staged values
go to the layer in one write (:meth:`~sevisflow.core.state.RocksState.apply`). The keys are visited in a
shuffled order, every one before any again, as the scale bench's e-mail changes visit every person in turn. The
layers are the project's own (:class:`~sevisflow.core.state.MemoryState`, :class:`~sevisflow.core.state.RocksState`
with the ``[state]`` defaults but for ``compression``); CPU is the process's (RocksDB's flush and compaction
threads included). Each variant goes first in turn; the medians are printed, the raw runs written as JSON. At the
end of each run every key is read back and compared with what was last written.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import medians
from sevisflow.core.config import ROCKSDB_COMPRESSIONS, StateSettings
from sevisflow.core.state import CommittedState, MemoryState, RocksState

VARIANTS = ("memory", *(f"rocksdb-{c}" for c in ROCKSDB_COMPRESSIONS))
PARTITION = 0


def student_value(i: int, value_bytes: int, rnd: random.Random) -> dict[str, Any]:
    """A JSON object of about ``value_bytes`` bytes, shaped like a view (repeated keys, varied values)."""
    return {
        "student_key": f"S{i:08d}",
        "fields": {f"f{j}": f"v{rnd.randrange(10**6)}-{j}" for j in range(value_bytes // 24)},
    }


def open_layer(variant: str, root: Path) -> CommittedState:
    if variant == "memory":
        return MemoryState()
    defaults = StateSettings()
    compression = variant.removeprefix("rocksdb-")
    return RocksState(root, "rmw", defaults.block_cache_mb, defaults.write_buffer_mb, "bench", compression)


def run_once(variant: str, keys: int, value_bytes: int, ops: int, per_tx: int, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="bench-rmw-"))
    layer = open_layer(variant, root)
    names = [f"student:{i:08d}".encode() for i in range(keys)]
    last: dict[bytes, bytes] = {}
    try:
        for start in range(0, keys, 2000):
            chunk = {
                k: orjson.dumps(student_value(start + n, value_bytes, rnd))
                for n, k in enumerate(names[start : start + 2000])
            }
            layer.apply({PARTITION: chunk})
            last.update(chunk)
        order = list(range(keys))
        rnd.shuffle(order)
        cpu0, wall0 = time.process_time(), time.monotonic()  # CPU of every thread
        done = 0
        while done < ops:
            staged: dict[bytes, bytes] = {}
            for _ in range(min(per_tx, ops - done)):
                key = names[order[done % keys]]
                raw = staged.get(key) or layer.get(PARTITION, key)
                assert raw is not None, key
                value = orjson.loads(raw)
                value["fields"]["f0"] = f"changed-{done}"
                staged[key] = orjson.dumps(value)
                done += 1
            layer.apply({PARTITION: staged})
            last.update(staged)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        wrong = sum(1 for k, v in last.items() if layer.get(PARTITION, k) != v)
        on_disk = sum(f.stat().st_size for f in root.rglob("*.sst"))
    finally:
        layer.close()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "variant": variant,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "us_per_op": round(1e6 * cpu / ops, 2),
        "table_files_mib": round(on_disk / 2**20, 1),
        "wrong_values": wrong,
    }


def run(
    keys: int, value_bytes: int, ops: int, per_tx: int, repeat: int, variants: tuple[str, ...] = VARIANTS
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in range(repeat):
        turn = variants[r % len(variants) :] + variants[: r % len(variants)]  # each variant goes first in turn
        for variant in turn:
            runs[variant].append(run_once(variant, keys, value_bytes, ops, per_tx, seed=r))
            print(json.dumps(runs[variant][-1]), flush=True)
    args = {"keys": keys, "value_bytes": value_bytes, "ops": ops, "per_transaction": per_tx, "repeat": repeat}
    return {"args": args, "medians": medians(runs, ("us_per_op", "table_files_mib"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.state.read_modify_write", description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--value-bytes", type=int, default=3000)
    p.add_argument("--ops", type=int, default=300_000)
    p.add_argument("--per-transaction", type=int, default=600)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json-out")
    a = p.parse_args(argv)
    result = run(a.keys, a.value_bytes, a.ops, a.per_transaction, a.repeat)
    print("| layer | µs per read-modify-write (median) | table files (MiB) |\n|---|---|---|")
    for v, m in result["medians"].items():
        print(f"| {v} | {m['us_per_op']:.1f} | {m['table_files_mib']:.1f} |")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
