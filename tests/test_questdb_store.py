"""The QuestDB store against a real QuestDB server (tests/questdb_server.py).

Tables, exactly-once writes (a venue's resend too), suspended tables ("committed, not
applied") in status and metrics, refusals, health, the bars migration, and a ``kill -9`` of
the server in the middle of ``tickvault replay``. The query surface is in
``test_questdb_query.py``; the few faults a real 9.x server cannot be made to show are in
``test_questdb_double.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pyarrow as pa
import pytest

from tickvault.core.config import Settings
from tickvault.core.errors import (
    BatchRejected,
    StoreUnavailable,
)
from tickvault.core.records import KINDS, DepthUpdate, Quote
from tickvault.service.pipeline import Pipeline
from tickvault.service.status import collect_status
from tickvault.sources.binance.sample import write_recording
from tickvault.stores.questdb.store import QuestDBStore, create_table_sql
from tickvault.web.metrics import PipelineMetrics

from .cli_helpers import cli_env, tv_json
from .conftest import questdb_fresh_tables
from .polling import eventually, eventually_sync
from .questdb_server import QuestDBServer
from .test_clickhouse_store import raw_trades
from .test_store_contract import T0, table_of, trade


def rest(server: QuestDBServer, sql: str) -> dict[str, Any]:
    """``/exec`` as the operator (the store's own paths are what is under test)."""
    query = urllib.parse.urlencode({"query": sql})
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/exec?{query}") as r:
        doc: dict[str, Any] = orjson.loads(r.read())
    return doc


def scalar(server: QuestDBServer, sql: str) -> Any:
    return rest(server, sql)["dataset"][0][0]


@pytest.fixture
async def store(questdb_server: QuestDBServer) -> AsyncIterator[QuestDBStore]:
    await asyncio.to_thread(questdb_fresh_tables, questdb_server)
    s = QuestDBStore.from_url(questdb_server.url + "&wal_timeout=20")
    yield s
    await s.close()


async def test_tables_are_wal_day_partitioned_with_symbols_and_upsert_keys(
    store: QuestDBStore, questdb_server: QuestDBServer
) -> None:
    await store.ensure_schema()
    info = (await store.tables())["trades"]
    assert info.wal and info.dedup and info.designated_timestamp == "ts_event"
    assert info.partition_by == "DAY"
    columns = {row[0]: row for row in rest(questdb_server, "SHOW COLUMNS FROM trades")["dataset"]}
    names = [c["name"] for c in rest(questdb_server, "SHOW COLUMNS FROM trades")["columns"]]
    kind, upsert = names.index("type"), names.index("upsertKey")
    assert columns["exchange"][kind] == columns["symbol"][kind] == "SYMBOL"
    assert [c for c, row in columns.items() if row[upsert]] == [
        "exchange",
        "symbol",
        "trade_id",
        "ts_event",
    ]
    # A new store finds the same table by asking the server, not by its directory.
    other = QuestDBStore.from_url(questdb_server.url)
    try:
        await other.ensure_schema()
        assert (await other.tables())["trades"].directory == info.directory
    finally:
        await other.close()


async def test_replaying_the_same_batches_twice_gives_the_same_counts(
    store: QuestDBStore, questdb_server: QuestDBServer
) -> None:
    batches = [table_of("trade", [trade(i) for i in range(b * 50, b * 50 + 60)]) for b in range(4)]
    first = [await store.write("trade", b) for b in batches]  # overlapping batches
    assert sum(first) == 210
    again = [await store.write("trade", b) for b in batches]  # the whole file once more
    assert again == [0, 0, 0, 0]
    assert scalar(questdb_server, "SELECT count() FROM trades") == 210
    assert scalar(questdb_server, "SELECT count_distinct(trade_id) FROM trades") == 210
    assert (await store.counts())["trades"] == 210


async def test_suspended_table_is_committed_not_applied_until_resumed(
    store: QuestDBStore, questdb_server: QuestDBServer
) -> None:
    assert await store.write("trade", table_of("trade", [trade(1)])) == 1
    rest(questdb_server, "ALTER TABLE trades SUSPEND WAL")
    batch = table_of("trade", [trade(i) for i in range(2, 12)])
    with pytest.raises(StoreUnavailable, match=r"committed, not applied \(1 txns behind\)"):
        await store.write("trade", batch)
    status = (await store.wal_status())["trades"]
    assert status.suspended and status.lag_txns == 1
    assert status.state == "committed, not applied (1 txns behind)"
    health = await store.health()
    assert health.ok and not health.writable
    assert "trades: committed, not applied (1 txns behind)" in health.detail
    # The server took the rows but hides them: tickvault does not call them visible.
    assert scalar(questdb_server, "SELECT count() FROM trades") == 1
    rest(questdb_server, "ALTER TABLE trades RESUME WAL")
    await eventually(
        lambda: scalar(questdb_server, "SELECT count() FROM trades") == 11,
        timeout=60,
        what="the WAL applied after RESUME WAL",
    )
    # Redelivering the batch the writer saw fail adds nothing (already applied).
    assert await store.write("trade", batch) == 0
    assert scalar(questdb_server, "SELECT count_distinct(trade_id) FROM trades") == 11
    assert (await store.wal_status())["trades"].state == "applied"


async def test_refused_values_are_batch_rejected_and_the_rest_goes_through(
    store: QuestDBStore, questdb_server: QuestDBServer
) -> None:
    before_1970 = raw_trades([1.0, 2.0, 3.0]).set_column(
        6, "ts_event", pa.array([T0, -5, T0 + 2], pa.timestamp("us"))
    )
    with pytest.raises(BatchRejected, match="QuestDB"):
        await store.write("trade", before_1970)
    good = before_1970.filter(pa.array([True, False, True]))
    assert await store.write("trade", good) == 2
    assert scalar(questdb_server, "SELECT count() FROM trades") == 2


async def test_the_servers_own_refusal_is_batch_rejected_with_its_message(
    questdb_server: QuestDBServer,
) -> None:
    await asyncio.to_thread(questdb_fresh_tables, questdb_server)
    # An operator created `trades` by hand with qty as LONG: the server refuses FLOAT values.
    rest(
        questdb_server,
        "CREATE TABLE trades (exchange SYMBOL, symbol SYMBOL, trade_id LONG, price DOUBLE,"
        " qty LONG, buyer_is_maker BOOLEAN, ts_event TIMESTAMP, ts_recv TIMESTAMP)"
        " TIMESTAMP(ts_event) PARTITION BY DAY WAL DEDUP UPSERT KEYS(ts_event, exchange, symbol,"
        " trade_id)",
    )
    store = QuestDBStore.from_url(questdb_server.url)
    try:
        await store._rest.exec("SELECT 1")
        store._present.add("trades")
        store._schema_ready = True  # the schema check would refuse the table first
        with pytest.raises(BatchRejected) as refused:
            await store.write("trade", table_of("trade", [trade(1)]))
        assert "cast error from protocol type: FLOAT to column type: LONG" in str(refused.value)
        assert '"code":"invalid"' in str(refused.value)
        assert scalar(questdb_server, "SELECT count() FROM trades") == 0
    finally:
        await store.close()
    await asyncio.to_thread(questdb_fresh_tables, questdb_server)


async def test_depth_levels_round_trip_through_the_read_only_user(
    store: QuestDBStore,
) -> None:
    depth = DepthUpdate(
        exchange="binance",
        symbol="BTCUSDT",
        first_update_id=10,
        final_update_id=12,
        bid_prices=[100.5, 100.25],
        bid_qtys=[1.0, 0.0],
        ask_prices=[101.0],
        ask_qtys=[2.5],
        ts_event=T0,
        ts_recv=T0 + 3,
    )
    assert await store.write("depth", table_of("depth", [depth])) == 1
    rows = (await store.query("SELECT bid_prices, ask_qtys FROM depth_updates")).rows
    assert rows == [([100.5, 100.25], [2.5])]
    status = (await store.wal_status())["depth_updates"]
    assert status.writer_txn == status.sequencer_txn == 1 and status.buffered_txns == 0


def _counts(server: QuestDBServer) -> dict[str, int]:
    out = {}
    for table, key in (("trades", "trade_id"), ("quotes", "update_id"), ("agg_trades", "agg_id")):
        out[table] = scalar(server, f"SELECT count() FROM {table}")
        out[f"distinct_{table}"] = scalar(
            server, f"SELECT count() FROM (SELECT DISTINCT exchange, symbol, {key} FROM {table})"
        )
    return out


def test_replay_survives_kill_9_of_questdb_and_a_second_replay_adds_nothing(
    tmp_path: Path,
) -> None:
    """``tickvault replay --store questdb://…`` while QuestDB is killed with SIGKILL and
    started again; then the same file once more (redelivery of everything)."""
    server = QuestDBServer(tmp_path / "questdb").start()
    try:
        rec = write_recording(
            tmp_path / "in.jsonl", 30_000, malformed_every=997, duplicate_share=0.02, seed=15
        )
        args = ["replay", rec.path, "--store", server.url, "--data-dir", tmp_path / "data"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "tickvault", *map(str, args), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(),
        )
        eventually_sync(
            lambda: (
                "trades" in str(rest(server, "SELECT table_name FROM tables()"))
                and scalar(server, "SELECT count() FROM trades") > 0
            ),
            timeout=120,
            what="rows stored before the kill",
        )
        server.kill()
        assert proc.poll() is None, "the kill happened while the replay was still running"
        server.start()
        out, errors = proc.communicate(timeout=300)
        assert proc.returncode == 0, errors.decode()[-2000:]
        assert json.loads(out)["drained"] is True
        expected = {
            "trades": len(rec.trade_keys),
            "quotes": len(rec.quote_keys),
            "agg_trades": len(rec.agg_keys),
        }
        first = _counts(server)
        assert first == expected | {f"distinct_{t}": n for t, n in expected.items()}
        tv_json(*args)  # the whole file again: every record redelivered
        assert _counts(server) == first
    finally:
        server.kill()


async def test_status_and_metrics_show_committed_not_applied(
    tmp_path: Path, questdb_server: QuestDBServer
) -> None:
    await asyncio.to_thread(questdb_fresh_tables, questdb_server)
    settings = Settings(data_dir=tmp_path / "data")
    settings.store.url = questdb_server.url + "&wal_timeout=5"
    async with Pipeline(settings, []) as pipeline:
        store = pipeline.store
        assert isinstance(store, QuestDBStore)
        assert await store.write("trade", table_of("trade", [trade(1)])) == 1
        rest(questdb_server, "ALTER TABLE trades SUSPEND WAL")
        for lo in (2, 12):
            with pytest.raises(StoreUnavailable):
                await store.write(
                    "trade", table_of("trade", [trade(i) for i in range(lo, lo + 10)])
                )
        snapshot = await collect_status(
            pipeline.bus,
            store,
            bus_url=settings.bus_url,
            store_url=settings.store_url,
            data_dir=settings.data_dir,
        )
        status = snapshot.to_builtins()
        assert status["store"]["tables"]["trades"] == 1  # the 20 hidden rows are not counted
        wal = status["store"]["wal"]["trades"]
        assert wal["state"] == "committed, not applied (2 txns behind)" and wal["suspended"]
        text = (await PipelineMetrics(pipeline).render()).decode()
        gauge = "tickvault_store_unapplied_txns"
        assert f'{gauge}{{state="committed, not applied",table="trades"}} 2.0' in text
        assert f'{gauge}{{state="applied",table="quotes"}} 0.0' in text
        rest(questdb_server, "ALTER TABLE trades RESUME WAL")
        await eventually(
            lambda: scalar(questdb_server, "SELECT count() FROM trades") == 21, timeout=60
        )
        text = (await PipelineMetrics(pipeline).render()).decode()
        assert f'{gauge}{{state="applied",table="trades"}} 0.0' in text


async def test_a_resent_quote_with_a_later_arrival_time_is_not_stored_twice(
    store: QuestDBStore, questdb_server: QuestDBServer
) -> None:
    """A quote's designated timestamp is its arrival time; QuestDB's upsert keys alone would
    keep both copies of a venue's resend."""
    quote = Quote(
        exchange="binance",
        symbol="BNBUSDT",
        update_id=7,
        bid_price=1.0,
        bid_qty=2.0,
        ask_price=1.1,
        ask_qty=3.0,
        ts_event=None,
        ts_recv=T0,
    )
    assert await store.write("quote", table_of("quote", [quote])) == 1
    resent = msgspec.structs.replace(quote, ts_recv=T0 + 3_600_000_000)  # an hour later
    other = msgspec.structs.replace(quote, update_id=8, ts_recv=T0 + 3_600_000_000)
    assert await store.write("quote", table_of("quote", [resent, other])) == 1
    assert scalar(questdb_server, "SELECT count() FROM quotes") == 2
    assert scalar(questdb_server, "SELECT count() FROM quotes WHERE update_id = 7") == 1


async def test_health_asks_the_servers_health_endpoint(questdb_server: QuestDBServer) -> None:
    store = QuestDBStore.from_url(questdb_server.url)
    wrong = QuestDBStore.from_url(
        questdb_server.url.replace(f"health_port={questdb_server.min_http_port}", "health_port=9")
    )
    try:
        health = await store.health()
        assert health.ok and health.writable and "QuestDB 9.3.4" in health.detail
        down = await wrong.health()
        assert not down.ok and not down.writable
        assert "health endpoint http://127.0.0.1:9/status unreachable" in down.detail
    finally:
        await store.close()
        await wrong.close()


async def test_a_bars_table_from_before_the_adjusted_flag_is_migrated_in_place(
    questdb_server: QuestDBServer,
) -> None:
    await asyncio.to_thread(questdb_fresh_tables, questdb_server)
    old = create_table_sql(KINDS["bar"], "VARCHAR").replace(", adjusted BOOLEAN", "")
    assert "adjusted" not in old
    rest(questdb_server, old)
    rest(
        questdb_server,
        "INSERT INTO bars VALUES ('polygon', 'AAPL', '1d', '2024-01-02T00:00:00.000000Z',"
        " 1.0, 2.0, 0.5, 1.5, 100.0, 1.2, 7)",
    )
    store = QuestDBStore.from_url(questdb_server.url)
    try:
        await store.ensure_schema()
        await eventually(
            lambda: (
                rest(questdb_server, "SELECT adjusted, trade_count FROM bars")["dataset"]
                == [[True, 7]]
            ),
            timeout=60,
            what="the old row marked adjusted",
        )
        assert (await store.query("SELECT * FROM bars LIMIT 0")).columns[-1] == "adjusted"
    finally:
        await store.close()
