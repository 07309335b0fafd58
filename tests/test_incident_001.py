"""Incident 001: a recovery deleted a QuestDB table's write-ahead log and stopped all writes.

The guardian, asked to act on a suspended table (the wire-level QuestDB double), tries only
``ALTER TABLE … RESUME WAL``, with backoff, then escalates with a runbook; it touches no
file, and refuses any action aimed at a WAL or sequencer path.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tickvault.config import Settings
from tickvault.errors import UnsafeActionRefused
from tickvault.guardian.actions import ActionContext, ActionRunner, guard_path
from tickvault.guardian.findings import SimClock
from tickvault.guardian.journal import Journal
from tickvault.guardian.service import build_guardian
from tickvault.stores.questdb import QuestDBStore

from .alert_receiver import Receiver
from .polling import eventually
from .questdb_double import QuestDBDouble

_RESUME = re.compile(r"^\s*ALTER\s+TABLE\s+(\w+)\s+RESUME\s+WAL\s*;?\s*$", re.IGNORECASE)


class DamagedWalDouble(QuestDBDouble):
    """Speaks ``ALTER TABLE t RESUME WAL``; with a damaged WAL the table suspends again."""

    def __init__(self) -> None:
        super().__init__()
        self.resume_attempts: list[str] = []
        self.wal_damaged = True

    def _exec(self, sql: str) -> dict[str, Any]:
        m = _RESUME.match(sql)
        if m is None:
            return super()._exec(sql)
        self.resume_attempts.append(m.group(1))
        if not self.wal_damaged:
            self.resume(m.group(1))
        return {"ddl": "OK"}


@pytest.fixture
def double() -> Iterator[DamagedWalDouble]:
    d = DamagedWalDouble()
    d.start()
    yield d
    d.stop()


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


async def test_suspended_table_gets_resume_wal_with_backoff_then_escalation(
    tmp_path: Path, double: DamagedWalDouble
) -> None:
    # A QuestDB data directory as the incident had it; the guardian must never touch it.
    qdb = tmp_path / "questdb" / "db"
    for table in ("trades~1", "quotes~2"):
        (qdb / table / "txn_seq").mkdir(parents=True)
        (qdb / table / "txn_seq" / "_txnlog").write_bytes(b"\x00" * 64 + b"log")
        (qdb / table / "txn_seq" / "_wal_index.d").write_bytes(b"index")
    before = _tree(tmp_path / "questdb")

    store = QuestDBStore.from_url(double.url)
    await store.ensure_schema()
    double.suspend("trades", "DISK_FULL", "could not append to WAL")
    clock = SimClock(1_700_000_000.0)
    with Receiver() as rx:
        settings = Settings(data_dir=tmp_path / "data")
        settings.guardian.alerts = ["webhook"]
        settings.guardian.webhook_url = rx.url
        # Short persistence and cooldown so the backoff (10 s doubling) shows in the gaps.
        settings.guardian.for_cycles = 1
        settings.guardian.cooldown = "5s"
        settings.guardian.max_recoveries = 4
        g = build_guardian(settings, bus=None, store=store, clock=clock)
        g.dispatcher.start()  # type: ignore[union-attr]
        attempts_at: list[float] = []
        for _ in range(60):  # five simulated minutes, a cycle every 5 s
            n = len(double.resume_attempts)
            await g.cycle()
            if len(double.resume_attempts) > n:
                attempts_at.append(clock.now())
            clock.advance(5)
        await eventually(lambda: any(m["kind"] == "escalation" for m in rx.json_bodies()))
        await g.dispatcher.drain()  # type: ignore[union-attr]
        await g.dispatcher.stop()  # type: ignore[union-attr]

    assert double.resume_attempts == ["trades"] * 4
    gaps = [b - a for a, b in itertools.pairwise(attempts_at)]
    assert gaps == [10, 20, 40]
    state = g.policy.state("questdb/trades")
    assert state.state == "escalated"
    escalations = [m for m in rx.json_bodies() if m["kind"] == "escalation"]
    assert len(escalations) == 1
    alert = escalations[0]["firing"][0]
    assert alert["code"] == "questdb.wal_suspended"
    assert "RESUME WAL" in alert["runbook"] and "Never delete txn_seq" in alert["runbook"]
    assert alert["evidence"]["error_tag"] == "DISK_FULL"
    # The healthy table was never acted on, and every action was planned before it ran.
    assert all(
        r.startswith("questdb/trades")
        for r in {e["resource"] for e in g.journal.events(kind="action_planned")}
    )
    kinds = [
        e["kind"]
        for e in g.journal.events(resource="questdb/trades")
        if e["kind"].startswith("action")
    ]
    assert kinds == ["action_planned", "action_result"] * 4
    planned = g.journal.events(resource="questdb/trades", kind="action_planned")[0]
    assert planned["detail"]["plan"]["before"]["suspended"] is True
    assert _tree(tmp_path / "questdb") == before
    g.journal.close()
    await store.close()


async def test_resume_wal_fixes_a_suspension_once_and_the_alert_resolves(
    tmp_path: Path, double: DamagedWalDouble
) -> None:
    double.wal_damaged = False
    store = QuestDBStore.from_url(double.url)
    await store.ensure_schema()
    double.suspend("quotes", "OUT_OF_MEMORY", "apply failed")
    clock = SimClock(1_700_000_000.0)
    g = build_guardian(
        Settings(data_dir=tmp_path), bus=None, store=store, clock=clock, with_channels=False
    )
    for _ in range(30):
        await g.cycle()
        clock.advance(5)
    assert double.resume_attempts == ["quotes"]
    assert g.policy.state("questdb/quotes").state == "healthy"
    decisions = [
        e["reason"].split(":")[0]
        for e in g.journal.events(resource="questdb/quotes", kind="decision")
    ]
    assert decisions == ["recover", "resolve"]
    g.journal.close()
    await store.close()


@pytest.mark.parametrize(
    "path",
    [
        "/var/lib/questdb/db/market_trades~8/txn_seq",
        "/var/lib/questdb/db/market_trades~8/txn_seq/_txnlog",
        "/var/lib/questdb/db/market_orderbook~19/txn_seq/_wal_index.d",
        "/var/lib/questdb/db/market_trades~8/wal1/0/_event",
        "/data/bus.sqlite3-wal",
        "/data/ticks.duckdb.wal",
    ],
)
async def test_actions_on_wal_or_sequencer_paths_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(UnsafeActionRefused):
        guard_path(path)
    journal = Journal(tmp_path / "guardian.sqlite3")
    runner = ActionRunner(ActionContext(), journal, clock=lambda: 1.0)
    with pytest.raises(UnsafeActionRefused):
        await runner.run("rebuild_range", "store/duckdb", {"since": "1h", "target": path})
    with pytest.raises(UnsafeActionRefused):
        await runner.run("delete_path", "questdb/trades", {"path": path})
    refused = journal.events(kind="action_refused")
    assert len(refused) == 2 and "not an allowlisted action" in refused[1]["reason"]
    assert not journal.events(kind="action_planned")
    journal.close()


async def test_a_real_wal_directory_survives_a_refused_action(tmp_path: Path) -> None:
    seq = tmp_path / "db" / "market_trades~8" / "txn_seq"
    seq.mkdir(parents=True)
    (seq / "_txnlog").write_bytes(b"log")
    journal = Journal(tmp_path / "guardian.sqlite3")
    runner = ActionRunner(ActionContext(), journal, clock=lambda: 1.0)
    with pytest.raises(UnsafeActionRefused):
        await runner.run("questdb_resume_wal", "questdb/market_trades", {"dir": str(seq)})
    assert (seq / "_txnlog").read_bytes() == b"log"
    journal.close()


def test_guard_allows_ordinary_paths() -> None:
    guard_path("/var/lib/tickvault/backups/ticks-2025.duckdb")
    guard_path("questdb/market_trades")
