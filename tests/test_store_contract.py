"""The Store contract, run against every backend in ``STORE_BACKENDS`` and the in-memory
:class:`tickvault.testing.InMemoryStore`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pyarrow as pa
import pytest

from tickvault.core.codec import FrameBuilder, decode_frame, split_valid
from tickvault.core.errors import QueryRejected
from tickvault.core.records import Bar, Quote, Record, Trade
from tickvault.stores.base import Store
from tickvault.testing import InMemoryStore

from .conftest import STORE_BACKENDS, StoreFactory, _close_all

T0 = 1_700_000_000_000_000  # µs


@pytest.fixture
def memory_store_factory() -> Iterator[StoreFactory]:
    made: list[Store] = []

    async def make() -> Store:
        store = InMemoryStore()
        made.append(store)
        return store

    yield make
    _close_all(made)


@pytest.fixture(params=[*STORE_BACKENDS, "memory"])
def store_factory(request: pytest.FixtureRequest) -> StoreFactory:
    """The engines and the in-memory store (this suite only: other suites need engines)."""
    factory: StoreFactory = request.getfixturevalue(f"{request.param}_store_factory")
    return factory


def trade(i: int, symbol: str = "BTCUSDT", price: float = 100.0) -> Trade:
    return Trade(
        exchange="binance",
        symbol=symbol,
        trade_id=i,
        price=price + i,
        qty=0.5,
        buyer_is_maker=i % 2 == 0,
        ts_event=T0 + i,
        ts_recv=T0 + i + 7,
    )


def table_of(kind: str, records: list[Record]) -> pa.Table:
    builder = FrameBuilder(kind)
    for r in records:
        builder.add(r)
    table, rejects = split_valid(decode_frame(builder.take()))
    assert rejects == []
    return table


async def test_schema_has_the_public_tables_and_columns(store: Store) -> None:
    await store.ensure_schema()
    await store.ensure_schema()
    counts = await store.counts()
    assert {"trades", "quotes", "bars"} <= set(counts)
    cols = (await store.query("SELECT * FROM trades LIMIT 0")).columns
    assert cols == [
        "exchange",
        "symbol",
        "trade_id",
        "price",
        "qty",
        "buyer_is_maker",
        "ts_event",
        "ts_recv",
    ]
    assert (await store.query("SELECT * FROM quotes LIMIT 0")).columns == [
        "exchange",
        "symbol",
        "update_id",
        "bid_price",
        "bid_qty",
        "ask_price",
        "ask_qty",
        "ts_event",
        "ts_recv",
    ]
    assert (await store.query("SELECT * FROM bars LIMIT 0")).columns == [
        "source",
        "symbol",
        "timeframe",
        "ts_open",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "vwap",
        "trade_count",
        "adjusted",
    ]


async def test_write_is_idempotent_on_natural_keys(store: Store) -> None:
    await store.ensure_schema()
    first = table_of("trade", [trade(i) for i in range(100)])
    assert await store.write("trade", first) == 100
    assert await store.write("trade", first) == 0
    overlap = table_of("trade", [trade(i) for i in range(50, 150)] + [trade(149)])
    assert await store.write("trade", overlap) == 50
    assert (await store.counts())["trades"] == 150
    other_symbol = table_of("trade", [trade(i, symbol="ETHUSDT") for i in range(10)])
    assert await store.write("trade", other_symbol) == 10


async def test_rows_read_back_exactly(store: Store) -> None:
    await store.ensure_schema()
    await store.write("trade", table_of("trade", [trade(7)]))
    result = await store.query(
        "SELECT exchange, symbol, trade_id, price, qty, buyer_is_maker, ts_event, ts_recv"
        " FROM trades"
    )
    (row,) = result.rows
    assert row[:6] == ("binance", "BTCUSDT", 7, 107.0, 0.5, False)
    epoch = dt.datetime(1970, 1, 1)
    assert row[6] == epoch + dt.timedelta(microseconds=T0 + 7)
    assert row[7] == epoch + dt.timedelta(microseconds=T0 + 14)


async def test_quotes_and_bars_with_nullable_columns(store: Store) -> None:
    await store.ensure_schema()
    q = Quote(
        exchange="binance",
        symbol="BNBUSDT",
        update_id=1,
        bid_price=1.0,
        bid_qty=2.0,
        ask_price=1.1,
        ask_qty=3.0,
        ts_event=None,
        ts_recv=T0,
    )
    b = Bar(
        source="polygon",
        symbol="C:EURUSD",
        timeframe="1m",
        ts_open=T0,
        open=1.1,
        high=1.2,
        low=1.0,
        close=1.15,
        volume=10.0,
    )
    assert await store.write("quote", table_of("quote", [q, q])) == 1
    assert await store.write("bar", table_of("bar", [b])) == 1
    assert (await store.query("SELECT ts_event FROM quotes")).rows == [(None,)]
    assert (await store.query("SELECT vwap, trade_count FROM bars")).rows == [(None, None)]
    latest = await store.latest("trade", "BTCUSDT")
    assert latest is None
    await store.write("trade", table_of("trade", [trade(1), trade(2)]))
    latest = await store.latest("trade", "BTCUSDT")
    assert latest is not None and latest["trade_id"] == 2


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO trades VALUES ('x','y',1,1,1,true,now(),now())",
        "DELETE FROM trades",
        "DROP TABLE trades",
        "SELECT 1; DELETE FROM trades",
        "CREATE TABLE x AS SELECT 1",
        "UPDATE trades SET price = 0",
    ],
)
async def test_query_refuses_anything_but_one_select(store: Store, sql: str) -> None:
    await store.ensure_schema()
    await store.write("trade", table_of("trade", [trade(1)]))
    with pytest.raises(QueryRejected):
        await store.query(sql)
    assert (await store.counts())["trades"] == 1


async def test_query_limit_truncates(store: Store) -> None:
    await store.ensure_schema()
    await store.write("trade", table_of("trade", [trade(i) for i in range(20)]))
    result = await store.query("SELECT trade_id FROM trades ORDER BY trade_id", limit=5)
    assert [r[0] for r in result.rows] == [0, 1, 2, 3, 4]
    assert result.truncated


async def test_health_reports_writable(store: Store) -> None:
    health = await store.health()
    assert health.ok and health.writable
