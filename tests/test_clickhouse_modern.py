"""Both ClickHouse stores on a current ClickHouse engine, through ``chdb`` (embedded).

The server these machines run is Debian's 18.16; no newer server package can be installed
here. ``chdb`` embeds a current ClickHouse (its version is printed in the first test), so
the market-data store (``stores/clickhouse*.py``) and the position-state backend
(``positions/clickhouse_*.py``) run their own DDL, inserts and queries on it unchanged, and
dialect drift between 18.16 and today's releases fails here.

What is not the real thing: chdb has no HTTP interface, so :class:`ChdbHTTP` stands in for
the stores' HTTP client and carries each request into the engine: URL settings become a
``SETTINGS`` clause, an insert's body is appended to its statement (text formats) or read
with ``file()`` (``Native``), and the external table of the key lookup is a ``file()``.
The SQL text itself is the stores' own.
"""

from __future__ import annotations

import math
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from chdb import session as chdb_session

from tests.test_clickhouse_store import raw_trades
from tests.test_incident_004 import INCIDENT_DDL, INCIDENT_ROWS
from tests.test_store_contract import T0, table_of, trade
from tickvault.core.errors import BatchRejected, QueryRejected
from tickvault.core.records import KINDS, Bar, Quote
from tickvault.positions import PositionBook, StateStoreSource, reconcile, restore
from tickvault.positions.clickhouse_store import ClickHousePositionStore
from tickvault.stores.clickhouse.http import ClickHouseServerError
from tickvault.stores.clickhouse.store import ClickHouseStore

_HTTP_ONLY = {"query", "database", "default_format", "wait_end_of_query"}  # HTTP handler
_CODE = re.compile(r"Code:\s*(\d+)")
_FORMAT_AT_END = re.compile(r"\s+FORMAT\s+(\w+)\s*$", re.IGNORECASE)


class ChdbHTTP:
    """The ``post``/``json`` surface of ``ClickHouseHTTP``, answered by an embedded engine."""

    def __init__(self, session: Any, workdir: Path) -> None:
        self.session = session
        self.workdir = workdir
        self.statements: list[str] = []

    def _file(self, data: bytes) -> str:
        path = self.workdir / f"{uuid.uuid4().hex}.bin"
        path.write_bytes(data)
        return str(path)

    def _run(self, sql: str, fmt: str) -> bytes:
        self.statements.append(sql)
        try:
            return bytes(self.session.query(sql, fmt).bytes())
        except Exception as exc:  # chdb raises its own error with the server's text
            text = str(exc)
            match = _CODE.search(text)
            raise ClickHouseServerError(text, int(match.group(1)) if match else None) from None

    def _translate(
        self,
        sql: str,
        params: dict[str, str],
        body: bytes | None,
        files: dict[str, tuple[str, bytes]] | None,
    ) -> tuple[str, str]:
        """The statement chdb runs and the output format the HTTP interface would use."""
        params = dict(params)
        if "database" in params:
            self._run(f"USE `{params['database']}`", "TabSeparated")
        for name, (_, data) in (files or {}).items():
            structure = params.pop(f"{name}_structure")
            fmt = params.pop(f"{name}_format", "TabSeparated")
            quoted = structure.replace("\\", "\\\\").replace("'", "\\'")
            source = f"file('{self._file(data)}', '{fmt}', '{quoted}')"
            sql = re.sub(rf"\bFROM {name}\b", f"FROM {source}", sql)
        out_fmt = params.get("default_format", "TabSeparated")
        settings = ", ".join(f"{k} = '{v}'" for k, v in params.items() if k not in _HTTP_ONLY)
        tail = ""
        found = _FORMAT_AT_END.search(sql)
        if found is not None:
            sql, tail = sql[: found.start()], f" FORMAT {found.group(1)}"
        if body is not None and tail.upper() == " FORMAT NATIVE":
            sql = f"{sql} SELECT * FROM file('{self._file(body)}', 'Native')"
            tail, body = "", None
        if settings:
            sql = f"{sql} SETTINGS {settings}"
        sql += tail
        if body is not None:
            sql += "\n" + body.decode()
        return sql, out_fmt

    async def post(
        self,
        sql: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        files: dict[str, tuple[str, bytes]] | None = None,
    ) -> bytes:
        statement, fmt = self._translate(sql, params or {}, body, files)
        return self._run(statement, fmt)

    async def json(self, sql: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        query = {"output_format_json_quote_64bit_integers": "0"} | dict(params or {})
        statement, _ = self._translate(sql, query, None, None)
        raw = self._run(statement, "JSONCompact")
        doc: dict[str, Any] = orjson.loads(raw) if raw.strip() else {"meta": [], "data": []}
        return doc

    async def aclose(self) -> None:
        return None


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    """One embedded engine for the module (chdb allows one session per process)."""
    with tempfile.TemporaryDirectory(prefix="tv-chdb-") as tmp:
        session = chdb_session.Session(str(Path(tmp) / "db"))
        yield session, Path(tmp)
        session.close()


@pytest.fixture
def http(engine: Any) -> ChdbHTTP:
    session, tmp = engine
    return ChdbHTTP(session, tmp)


def _database() -> str:
    return f"tv_{uuid.uuid4().hex[:10]}"


async def test_market_data_store_runs_on_current_clickhouse(http: ChdbHTTP) -> None:
    store = ClickHouseStore("chdb", 0, _database())
    store._http = http  # type: ignore[assignment]
    features = await store.features()
    assert features.version >= (24, 0, 0), features  # a current engine, not 18.16
    assert features.datetime64 and features.constraints and features.dedup_token
    await store.ensure_schema()
    ddl = [s for s in http.statements if s.startswith("CREATE TABLE")]
    assert len(ddl) == len(KINDS) and all("CONSTRAINT tv_guard CHECK" in s for s in ddl)
    assert not store.legacy_timestamps

    trades = table_of("trade", [trade(i) for i in range(50)])
    assert await store.write("trade", trades) == 50
    assert await store.write("trade", trades) == 0  # the key lookup finds them all
    more = table_of("trade", [trade(i) for i in range(40, 60)])
    assert await store.write("trade", more) == 10
    quote = Quote(
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
    bar = Bar(
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
    assert await store.write("quote", table_of("quote", [quote])) == 1
    assert await store.write("bar", table_of("bar", [bar])) == 1
    counts = await store.counts()
    assert (counts["trades"], counts["quotes"], counts["bars"]) == (60, 1, 1)

    result = await store.query(
        "SELECT trade_id, price, buyer_is_maker, ts_event FROM trades"
        " ORDER BY trade_id DESC LIMIT 1"
    )
    assert result.rows[0][:3] == (59, 159.0, False)
    assert result.rows[0][3].timestamp() == pytest.approx((T0 + 59) / 1e6)
    assert (await store.query("SELECT ts_event, vwap FROM quotes, bars")).rows == [(None, None)]
    latest = await store.latest("trade", "BTCUSDT")
    assert latest is not None and latest["trade_id"] == 59

    bad = raw_trades([100.0, -5.0])
    bad = bad.set_column(1, "symbol", pa.array(["BADUSDT"] * 2))  # keys not stored yet
    with pytest.raises(BatchRejected, match="469"):  # the CHECK constraint refuses it
        await store.write("trade", bad)
    for hostile in ("INSERT INTO trades SELECT * FROM trades", "DROP TABLE trades"):
        with pytest.raises(QueryRejected):
            await store.query(hostile)
    assert (await store.counts())["trades"] == 60
    health = await store.health()
    assert health.ok and "DateTime64(6) timestamps" in health.detail


def test_position_state_runs_on_current_clickhouse(http: ChdbHTTP) -> None:
    database = _database()
    store = ClickHousePositionStore(http, database)
    assert store.features.version >= (24, 0, 0)
    book = PositionBook(store, clock=lambda: 1_781_000_000.0)
    book.open("a", "BTCUSDT", "LONG", 1.5, 100.0)
    book.open("b", "ETHUSDT", "SHORT", 2.0, 50.0)
    book.retract("a", fraction=0.5)
    book.mark("b", bars_held=3)
    book.open("c", "SOLUSDT", "LONG", 1.0, 10.0)
    book.close("c", 11.0, "exit")
    report = restore([StateStoreSource(store)], quarantine_store=store)
    assert report.restored == book.positions() and report.quarantined == []
    assert store.row_count() == 6 and len(list(store.iter_rows())) == 6
    assert store.record_start(100.0, 60) == 1 and store.record_start(110.0, 60) == 2
    assert store.clear_starts() == 2 and store.starts() == []
    store.close()


def test_incident_004_user_table_on_current_clickhouse(http: ChdbHTTP) -> None:
    database = _database()
    http._run(f"CREATE DATABASE {database}", "TabSeparated")
    http._run(INCIDENT_DDL.format(db=database), "TabSeparated")
    http._run(INCIDENT_ROWS.format(db=database), "TabSeparated")
    store = ClickHousePositionStore(http, database, table="position_state")
    first = restore([StateStoreSource(store)], quarantine_store=store)
    again = restore([StateStoreSource(store)], quarantine_store=store)
    assert [p.trade_id for p in first.restored] == ["t-btc", "t-dup"]
    reasons = {q.trade_id: q.reason for q in first.quarantined}
    assert reasons["1a3d2f9c"] == "non-positive quantity 0.0"
    assert reasons["t-nan"] == "non-finite notional nan" and math.isnan(
        next(q for q in first.quarantined if q.trade_id == "t-nan").row["notional"]
    )
    assert reasons["t-neg"] == "non-positive quantity -2.0"
    assert reasons["t-race"].startswith("2 different rows share the latest seq 2")
    assert (first.quarantine_copied, again.quarantine_copied) == (4, 0)
    seed = next(q for q in first.quarantined if q.trade_id == "1a3d2f9c")
    assert seed.row["ts"] == 1_781_163_720_000_000 and seed.row["bars_held"] == 34
    applied = reconcile(store, apply=True)
    assert len([t for t in applied.tombstones if t.seq is not None]) == 4
    after = restore([StateStoreSource(store)])
    assert after.quarantined == [] and [p.trade_id for p in after.restored] == ["t-btc", "t-dup"]
    count = http._run(f"SELECT count() FROM {database}.position_state", "TabSeparated")
    assert count.strip() == b"12"  # their table: untouched
    store.close()
