"""Real Apache Kafka brokers for the tests (KRaft: no ZooKeeper), each on free loopback ports.

The jars come from ``scripts/fetch-kafka.sh`` (``.deps/kafka/``, the version pinned in
``scripts/kafka/pom.xml``; run here first if they are missing). A :class:`KafkaServer` is
one combined broker + controller node: its storage is formatted with Kafka's own storage
tool (``kafka.tools.StorageTool``) and it runs ``kafka.Kafka`` with a small heap.
``stop`` (SIGTERM), ``kill`` (SIGKILL) and ``start`` again keep its ports and log dir, like
a restarted node. :func:`kafka_cluster` builds three such nodes that form one controller
quorum.

Start-up is tuned for tests: no initial rebalance delay, few internal-topic partitions,
short broker session timeouts (a killed node is fenced in ~3 s), C1-only JIT.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
KAFKA_LIBS = ROOT / ".deps" / "kafka"
HEAP = ["-Xms64m", "-Xmx320m"]

_LOG4J2 = """\
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = info
"""


def ensure_kafka() -> None:
    """Fetch the pinned Kafka into ``.deps/kafka`` unless it is there (``make test`` on a
    fresh machine works without running ``scripts/ci-deps.sh`` first)."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "fetch-kafka.sh")], capture_output=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/fetch-kafka.sh failed: {done.stderr.decode()[-2000:]}")


def kafka_version() -> str:
    """The Kafka version in ``.deps/kafka`` (from the ``kafka_2.13-<version>.jar`` name)."""
    jars = sorted(KAFKA_LIBS.glob("kafka_2.13-*.jar"))
    if not jars:
        ensure_kafka()
        jars = sorted(KAFKA_LIBS.glob("kafka_2.13-*.jar"))
    return jars[-1].name.removeprefix("kafka_2.13-").removesuffix(".jar")


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaServer:
    """One KRaft node (``process.roles=broker,controller``) in ``workdir``.

    ``voters`` lists ``(node_id, controller_port)`` of the whole quorum (just this node by
    default); every node of a cluster shares ``cluster_id``.
    """

    workdir: Path
    node_id: int = 1
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    cluster_id: str = field(default_factory=_cluster_id)
    voters: list[tuple[int, int]] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, prefix: str | None = None, **opts: str | int) -> str:
        """A ``kafka://`` bus URL on this node (its own topic prefix unless given)."""
        return _url(self.bootstrap, prefix, opts)

    @property
    def replication(self) -> int:
        return max(1, len(self.voters))

    def _config(self) -> Path:
        voters = self.voters or [(self.node_id, self.controller_port)]
        rf = len(voters)
        props = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": ",".join(f"{n}@127.0.0.1:{p}" for n, p in voters),
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": self.workdir / "data",
            "num.partitions": 1,
            "default.replication.factor": rf,
            "auto.create.topics.enable": "false",  # tickvault must create its topics itself
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": 3,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min(2, rf),
            "transaction.state.log.num.partitions": 1,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": min(2, rf),
            "share.coordinator.state.topic.num.partitions": 1,
            "group.initial.rebalance.delay.ms": 0,
            "group.consumer.heartbeat.interval.ms": 500,
            "group.consumer.min.heartbeat.interval.ms": 500,
            "group.consumer.session.timeout.ms": 6000,
            "group.consumer.min.session.timeout.ms": 3000,
            "group.min.session.timeout.ms": 1000,
            "broker.heartbeat.interval.ms": 500,
            "broker.session.timeout.ms": 3000,
            "num.network.threads": 2,
            "num.io.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "background.threads": 2,
            "log.flush.interval.messages": 9223372036854775807,
        }
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.workdir / "log4j2.properties").write_text(_LOG4J2.format(dir=self.workdir))
        return path

    def _java(self, main: str, *args: str) -> list[str]:
        kafka_version()  # fetches the jars first if they are missing
        return [
            "java",
            *HEAP,
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Xss512k",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.workdir}",
            "-cp",
            f"{KAFKA_LIBS}/*",
            main,
            *args,
        ]

    def format(self) -> None:
        """Format the log dir with Kafka's storage tool (once; a formatted dir is kept)."""
        config = self._config()
        if (self.workdir / "data" / "meta.properties").exists():
            return
        done = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                self.cluster_id,
                "-c",
                str(config),
                "--ignore-formatted",
            ),
            capture_output=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"Kafka storage format failed: {done.stderr.decode()[-2000:]}")

    def launch(self) -> KafkaServer:
        """Start the process (formatting first if needed) without waiting for it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.format()
        out = (self.workdir / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            self._java("kafka.Kafka", str(self.workdir / "server.properties")),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        out.close()
        return self

    def start(self, timeout: float = 120.0) -> KafkaServer:
        """Start and wait until the node serves clients (a one-node quorum elects itself)."""
        self.launch()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 120.0, brokers: int = 1) -> None:
        """Wait until the node answers metadata requests naming ``brokers`` live brokers."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        wait_for_port(self.port, timeout)
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"Kafka node {self.node_id} exited: {self.log_tail()}")
            try:
                md = admin.list_topics(timeout=2)
                if len(md.brokers) >= brokers and md.controller_id >= 0:
                    return
            except Exception:  # not up yet; polled again below
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka node {self.node_id} not ready: {self.log_tail()}")
            time.sleep(0.1)

    def dump_log(self, topic: str, partition: int) -> str:
        """The record batches of a partition's log, as Kafka's ``DumpLogSegments`` tool
        prints them (producer id, sequence numbers, ...), read from this node's log dir."""
        segments = sorted((self.workdir / "data" / f"{topic}-{partition}").glob("*.log"))
        done = subprocess.run(
            self._java(
                "kafka.tools.DumpLogSegments", "--files", ",".join(str(p) for p in segments)
            ),
            capture_output=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"DumpLogSegments failed: {done.stderr.decode()[-2000:]}")
        return done.stdout.decode()

    def log_tail(self, chars: int = 3000) -> str:
        text = ""
        for name in ("stdout.log", "server.log"):
            path = self.workdir / name
            if path.exists():
                text += path.read_text(errors="replace")[-chars:]
        return text

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self.proc = None

    def kill(self) -> None:
        """``kill -9``: no clean shutdown, the next start recovers the log."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class KafkaCluster:
    """Three (or ``size``) KRaft nodes forming one controller quorum and one cluster."""

    nodes: list[KafkaServer]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def url(self, prefix: str | None = None, **opts: str | int) -> str:
        return _url(self.bootstrap, prefix, opts)

    def start(self, timeout: float = 180.0) -> KafkaCluster:
        for node in self.nodes:  # all at once: the quorum needs a majority to elect
            node.launch()
        for node in self.nodes:
            node.wait_ready(timeout, brokers=len(self.nodes))
        return self

    def stop(self) -> None:
        for node in self.nodes:  # SIGKILL: the data dirs are thrown away
            node.kill()


def kafka_cluster(workdir: Path, size: int = 3) -> KafkaCluster:
    """``size`` combined nodes on free ports sharing one cluster id (not started)."""
    cluster_id = _cluster_id()
    nodes = [
        KafkaServer(workdir / f"k{i}", node_id=i, cluster_id=cluster_id) for i in range(1, size + 1)
    ]
    voters = [(n.node_id, n.controller_port) for n in nodes]
    for node in nodes:
        node.voters = voters
    return KafkaCluster(nodes)


def _url(bootstrap: str, prefix: str | None, opts: dict[str, str | int]) -> str:
    prefix = prefix or f"t{uuid.uuid4().hex[:12]}"
    query = "&".join(f"{k}={v}" for k, v in opts.items())
    return f"kafka://{bootstrap}/{prefix}" + (f"?{query}" if query else "")
