"""The local stack: a real PostgreSQL (logical replication) and a real Apache Kafka broker.

Both run as child processes on free loopback ports with their data in one
throwaway folder, so several stacks can run side by side (the demo, a test
session, a benchmark) and nothing depends on a service that happened to be
running. Used by ``sevisflow stack up|down|status``, ``make demo``, the pytest
session fixtures and bench/.

Start order and what each step checks (a failure names the step and shows the
service's log tail, see :class:`~sevisflow.core.errors.StackError`):

1. PostgreSQL binaries present (``apt-get install postgresql`` when missing);
2. an unprivileged OS user to run it (initdb refuses root);
3. ``initdb``, config with ``wal_level=logical``, ``pg_ctl start -w``, ``CREATE DATABASE``;
4. Kafka jars present (fetched once with Maven into the user cache, see kafka/pom.xml);
5. ``kafka-storage format`` (KRaft, single combined broker+controller), start, wait until
   the broker answers metadata requests.

Options: ``kafka_security="sasl_ssl"`` (TLS with client certificates + SASL/SCRAM, the CA and
certificates made at start by deploy/local/tls.py; KRaft's StandardAuthorizer with a SCRAM user per
principal of sevisflow/core/acls.py and their ACLs applied) and ``kafka_brokers=3`` (a three-node KRaft
cluster, deploy/local/cluster.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sevisflow.core.errors import StackError

if TYPE_CHECKING:
    from sevisflow.core.config import Settings

HERE = Path(__file__).resolve().parent
KAFKA_VERSION = "4.4.0"
PG_USER = "sevisflow-pg"
STATE_FILE = "stack.json"


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "sevisflow"


def free_port() -> int:
    """A TCP port nobody uses right now, below the kernel's ephemeral range: a port the kernel hands out
    (``bind(0)``) can go to another process's outgoing connection (a Kafka client's) before the server meant
    for it binds it, which a CI run met. Free on every address, so a server on 0.0.0.0 can take it too."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.sample(range(20000, max(low, 20001)), 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port between 20000 and the ephemeral range")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _run(step: str, cmd: list[str], log: Path | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    except FileNotFoundError as exc:
        raise StackError(step, f"{cmd[0]} not found ({exc})") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()[-15:]
        raise StackError(
            step, f"`{' '.join(cmd[:3])} …` exited {proc.returncode}", "\n".join(detail) or (tail(log) if log else "")
        )
    return proc


# --------------------------------------------------------------------------- PostgreSQL


def find_pg_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian layout), if any."""
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = sorted(
            (p for p in root.iterdir() if (p / "bin" / "initdb").exists()),
            key=lambda p: int(p.name) if p.name.isdigit() else 0,
        )
        if versions:
            return versions[-1] / "bin"
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def ensure_pg_installed() -> Path:
    """Find the server binaries, installing Debian's postgresql package when absent."""
    found = find_pg_bin()
    if found:
        return found
    if os.geteuid() != 0:
        raise StackError(
            "install PostgreSQL",
            "no PostgreSQL server found and not root; install it with: sudo apt-get install -y postgresql",
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run("install PostgreSQL (apt-get update)", ["apt-get", "update", "-q"], env=env)
    _run(
        "install PostgreSQL (apt-get install)",
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql", "postgresql-contrib"],
        env=env,
    )
    found = find_pg_bin()
    if not found:
        raise StackError("install PostgreSQL", "apt-get succeeded but no initdb was found")
    return found


def ensure_os_user(name: str = PG_USER) -> tuple[int, int] | None:
    """When running as root, an unprivileged user to own and run the cluster (uid, gid)."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        _run(
            "create PostgreSQL OS user",
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        )
        pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


@dataclass
class PostgresInfo:
    port: int
    datadir: str
    socket_dir: str
    user: str = "postgres"
    dbname: str = "sis"
    pid: int = 0
    root: str = ""

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={self.dbname} user={self.user}"

    def dsn_for(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={self.user}"


class PostgresService:
    """A throwaway PostgreSQL cluster with wal_level=logical."""

    def __init__(self, base: Path, timezone: str = "UTC") -> None:
        self.base = base
        self.timezone = timezone
        self.info: PostgresInfo | None = None

    def _as_owner(self, cmd: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", PG_USER, "--"] + cmd
        return cmd

    def start(self) -> PostgresInfo:
        bindir = ensure_pg_installed()
        ids = ensure_os_user()
        if ids:
            # As root, the cluster lives in its own folder directly under the system temp dir,
            # owned by the unprivileged user: the repo's folders may not be reachable for it
            # (a clone inside a 0700 folder, say).
            root = Path(tempfile.mkdtemp(prefix="sevisflow-pg-"))
            os.chown(root, ids[0], ids[1])
        else:
            root = self.base / "pg"
            root.mkdir(parents=True, exist_ok=True)
        datadir = root / "data"
        log = root / "postgres.log"
        _run(
            "PostgreSQL initdb",
            self._as_owner(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(datadir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            ),
            cwd=root,
        )
        port = free_port()
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{datadir}'",
            "wal_level": "logical",
            "max_replication_slots": "32",
            "max_wal_senders": "32",
            "max_connections": "200",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "256MB",
            "timezone": f"'{self.timezone}'",
            "log_timezone": "'UTC'",
            "wal_sender_timeout": "60s",
        }
        with open(datadir / "postgresql.auto.conf", "a") as fh:
            fh.writelines(f"{k} = {v}\n" for k, v in conf.items())
        with open(datadir / "pg_hba.conf", "a") as fh:
            fh.write("host replication all 127.0.0.1/32 trust\n")
        if ids:
            os.chown(datadir / "postgresql.auto.conf", *ids)
        log.touch()
        if ids:
            os.chown(log, *ids)
        proc = subprocess.run(
            self._as_owner([str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(log), "-w", "-t", "60", "start"]),
            capture_output=True,
            text=True,
            cwd=root,
        )
        if proc.returncode != 0:
            raise StackError("PostgreSQL start", f"pg_ctl exited {proc.returncode}", tail(log))
        pid = int((datadir / "postmaster.pid").read_text().split()[0])
        info = PostgresInfo(port=port, datadir=str(datadir), socket_dir=str(datadir), pid=pid, root=str(root))
        _run(
            "PostgreSQL create database",
            [
                str(bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-qc",
                "CREATE DATABASE sis",
            ],
            log=log,
        )
        self.info = info
        return info

    @staticmethod
    def stop(info: PostgresInfo) -> None:
        bindir = find_pg_bin()
        datadir = Path(info.datadir)
        if bindir and (datadir / "postmaster.pid").exists():
            cmd = [str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "-t", "30", "stop"]
            if os.geteuid() == 0:
                cmd = ["runuser", "-u", PG_USER, "--"] + cmd
            subprocess.run(cmd, capture_output=True, text=True, cwd="/")
        _kill_if_alive(info.pid)
        if info.root:
            shutil.rmtree(info.root, ignore_errors=True)


# --------------------------------------------------------------------------- Kafka


def kafka_jars_dir() -> Path:
    return cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_kafka_jars() -> Path:
    """Kafka's jars, fetched from Maven Central once and cached in the user cache folder."""
    libs = kafka_jars_dir()
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if not shutil.which("mvn"):
        raise StackError("fetch Kafka jars", "Maven (mvn) is not installed; apt-get install -y maven")
    tmp = libs.with_name("libs.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _run(
        "fetch Kafka jars (mvn dependency:copy-dependencies)",
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(HERE / "kafka" / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
            f"-Dkafka.version={KAFKA_VERSION}",
        ],
    )
    if not any(tmp.glob("kafka_2.13-*.jar")):
        raise StackError("fetch Kafka jars", f"Maven finished but no kafka_2.13 jar is in {tmp}")
    (tmp / ".complete").write_text(KAFKA_VERSION)
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs


def java_bin() -> str:
    java = shutil.which("java")
    if not java:
        raise StackError("find Java", "java is not installed; apt-get install -y openjdk-17-jre-headless")
    return java


SECURITY_MODES = ("plaintext", "sasl_ssl")
SCRAM_MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "admin"
"""The brokers' own SASL user (inter-broker link): a super user."""
CLIENT_USER = "sevisflow-admin"
"""The operator's SASL user (``.env`` of a secure stack: topics apply, acls apply): a super user.
Stages, DSOs and auditors get their own users and ACLs (``principals/<user>.env``)."""
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


@dataclass
class KafkaNode:
    """One broker+controller JVM of a multi-node local cluster (see deploy/local/cluster.py)."""

    node_id: int
    port: int
    controller_port: int
    home: str
    datadir: str
    log: str
    pid: int = 0
    heap: str = ""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class KafkaInfo:
    """A running local Kafka: one node, or several (``nodes``) for the cluster option.

    With ``security="sasl_ssl"`` the client listener requires TLS with a client
    certificate signed by the stack's CA plus SASL/SCRAM-SHA-512; ``tls_dir`` holds
    the PEM files and ``sasl_password_file`` the client user's password (0600).
    """

    port: int
    controller_port: int
    datadir: str
    log: str
    pid: int = 0
    security: str = "plaintext"
    tls_dir: str = ""
    sasl_username: str = ""
    sasl_password_file: str = ""
    nodes: list[KafkaNode] = field(default_factory=list)
    principal_password_files: dict[str, str] = field(default_factory=dict)
    """SASL user → its password file (0600), for every principal of the ACL model (secure stacks)."""

    @property
    def bootstrap(self) -> str:
        if self.nodes:
            return ",".join(n.bootstrap for n in self.nodes)
        return f"127.0.0.1:{self.port}"

    def all_pids(self) -> list[int]:
        return [n.pid for n in self.nodes] if self.nodes else [self.pid]

    def all_ports(self) -> list[int]:
        if self.nodes:
            return [p for n in self.nodes for p in (n.port, n.controller_port)]
        return [self.port, self.controller_port]

    def kafka_settings(self, user: str | None = None) -> dict[str, str]:
        """The ``[kafka]`` settings (sevisflow.core.config field names) that reach this Kafka, as the
        operator (super user) or, with ``user``, as that principal of the ACL model.

        The password is passed as ``file:<path>`` so nothing printed or saved holds it.
        """
        out = {"bootstrap_servers": self.bootstrap}
        if self.security == "sasl_ssl":
            tls = Path(self.tls_dir)
            if user is not None and user not in self.principal_password_files:
                raise StackError(
                    "Kafka principals",
                    f"no SASL user {user!r} in this stack (known: {', '.join(sorted(self.principal_password_files))})",
                )
            out.update(
                {
                    "security_protocol": "SASL_SSL",
                    "ssl_ca_location": str(tls / "ca.pem"),
                    "ssl_certificate_location": str(tls / "client.pem"),
                    "ssl_key_location": str(tls / "client.key"),
                    "ssl_key_password": f"file:{tls / 'client.key.password'}",
                    "sasl_mechanism": SCRAM_MECHANISM,
                    "sasl_username": user or self.sasl_username,
                    "sasl_password": f"file:{self.principal_password_files[user] if user else self.sasl_password_file}",
                }
            )
        return out

    def probe_config(self) -> dict[str, object]:
        """librdkafka settings for the stack's own readiness probe (secrets read from their files)."""
        conf: dict[str, object] = {"bootstrap.servers": self.bootstrap}
        if self.security == "sasl_ssl":
            tls = Path(self.tls_dir)
            conf.update(
                {
                    "security.protocol": "SASL_SSL",
                    "ssl.ca.location": str(tls / "ca.pem"),
                    "ssl.certificate.location": str(tls / "client.pem"),
                    "ssl.key.location": str(tls / "client.key"),
                    "ssl.key.password": (tls / "client.key.password").read_text().strip(),
                    "sasl.mechanism": SCRAM_MECHANISM,
                    "sasl.username": self.sasl_username,
                    "sasl.password": Path(self.sasl_password_file).read_text().strip(),
                }
            )
        return conf


@dataclass(frozen=True)
class _Security:
    """What the broker configs of a secured stack need: TLS files and the SCRAM users' passwords."""

    mode: str
    tls_dir: str = ""
    admin_password: str = ""
    client_password_file: str = ""
    principal_files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def prepare(cls, mode: str, home: Path, users: tuple[str, ...] | list[str] = ()) -> _Security:
        if mode not in SECURITY_MODES:
            raise StackError(
                "Kafka security", f"unknown security mode {mode!r}; use one of {', '.join(SECURITY_MODES)}"
            )
        if mode == "plaintext":
            return cls(mode)
        from sevisflow.deploy.local.tls import make_tls_files

        secret_dir = home / "secrets"
        tls = make_tls_files(secret_dir)
        pw_file = _write_secret(secret_dir / "sasl.password", secrets.token_hex(16))
        # one SCRAM user per principal of the ACL model, each password in its own 0600 file
        files = {
            u: str(_write_secret(secret_dir / f"{u}.password", secrets.token_hex(16)))
            for u in users
            if u not in (ADMIN_USER, CLIENT_USER)
        }
        return cls(
            mode,
            tls_dir=tls.dir,
            admin_password=secrets.token_hex(16),
            client_password_file=str(pw_file),
            principal_files=files,
        )

    def client_password(self) -> str:
        return Path(self.client_password_file).read_text().strip()

    def format_args(self) -> list[str]:
        """``kafka-storage format --add-scram`` arguments: the SCRAM users exist from the first start."""
        if self.mode == "plaintext":
            return []
        args = [
            "--add-scram",
            f"{SCRAM_MECHANISM}=[name={ADMIN_USER},password={self.admin_password}]",
            "--add-scram",
            f"{SCRAM_MECHANISM}=[name={CLIENT_USER},password={self.client_password()}]",
        ]
        for user, path in sorted(self.principal_files.items()):
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={Path(path).read_text().strip()}]"]
        return args


def _write_secret(path: Path, value: str) -> Path:
    """Write a secret file 0600 from the start (never world-readable, not even for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return path


def broker_properties(
    node_id: int, port: int, controller_port: int, voters: str, data: Path, security: _Security, internal_rf: int = 1
) -> dict[str, str]:
    """server.properties of one combined broker+controller node.

    ``voters`` is the static controller quorum (``1@127.0.0.1:p1,2@…``); ``internal_rf`` the
    replication factor of the offsets and transaction-state topics (1 on one node, 3 on a cluster,
    with min.isr 2, so transactions survive the loss of one node).
    """
    client = "SASL_SSL" if security.mode == "sasl_ssl" else "PLAINTEXT"
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": voters,
        "listeners": f"{client}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"{client}://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": client,
        "listener.security.protocol.map": f"{client}:{client},CONTROLLER:PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "1",
        "offsets.topic.replication.factor": str(internal_rf),
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": str(internal_rf),
        "transaction.state.log.min.isr": str(min(2, internal_rf)),
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": str(internal_rf),
        "share.coordinator.state.topic.min.isr": str(min(2, internal_rf)),
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.flush.interval.messages": "9223372036854775807",
        "log.retention.hours": "-1",
    }
    if internal_rf > 1:
        # fail over quickly: a dead node is fenced (and leaves the ISRs) after 3 s, not 9 s
        props.update(
            {
                "broker.heartbeat.interval.ms": "500",
                "broker.session.timeout.ms": "3000",
                "controller.quorum.election.timeout.ms": "1000",
                "controller.quorum.fetch.timeout.ms": "2000",
                "default.replication.factor": str(internal_rf),
                "min.insync.replicas": str(min(2, internal_rf)),
                "unclean.leader.election.enable": "false",
                "num.replica.fetchers": "1",
                "num.network.threads": "2",
                "num.io.threads": "2",
                "background.threads": "2",
                "log.cleaner.threads": "1",
            }
        )
    if security.mode == "sasl_ssl":
        tls = Path(security.tls_dir)
        listener = client.lower()
        props.update(
            {
                "sasl.enabled.mechanisms": SCRAM_MECHANISM,
                "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
                f"listener.name.{listener}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{ADMIN_USER}" password="{security.admin_password}";',
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(tls / "broker.pem"),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(tls / "ca.pem"),
                # mutual TLS on a SASL_SSL listener needs the listener prefix (the bare key applies to SSL listeners only)
                f"listener.name.{listener}.ssl.client.auth": "required",
                "ssl.endpoint.identification.algorithm": "https",
                # least privilege: KRaft's authorizer, deny what no ACL allows (sevisflow/core/acls.py gives the ACLs).
                # Super users: the brokers' own user, the operator, and ANONYMOUS — the principal of the
                # CONTROLLER listener, which is plaintext on the loopback interface of this local stack only
                # (brokers register with the controllers over it); the client listener has no anonymous access.
                "authorizer.class.name": AUTHORIZER,
                "allow.everyone.if.no.acl.found": "false",
                "super.users": f"User:{ADMIN_USER};User:{CLIENT_USER};User:ANONYMOUS",
            }
        )
    return props


def write_node_files(home: Path, props: dict[str, str]) -> tuple[Path, Path]:
    """Write server.properties (0600: it may hold the inter-broker password) and log4j2.properties."""
    home.mkdir(parents=True, exist_ok=True)
    props_file = home / "server.properties"
    fd = os.open(props_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(f"{k}={v}\n" for k, v in props.items()))
    log = home / "server.log"
    (home / "log4j2.properties").write_text(
        "status = error\n"
        "appender.file.type = File\nappender.file.name = file\n"
        f"appender.file.fileName = {log}\n"
        "appender.file.layout.type = PatternLayout\nappender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\nrootLogger.appenderRef.file.ref = file\n"
        "logger.kafka.name = kafka\nlogger.kafka.level = WARN\n"
        "logger.state.name = state.change.logger\nlogger.state.level = WARN\n"
        "logger.org.name = org.apache.kafka\nlogger.org.level = WARN\n"
        "logger.started.name = kafka.server.KafkaRaftServer\nlogger.started.level = INFO\n"
    )
    return props_file, log


def java_cmd(home: Path, heap: str) -> list[str]:
    """The JVM command line (small heap, serial GC, C1 only: quick to start on small machines)."""
    libs = ensure_kafka_jars()
    return [
        java_bin(),
        f"-Xmx{heap}",
        "-Xss1m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
    ]


def format_storage(home: Path, heap: str, cluster_id: str, security: _Security) -> None:
    """``kafka-storage format`` for one node (creating the SCRAM users of a secured stack)."""
    _run(
        "Kafka storage format",
        java_cmd(home, heap)
        + [
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            "-c",
            str(home / "server.properties"),
            "--ignore-formatted",
        ]
        + security.format_args(),
        log=home / "server.log",
    )


def launch_node(home: Path, heap: str) -> subprocess.Popen[bytes]:
    """Start one node in its own process group (so a stop or kill -9 reaches the whole JVM)."""
    with open(home / "stdout.log", "ab") as stdout:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            java_cmd(home, heap) + ["kafka.Kafka", str(home / "server.properties")],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class KafkaService:
    """A single-node KRaft Kafka (combined broker + controller) that can run transactions.

    ``security="sasl_ssl"`` makes the one client listener require TLS (the stack's CA, a client
    certificate) and SASL/SCRAM-SHA-512; the users ``admin`` (inter-broker) and ``sevisflow`` (clients)
    are created at format time. :meth:`KafkaInfo.kafka_settings` gives the client settings.
    """

    def __init__(
        self, base: Path, heap: str = "768m", security: str = "plaintext", users: tuple[str, ...] | list[str] = ()
    ) -> None:
        self.base = base
        self.heap = heap
        self.security = security
        self.users = tuple(users)

    def start(self) -> KafkaInfo:
        ensure_kafka_jars()
        home = self.base / "kafka"
        data = home / "data"
        data.mkdir(parents=True, exist_ok=True)
        security = _Security.prepare(self.security, home, self.users)
        port, cport = free_port(), free_port()
        while cport == port:
            cport = free_port()
        props = broker_properties(1, port, cport, f"1@127.0.0.1:{cport}", data, security)
        _, log = write_node_files(home, props)
        format_storage(home, self.heap, _kafka_cluster_id(), security)
        proc = launch_node(home, self.heap)
        info = KafkaInfo(
            port=port,
            controller_port=cport,
            datadir=str(data),
            log=str(log),
            pid=proc.pid,
            security=self.security,
            tls_dir=security.tls_dir,
            sasl_username=CLIENT_USER if self.security != "plaintext" else "",
            sasl_password_file=security.client_password_file,
            principal_password_files=dict(security.principal_files),
        )
        self._wait_ready(info, proc, home)
        return info

    @staticmethod
    def _wait_ready(
        info: KafkaInfo,
        proc: subprocess.Popen[bytes],
        home: Path,
        timeout_s: float = 90,
        brokers: int = 1,
        port: int | None = None,
    ) -> None:
        from confluent_kafka.admin import AdminClient

        port = port or info.port
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(
                    "Kafka start",
                    f"broker exited with {proc.returncode}",
                    tail(home / "server.log") or tail(home / "stdout.log"),
                )
            if port_open(port):
                # a logger object is a valid setting, though the client's annotations allow only scalars
                conf: dict[str, Any] = {**info.probe_config(), "log_level": 0, "logger": _null_logger()}
                conf["bootstrap.servers"] = f"127.0.0.1:{port}"
                admin = AdminClient(conf)
                try:
                    md = admin.list_topics(timeout=2)
                    if len(md.brokers) >= brokers:
                        return
                except Exception:  # noqa: BLE001 - not ready yet, keep waiting
                    pass
            time.sleep(0.3)
        proc.kill()
        raise StackError(
            "Kafka start",
            f"broker not ready within {timeout_s}s",
            tail(home / "server.log") or tail(home / "stdout.log"),
        )

    @staticmethod
    def stop(info: KafkaInfo, timeout_s: float = 30) -> None:
        """SIGTERM every node at once (a throwaway cluster need not shut down in order), SIGKILL stragglers."""
        pids = [pid for pid in info.all_pids() if _alive(pid)]
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (timeout_s if len(pids) <= 1 else min(timeout_s, 15))
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            for pid in pids:
                _reap(pid)
            time.sleep(0.1)
        for pid in info.all_pids():
            _kill_if_alive(pid)
            _reap(pid)


def _null_logger() -> logging.Logger:
    lg = logging.getLogger("sevisflow.stack.kafka-probe")
    lg.addHandler(logging.NullHandler())
    lg.propagate = False
    return lg


def _kafka_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 chars)."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _terminate(pid: int, timeout_s: float) -> None:
    if not _alive(pid):
        _reap(pid)
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not _alive(pid):
            return
        time.sleep(0.1)
    _kill_if_alive(pid)


def _kill_if_alive(pid: int) -> None:
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(50):
            _reap(pid)
            if not _alive(pid):
                break
            time.sleep(0.05)


# --------------------------------------------------------------------------- the stack


@dataclass
class StackInfo:
    name: str
    base: str
    postgres: PostgresInfo | None = None
    kafka: KafkaInfo | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def save(self) -> None:
        Path(self.base, STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, base: Path) -> StackInfo:
        raw = json.loads((base / STATE_FILE).read_text())
        return cls(
            name=raw["name"],
            base=raw["base"],
            postgres=PostgresInfo(**raw["postgres"]) if raw.get("postgres") else None,
            kafka=_kafka_info_from(raw["kafka"]) if raw.get("kafka") else None,
            extra=raw.get("extra", {}),
        )

    def env(self) -> dict[str, str]:
        """SEVISFLOW_* variables that point the pipeline at this stack."""
        out = {}
        if self.kafka:
            # secrets appear as file:<path> references, never as values
            out.update({f"SEVISFLOW_KAFKA_{k.upper()}": v for k, v in self.kafka.kafka_settings().items()})
        if self.postgres:
            out["SEVISFLOW_POSTGRES_HOST"] = "127.0.0.1"
            out["SEVISFLOW_POSTGRES_PORT"] = str(self.postgres.port)
            out["SEVISFLOW_POSTGRES_DBNAME"] = self.postgres.dbname
            out["SEVISFLOW_POSTGRES_USER"] = self.postgres.user
        return out


def _kafka_info_from(raw: dict[str, Any]) -> KafkaInfo:
    """The KafkaInfo of a stack.json (JSON: its values are typed by KafkaInfo's fields)."""
    fields = dict(raw)
    fields["nodes"] = [KafkaNode(**n) for n in fields.get("nodes") or []]
    return KafkaInfo(**fields)


def stacks_root() -> Path:
    return Path(os.environ.get("SEVISFLOW_STACKS_DIR", Path.cwd() / ".local" / "stacks"))


def start_stack(
    name: str | None = None,
    base: Path | None = None,
    postgres: bool = True,
    kafka: bool = True,
    pg_timezone: str = "UTC",
    progress: Callable[[str], None] = print,
    kafka_brokers: int = 1,
    kafka_security: str = "plaintext",
    acl_settings: Settings | None = None,
) -> StackInfo:
    """Start PostgreSQL and/or Kafka in a fresh folder; stop what started if a later step fails.

    ``kafka_brokers=3`` starts a three-node KRaft cluster (deploy/local/cluster.py) instead of
    one node; ``kafka_security="sasl_ssl"`` makes Kafka require TLS + SASL/SCRAM and authorize
    every request: a SCRAM user per principal of ``acl_settings`` ([acls] and the topic names;
    default settings when None), their ACLs applied, one ``principals/<user>.env`` each (0600).
    """
    from sevisflow.core.acls import principals
    from sevisflow.core.config import Settings as _Settings

    acl_settings = acl_settings or _Settings()
    users = [u for names in principals(acl_settings).values() for u in names] if kafka_security == "sasl_ssl" else []
    name = name or f"stack-{uuid.uuid4().hex[:8]}"
    if base is None:
        root = stacks_root()
        root.mkdir(parents=True, exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    base.mkdir(parents=True, exist_ok=True)
    info = StackInfo(name=name, base=str(base))
    try:
        if postgres:
            progress("starting PostgreSQL (wal_level=logical)…")
            info.postgres = PostgresService(base, timezone=pg_timezone).start()
            info.save()
            progress(f"  PostgreSQL ready on 127.0.0.1:{info.postgres.port}")
        if kafka:
            if kafka_brokers > 1:
                from sevisflow.deploy.local.cluster import KafkaCluster

                progress(f"starting Kafka (KRaft, {kafka_brokers} nodes, {kafka_security})…")
                info.kafka = KafkaCluster(base, nodes=kafka_brokers, security=kafka_security, users=users).start()
            else:
                progress(f"starting Kafka (KRaft, single node, {kafka_security})…")
                info.kafka = KafkaService(base, security=kafka_security, users=users).start()
            info.save()
            progress(f"  Kafka ready on {info.kafka.bootstrap}")
            if kafka_security == "sasl_ssl":
                progress("applying the ACLs of every principal (StandardAuthorizer)…")
                info.extra["principals_dir"] = str(write_principal_envs(info, acl_settings, progress))
                info.save()
    except BaseException:
        stop_stack(info, remove=True)
        raise
    info.save()
    return info


def apply_stack_acls(info: StackInfo, acl_settings: Settings) -> Any:
    """Apply the ACL model of ``acl_settings`` to the stack's Kafka, as its operator (super user)."""
    from sevisflow.core.acls import apply_acls

    assert info.kafka is not None
    kafka = _settings_kafka(info.kafka.kafka_settings())
    return apply_acls(dataclasses.replace(acl_settings, kafka=kafka))


def _settings_kafka(values: dict[str, str]) -> Any:
    from sevisflow.core.config import settings_from_mapping

    return settings_from_mapping({"kafka": values}, env={}).kafka


def write_principal_envs(info: StackInfo, acl_settings: Settings, progress: Callable[[str], None] = print) -> Path:
    """Apply the ACLs, then write ``principals/<user>.env`` (0600): the SEVISFLOW_KAFKA_* settings
    of each principal, its password as a ``file:`` reference, so a stage runs with its own rights."""
    from sevisflow.core.acls import principal_role

    assert info.kafka is not None
    plan = apply_stack_acls(info, acl_settings)
    progress(f"  {len(plan.creates)} ACLs created for {len(info.kafka.principal_password_files)} principals")
    folder = Path(info.base) / "principals"
    folder.mkdir(mode=0o700, exist_ok=True)
    roles = principal_role(acl_settings)
    for user in sorted(info.kafka.principal_password_files):
        env = {f"SEVISFLOW_KAFKA_{k.upper()}": v for k, v in info.kafka.kafka_settings(user).items()}
        _write_secret(
            folder / f"{user}.env",
            f"# sevisflow principal {user} (role {roles.get(user, '?')})\n"
            + "".join(f"export {k}={v}\n" for k, v in env.items()),
        )
    return folder


def stop_stack(info: StackInfo, remove: bool = True) -> None:
    """Stop both services, wait until their ports are closed, and delete the folder."""
    if info.kafka:
        KafkaService.stop(info.kafka)
    if info.postgres:
        PostgresService.stop(info.postgres)
    for port in (info.kafka.all_ports() if info.kafka else []) + ([info.postgres.port] if info.postgres else []):
        deadline = time.monotonic() + 10
        while port_open(port) and time.monotonic() < deadline:
            time.sleep(0.1)
    if remove:
        shutil.rmtree(info.base, ignore_errors=True)


def stack_status(info: StackInfo) -> dict[str, object]:
    return {
        "name": info.name,
        "base": info.base,
        "postgres": {"port": info.postgres.port, "running": _alive(info.postgres.pid) and port_open(info.postgres.port)}
        if info.postgres
        else None,
        "kafka": {
            "bootstrap": info.kafka.bootstrap,
            "security": info.kafka.security,
            "nodes": len(info.kafka.nodes) or 1,
            "running": all(_alive(pid) for pid in info.kafka.all_pids()) and port_open(info.kafka.port),
        }
        if info.kafka
        else None,
    }


if __name__ == "__main__":  # pragma: no cover - manual smoke test
    s = start_stack()
    print(json.dumps(stack_status(s)))
    stop_stack(s)
    sys.exit(0)
