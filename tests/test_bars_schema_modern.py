"""The bars migration on a current ClickHouse (CHECK-constraint guard), through ``chdb``.

The 18.16 server keeps its guard as a MATERIALIZED column (``tests/test_bars_schema.py``);
servers from 19.14 on use a ``CHECK`` constraint, which only a current engine can show
here. The engine and its HTTP stand-in are those of ``tests/test_clickhouse_modern.py``.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.test_bars_schema import T0, bar, bars_table, old_bar_spec
from tests.test_clickhouse_modern import ChdbHTTP, engine, http  # noqa: F401 - fixtures
from tickvault.core.errors import BatchRejected
from tickvault.stores.clickhouse.schema import create_table_sql
from tickvault.stores.clickhouse.store import ClickHouseStore


async def test_bars_with_a_check_guard_are_migrated_in_place(http: ChdbHTTP) -> None:  # noqa: F811
    database = f"tv_{uuid.uuid4().hex[:10]}"
    store = ClickHouseStore("chdb", 0, database)
    store._http = http  # type: ignore[assignment]
    features = await store.features()
    assert features.constraints  # a current engine
    await http.post(f"CREATE DATABASE {database}")
    old_ddl = create_table_sql(old_bar_spec(), database, features)
    assert "CONSTRAINT tv_guard CHECK" in old_ddl and "isFinite(volume)" in old_ddl
    await http.post(old_ddl)
    await http.post(
        f"INSERT INTO {database}.bars (source, symbol, timeframe, ts_open, open, high, low,"
        f" close, volume, vwap, trade_count) VALUES ('polygon', 'I:NDX', '1d',"
        f" toDateTime64({T0 / 1e6}, 6, 'UTC'), 12230.8, 12340.4, 11970.3, 11995.9, 0, NULL,"
        " NULL)"
    )
    await store.ensure_schema()
    assert any("DROP CONSTRAINT tv_guard" in s for s in http.statements)
    assert await store.write("bar", bars_table([bar(T0 + 86_400_000_000, None, True)])) == 1
    result = await store.query("SELECT volume, adjusted, ts_open FROM bars ORDER BY ts_open")
    assert [r[:2] for r in result.rows] == [(0.0, True), (None, True)]
    assert result.rows[1][2] - result.rows[0][2] == dt.timedelta(days=1)
    # The new guard admits NULL volume and still refuses a negative one.
    with pytest.raises(BatchRejected, match="469"):
        await store.write(
            "bar",
            bars_table([bar(T0 + 2 * 86_400_000_000, 1.0, True)]).set_column(
                8, "volume", pa.array([-1.0])
            ),
        )


async def test_a_refresh_replaces_bars_on_a_current_engine(http: ChdbHTTP) -> None:  # noqa: F811
    """The delete mutation with DateTime64 key literals, then the insert, on a current
    engine (the 18.16 server keeps Int64 timestamps: tests/test_polygon_refresh.py)."""
    store = ClickHouseStore("chdb", 0, f"tv_{uuid.uuid4().hex[:10]}")
    store._http = http  # type: ignore[assignment]
    await store.ensure_schema()
    days = [T0 + d * 86_400_000_000 for d in range(3)]
    assert await store.write("bar", bars_table([bar(t, 5.0, True) for t in days])) == 3
    split = bars_table([bar(t, 5.0, True) for t in days[1:]])
    for i, name in enumerate(("open", "high", "low", "close"), start=4):
        split = split.set_column(i, name, pc.divide(split.column(name), 4.0))
    for _ in range(2):  # idempotent
        assert await store.replace("bar", split) == 2
        assert any("ALTER TABLE" in s and "DELETE WHERE" in s for s in http.statements)
        result = await store.query("SELECT close, count() FROM bars GROUP BY close ORDER BY close")
        assert result.rows == [(2998.975, 2), (11995.9, 1)]
