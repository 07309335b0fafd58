"""The guardian live, as a user runs it: ``tickvault run`` with a synthetic source, Redis,
ClickHouse and webhook alerts to a local receiver, with short timings (a cycle a second,
``for`` 2, ``group_wait`` 2 s, ``group_interval`` 5 s).

Each scenario asserts the exact alerts (count, order, text), the recoveries and escalations.
Outages last until the guardian has announced them and judged them a few cycles more
(5-15 s) rather than minutes: nothing in the guardian depends on an outage's
length beyond ``for`` x interval + ``group_wait`` (to announce) and ``group_interval``
(to resolve), which these timings scale down.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tickvault.bus.redis.bus import RedisBus

from .alert_receiver import Receiver
from .cli_helpers import spawn, tv
from .polling import eventually_sync
from .servers import ClickHouseServer, RedisServer, free_port

STORE = "store/clickhouse"
BUS = "bus/ticks/writers"
RUNBOOKS = "https://tickvault.example/docs/guardian.md"


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """This module's own server: its scenarios stop and restart it."""
    server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse-live")).start()
    yield server
    server.stop(signal.SIGKILL)


class Run:
    """One ``tickvault run`` with its webhook receiver, journal and HTTP address."""

    def __init__(self, tmp: Path, ch: ClickHouseServer, redis: RedisServer) -> None:
        self.data = tmp / "data"
        self.ch, self.redis = ch, redis
        self.http = f"127.0.0.1:{free_port()}"
        self.db = f"live_{uuid.uuid4().hex[:10]}"
        self.rx = Receiver().__enter__()
        self.config = tmp / "tv.toml"
        self.config.write_text(
            f"""
[bus]
url = "{redis.url}"
health_check_s = 1.0
[store]
url = "{ch.url(self.db)}"
[writer]
consumer = "writer-1"
linger_ms = 20
[breaker]
open_max_s = 1.0
[http]
listen = "{self.http}"
[guardian]
interval_s = 1.0
for = 2
grace = "3s"
cooldown = "10s"
group_wait = "2s"
group_interval = "5s"
repeat_interval = "1h"
pending_age_max = "4s"
writer_stale = "6s"
alerts = ["webhook"]
webhook_url = "{self.rx.url}/hook"
runbook_base_url = "{RUNBOOKS}"
[[sources]]
kind = "synthetic"
rate = 300
symbols = ["BTCUSDT", "ETHUSDT"]
"""
        )
        self.proc: subprocess.Popen[str] | None = spawn(
            "run", "--config", self.config, "--data-dir", self.data
        )
        self.stderr = ""

    def messages(self) -> list[dict[str, Any]]:
        return self.rx.json_bodies()

    def heads(self) -> list[tuple[str, str, list[str]]]:
        """(kind, resource, codes firing — or, for RESOLVED, resolved) per message."""
        return [
            (m["kind"], m["resource"], [a["code"] for a in m["firing"] or m["resolved"]])
            for m in self.messages()
        ]

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        path = self.data / "guardian.sqlite3"
        if not path.exists():
            return []
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:  # created, schema not written yet
            if "no such table" in str(exc):
                return []
            raise

    def events(self, kind: str) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT ts, resource, code, reason, detail FROM events WHERE kind=? ORDER BY id",
            (kind,),
        )
        return [
            {"ts": r[0], "resource": r[1], "code": r[2], "reason": r[3], "detail": json.loads(r[4])}
            for r in rows
        ]

    def judged_since(self, t: float) -> bool:
        """The guardian judged the store and the bus (past their grace) after ``t``."""
        rows = dict(self._read("SELECT resource, updated_at FROM resources"))
        return all(rows.get(r, 0) > t for r in (STORE, BUS))

    def store_codes(self) -> list[str]:
        """The codes the guardian saw on the store in its latest cycle."""
        rows = self._read("SELECT findings FROM resources WHERE resource=?", (STORE,))
        return [f["code"] for f in json.loads(rows[0][0])] if rows else ["unknown"]

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.http}/status", timeout=10) as response:
            assert response.status == 200
            doc: dict[str, Any] = json.loads(response.read())
            return doc

    def stored(self) -> int:
        """Rows in the store, all tables, each natural key once (``tickvault status``)."""
        doc = json.loads(tv("status", "--json", "--config", self.config, "--data-dir",
                            self.data).stdout)  # fmt: skip
        return sum(doc["store"]["tables"].values())

    def cycles_for(self, seconds: float) -> None:
        """Poll until the guardian has judged the store and the bus ``seconds`` from now
        (its cycles, not a sleep, are what the scenarios wait for)."""
        start = time.time()
        eventually_sync(lambda: self.judged_since(start + seconds), 90, "guardian cycles")

    def stop(self) -> str:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            _, self.stderr = self.proc.communicate(timeout=90)
            assert self.proc.returncode == 0, self.stderr[-3000:]
            self.proc = None
        self.rx.__exit__(None, None, None)
        return self.stderr

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)
        self.proc = None
        self.rx.__exit__(None, None, None)


@pytest.fixture
def run(tmp_path: Path, clickhouse: ClickHouseServer) -> Iterator[Run]:
    redis = RedisServer(tmp_path / "redis").start()
    if clickhouse.proc is None:
        clickhouse.start()
    r = Run(tmp_path, clickhouse, redis)
    try:
        yield r
    finally:
        r.kill()
        redis.stop()
        if clickhouse.proc is None:
            clickhouse.start()


def _no_loss(r: Run) -> None:
    """After shutdown: every published record is in the store, the summary says so."""
    err = r.stop()
    line = next(x for x in err.splitlines() if x.startswith("stopped:"))
    published = int(line.split()[1].replace(",", ""))
    new = int(line.split("stored ")[1].split()[0].replace(",", ""))
    dup = int(line.split(" + ")[1].split()[0].replace(",", ""))
    assert "already stored" in line and line.endswith("backlog 0"), line
    # A batch the store committed just before it went down is "already stored" on retry.
    assert published > 0 and new <= published <= new + dup, line
    assert r.stored() == published, line


def test_healthy_start_sends_nothing(run: Run) -> None:
    run.cycles_for(8)  # grace 3 s + for 2 cycles + group_wait 2 s, and then some
    assert run.messages() == []
    states = run.events("transition")
    assert not [e for e in states if e["code"] and e["code"].startswith("clickhouse.")]
    assert run.events("action_planned") == []
    _no_loss(run)


def test_store_down_then_back_is_one_firing_and_one_resolved_and_no_recovery(
    run: Run, clickhouse: ClickHouseServer
) -> None:
    run.cycles_for(2)
    clickhouse.stop(signal.SIGKILL)
    eventually_sync(lambda: len(run.messages()) >= 1, 60, "the FIRING")
    run.cycles_for(2)  # the outage goes on after its FIRING (its length changes nothing)
    clickhouse.start()
    eventually_sync(lambda: len(run.messages()) >= 2, 60, "the RESOLVED")
    run.cycles_for(5)  # the catch-up, then quiet (symptoms held back)
    msgs = run.messages()
    assert run.heads() == [
        ("firing", STORE, ["store.unavailable"]),
        ("resolved", STORE, ["store.unavailable"]),
    ], [m["text"] for m in msgs]
    firing, resolved = msgs
    assert firing["text"].startswith(f"[FIRING] {STORE}: store.unavailable since ")
    assert resolved["text"].startswith(f"[RESOLVED] {STORE}: store.unavailable healthy again")
    assert firing["since"] == resolved["since"]
    alert = firing["firing"][0]
    assert alert["severity"] == "critical" and "unreachable" in alert["evidence"]["detail"]
    assert alert["did"].startswith("nothing automatic")
    assert "announce RESOLVED" in alert["next"]
    assert alert["runbook"] == f"{RUNBOOKS}#runbook-store-unavailable"
    assert run.events("action_planned") == [] and run.events("escalation") == []
    inhibited = {e["code"] for e in run.events("inhibited")}
    assert "breaker.open" in inhibited
    _no_loss(run)
    # No entry went to a consumer that reads nothing: only the writer is in the group.
    assert _consumers(run) == {"writer-1": 0}


def _consumers(r: Run) -> dict[str, int]:
    async def ask() -> dict[str, int]:
        bus = RedisBus.from_url(r.redis.url)
        try:
            return {c.name: c.pending for c in await bus.consumers("ticks", "writers")}
        finally:
            await bus.close()

    return asyncio.run(ask())


def test_bus_down_then_back_is_one_firing_and_one_resolved(run: Run) -> None:
    run.cycles_for(2)
    run.redis.kill()
    eventually_sync(lambda: len(run.messages()) >= 1, 60, "the FIRING")
    during = run.status()  # answers with what is known, the bus marked unreachable
    assert during["bus"]["reachable"] is False and during["bus"]["error"]
    assert during["store"]["reachable"] is True and "trades" in during["store"]["tables"]
    cli = tv("status", "--json", "--data-dir", run.data)
    assert json.loads(cli.stdout)["bus"]["reachable"] is False
    run.cycles_for(2)  # the outage goes on after its FIRING (its length changes nothing)
    run.redis.start()
    eventually_sync(lambda: len(run.messages()) >= 2, 60, "the RESOLVED")
    run.cycles_for(5)
    assert run.heads() == [
        ("firing", BUS, ["bus.unreachable"]),
        ("resolved", BUS, ["bus.unreachable"]),
    ], [m["text"] for m in run.messages()]
    firing, resolved = run.messages()
    assert firing["since"] == resolved["since"]
    assert run.events("action_planned") == []
    assert run.status()["bus"]["reachable"] is True
    _no_loss(run)


def test_flapping_store_gives_bounded_paired_messages(
    run: Run, clickhouse: ClickHouseServer
) -> None:
    run.cycles_for(2)
    flaps = 3
    for _ in range(flaps):  # down until the guardian saw it twice, up until it saw it healthy
        clickhouse.stop(signal.SIGKILL)
        eventually_sync(lambda: run.store_codes() == ["store.unavailable"], 30, "seen down")
        run.cycles_for(1)  # and a cycle more
        clickhouse.start()
        eventually_sync(lambda: run.store_codes() == [], 30, "seen up")
    eventually_sync(
        lambda: bool(run.messages()) and run.messages()[-1]["kind"] == "resolved",
        60,
        "the last RESOLVED",
    )
    run.cycles_for(2)
    msgs = run.messages()
    kinds = [m["kind"] for m in msgs]
    assert msgs and all(m["resource"] == STORE for m in msgs), kinds
    opened = [m for m in msgs if m["kind"] == "firing"]
    closed = [m for m in msgs if m["kind"] == "resolved"]
    assert 1 <= len(opened) == len(closed) <= flaps
    assert [m["since"] for m in opened] == [m["since"] for m in closed]
    assert set(kinds) <= {"firing", "resolved", "update"}
    # Bounded: one message per group_interval at most (5 s), less a cycle of jitter.
    ats = [m["at"] for m in msgs]
    assert all(b - a >= 4 for a, b in itertools.pairwise(ats))
    assert run.events("action_planned") == []
    _no_loss(run)


def test_a_crashed_consumers_stuck_entries_are_recovered_to_the_writer(run: Run) -> None:
    """A real stuck consumer: a writer that read entries and died (no ack). The guardian's
    upkeep claims them to the live writer, which stores them; one FIRING, one RESOLVED."""
    run.cycles_for(1)

    async def crash_read() -> int:
        bus = RedisBus.from_url(run.redis.url)
        try:
            got = await bus.read("ticks", "writers", "writer-crashed", 20, 2000)
            return len(got)
        finally:
            await bus.close()

    taken = asyncio.run(crash_read())
    assert taken > 0
    eventually_sync(lambda: len(run.events("action_result")) >= 1, 60, "the upkeep")
    eventually_sync(lambda: len(run.messages()) >= 2, 60, "FIRING and RESOLVED")
    results = run.events("action_result")
    assert len(results) == 1, [(e["ts"], e["reason"], e["detail"]) for e in results]
    (result,) = results
    detail = result["detail"]
    assert detail["action"] == "stream_upkeep" and detail["ok"] is True
    assert detail["claimed"] == taken and detail["processed"] == taken
    assert detail["consumer"] == "writer-1"
    firing, resolved = run.messages()
    assert firing["kind"] == "firing" and resolved["kind"] == "resolved"
    alert = firing["firing"][0]
    assert alert["code"] == "bus.pending_stale"
    assert alert["evidence"]["consumers"] == ["writer-crashed"]
    assert alert["did"].startswith("ran stream_upkeep") and f"claimed={taken}" in alert["did"]
    assert _consumers(run)["writer-crashed"] == 0
    assert run.events("escalation") == []
    _no_loss(run)


_READONLY_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default></default><ro><readonly>1</readonly></ro></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>ro</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
"""


async def _until_reloaded(users: Path, done: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``done`` while the server reloads ``users.xml`` by itself. Its reloader compares
    modification times against the last it saw, so each round gives the file a new one (a
    write just before the reloader's first look would otherwise pass unnoticed)."""
    deadline = time.monotonic() + 60
    ahead = 0
    while not await done():
        assert time.monotonic() < deadline, "users.xml not reloaded"
        ahead += 1
        t = time.time() + ahead
        os.utime(users, (t, t))
        for _ in range(10):
            if await done():
                return
            await asyncio.sleep(0.2)


async def test_clickhouse_readonly_is_the_servers_setting_not_the_query_sandboxs(
    tmp_path: Path,
) -> None:
    """A healthy server has no finding although the query sandbox runs with ``readonly``;
    when the server's profile makes the store's user read-only, the check says so."""
    from tickvault.guardian.checks import Checks
    from tickvault.guardian.findings import SystemClock
    from tickvault.stores.clickhouse.store import ClickHouseStore

    clickhouse = ClickHouseServer(tmp_path / "clickhouse").start()  # its own users.xml
    store = ClickHouseStore.from_url(clickhouse.url("ro"))
    users = clickhouse.workdir / "users.xml"
    original = users.read_text()
    checks = Checks(SystemClock(), store=store)

    async def codes_are(expected: list[str]) -> bool:
        return [f.code for f in (await checks.store_check())[0].findings] == expected

    try:
        await store.ensure_schema()
        sandbox = await store.query("SELECT value FROM system.settings WHERE name = 'readonly'")
        assert str(sandbox.rows[0][0]) != "0"  # what the old check saw: its own setting
        (healthy,) = await checks.store_check()
        assert healthy.findings == ()

        users.write_text(_READONLY_USERS)  # the store's user gets readonly = 1

        await _until_reloaded(users, lambda: codes_are(["clickhouse.readonly"]))
        (obs,) = await checks.store_check()
        assert obs.findings[0].severity == "critical"
        assert obs.findings[0].evidence["readonly"] == "1"
        users.write_text(original)  # the profile fixed: the finding goes away
        await _until_reloaded(users, lambda: codes_are([]))
    finally:
        await store.close()
        clickhouse.stop(signal.SIGKILL)
