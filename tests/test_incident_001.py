"""Incident 001: after a power loss a recovery deleted a QuestDB table's write-ahead log.

Reproduced on a real QuestDB: rows are written, the table's writer falls behind (``SUSPEND
WAL``, so transactions are committed but not applied, as during a busy apply), the server is
killed with ``kill -9``, and ``txn_seq/_txnlog`` is damaged as in the report (8 zero bytes in
a record not yet applied) or cut short. QuestDB 9.3 then starts and suspends the table
("broken table transaction record in sequencer log"). The guardian must never change a file
under the server's root (a checksum listing of the whole root is compared before and after
every action), must copy the table's directory to a backup before anything else (or stop
when the disk lacks room), must escalate with the evidence and a runbook, and ``tickvault
rebuild`` must restore the range from the bus into a fresh table with exact counts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tickvault.bus.sqlite.bus import SqliteBus
from tickvault.core.codec import encode_records
from tickvault.core.config import Settings
from tickvault.core.errors import StoreUnavailable, UnsafeActionRefused
from tickvault.guardian.actions import ActionContext, ActionRunner, guard_path
from tickvault.guardian.findings import SimClock
from tickvault.guardian.journal import Journal
from tickvault.guardian.questdb_actions import DISCARD_FLAG, manifest
from tickvault.service.guardian import build_guardian
from tickvault.service.rebuild import rebuild
from tickvault.stores.questdb.store import QuestDBStore

from .alert_receiver import Receiver
from .cli_helpers import tv
from .conftest import questdb_fresh_tables
from .polling import eventually
from .questdb_server import QuestDBServer
from .test_questdb_store import rest, scalar
from .test_store_contract import T0, table_of, trade

TXNLOG_HEADER = 76  # QuestDB 9.3 _txnlog: header, then one 28-byte record per transaction
TXNLOG_RECORD = 28
APPLIED, UNAPPLIED = 300, 200


def listing(root: Path) -> dict[str, str]:
    """sha256 of every file under the server's root except its own log."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "log"
    }


def damage(txnlog: Path, how: str, first_unapplied: int) -> None:
    record = TXNLOG_HEADER + (first_unapplied - 1) * TXNLOG_RECORD
    if how == "zero-8-bytes":  # the walId of the first unapplied record, as in the report
        data = bytearray(txnlog.read_bytes())
        data[record + 8 : record + 16] = bytes(8)
        txnlog.write_bytes(bytes(data))
    else:  # cut short: the unapplied records are gone
        with txnlog.open("r+b") as f:
            f.truncate(record)


@pytest.fixture
def damaged(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A QuestDB whose ``trades`` lost its sequencer records in a kill -9, with a bus that
    still retains every record."""
    server = QuestDBServer(tmp_path / "questdb").start()
    backups = tmp_path / "backups"
    url = f"{server.url}&root={server.root}&backup_dir={backups}&wal_timeout=5"
    records = [trade(i) for i in range(APPLIED + UNAPPLIED)]

    async def fill() -> tuple[str, int]:
        bus = SqliteBus(tmp_path / "bus.sqlite3")
        store = QuestDBStore.from_url(url)
        try:
            for lo in range(0, APPLIED, 100):
                await bus.append("ticks", encode_records(records[lo : lo + 100]))
                await store.write("trade", table_of("trade", records[lo : lo + 100]))
            rest(server, "ALTER TABLE trades SUSPEND WAL")
            for lo in range(APPLIED, APPLIED + UNAPPLIED, 50):
                await bus.append("ticks", encode_records(records[lo : lo + 50]))
                with pytest.raises(StoreUnavailable, match="committed, not applied"):
                    await store.write("trade", table_of("trade", records[lo : lo + 50]))
            status = (await store.wal_status())["trades"]
            assert status.lag_txns == UNAPPLIED // 50
            directory = (await store.tables())["trades"].directory
            assert directory is not None
            return directory, status.writer_txn
        finally:
            await store.close()
            await bus.close()

    directory, writer_txn = asyncio.run(fill())
    server.kill()
    damage(server.db / directory / "txn_seq" / "_txnlog", request.param, writer_txn + 1)
    server.start()
    yield {"server": server, "url": url, "backups": backups, "directory": directory}
    server.kill()


async def _settled(server: QuestDBServer) -> dict[str, Any]:
    """Wait until the server has judged the damaged table (its apply job ran)."""
    row: dict[str, Any] = {}

    def suspended() -> bool:
        doc = rest(server, "SELECT * FROM wal_tables() WHERE name = 'trades'")
        names = [c["name"] for c in doc["columns"]]
        row.update(dict(zip(names, doc["dataset"][0], strict=True)) if doc["dataset"] else {})
        return bool(row.get("suspended"))

    await eventually(suspended, timeout=60, what="QuestDB suspends the damaged table")
    return row


@pytest.mark.parametrize("damaged", ["zero-8-bytes", "truncated"], indirect=True)
async def test_damaged_txnlog_backup_first_no_file_touched_escalation_then_rebuild(
    tmp_path: Path, damaged: dict[str, Any]
) -> None:
    server: QuestDBServer = damaged["server"]
    row = await _settled(server)
    assert "sequencer log" in row["errorMessage"]
    assert scalar(server, "SELECT count() FROM trades") == APPLIED  # the rest is hidden
    store = QuestDBStore.from_url(damaged["url"])
    clock = SimClock(time.time())
    checked: list[tuple[str, bool]] = []
    with Receiver() as rx:
        settings = Settings(data_dir=tmp_path / "data")
        g = settings.guardian
        g.for_cycles, g.grace, g.cooldown, g.max_recoveries = 1, "0s", "5s", 1
        g.alerts, g.webhook_url = ["webhook"], rx.url
        guardian = build_guardian(settings, bus=None, store=store, clock=clock)
        run = guardian.runner.run

        async def run_checked(name: str, resource: str, *a: Any, **k: Any) -> Any:
            before = await asyncio.to_thread(listing, server.root)
            try:
                return await run(name, resource, *a, **k)
            finally:
                after = await asyncio.to_thread(listing, server.root)
                checked.append((name, before == after))

        guardian.runner.run = run_checked  # type: ignore[method-assign]
        guardian.dispatcher.start()  # type: ignore[union-attr]
        for _ in range(24):
            await guardian.cycle()
            clock.advance(5)
        await eventually(lambda: any(m["kind"] == "escalation" for m in rx.json_bodies()))
        await guardian.dispatcher.drain()  # type: ignore[union-attr]
        await guardian.dispatcher.stop()  # type: ignore[union-attr]

    # Every action left the whole root exactly as it was; the first was the backup.
    assert checked and all(same for _, same in checked)
    assert checked[0][0] == "questdb_backup_table"
    assert "questdb_resume_wal" not in {name for name, _ in checked}
    source = server.db / damaged["directory"]
    copies = sorted(damaged["backups"].glob(f"{damaged['directory']}-*"))
    assert len(copies) == 1 and not copies[0].name.endswith(".partial")
    expected = manifest(source)
    assert "txn_seq/_txnlog" in expected
    got = manifest(copies[0])
    got.pop("MANIFEST.sha256")
    assert got == expected  # the damaged bytes included: the evidence is preserved
    # One escalation, with the server's own words and a runbook.
    escalations = [m for m in rx.json_bodies() if m["kind"] == "escalation"]
    assert len(escalations) == 1
    alert = escalations[0]["firing"][0]
    assert alert["code"] == "questdb.wal_damaged"
    assert "sequencer log" in alert["evidence"]["wal_tables_row"]["errorMessage"]
    assert alert["evidence"]["wal_tables_row"]["suspended"] is True
    assert any("suspended" in line for line in alert["evidence"]["server_log"])
    assert "Never delete txn_seq" in alert["runbook"] and "rebuild" in alert["runbook"]
    guardian.journal.close()
    await store.close()

    # The operator's swap (docs/guardian.md): rename the damaged table away, rebuild.
    rest(server, "RENAME TABLE trades TO trades_damaged")
    fresh = QuestDBStore.from_url(damaged["url"])
    bus = SqliteBus(tmp_path / "bus.sqlite3")
    try:
        since = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=T0)
        report = await rebuild(bus, fresh, "ticks", since)
        assert report.inserted == APPLIED + UNAPPLIED and report.already_stored == 0
    finally:
        await fresh.close()
        await bus.close()
    total = APPLIED + UNAPPLIED
    assert scalar(server, "SELECT count() FROM trades") == total
    assert scalar(server, "SELECT count_distinct(trade_id) FROM trades") == total
    assert "trades_damaged" in str(rest(server, "SELECT table_name FROM tables()"))


async def _session_store(
    server: QuestDBServer, backups: Path
) -> tuple[QuestDBStore, Callable[[], Awaitable[dict[str, str]]]]:
    await asyncio.to_thread(questdb_fresh_tables, server)
    store = QuestDBStore.from_url(f"{server.url}&root={server.root}&backup_dir={backups}")
    await store.write("trade", table_of("trade", [trade(i) for i in range(10)]))
    directory = (await store.tables())["trades"].directory
    assert directory is not None

    async def table_files() -> dict[str, str]:
        return await asyncio.to_thread(manifest, server.db / directory)

    return store, table_files


async def test_no_room_for_the_backup_stops_and_changes_nothing(
    tmp_path: Path, questdb_server: QuestDBServer
) -> None:
    backups = tmp_path / "backups"
    store, table_files = await _session_store(questdb_server, backups)
    before = await table_files()
    journal = Journal(tmp_path / "guardian.sqlite3")
    ctx = ActionContext(store=store, disk_free=lambda _: 1 << 20)  # 1 MiB free
    runner = ActionRunner(ctx, journal, clock=lambda: 1.0)
    with pytest.raises(UnsafeActionRefused, match=r"stopped: a backup of .* needs"):
        await runner.run("questdb_backup_table", "questdb/trades", {"table": "trades"})
    assert list(backups.iterdir()) == []
    assert await table_files() == before
    refused = journal.events(kind="action_refused")
    assert len(refused) == 1 and "nothing was done" in refused[0]["reason"]
    journal.close()
    await store.close()


async def test_discarding_unapplied_wal_runs_only_behind_the_operator_flag(
    tmp_path: Path, questdb_server: QuestDBServer
) -> None:
    store, _ = await _session_store(questdb_server, tmp_path / "backups")
    rest(questdb_server, "ALTER TABLE trades SUSPEND WAL")
    journal = Journal(tmp_path / "guardian.sqlite3")
    params = {"table": "trades", "from_txn": 1}
    policy_runner = ActionRunner(ActionContext(store=store), journal, clock=lambda: 1.0)
    assert not policy_runner.available("questdb_discard_unapplied_wal", params)
    with pytest.raises(UnsafeActionRefused, match="operator"):
        await policy_runner.run("questdb_discard_unapplied_wal", "questdb/trades", params)
    assert (await store.wal_status())["trades"].suspended
    operator = ActionRunner(
        ActionContext(store=store, operator_flags=frozenset({DISCARD_FLAG})),
        journal,
        clock=lambda: 2.0,
    )
    result = await operator.run(
        "questdb_discard_unapplied_wal", "questdb/trades", {"table": "trades", "from_txn": 2}
    )
    assert result.ok, result.detail
    assert not (await store.wal_status())["trades"].suspended
    assert [e["kind"] for e in journal.events(resource="questdb/trades")][-2:] == [
        "action_planned",
        "action_result",
    ]
    journal.close()
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


async def test_operator_discard_wal_command_needs_its_confirmation_flag(
    tmp_path: Path, questdb_server: QuestDBServer
) -> None:
    store, _ = await _session_store(questdb_server, tmp_path / "backups")  # 10 rows, txn 1
    rest(questdb_server, "ALTER TABLE trades SUSPEND WAL")
    for lo in (100, 200):  # txns 2 and 3: committed, not applied
        with pytest.raises(StoreUnavailable):
            await store.write("trade", table_of("trade", [trade(i) for i in range(lo, lo + 5)]))
    await store.close()
    args = ["guardian", "discard-wal", "trades", "--from-txn", "3"]
    where = ["--store", questdb_server.url, "--data-dir", tmp_path / "data"]
    refused = await asyncio.to_thread(tv, *args, *where, check=False)
    assert refused.returncode == 2 and "--discard-unapplied-transactions" in refused.stderr
    assert scalar(questdb_server, "SELECT suspended FROM wal_tables() WHERE name = 'trades'")
    done = await asyncio.to_thread(tv, *args, "--discard-unapplied-transactions", *where)
    report = json.loads(done.stdout)
    assert report["ok"] and report["resumed_from_txn"] == 3
    await eventually(
        lambda: scalar(questdb_server, "SELECT count() FROM trades") == 15,
        timeout=60,
        what="txn 3 applied, txn 2 skipped",
    )
    assert scalar(questdb_server, "SELECT count() FROM trades WHERE trade_id >= 200") == 5
