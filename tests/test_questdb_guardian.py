"""The guardian against a real QuestDB server: incident 000's false positive, a suspended
table resumed by policy while data flows, and a table suspended again after every resume.

Incident 001 (a damaged ``txn_seq/_txnlog`` after ``kill -9``) is in ``test_incident_001.py``.
The guardian runs on a simulated clock (its policy's time); the checks and actions talk to
the real server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tickvault.core.config import Settings
from tickvault.core.errors import StoreUnavailable
from tickvault.guardian.engine import Guardian
from tickvault.guardian.findings import SimClock
from tickvault.service.guardian import build_guardian
from tickvault.stores.questdb.store import QuestDBStore

from .alert_receiver import Receiver
from .conftest import questdb_fresh_tables
from .polling import eventually
from .questdb_server import QuestDBServer
from .test_questdb_store import rest, scalar
from .test_store_contract import table_of, trade


@pytest.fixture
async def store(questdb_server: QuestDBServer) -> AsyncIterator[QuestDBStore]:
    await asyncio.to_thread(questdb_fresh_tables, questdb_server)
    s = QuestDBStore.from_url(questdb_server.url + "&wal_timeout=20")
    yield s
    await s.close()


def _settings(tmp_path: Path, webhook: str | None = None) -> Settings:
    settings = Settings(data_dir=tmp_path / "data")
    g = settings.guardian
    g.for_cycles, g.grace, g.cooldown, g.max_recoveries = 1, "0s", "5s", 3
    if webhook:
        g.alerts, g.webhook_url = ["webhook"], webhook
    return settings


def _questdb_findings(g: Guardian) -> dict[str, list[str]]:
    assert g.last is not None
    return {
        o.resource: [f.code for f in o.findings]
        for o in g.last.observations
        if o.resource.startswith("questdb")
    }


async def test_incident_000_fresh_empty_tables_give_no_finding_and_no_alert(
    tmp_path: Path, store: QuestDBStore
) -> None:
    await store.ensure_schema()  # five WAL tables, just created, never written
    clock = SimClock(time.time())
    with Receiver() as rx:
        g = build_guardian(_settings(tmp_path, rx.url), bus=None, store=store, clock=clock)
        g.dispatcher.start()  # type: ignore[union-attr]
        seen: list[dict[str, list[str]]] = []
        for _ in range(24):  # two simulated minutes, no grace period at all
            await g.cycle()
            seen.append(_questdb_findings(g))
            clock.advance(5)
        await g.dispatcher.drain()  # type: ignore[union-attr]
        await g.dispatcher.stop()  # type: ignore[union-attr]
        assert rx.json_bodies() == []
    assert set(seen[0]) >= {"questdb/trades", "questdb/quotes", "questdb/bars"}
    assert all(codes == [] for cycle in seen for codes in cycle.values())
    assert not g.journal.events(kind="action_planned")
    assert {g.policy.state(r).state for r in seen[0]} <= {"healthy", "unknown"}
    g.journal.close()


async def _flow(store: QuestDBStore, stop: asyncio.Event, written: list[int]) -> None:
    """A writer: one batch after the other, each retried until stored (redelivery)."""
    i = 0
    while not stop.is_set():
        batch = table_of("trade", [trade(n) for n in range(i * 20, i * 20 + 20)])
        while True:
            try:
                await store.write("trade", batch)
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)  # the writer's retry backoff
        written.append(i)
        i += 1


async def test_suspend_wal_while_data_flows_is_found_and_resumed_by_policy(
    tmp_path: Path, store: QuestDBStore, questdb_server: QuestDBServer
) -> None:
    await store.ensure_schema()
    clock = SimClock(time.time())
    g = build_guardian(_settings(tmp_path), bus=None, store=store, clock=clock, with_channels=False)
    stop = asyncio.Event()
    written: list[int] = []
    writer = asyncio.create_task(_flow(store, stop, written))
    await eventually(lambda: len(written) >= 3, timeout=60, what="data flowing")
    await g.cycle()
    assert _questdb_findings(g)["questdb/trades"] == []
    rest(questdb_server, "ALTER TABLE trades SUSPEND WAL")
    clock.advance(5)
    await g.cycle()  # the next check interval
    assert _questdb_findings(g)["questdb/trades"] == ["questdb.wal_suspended"]
    results = g.journal.events(resource="questdb/trades", kind="action_result")
    assert [r["detail"]["action"] for r in results] == ["questdb_resume_wal"]
    assert results[0]["detail"]["resumed"] is True
    for _ in range(6):
        clock.advance(5)
        await g.cycle()
    assert _questdb_findings(g)["questdb/trades"] == []
    n = len(written)
    await eventually(lambda: len(written) >= n + 3, timeout=60, what="writes after RESUME")
    stop.set()
    await asyncio.wait_for(writer, timeout=120)
    total = len(written) * 20
    await eventually(
        lambda: scalar(questdb_server, "SELECT count() FROM trades") == total,
        timeout=60,
        what="every row visible",
    )
    assert scalar(questdb_server, "SELECT count_distinct(trade_id) FROM trades") == total
    assert g.policy.state("questdb/trades").state == "healthy"
    g.journal.close()


async def test_a_table_suspended_after_every_resume_escalates_once_without_a_loop(
    tmp_path: Path, store: QuestDBStore, questdb_server: QuestDBServer
) -> None:
    assert await store.write("trade", table_of("trade", [trade(1)])) == 1
    clock = SimClock(time.time())
    with Receiver() as rx:
        settings = _settings(tmp_path, rx.url)
        g = build_guardian(settings, bus=None, store=store, clock=clock)
        g.dispatcher.start()  # type: ignore[union-attr]
        suspends = 0
        for _ in range(120):  # ten simulated minutes, a cycle every 5 s
            if not (await store.wal_status())["trades"].suspended:
                rest(questdb_server, "ALTER TABLE trades SUSPEND WAL")
                suspends += 1
            await g.cycle()
            clock.advance(5)
        await eventually(lambda: any(m["kind"] == "escalation" for m in rx.json_bodies()))
        await g.dispatcher.drain()  # type: ignore[union-attr]
        await g.dispatcher.stop()  # type: ignore[union-attr]
    resumes = [
        r
        for r in g.journal.events(resource="questdb/trades", kind="action_result")
        if r["detail"].get("resumed")
    ]
    assert len(resumes) == 3 == settings.guardian.max_recoveries
    assert suspends == 4  # the first suspension and one after each resume: no loop
    assert g.policy.state("questdb/trades").state == "escalated"
    table_messages = [
        m for m in rx.json_bodies() if m["firing"][0]["code"] == "questdb.wal_suspended"
    ]
    assert [m["kind"] for m in table_messages] == ["firing", "escalation"]
    # At most one alert message per group interval (5 minutes) for the table's group; the
    # escalation goes out at once, the one exception.
    alerts = g.journal.events(resource="questdb/trades", kind="alert")
    firing = sorted(a["ts"] for a in alerts if a["reason"].startswith("firing"))
    assert len(firing) == 1 and len(alerts) == 2
    escalation = next(m for m in rx.json_bodies() if m["kind"] == "escalation")["firing"][0]
    assert escalation["code"] == "questdb.wal_suspended"
    assert escalation["evidence"]["state"].startswith(("suspended", "committed, not applied"))
    g.journal.close()
    await asyncio.to_thread(rest, questdb_server, "ALTER TABLE trades RESUME WAL")
