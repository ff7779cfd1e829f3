"""A real single-node Apache Kafka broker (KRaft, broker + controller) for the demo and the tests.

The jars come from Maven Central (scripts/kafka/pom.xml) into a cache outside the repository
($XDG_CACHE_HOME/tfs-bridge, default ~/.cache/tfs-bridge; not a TFS_BRIDGE_* variable,
which the bridge reserves for its settings). Usage:

    python -m scripts.kafka_local fetch                 # download the jars once
    python -m scripts.kafka_local start [--port 9092]   # format storage, start, wait until ready
    python -m scripts.kafka_local stop
    python -m scripts.kafka_local tool topics --bootstrap-server 127.0.0.1:9092 --list
    python -m scripts.kafka_local tool console-consumer --bootstrap-server ... --topic ...
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from scripts.orphan_guard import guarded

SCRIPTS_DIR = Path(__file__).resolve().parent
POM = SCRIPTS_DIR / "kafka" / "pom.xml"
DEFAULT_PORT = 9092

# The broker's own command-line tools, by the name a user knows them by.
TOOLS = {
    "topics": "org.apache.kafka.tools.TopicCommand",
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
}

# One node: every internal topic has replication factor 1, or transactions never start.
SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Let consumer-protocol (KIP-848) groups ask for sessions as short as the tests' classic ones.
group.consumer.min.session.timeout.ms=6000
group.consumer.min.heartbeat.interval.ms=1000
"""


class KafkaError(RuntimeError):
    """The local broker could not be fetched, started or stopped."""


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    assert match, "kafka.version missing from scripts/kafka/pom.xml"
    return match.group(1)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tfs-bridge"


def libs_dir() -> Path:
    return cache_dir() / f"kafka-{kafka_version()}" / "libs"


def fetch_jars() -> Path:
    """Download the broker's jars with Maven unless they are cached already."""
    libs = libs_dir()
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise KafkaError("mvn not found: install Maven to fetch the Kafka jars")
    libs.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise KafkaError(f"mvn could not fetch Kafka {kafka_version()}: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    marker.touch()
    return libs


def java_command(main_class: str, *args: str, heap: str = "256m") -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise KafkaError("java not found: install a Java 17+ runtime")
    return [java, f"-Xmx{heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-cp", f"{fetch_jars()}/*", main_class, *args]


def run_tool(tool: str, *args: str) -> int:
    """Run one of the broker's CLI tools (TOOLS) in the foreground, returning its exit code."""
    return subprocess.call(java_command(TOOLS[tool], *args))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalKafka:
    """One KRaft broker+controller process with its data under `work_dir`."""

    def __init__(self, work_dir: Path, port: int = DEFAULT_PORT, controller_port: int | None = None,
                 heap: str = "768m", stop_with_parent: bool = True) -> None:
        """stop_with_parent: the broker ends when the thread that started it does (a test that crashes
        leaves no broker behind); False for a broker meant to outlive this process."""
        self.work_dir = Path(work_dir)
        self.stop_with_parent = stop_with_parent
        self.port = port
        self.controller_port = controller_port or free_port()
        self.heap = heap
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "broker.log"

    @property
    def pid_path(self) -> Path:
        return self.work_dir / "broker.pid"

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    def start(self, timeout: float = 90.0, keep_data: bool = False) -> float:
        """Start the broker and wait until it answers; returns seconds taken.

        Wipes and formats the data dir first, unless keep_data: then it reuses the storage of an earlier start().
        """
        began = time.monotonic()
        self.launch(keep_data)
        self.wait_ready(began + timeout)
        return time.monotonic() - began

    def launch(self, keep_data: bool = False) -> None:
        """Start the broker's process without waiting for it (start() waits; a cluster's nodes answer only once a
        majority of them runs)."""
        if port_open(self.port):
            raise KafkaError(f"port {self.port} is already in use: is another broker running?")
        config = self.work_dir / "server.properties"
        if keep_data:
            if not (self.data_dir / "meta.properties").exists():
                raise KafkaError(f"no formatted Kafka storage to keep in {self.data_dir}")
        else:
            self._format(config)
        with open(self.log_path, "ab" if keep_data else "wb") as log:
            command = java_command("kafka.Kafka", str(config), heap=self.heap)
            self.process = subprocess.Popen(guarded(command) if self.stop_with_parent else command,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_path.write_text(str(self.process.pid))

    def restart(self, down_for: float = 0.0, timeout: float = 90.0) -> float:
        """stop(), sleep `down_for` seconds, then start the same broker on its data; returns start()'s seconds."""
        self.stop()
        time.sleep(down_for)
        return self.start(timeout, keep_data=True)

    def _format(self, config: Path) -> None:
        """Write server.properties and format an empty data dir."""
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        config.write_text(self._properties())
        formatted = subprocess.run(java_command("kafka.tools.StorageTool", "format", *self._format_args(),
                                                "-c", str(config)), capture_output=True, text=True)
        if formatted.returncode != 0:
            raise KafkaError(f"formatting Kafka storage failed: {formatted.stdout}{formatted.stderr}")

    def _properties(self) -> str:
        return SERVER_PROPERTIES.format(port=self.port, controller_port=self.controller_port, data_dir=self.data_dir)

    def _format_args(self) -> list[str]:
        """A node that is its own quorum, in a cluster of its own."""
        return ["--standalone", "-t", random_cluster_id()]

    def wait_ready(self, deadline: float) -> None:
        """Until the broker answers a metadata request (deadline: monotonic), else stop it and raise KafkaError."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise KafkaError(f"Kafka exited with {self.process.returncode}:\n{self._log_tail()}")
            try:
                metadata = admin.list_topics(timeout=1)
                if metadata.brokers:
                    return
            except Exception:  # not up yet; librdkafka raises KafkaException until the broker answers
                time.sleep(0.2)
        self.stop()
        raise KafkaError(f"Kafka did not become ready on {self.bootstrap_servers}:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker: SIGTERM (a controlled shutdown), then SIGKILL if it hangs."""
        pid = self.process.pid if self.process else _read_pid(self.pid_path)
        if pid is None:
            return
        _terminate(pid, timeout)
        if self.process is not None:
            self.process.wait()
        self.pid_path.unlink(missing_ok=True)

    def create_topics(self, topics: dict[str, int], timeout: float = 30.0) -> None:
        """Create topics (name -> partitions) with replication factor 1; existing ones are kept."""
        create_topics(self.bootstrap_servers, topics, replication=1, timeout=timeout)


def random_cluster_id() -> str:
    return subprocess.run(java_command("kafka.tools.StorageTool", "random-uuid"),
                          capture_output=True, text=True, check=True).stdout.strip()


def create_topics(bootstrap_servers: str, topics: dict[str, int], replication: int, timeout: float = 30.0) -> None:
    """Create topics (name -> partitions) with this replication factor; existing ones are kept."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    futures = admin.create_topics([NewTopic(name, partitions, replication) for name, partitions in topics.items()])
    for name, future in futures.items():
        try:
            future.result(timeout)
        except Exception as exc:  # KafkaException wrapping TOPIC_ALREADY_EXISTS is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise KafkaError(f"could not create topic {name}: {exc}") from exc


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def default_work_dir() -> Path:
    return cache_dir() / "run" / "kafka"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.kafka_local", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the Kafka jars from Maven Central")
    start = sub.add_parser("start", help="start a broker in the background and wait until it is ready")
    stop = sub.add_parser("stop", help="stop the broker started by 'start'")
    for command in (start, stop):
        command.add_argument("--work-dir", type=Path, default=default_work_dir())
    start.add_argument("--port", type=int, default=DEFAULT_PORT)
    tool = sub.add_parser("tool", help="run one of Kafka's own tools: " + ", ".join(TOOLS))
    tool.add_argument("name", choices=sorted(TOOLS))
    tool.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            print(fetch_jars())
        elif args.command == "start":
            broker = LocalKafka(args.work_dir, port=args.port, stop_with_parent=False)
            seconds = broker.start()
            broker.process = None  # leave it running after we exit
            print(f"Kafka {kafka_version()} ready on {broker.bootstrap_servers} in {seconds:.1f}s "
                  f"(log: {broker.log_path})")
        elif args.command == "stop":
            LocalKafka(args.work_dir).stop()
        elif args.command == "tool":
            return run_tool(args.name, *args.args)
    except KafkaError as exc:
        print(f"kafka_local: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
