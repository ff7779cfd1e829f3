"""A three-node Apache Kafka cluster as production runs it, on this machine: every node a KRaft broker and
controller with its own node.id, one static controller quorum, replication factor 3 and min.insync.replicas 2 for the
topics, the offsets topic and the transaction log. The same Maven jars as the single broker (scripts/kafka_local.py).

Faults for tests, one node at a time: kill() and start_again() on its data (SIGKILL: leaders and coordinators
move), freeze() and thaw() (SIGSTOP: it hangs with its connections open), cut() (every packet to its client and
inter-broker listener dropped by iptables on the loopback, while its controller listener stays in the quorum) and
remove_cut_rules(). transaction_coordinator() finds the node a producer's transactions depend on.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from scripts.kafka_local import KafkaError, LocalKafka, create_topics, free_port, java_command, random_cluster_id

NODES = 3
IPTABLES_TAG = "tfs-bridge-cut"  # the comment on every rule cut() adds, so remove_cut_rules() finds them all
NODE_PROPERTIES = """\
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir}
num.partitions=3
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
unclean.leader.election.enable=false
"""


class ClusterNode(LocalKafka):
    """One node of a LocalKafkaCluster: formatted with the cluster's id and quorum, not as a standalone."""

    def __init__(self, work_dir: Path, node_id: int, cluster: LocalKafkaCluster) -> None:
        super().__init__(work_dir, port=free_port(), heap="384m")
        self.node_id = node_id
        self.cluster = cluster

    def _properties(self) -> str:
        return NODE_PROPERTIES.format(node_id=self.node_id, voters=self.cluster.voters, port=self.port,
                                      controller_port=self.controller_port, data_dir=self.data_dir)

    def _format_args(self) -> list[str]:
        """One of the quorum's voters, with the cluster's id."""
        return ["-t", self.cluster.cluster_id]

    def kill(self) -> None:
        """SIGKILL: no controlled shutdown, as a crashed machine."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        self.pid_path.unlink(missing_ok=True)

    def start_again(self, timeout: float = 90.0) -> float:
        """Start on the data it had; returns seconds until it answers."""
        return self.start(timeout, keep_data=True)

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def cut(self) -> None:
        """Drop every packet to and from its PLAINTEXT listener (clients and other brokers); the controller
        listener stays, so the quorum still counts it alive. remove_cut_rules() ends it."""
        tag = ["-m", "comment", "--comment", IPTABLES_TAG]
        _iptables("-I", "INPUT", "-i", "lo", "-p", "tcp", "--dport", str(self.port), *tag, "-j", "DROP")
        _iptables("-I", "OUTPUT", "-o", "lo", "-p", "tcp", "--sport", str(self.port), *tag, "-j", "DROP")


def _iptables(*args: str, check: bool = True) -> None:
    if shutil.which("iptables") is None:
        raise KafkaError("iptables not found: install Debian's iptables package (cutting a broker off needs it)")
    result = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise KafkaError(f"iptables {' '.join(args)}: {result.stderr.strip()}")


def remove_cut_rules() -> None:
    """Delete every rule cut() added, whichever node and test added it."""
    for chain in ("INPUT", "OUTPUT"):
        listed = subprocess.run(["iptables", "-w", "-S", chain], capture_output=True, text=True).stdout
        for line in listed.splitlines():
            if IPTABLES_TAG in line and line.startswith("-A "):
                _iptables("-D", *line.split()[1:], check=False)


class LocalKafkaCluster:
    """NODES KRaft nodes (broker + controller each) under work_dir, sharing one cluster id and quorum."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        self.cluster_id = random_cluster_id()
        self.nodes = [ClusterNode(self.work_dir / f"node-{n}", n, self) for n in range(1, NODES + 1)]
        self.voters = ",".join(f"{node.node_id}@127.0.0.1:{node.controller_port}" for node in self.nodes)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def start(self, timeout: float = 120.0) -> float:
        began = time.monotonic()
        for node in self.nodes:
            node.work_dir.mkdir(parents=True, exist_ok=True)
            node.launch()
        for node in self.nodes:
            node.wait_ready(began + timeout)
        return time.monotonic() - began

    def stop(self) -> None:
        if shutil.which("iptables"):
            remove_cut_rules()
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.thaw()
            node.stop()

    def transaction_coordinator(self, transactional_id: str) -> ClusterNode:
        """The node coordinating this transactional.id's transactions (Kafka's kafka-transactions.sh describe)."""
        result = subprocess.run(java_command("org.apache.kafka.tools.TransactionsCommand", "--bootstrap-server",
                                             self.bootstrap_servers, "describe", "--transactional-id",
                                             transactional_id), capture_output=True, text=True, timeout=60)
        lines = [line.split() for line in result.stdout.splitlines() if line.strip()]
        if result.returncode != 0 or len(lines) < 2 or "CoordinatorId" not in lines[0]:
            raise KafkaError(f"kafka-transactions describe {transactional_id}: {result.stdout}{result.stderr}")
        coordinator = int(lines[1][lines[0].index("CoordinatorId")])
        return next(node for node in self.nodes if node.node_id == coordinator)

    def create_topics(self, topics: dict[str, int], timeout: float = 30.0) -> None:
        """Topics (name -> partitions) with replication factor 3 (and the cluster's min.insync.replicas 2)."""
        create_topics(self.bootstrap_servers, topics, replication=NODES, timeout=timeout)
