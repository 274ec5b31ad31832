"""The real Debezium PostgreSQL connector under Kafka Connect standalone, on this machine.

For the "bring your own Debezium" test and the connector benchmark: jars from Maven Central
(``bench/connector/debezium/pom.xml``: connect-runtime, connect-json, debezium-connector-postgres),
cached in ``~/.cache/sevisflow/debezium-<v>-connect-<v>/libs`` and run with the machine's Java.
Connect is 4.3.0, the Kafka version Debezium 3.6.1 is built against (on 4.4.0 its task dies with
``NoClassDefFoundError: org/apache/kafka/common/utils/Sanitizer``). The connector settings come from
``deploy/debezium/sevisflow-sis.properties``, the file a school would use, with the local values
put in by :func:`connector_properties`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
POM = REPO / "bench" / "connector" / "debezium" / "pom.xml"
SHIPPED_CONNECTOR = REPO / "deploy" / "debezium" / "sevisflow-sis.properties"
SHIPPED_WORKER = REPO / "deploy" / "debezium" / "connect-standalone.properties"
VERSION = "3.6.1.Final"
CONNECT_VERSION = "4.3.0"


def jars_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sevisflow"
    return base / f"debezium-{VERSION}-connect-{CONNECT_VERSION}" / "libs"


def ensure_jars() -> Path:
    """The folder with Connect's and Debezium's jars, fetched with Maven on first use."""
    libs = jars_dir()
    if (libs / ".complete").exists():
        return libs
    if not shutil.which("mvn"):
        raise RuntimeError("Maven (mvn) is needed to fetch Debezium's jars (apt-get install maven)")
    tmp = libs.with_name("libs.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ],
        check=True,
        timeout=900,
    )
    (tmp / ".complete").write_text(VERSION)
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs


def read_properties(path: Path) -> dict[str, str]:
    """A Java .properties file as written in deploy/debezium (key=value lines, # comments, \\\\ escapes)."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip().replace("\\\\", "\\")
    return out


def write_properties(path: Path, values: Mapping[str, str]) -> None:
    path.write_text(
        "".join(f"{k}={str(v).replace(chr(92), chr(92) * 2)}\n" for k, v in values.items()), encoding="utf-8"
    )
    path.chmod(0o600)


def connector_properties(pg_port: int, dbname: str, slot: str, topic_prefix: str, **overrides: str) -> dict[str, str]:
    """The shipped connector file with this machine's values: local PostgreSQL, one broker."""
    props = read_properties(SHIPPED_CONNECTOR)
    props.update(
        {
            "database.hostname": "127.0.0.1",
            "database.port": str(pg_port),
            "database.dbname": dbname,
            "database.user": "postgres",
            "database.password": "",
            "slot.name": slot,
            "topic.prefix": topic_prefix,
            "topic.creation.default.replication.factor": "1",
            "topic.creation.transaction.replication.factor": "1",
            "topic.creation.transaction.include": f"{topic_prefix}\\.transaction",
        }
    )
    props.update(overrides)
    return props


class ConnectStandalone:
    """Kafka Connect standalone with Debezium, started in its own process group; ``stop()`` ends it."""

    def __init__(self, work: Path, bootstrap: str, connector: Mapping[str, str]) -> None:
        from sevisflow.deploy.local.stack import free_port, java_bin

        libs = ensure_jars()
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        worker = read_properties(SHIPPED_WORKER)
        worker.update(
            {
                "bootstrap.servers": bootstrap,
                "offset.storage.file.filename": str(work / "offsets.dat"),
                "listeners": f"http://127.0.0.1:{free_port()}",
            }
        )
        write_properties(work / "worker.properties", worker)
        write_properties(work / "connector.properties", connector)
        log4j = work / "log4j2.properties"
        log4j.write_text(
            "status = error\nappender.file.type = File\nappender.file.name = file\n"
            f"appender.file.fileName = {work / 'connect.log'}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = WARN\nrootLogger.appenderRef.file.ref = file\n"
        )
        self.cmd = [
            java_bin(),
            "-Xmx512m",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{libs}/*",
            "org.apache.kafka.connect.cli.ConnectStandalone",
            str(work / "worker.properties"),
            str(work / "connector.properties"),
        ]
        self._out = open(work / "stdout.log", "wb")  # noqa: SIM115 - the worker's output for its lifetime; closed by stop()
        self.proc = subprocess.Popen(self.cmd, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def running(self) -> bool:
        """The worker process lives and its task has not died (Connect keeps the process up when it does)."""
        return self.proc.poll() is None and "unrecoverable exception" not in self.log_tail(200_000)

    def log_tail(self, chars: int = 3000) -> str:
        path = self.work / "connect.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()
