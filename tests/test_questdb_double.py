"""The QuestDB store against the wire-level double, for what a real 9.x server cannot show.

Everything else runs against a real QuestDB (``test_questdb_store.py``). The double
(``tests/questdb_double.py``) remains for two faults only:

* an older server (7.3): its ``tables()``/``wal_tables()`` column names
  (``name``, ``writerLagTxnCount``) and no VARCHAR type, which the pinned 9.x jar cannot
  answer with;
* the exact HTTP 500 ``internal error`` body of incident 001 (``could not open read-write
  [file=…/txn_seq/_wal_index.d]``), which a real server gives only after its ``txn_seq``
  directory is deleted — the very act the project forbids, so no test does it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tickvault.core.errors import BatchRejected, StoreUnavailable
from tickvault.core.records import DepthUpdate
from tickvault.stores.questdb.store import QuestDBStore, _decode_public

from .questdb_double import QuestDBDouble
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
        doc = await store._rest.exec("SELECT bid_prices, ask_qtys FROM depth_updates")
        assert _decode_public(doc)[1] == [([100.5, 100.25], [2.5])]
        status = (await store.wal_status())["depth_updates"]
        assert status.buffered_txns == 0 and status.writer_txn == status.sequencer_txn == 1
        assert "trades" in await store.tables()
    finally:
        await store.close()
        double.stop()
