"""A real QuestDB server for the tests: own root directory, free loopback ports, small heap.

The server is the ``org.questdb:questdb`` jar from Maven Central (self-contained, its native
libraries inside), fetched by ``scripts/fetch-questdb.sh`` into ``.deps/questdb/`` (the
fixture runs the script itself when the jar is missing; it uses no network when cached).
It starts as a Java module::

    java -Xms64m -Xmx384m -p questdb-9.3.4.jar -m io.questdb/io.questdb.ServerMain -d ROOT

with ``ROOT/conf/server.conf`` written here: HTTP (REST ``/exec`` and ILP/HTTP ``/write``),
the minimal HTTP server (its ``/status`` is the health endpoint), ILP/TCP and PG wire on
free loopback ports; one worker per pool (2-core machines); the PG-wire read-only user
(``pg.readonly.user.enabled``) that the store's ``query`` uses; and ``dev.mode.enabled``,
which QuestDB requires for ``ALTER TABLE … SUSPEND WAL`` (the tests' way to suspend a table
on purpose); ``query.timeout=5s`` bounds a runaway query on the server itself (the client
giving up does not stop it), and ``cairo.sql.map.max.resizes=10`` bounds the memory one
GROUP BY may take. The server's log goes to ``ROOT/log/server.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .servers import free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent
QUESTDB_VERSION = os.environ.get("QUESTDB_VERSION", "9.3.4")
READER_USER = "tvreader"
READER_PASSWORD = "tv-reader-pw"
JVM_ARGS = ("-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


def questdb_jar() -> Path:
    """The pinned jar, fetched with Maven on first use (``scripts/fetch-questdb.sh``)."""
    jar = REPO / ".deps" / "questdb" / f"questdb-{QUESTDB_VERSION}.jar"
    if not jar.is_file():
        subprocess.run(
            ["bash", str(REPO / "scripts" / "fetch-questdb.sh")],
            check=True,
            env={**os.environ, "QUESTDB_VERSION": QUESTDB_VERSION},
            stdout=subprocess.DEVNULL,
        )
    return jar


@dataclass
class QuestDBServer:
    """One QuestDB process rooted at ``root``; ports stay the same across restarts."""

    root: Path
    http_port: int = field(default_factory=free_port)
    min_http_port: int = field(default_factory=free_port)
    ilp_tcp_port: int = field(default_factory=free_port)
    pg_port: int = field(default_factory=free_port)
    jvm_args: tuple[str, ...] = JVM_ARGS
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The store URL: REST/ILP on HTTP, user queries through the read-only PG user."""
        return (
            f"questdb://127.0.0.1:{self.http_port}?pg_port={self.pg_port}"
            f"&health_port={self.min_http_port}"
            f"&reader_user={READER_USER}&reader_password={READER_PASSWORD}"
        )

    @property
    def db(self) -> Path:
        return self.root / "db"

    @property
    def log_path(self) -> Path:
        return self.root / "log" / "server.log"

    def _write_conf(self) -> None:
        conf = self.root / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "server.conf").write_text(
            "\n".join(
                [
                    f"http.net.bind.to=127.0.0.1:{self.http_port}",
                    "http.min.enabled=true",
                    f"http.min.net.bind.to=127.0.0.1:{self.min_http_port}",
                    f"line.tcp.net.bind.to=127.0.0.1:{self.ilp_tcp_port}",
                    "line.udp.enabled=false",
                    f"pg.net.bind.to=127.0.0.1:{self.pg_port}",
                    "pg.readonly.user.enabled=true",
                    f"pg.readonly.user={READER_USER}",
                    f"pg.readonly.password={READER_PASSWORD}",
                    "shared.worker.count=1",
                    "http.worker.count=1",
                    "wal.apply.worker.count=1",
                    "telemetry.enabled=false",
                    "dev.mode.enabled=true",
                    "query.timeout=5s",
                    "cairo.sql.map.max.resizes=10",
                    "",
                ]
            )
        )

    def start(self, *, wait: bool = True) -> QuestDBServer:
        self._write_conf()
        (self.root / "log").mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [
                    "java",
                    *self.jvm_args,
                    "-p",
                    str(questdb_jar()),
                    "-m",
                    "io.questdb/io.questdb.ServerMain",
                    "-d",
                    str(self.root),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        finally:
            log.close()
        if wait:
            self.wait_ready()
        return self

    def healthy(self) -> bool:
        """The minimal HTTP server's health endpoint answers 200."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.min_http_port}/status", timeout=2
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll until health is 200, ``/exec`` answers and PG wire listens (or the process
        exits, which raises with the log's tail)."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"QuestDB exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self.healthy() and self._exec_ok():
                wait_for_port(self.pg_port, timeout=max(1.0, deadline - time.monotonic()))
                return
            time.sleep(delay)  # poll interval, not synchronisation
            delay = min(delay * 2, 0.5)
        raise TimeoutError(f"QuestDB not ready after {timeout}s:\n{self.log_tail()}")

    def _exec_ok(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/exec?query=SELECT%201", timeout=5
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self.proc = None

    def kill(self) -> None:
        """``kill -9``: no shutdown hook runs, as in a power loss of the process."""
        self.stop(signal.SIGKILL)

    def restart(self, *, wait: bool = True) -> None:
        self.stop()
        self.start(wait=wait)
