"""ClickHouse store specifics: refused values, outages, and the layout per server version."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tickvault.core.errors import BatchRejected, StoreUnavailable
from tickvault.core.records import KINDS
from tickvault.stores.clickhouse.http import ServerFeatures
from tickvault.stores.clickhouse.schema import create_table_sql
from tickvault.stores.clickhouse.store import ClickHouseStore

from .conftest import StoreFactory
from .servers import free_port
from .test_store_contract import T0


def raw_trades(prices: list[float]) -> pa.Table:
    """A trades table built directly (no writer validation), so bad values reach the store."""
    n = len(prices)
    return pa.table(
        {
            "exchange": ["binance"] * n,
            "symbol": ["BTCUSDT"] * n,
            "trade_id": pa.array(range(n), pa.int64()),
            "price": pa.array(prices, pa.float64()),
            "qty": [0.5] * n,
            "buyer_is_maker": [False] * n,
            "ts_event": pa.array([T0 + i for i in range(n)], pa.timestamp("us")),
            "ts_recv": pa.array([T0 + i + 1 for i in range(n)], pa.timestamp("us")),
        },
        schema=KINDS["trade"].schema,
    )


async def test_a_value_the_server_refuses_raises_batch_rejected(
    clickhouse_store_factory: StoreFactory,
) -> None:
    store = await clickhouse_store_factory()
    await store.ensure_schema()
    bad = raw_trades([100.0, 101.0, -5.0, 102.0])
    with pytest.raises(BatchRejected) as refused:
        await store.write("trade", bad)
    assert "Code: 395" in str(refused.value)  # the server's own message travels along
    assert (await store.counts())["trades"] == 0  # nothing of the refused batch is stored
    good = bad.filter(pa.array([True, True, False, True]))
    assert await store.write("trade", good) == 3
    assert (await store.counts())["trades"] == 3


async def test_an_unreachable_server_is_store_unavailable() -> None:
    store = ClickHouseStore.from_url(f"clickhouse://127.0.0.1:{free_port()}/tv")
    try:
        with pytest.raises(StoreUnavailable):
            await store.write("trade", raw_trades([1.0]))
        health = await store.health()
        assert not health.ok and not health.writable
    finally:
        await store.close()


def test_layout_follows_the_server_version() -> None:
    spec = KINDS["trade"]
    old = create_table_sql(spec, "db", ServerFeatures.for_version("18.16.1"))
    assert "`ts_event` Int64" in old and "DateTime64" not in old
    assert "_tv_guard UInt8 MATERIALIZED throwIf(NOT (" in old
    assert "PARTITION BY toYYYYMM(toDateTime(intDiv(ts_event, 1000000)))" in old
    assert (
        "ENGINE = ReplacingMergeTree() " in old
        and "ORDER BY (`exchange`, `symbol`, `trade_id`)" in old
    )
    assert "SETTINGS" not in old
    new = create_table_sql(spec, "db", ServerFeatures.for_version("24.8.4.13"))
    assert "`ts_event` DateTime64(6, 'UTC')" in new
    assert "CONSTRAINT tv_guard CHECK " in new and "throwIf" not in new
    assert "PARTITION BY toYYYYMM(ts_event)" in new
    assert new.endswith("SETTINGS non_replicated_deduplication_window = 1000")
    f = ServerFeatures.for_version("21.11.2")
    assert (f.datetime64, f.constraints, f.async_insert, f.dedup_token) == (True, True, True, False)


async def test_server_version_is_detected(clickhouse_store_factory: StoreFactory) -> None:
    store = await clickhouse_store_factory()
    assert isinstance(store, ClickHouseStore)
    features = await store.features()
    await store.ensure_schema()
    assert store.legacy_timestamps == (not features.datetime64)
    assert features.version_text in (await store.health()).detail
