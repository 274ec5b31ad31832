"""The real Debezium PostgreSQL connector (3.6.1.Final) under Kafka Connect standalone, same workload.

Jars come from Maven Central with ``bench/connector/debezium/pom.xml`` through ``deploy/local/debezium.py``
(the same jars the "bring your own Debezium" test runs), cached in ``~/.cache/sevisflow/debezium-<v>-connect-<v>``.
Connect is 4.3.0, the Kafka version Debezium 3.6.1 is built against: on connect-runtime 4.4.0 its task
dies with ``NoClassDefFoundError: org/apache/kafka/common/utils/Sanitizer`` (moved in 4.4.0).
The worker runs with JsonConverter (schemas.enable=false), file offsets and
``offset.flush.interval.ms=1000`` (ours is 1000 ms too), on a copy of the same template slot, with
``snapshot.mode=no_data`` and transaction metadata on, like our connector's run. Measured: from the
moment the slot turns active until PostgreSQL shows ``confirmed_flush_lsn`` ≥ the workload's end
(Debezium confirms an LSN after Connect committed the offsets, i.e. after Kafka acknowledged);
CPU is the JVM's utime+stime over that window, peak RSS its VmHWM.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sevisflow.deploy.local.debezium import CONNECT_VERSION, VERSION, ensure_jars, jars_dir  # noqa: F401 - re-exported


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _proc_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run(
    work: Path,
    bootstrap: str,
    pg_port: int,
    slot: str,
    publication: str,
    prefix: str,
    end_lsn: int,
    slot_state: Callable[[str], tuple[bool, int]],
    timeout_s: float = 900,
) -> dict[str, Any]:
    """One Debezium run; ``slot_state(slot)`` returns (active, confirmed_flush_lsn)."""
    from sevisflow.deploy.local.stack import free_port, java_bin

    libs = ensure_jars()
    work.mkdir(parents=True, exist_ok=True)
    worker = work / "worker.properties"
    worker.write_text(
        "\n".join(
            [
                f"bootstrap.servers={bootstrap}",
                "key.converter=org.apache.kafka.connect.json.JsonConverter",
                "value.converter=org.apache.kafka.connect.json.JsonConverter",
                "key.converter.schemas.enable=false",
                "value.converter.schemas.enable=false",
                f"offset.storage.file.filename={work / 'offsets.dat'}",
                "offset.flush.interval.ms=1000",
                f"listeners=http://127.0.0.1:{free_port()}",
            ]
        )
        + "\n"
    )
    conn = work / "debezium.properties"
    conn.write_text(
        "\n".join(
            [
                "name=dbz-bench",
                "connector.class=io.debezium.connector.postgresql.PostgresConnector",
                "tasks.max=1",
                "database.hostname=127.0.0.1",
                f"database.port={pg_port}",
                "database.user=postgres",
                "database.password=",
                "database.dbname=sis",
                "plugin.name=pgoutput",
                f"slot.name={slot}",
                f"publication.name={publication}",
                "publication.autocreate.mode=disabled",
                "snapshot.mode=no_data",
                f"topic.prefix={prefix}",
                "table.include.list=public.bench_person",
                "provide.transaction.metadata=true",
                "topic.creation.default.replication.factor=1",
                "topic.creation.default.partitions=3",
            ]
        )
        + "\n"
    )
    log4j = work / "log4j2.properties"
    log4j.write_text(
        "status = error\nappender.file.type = File\nappender.file.name = file\n"
        f"appender.file.fileName = {work / 'connect.log'}\n"
        "appender.file.layout.type = PatternLayout\nappender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = WARN\nrootLogger.appenderRef.file.ref = file\n"
    )
    cmd = [
        java_bin(),
        "-Xmx1g",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{libs}/*",
        "org.apache.kafka.connect.cli.ConnectStandalone",
        str(worker),
        str(conn),
    ]
    out = open(work / "stdout.log", "wb")  # noqa: SIM115 - the worker's output while it runs; closed below
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not slot_state(slot)[0]:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Debezium did not start streaming; see {work / 'connect.log'}")
            time.sleep(0.02)
        t0 = time.monotonic()
        cpu0 = _proc_cpu_s(proc.pid)
        while slot_state(slot)[1] < end_lsn:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Debezium did not reach the end LSN; see {work / 'connect.log'}")
            time.sleep(0.05)
        t1 = time.monotonic()
        cpu1 = _proc_cpu_s(proc.pid)
        hwm = _proc_hwm_kb(proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(10)
        out.close()
    return {"seconds": t1 - t0, "cpu_s": cpu1 - cpu0, "maxrss_kb": hwm}
