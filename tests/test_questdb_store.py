"""QuestDB store against the wire-level double: ILP lines, WAL status, refusals, outages.

QuestDB cannot run on these machines; ``tests/questdb_double.py`` speaks its HTTP protocol
(ILP/HTTP ``/write``, REST ``/exec``) with the documented answer shapes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pyarrow as pa
import pytest

from tickvault.errors import BatchRejected, StoreUnavailable
from tickvault.records import DepthUpdate
from tickvault.stores.questdb import QuestDBStore

from .polling import eventually
from .questdb_double import QuestDBDouble
from .test_clickhouse_store import raw_trades
from .test_store_contract import T0, table_of, trade


@pytest.fixture
async def double() -> AsyncIterator[QuestDBDouble]:
    d = QuestDBDouble().start()
    yield d
    d.stop()


@pytest.fixture
async def store(double: QuestDBDouble) -> AsyncIterator[QuestDBStore]:
    s = QuestDBStore.from_url(double.url + "?wal_timeout=5")
    yield s
    await s.close()


async def test_ilp_lines_carry_symbols_typed_fields_and_the_event_time(
    store: QuestDBStore, double: QuestDBDouble
) -> None:
    assert await store.write("trade", table_of("trade", [trade(7), trade(8)])) == 2
    lines = double.lines()
    assert len(lines) == 2 and len(double.write_bodies) == 1  # one request, one transaction
    head, fields, stamp = lines[0].split(" ")
    assert head == "trades,exchange=binance,symbol=BTCUSDT"
    assert fields.split(",") == [
        "trade_id=7i",
        "price=107.0",
        "qty=0.5",
        "buyer_is_maker=f",
        f"ts_recv={T0 + 14}t",
    ]
    assert stamp == str((T0 + 7) * 1000)  # explicit designated timestamp (ns), never server time
    assert await store.write("trade", table_of("trade", [trade(7), trade(8)])) == 0
    assert len(double.write_bodies) == 1  # nothing new: no request at all


async def test_tables_are_wal_dedup_and_found_by_name(
    store: QuestDBStore, double: QuestDBDouble
) -> None:
    await store.ensure_schema()
    info = (await store.tables())["trades"]
    assert info.wal and info.dedup and info.designated_timestamp == "ts_event"
    assert double.tables["trades"].upsert_keys == ["ts_event", "exchange", "symbol", "trade_id"]
    first_dir = info.directory
    # Re-created table: a new directory suffix; a new store still finds it by asking.
    await store._rest.exec("DROP TABLE trades")
    other = QuestDBStore.from_url(double.url)
    try:
        await other.ensure_schema()
        assert (await other.tables())["trades"].directory != first_dir
        assert await other.write("trade", table_of("trade", [trade(1)])) == 1
    finally:
        await other.close()


async def test_write_returns_only_after_the_wal_is_applied(
    store: QuestDBStore, double: QuestDBDouble
) -> None:
    await store.ensure_schema()
    double.hold_apply(True)
    task = asyncio.create_task(
        store.write("trade", table_of("trade", [trade(i) for i in range(5)]))
    )
    await eventually(lambda: double.tables["trades"].sequencer_txn == 1, what="WAL commit")
    status = (await store.wal_status())["trades"]
    assert status.lag_txns == 1 and status.buffered_txns == 1 and not status.suspended
    assert not task.done()
    double.hold_apply(False)
    assert await task == 5
    assert (await store.counts())["trades"] == 5


async def test_suspended_table_is_unavailable_and_reported(
    store: QuestDBStore, double: QuestDBDouble
) -> None:
    await store.ensure_schema()
    double.suspend("trades", "OUT OF MEMORY", "query memory limit exceeded")
    with pytest.raises(StoreUnavailable, match="suspended"):
        await store.write("trade", table_of("trade", [trade(1)]))
    status = (await store.wal_status())["trades"]
    assert status.suspended and status.error_tag == "OUT OF MEMORY"
    health = await store.health()
    assert health.ok and not health.writable and "trades" in health.detail
    double.resume("trades")
    # Retrying the same batch is harmless: it is already in the WAL and deduplicated.
    await store.write("trade", table_of("trade", [trade(1)]))
    assert (await store.counts())["trades"] == 1


async def test_incident_001_wal_write_error_is_an_outage_not_bad_data(
    store: QuestDBStore, double: QuestDBDouble
) -> None:
    """Seed 001: a damaged WAL made QuestDB answer 500 ``internal error``; records must not
    be dead-lettered as bad data but retried once the server is repaired."""
    await store.ensure_schema()
    double.fail_writes = (500, {
        "code": "internal error",
        "message": "failed to parse line protocol:errors encountered on line(s):write error:"
        " trades, errno: 2, error: could not open read-write"
        " [file=/var/lib/questdb/db/trades~8/txn_seq/_wal_index.d]",
        "line": 1, "errorId": "a417ef293242-1316",
    })  # fmt: skip
    with pytest.raises(StoreUnavailable) as down:
        await store.write("trade", table_of("trade", [trade(1)]))
    assert not isinstance(down.value, BatchRejected)
    assert "_wal_index.d" in str(down.value)
    double.fail_writes = None
    assert await store.write("trade", table_of("trade", [trade(1)])) == 1


async def test_refused_values_raise_batch_rejected_and_the_rest_goes_through(
    store: QuestDBStore, double: QuestDBDouble
) -> None:
    await store.ensure_schema()
    before_1970 = raw_trades([1.0, 2.0, 3.0]).set_column(
        6, "ts_event", pa.array([T0, -5, T0 + 2], pa.timestamp("us"))
    )
    with pytest.raises(BatchRejected, match="QuestDB"):
        await store.write("trade", before_1970)
    assert double.write_bodies == []
    good = before_1970.filter(pa.array([True, False, True]))
    assert await store.write("trade", good) == 2
    assert (await store.counts())["trades"] == 2


async def test_server_refusal_of_a_value_is_batch_rejected_with_its_message(
    double: QuestDBDouble,
) -> None:
    # An operator created `trades` by hand with qty as LONG: the server refuses FLOAT values.
    double.handle_exec(
        "CREATE TABLE trades (exchange SYMBOL, symbol SYMBOL, trade_id LONG, price DOUBLE,"
        " qty LONG, buyer_is_maker BOOLEAN, ts_event TIMESTAMP, ts_recv TIMESTAMP)"
        " TIMESTAMP(ts_event) PARTITION BY DAY WAL DEDUP UPSERT KEYS(ts_event, exchange, symbol,"
        " trade_id)",
        None,
    )
    store = QuestDBStore.from_url(double.url)
    try:
        with pytest.raises(BatchRejected) as refused:
            await store.write("trade", table_of("trade", [trade(1)]))
        assert "cast error from protocol type: FLOAT to column type: LONG" in str(refused.value)
        assert "code: invalid" in str(refused.value)
        assert (await store.counts())["trades"] == 0
    finally:
        await store.close()


async def test_older_server_column_names_and_depth_levels_round_trip() -> None:
    double = QuestDBDouble(version="7.3.10").start()
    store = QuestDBStore.from_url(double.url)
    try:
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
        assert double.tables["depth_updates"].columns["bid_prices"] == "STRING"  # no VARCHAR on 7.3
        row = (await store.query("SELECT bid_prices, ask_qtys FROM depth_updates")).rows
        assert row == [([100.5, 100.25], [2.5])]
        status = (await store.wal_status())["depth_updates"]
        assert status.buffered_txns == 0 and status.writer_txn == status.sequencer_txn == 1
        assert "trades" in await store.tables()
    finally:
        await store.close()
        double.stop()
