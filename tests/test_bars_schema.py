"""The bars table: NULL volume/vwap/trade count when absent, the ``adjusted`` basis, and the
migration of tables (and frames) from before both, on every store."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from tickvault.core.codec import FrameBuilder, decode_frame, encode_frame, split_valid
from tickvault.core.records import KINDS, Bar, KindSpec
from tickvault.stores.base import Store
from tickvault.stores.clickhouse.http import ClickHouseServerError
from tickvault.stores.clickhouse.schema import bars_migration_sql, guard_condition
from tickvault.stores.clickhouse.schema import create_table_sql as clickhouse_table_sql
from tickvault.stores.clickhouse.store import ClickHouseStore
from tickvault.stores.duckdb.store import DuckDBStore, migrate_bars
from tickvault.stores.duckdb.store import create_table_sql as duckdb_table_sql

from .servers import ClickHouseServer

T0 = 1_678_341_600_000_000  # µs: an I:NDX day bar as captured (tests/data/polygon)
EPOCH = dt.datetime(1970, 1, 1)


def old_bar_spec() -> KindSpec:
    """The bars table as it was before: volume NOT NULL, no ``adjusted``."""
    spec = KINDS["bar"]
    fields = tuple(
        f._replace(nullable=f.nullable and f.name != "volume")
        for f in spec.fields
        if f.name != "adjusted"
    )
    rules = {k: v for k, v in spec.rules.items() if k != "adjusted"}
    return dataclasses.replace(
        spec, fields=fields, rules={**rules, "volume": ("required", "non_negative")}
    )


def bar(ts: int, volume: float | None, adjusted: bool) -> Bar:
    return Bar(
        source="polygon", symbol="I:NDX", timeframe="1d", ts_open=ts, open=12230.8,
        high=12340.4, low=11970.3, close=11995.9, volume=volume, adjusted=adjusted,
    )  # fmt: skip


def bars_table(records: list[Bar]) -> pa.Table:
    builder = FrameBuilder("bar")
    for r in records:
        builder.add(r)
    table, rejects = split_valid(decode_frame(builder.take()))
    assert rejects == []
    return table


async def test_absent_volume_stays_null_and_the_basis_is_stored(store: Store) -> None:
    await store.ensure_schema()
    rows = [bar(T0, None, True), bar(T0 + 86_400_000_000, 0.0, False)]
    assert await store.write("bar", bars_table(rows)) == 2
    result = await store.query(
        "SELECT volume, vwap, trade_count, adjusted FROM bars ORDER BY ts_open"
    )
    # "Nothing reported" (NULL) and "nothing traded" (0.0) stay apart.
    assert result.rows == [(None, None, None, True), (0.0, None, None, False)]


def test_null_volume_travels_as_null_not_as_a_sentinel() -> None:
    # A column with nulls stays a plain list on the wire (msgpack nil, one byte each): no
    # NaN or 0 stands in for "not reported", so nothing can confuse the two downstream.
    builder = FrameBuilder("bar")
    builder.add(bar(T0, None, True))
    builder.add(bar(T0 + 1, 7.5, True))
    frame = decode_frame(builder.take())
    assert frame.cols["volume"] == [None, 7.5]
    table, rejects = split_valid(frame)
    assert rejects == [] and table.column("volume").to_pylist() == [None, 7.5]
    assert table.column("volume").null_count == 1


def test_a_frame_from_before_the_flag_decodes_as_adjusted() -> None:
    builder = FrameBuilder("bar")
    builder.add(bar(T0, 5.0, True))
    frame = decode_frame(builder.take())
    old_cols = {k: v for k, v in frame.cols.items() if k != "adjusted"}
    old = decode_frame(encode_frame("bar", old_cols))
    table, rejects = split_valid(old)
    assert rejects == [] and table.column("adjusted").to_pylist() == [True]


async def _migrated_rows(store: Store) -> list[tuple[object, ...]]:
    await store.ensure_schema()
    assert await store.write("bar", bars_table([bar(T0 + 86_400_000_000, None, True)])) == 1
    result = await store.query("SELECT volume, adjusted, ts_open FROM bars ORDER BY ts_open")
    return list(result.rows)


async def test_duckdb_bars_from_before_are_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute(duckdb_table_sql(old_bar_spec()))
    con.execute(
        "INSERT INTO bars VALUES ('polygon', 'I:NDX', '1d', make_timestamp(?), 12230.8,"
        " 12340.4, 11970.3, 11995.9, 0.0, NULL, NULL)",
        [T0],
    )
    con.close()
    store = DuckDBStore(path)
    try:
        rows = await _migrated_rows(store)
        await store.ensure_schema()  # idempotent
    finally:
        await store.close()
    con = duckdb.connect(str(path))
    try:
        assert migrate_bars(con) == []  # nothing left to do on a migrated file
    finally:
        con.close()
    assert rows == [
        (0.0, True, EPOCH + dt.timedelta(microseconds=T0)),  # stored values kept
        (None, True, EPOCH + dt.timedelta(microseconds=T0 + 86_400_000_000)),
    ]


async def test_clickhouse_bars_from_before_are_migrated_in_place(
    clickhouse_server: ClickHouseServer,
) -> None:
    database = f"tv_old_{uuid.uuid4().hex[:10]}"
    old = ClickHouseStore.from_url(clickhouse_server.url(database))
    features = await old.features()
    http = old._http
    await http.post(f"CREATE DATABASE {database}")
    await http.post(clickhouse_table_sql(old_bar_spec(), database, features))
    ts = T0 if not features.datetime64 else f"toDateTime64({T0 / 1e6}, 6, 'UTC')"
    await http.post(
        f"INSERT INTO {database}.bars (source, symbol, timeframe, ts_open, open, high, low,"
        f" close, volume, vwap, trade_count) VALUES ('polygon', 'I:NDX', '1d', {ts}, 12230.8,"
        " 12340.4, 11970.3, 11995.9, 0, NULL, NULL)"
    )
    await old.close()
    # A read-only store (tickvault query/status) reads the old table and changes nothing.
    reader = ClickHouseStore.from_url(clickhouse_server.url(database), read_only=True)
    try:
        assert (await reader.query("SELECT * FROM bars")).columns[-1] == "trade_count"
    finally:
        await reader.close()
    store = ClickHouseStore.from_url(clickhouse_server.url(database))
    try:
        rows = await _migrated_rows(store)
        again = ClickHouseStore.from_url(clickhouse_server.url(database))
        await again.ensure_schema()  # idempotent: nothing left to migrate
        await again.close()
        # The migrated value guard admits NULL volume and still refuses a negative one.
        with pytest.raises(ClickHouseServerError):
            await store._http.post(
                f"INSERT INTO {database}.bars (source, symbol, timeframe, ts_open, open, high,"
                f" low, close, volume, vwap, trade_count, adjusted) VALUES ('polygon', 'I:NDX',"
                f" '1d', {ts}, 1, 1, 1, 1, -1, NULL, NULL, 1)"
            )
    finally:
        await store.close()
    day = dt.timedelta(microseconds=T0)
    assert rows == [(0.0, True, EPOCH + day), (None, True, EPOCH + day + dt.timedelta(days=1))]


def test_clickhouse_migration_statements_for_each_guard_layout() -> None:
    # The CHECK layout (19.14+) cannot run on the 18.16 server; its statements are pinned
    # here and run on a current engine in tests/test_bars_schema_modern.py.
    old = {"volume": "Float64", "trade_count": "Nullable(Int64)"}
    with_check = bars_migration_sql(old, "db", True)
    assert with_check[:2] == [
        "ALTER TABLE `db`.`bars` DROP CONSTRAINT tv_guard",
        f"ALTER TABLE `db`.`bars` ADD CONSTRAINT tv_guard CHECK {guard_condition(KINDS['bar'])}",
    ]
    assert "isNull(volume) OR" in with_check[1]
    # Interrupted after the DROP: the guard is added again, not forgotten.
    assert bars_migration_sql(old, "db", False)[0].startswith(
        "ALTER TABLE `db`.`bars` ADD CONSTRAINT"
    )
    assert bars_migration_sql({**old, "_tv_guard": "UInt8"}, "db", None)[0].startswith(
        "ALTER TABLE `db`.`bars` MODIFY COLUMN _tv_guard UInt8 MATERIALIZED throwIf(NOT ("
    )
    assert with_check[2:] == [
        "ALTER TABLE `db`.`bars` MODIFY COLUMN volume Nullable(Float64)",
        "ALTER TABLE `db`.`bars` ADD COLUMN adjusted UInt8 DEFAULT 1 AFTER trade_count",
    ]
    current = {"volume": "Nullable(Float64)", "adjusted": "UInt8"}
    assert bars_migration_sql(current, "db", True) == []
    assert bars_migration_sql({}, "db", True) == []
