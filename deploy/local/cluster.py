"""A local multi-node Kafka: N combined broker+controller KRaft nodes (default 3).

For testing what production looks like: replication factor 3, min.insync.replicas 2,
internal offsets/transaction topics replicated 3 ways, and one node killed with
``kill -9`` while a processor runs. Each node is its own JVM with its own ports, data
and log folder under ``<base>/kafka/node-<id>``; a static controller quorum of all
nodes survives the loss of one.

Sized for small machines (a 2-core CI runner): 320 MB heap per node, serial GC, C1
only, few threads, and short broker session timeouts so a dead node is fenced and
its partitions move within a few seconds.

Use it from Python::

    info = KafkaCluster(base, nodes=3).start()     # a KafkaInfo with .nodes
    kill_node(info, 2)                               # SIGKILL, as a crash
    restart_node(info, 2)                            # same ports, same data
    KafkaService.stop(info)

or ``sevisflow stack up --brokers 3`` (``start_stack(kafka_brokers=3)``).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from sevisflow.core.errors import StackError
from sevisflow.deploy.local.stack import (
    CLIENT_USER,
    KafkaInfo,
    KafkaNode,
    KafkaService,
    _alive,
    _kafka_cluster_id,
    _reap,
    _Security,
    broker_properties,
    ensure_kafka_jars,
    format_storage,
    free_port,
    launch_node,
    tail,
    write_node_files,
)

DEFAULT_HEAP = "320m"


class KafkaCluster:
    """``nodes`` combined broker+controller nodes forming one KRaft cluster."""

    def __init__(
        self,
        base: Path,
        nodes: int = 3,
        security: str = "plaintext",
        heap: str = DEFAULT_HEAP,
        users: tuple[str, ...] | list[str] = (),
    ) -> None:
        if nodes < 1:
            raise StackError("Kafka cluster", "needs at least one node")
        self.base = base
        self.nodes = nodes
        self.security = security
        self.heap = heap
        self.users = tuple(users)  # SCRAM users of a secure cluster (sevisflow/core/acls.py principals)

    def start(self, timeout_s: float = 120) -> KafkaInfo:
        """Format every node, start them all at once, wait until each sees all brokers."""
        ensure_kafka_jars()
        root = self.base / "kafka"
        root.mkdir(parents=True, exist_ok=True)
        security = _Security.prepare(self.security, root, self.users)
        ports = _distinct_ports(2 * self.nodes)
        voters = ",".join(f"{i + 1}@127.0.0.1:{ports[2 * i + 1]}" for i in range(self.nodes))
        internal_rf = min(3, self.nodes)
        nodes: list[KafkaNode] = []
        for i in range(self.nodes):
            node_id = i + 1
            home = root / f"node-{node_id}"
            data = home / "data"
            data.mkdir(parents=True, exist_ok=True)
            props = broker_properties(node_id, ports[2 * i], ports[2 * i + 1], voters, data, security, internal_rf)
            _, log = write_node_files(home, props)
            nodes.append(
                KafkaNode(
                    node_id=node_id,
                    port=ports[2 * i],
                    controller_port=ports[2 * i + 1],
                    home=str(home),
                    datadir=str(data),
                    log=str(log),
                    heap=self.heap,
                )
            )
        cluster_id = _kafka_cluster_id()
        for node in nodes:
            format_storage(Path(node.home), self.heap, cluster_id, security)
        procs = []
        for node in nodes:
            proc = launch_node(Path(node.home), self.heap)
            node.pid = proc.pid
            procs.append(proc)
        first = nodes[0]
        info = KafkaInfo(
            port=first.port,
            controller_port=first.controller_port,
            datadir=first.datadir,
            log=first.log,
            pid=first.pid,
            security=self.security,
            tls_dir=security.tls_dir,
            sasl_username=CLIENT_USER if self.security != "plaintext" else "",
            sasl_password_file=security.client_password_file,
            nodes=nodes,
            principal_password_files=dict(security.principal_files),
        )
        try:
            for node, proc in zip(nodes, procs):
                KafkaService._wait_ready(
                    info, proc, Path(node.home), timeout_s=timeout_s, brokers=self.nodes, port=node.port
                )
        except BaseException:
            KafkaService.stop(info)
            raise
        return info


def _distinct_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def node(info: KafkaInfo, node_id: int) -> KafkaNode:
    for n in info.nodes:
        if n.node_id == node_id:
            return n
    raise StackError("Kafka cluster", f"no node {node_id} (nodes: {[n.node_id for n in info.nodes]})")


def kill_node(info: KafkaInfo, node_id: int) -> None:
    """``kill -9`` one node's JVM, as a crash would: no shutdown, no leader hand-over."""
    n = node(info, node_id)
    try:
        os.killpg(n.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 10
    while _alive(n.pid) and time.monotonic() < deadline:
        _reap(n.pid)
        time.sleep(0.05)
    _reap(n.pid)


def restart_node(info: KafkaInfo, node_id: int, timeout_s: float = 90) -> None:
    """Start a stopped node again with its ports and data; wait until it serves metadata."""
    n = node(info, node_id)
    if _alive(n.pid):
        raise StackError("Kafka cluster", f"node {node_id} is still running (pid {n.pid})")
    proc = launch_node(Path(n.home), n.heap or DEFAULT_HEAP)
    n.pid = proc.pid
    if info.nodes and info.nodes[0].node_id == node_id:
        info.pid = proc.pid
    KafkaService._wait_ready(info, proc, Path(n.home), timeout_s=timeout_s, brokers=len(info.nodes), port=n.port)


def node_log_tail(info: KafkaInfo, node_id: int, lines: int = 30) -> str:
    return tail(Path(node(info, node_id).log), lines)
