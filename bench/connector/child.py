"""One measured connector run in its own process (so CPU time and peak RSS are the connector's alone).

``python -m bench.connector.child stream|snapshot|raw`` with a JSON job on stdin; prints a JSON result.

* ``stream``: run_connector on a copied slot until every event up to the workload's last commit
  (``last_commit_lsn``) is produced and Kafka acknowledged it (the producer's queue is empty): the
  measured time; then on until the slot confirmed ``end_lsn`` (the offset flush; reported apart);
  ``compression`` in the job overrides the producers' compression.type;
* ``snapshot``: run_connector with snapshot.mode=initial_only on a fresh slot until it returns;
* ``raw``: the physical limit — drain the copied slot with the same psycopg 3 CopyBoth reader, batch
  reads and a 20 ms sleep whenever the socket is empty, counting messages, decoding nothing;
* ``raw_pg2``: the same count with psycopg2's LogicalReplicationConnection (message by message),
  the alternative client the choice in docs/ARCHITECTURE.md is measured against.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from typing import Any


def _usage() -> tuple[float, int]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def run_stream(job: dict[str, Any]) -> dict[str, Any]:
    from sevisflow.connectors.postgres.task import ConnectorTask
    from sevisflow.core.config import settings_from_mapping

    settings = settings_from_mapping(job["settings"], env={})
    stop = threading.Event()
    from sevisflow.connectors.postgres.metrics import ConnectorMetrics

    if job.get("compression"):  # --stream-compression: the connector's producers with another compression.type
        import sevisflow.connectors.postgres.task as task_module

        make_producer = task_module.make_producer
        codec = job["compression"]
        task_module.make_producer = lambda kafka, **kw: make_producer(kafka, **{**kw, "compression.type": codec})

    metrics = ConnectorMetrics(settings.connector.name, settings.connector.slot_name)
    task = ConnectorTask(settings, stop, metrics)
    err: list[BaseException] = []
    receive_cpu = _time_read_batch()

    thread_cpu: list[float] = []

    def target() -> None:
        prof = _profiler()
        try:
            task.run()
        except BaseException as exc:  # noqa: BLE001
            err.append(exc)
        finally:
            thread_cpu.append(time.thread_time())
            _dump_profile(prof, "stream")

    th = threading.Thread(target=target, daemon=True)
    cpu0, _ = _usage()
    th.start()
    while metrics.state not in ("streaming", "done", "stopped") and th.is_alive():
        time.sleep(0.001)
    procs = _cpu_by_pid()  # before the clock starts: the /proc walk is not the connector's work
    box0 = _box_busy()
    t0 = time.monotonic()
    cpu_start, _ = _usage()
    t1, cpu_end = _until_acked(task, job["last_commit_lsn"], th)
    box1 = _box_busy()
    by_command = _cpu_by_command(procs, _cpu_by_pid())  # the measured window, per command (Kafka: java)
    while th.is_alive() and (metrics.confirmed_lsn or 0) < job["end_lsn"]:
        time.sleep(0.005)
    t2 = time.monotonic()
    _, rss = _usage()
    stop.set()
    th.join(60)
    receive = getattr(task.repl, "receive_path", "python")  # which read loop received the stream
    task.close()
    if err:
        raise err[0]
    if (metrics.confirmed_lsn or 0) < job["end_lsn"]:
        raise RuntimeError(
            f"the slot was not confirmed to the workload's end ({metrics.confirmed_lsn} < {job['end_lsn']})"
        )
    return {
        "seconds": t1 - t0,
        "seconds_confirmed": t2 - t0,
        "cpu_s": cpu_end - cpu_start,
        "cpu_total_s": cpu_end - cpu0,
        "maxrss_kb": rss,
        "events": metrics.events_total,
        "task_thread_cpu_s": thread_cpu[0] if thread_cpu else None,
        "receive": receive,
        "box_busy_s": box1 - box0,  # every process on the machine in the measured window
        "box_cores": os.cpu_count(),
        "cpu_by_command_s": by_command,
        "read_batch_cpu_s": receive_cpu[0],  # the task thread's CPU inside read_batch (receiving), whole run
        "read_batches": receive_cpu[1],
        "read_items": receive_cpu[2],
        "compression": job.get("compression"),
    }


def _time_read_batch() -> list[Any]:
    """Count the calling thread's CPU inside ReplicationConnection.read_batch: [seconds, calls, items]
    (two thread_time calls per batch of up to 4,000 items: no measurable cost)."""
    from sevisflow.connectors.postgres.replication import ReplicationConnection

    acc: list[Any] = [0.0, 0, 0]
    read_batch = ReplicationConnection.read_batch

    def timed(self: Any, max_items: int, timeout_s: float) -> Any:
        t = time.thread_time()
        items = read_batch(self, max_items, timeout_s)
        acc[0] += time.thread_time() - t
        acc[1] += 1
        acc[2] += len(items)
        return items

    ReplicationConnection.read_batch = timed  # type: ignore[method-assign]
    return acc


def _until_acked(task: Any, last_commit_lsn: int, th: threading.Thread) -> tuple[float, float]:
    """Wait until every event up to the workload's last commit is produced (``safe_lsn`` passed its end
    LSN) and Kafka acknowledged all of them (nothing left in the producer's queue, no delivery error);
    returns (monotonic time, process CPU) at that moment. Independent of the offset-flush period, which
    only decides when the position is *confirmed* to PostgreSQL afterwards."""
    while th.is_alive():
        producer = task.producer
        if task.safe_lsn >= last_commit_lsn and producer is not None and len(producer) == 0:
            t, (cpu, _) = time.monotonic(), _usage()
            if task.delivery_errors:
                raise RuntimeError(f"Kafka refused {len(task.delivery_errors)} events")
            return t, cpu
        time.sleep(0.002)
    raise RuntimeError("the connector stopped before the workload's last commit was acknowledged")


def _box_busy() -> float:
    """CPU seconds the whole machine spent busy so far (all cores, /proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _cpu_by_pid() -> dict[int, tuple[str, float]]:
    """pid → (command, CPU seconds so far, user+sys) of every visible process."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    raw = fh.read()
            except OSError:
                continue
            f = raw[raw.rindex(")") + 2 :].split()
            out[int(pid)] = (raw[raw.index("(") + 1 : raw.rindex(")")], (int(f[11]) + int(f[12])) / tick)
    return out


def _cpu_by_command(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds between two :func:`_cpu_by_pid` samples by command, of the processes alive at both (a
    process that started or ended in between, like the snapshot's own PostgreSQL backend, is left out)."""
    out: dict[str, float] = {}
    for pid, (comm, cpu) in after.items():
        if pid in before and cpu - before[pid][1] > 0:
            out[comm] = round(out.get(comm, 0.0) + cpu - before[pid][1], 2)
    return out


def run_snapshot(job: dict[str, Any]) -> dict[str, Any]:
    from sevisflow.connectors.postgres.metrics import ConnectorMetrics
    from sevisflow.connectors.postgres.task import ConnectorTask
    from sevisflow.core.config import settings_from_mapping

    settings = settings_from_mapping(job["settings"], env={})
    metrics = ConnectorMetrics(settings.connector.name, settings.connector.slot_name)
    task = ConnectorTask(settings, threading.Event(), metrics)
    by_command: dict[str, float] = {}  # the phase's CPU seconds of the other long-lived processes (Kafka: java)
    phase: list[float] = []  # the snapshot phase alone: reading, producing, acks (no connecting, slot, topics)
    read_table = task._snapshot

    def timed_snapshot(*args: Any) -> None:
        t, c, box, procs = time.monotonic(), _usage()[0], _box_busy(), _cpu_by_pid()
        read_table(*args)
        phase.extend((time.monotonic() - t, _usage()[0] - c, _box_busy() - box))
        by_command.update(_cpu_by_command(procs, _cpu_by_pid()))

    task._snapshot = timed_snapshot  # type: ignore[method-assign,assignment]
    cpu0, _ = _usage()
    tcpu0 = time.thread_time()
    t0 = time.monotonic()
    prof = _profiler()
    task.run()
    t1 = time.monotonic()
    tcpu1 = time.thread_time()
    _dump_profile(prof, "snapshot")
    cpu1, rss = _usage()
    task.close()
    return {
        "seconds": t1 - t0,
        "cpu_s": cpu1 - cpu0,
        "maxrss_kb": rss,
        "rows": metrics.snapshot_rows,
        "task_thread_cpu_s": tcpu1 - tcpu0,
        "phase_s": phase[0] if phase else None,
        "phase_cpu_s": phase[1] if phase else None,
        "phase_box_busy_s": phase[2] if phase else None,  # every process on the machine (PostgreSQL, Kafka, …)
        "box_cores": os.cpu_count(),
        "phase_cpu_by_command_s": by_command,
        "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt,  # fresh memory pages touched
    }


def _profiler() -> Any:
    """cProfile of the calling thread when BENCH_PROFILE names a directory (development aid, off by default)."""
    import os

    if not os.environ.get("BENCH_PROFILE"):
        return None
    import cProfile

    prof = cProfile.Profile(time.thread_time) if os.environ.get("BENCH_PROFILE_CPU") else cProfile.Profile()
    prof.enable()
    return prof


def _dump_profile(prof: Any, kind: str) -> None:
    if prof is None:
        return
    import os

    prof.disable()
    out = os.path.join(os.environ["BENCH_PROFILE"], f"{kind}.prof")
    prof.dump_stats(out)


def run_raw(job: dict[str, Any]) -> dict[str, Any]:
    from sevisflow.connectors.postgres.replication import ReplicationConnection

    repl = ReplicationConnection(job["conninfo"])
    repl.start(job["slot"], job["publication"], 0)
    commits = 0
    messages = 0
    nbytes = 0
    last_commit_lsn = 0
    want = job["commits"]
    cpu0, _ = _usage()
    t0 = time.monotonic()
    while commits < want:
        items = repl.read_batch(100_000, 0.0)
        if not items:
            time.sleep(0.02)  # let the server's send buffer fill: batched sends are cheaper for the walsender
            continue
        for _, payload in items:
            if payload is not None:
                messages += 1
                nbytes += len(payload)
                if payload[0] == 67:
                    commits += 1
                    last_commit_lsn = int.from_bytes(payload[10:18], "big")  # Commit: flags, LSN, end LSN, ts
    t1 = time.monotonic()
    cpu1, rss = _usage()
    repl.close()
    return {
        "seconds": t1 - t0,
        "cpu_s": cpu1 - cpu0,
        "maxrss_kb": rss,
        "messages": messages,
        "bytes": nbytes,
        "last_commit_lsn": last_commit_lsn,
    }


def run_raw_pg2(job: dict[str, Any]) -> dict[str, Any]:
    """The same drain with psycopg2's LogicalReplicationConnection (the alternative client), decode=False."""
    import psycopg2
    import psycopg2.extras

    conn = psycopg2.connect(job["conninfo"], connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = conn.cursor()
    cur.start_replication(
        slot_name=job["slot"], decode=False, options={"proto_version": "1", "publication_names": job["publication"]}
    )
    state = {"commits": 0, "messages": 0, "bytes": 0}
    want = job["commits"]

    class Done(Exception):
        pass

    def consume(msg: Any) -> None:
        state["messages"] += 1
        state["bytes"] += len(msg.payload)
        if msg.payload[0] == 67:
            state["commits"] += 1
            if state["commits"] >= want:
                raise Done

    cpu0, _ = _usage()
    t0 = time.monotonic()
    try:
        cur.consume_stream(consume, keepalive_interval=10)
    except Done:
        pass
    t1 = time.monotonic()
    cpu1, rss = _usage()
    conn.close()
    return {"seconds": t1 - t0, "cpu_s": cpu1 - cpu0, "maxrss_kb": rss, **state}


def main() -> int:
    kind = sys.argv[1]
    job = json.loads(sys.stdin.read())
    out = {"stream": run_stream, "snapshot": run_snapshot, "raw": run_raw, "raw_pg2": run_raw_pg2}[kind](job)
    if kind in ("stream", "snapshot"):
        import sevisflow.connectors.postgres.task as task_module
        from sevisflow.connectors.postgres import decoder

        out["task_file"] = task_module.__file__  # which checkout ran (an A/B against a copy of the repo)
        out["decoder"] = decoder.name()  # c, or python (not built / SEVISFLOW_PURE_PYTHON_DECODER=1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
