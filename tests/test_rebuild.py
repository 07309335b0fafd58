"""``tickvault rebuild``: a store that lost a time range gets exactly that range back from the
records the bus retains; running it again changes nothing."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb

from tickvault.bus.sqlite.bus import SqliteBus
from tickvault.core.codec import decode_frame, encode_records, split_valid
from tickvault.core.records import Trade
from tickvault.delivery.upkeep import Retention, StreamUpkeep
from tickvault.stores.duckdb.store import DuckDBStore

from .cli_helpers import tv

T0 = dt.datetime(2025, 11, 9, 18, 0)
US = 1_000_000


def _trades(n: int) -> list[Trade]:
    base = int((T0 - dt.datetime(1970, 1, 1)).total_seconds()) * US
    return [
        Trade(
            exchange="binance",
            symbol="BTCUSDT",
            trade_id=i,
            price=100.0 + i,
            qty=1.0,
            buyer_is_maker=bool(i % 2),
            ts_event=base + i * 60 * US,
            ts_recv=base + i * 60 * US + 1000,
        )
        for i in range(n)
    ]


async def _fill(data: Path, n: int) -> None:
    bus = SqliteBus(data / "bus.sqlite3")
    store = DuckDBStore(data / "ticks.duckdb")
    await store.ensure_schema()
    await bus.ensure_group("ticks", "writers")
    records = _trades(n)
    for i in range(0, n, 50):
        await bus.append("ticks", encode_records(records[i : i + 50]))
    while entries := await bus.read("ticks", "writers", "w", 100, 0):
        for e in entries:
            table, _ = split_valid(decode_frame(e.payload))
            await store.write("trade", table)
        await bus.ack("ticks", "writers", [e.id for e in entries])
    # Upkeep with the default retention keeps the acknowledged entries for rebuilds.
    upkeep = StreamUpkeep(bus, "ticks", "writers", "w", trim=True, retention=Retention(7 * 86400))
    assert (await upkeep.run_once()).trimmed == 0
    await bus.close()
    await store.close()


def _ids(path: Path) -> list[int]:
    con = duckdb.connect(str(path))
    try:
        return [r[0] for r in con.execute("SELECT trade_id FROM trades ORDER BY 1").fetchall()]
    finally:
        con.close()


async def test_rebuild_restores_exactly_the_wiped_range(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _fill(data, 600)  # ten hours, a trade a minute
    since, until = T0 + dt.timedelta(hours=3), T0 + dt.timedelta(hours=5)
    con = duckdb.connect(str(data / "ticks.duckdb"))
    wiped = con.execute(
        "DELETE FROM trades WHERE ts_event >= ? AND ts_event < ? RETURNING trade_id", [since, until]
    ).fetchall()
    con.close()
    assert len(wiped) == 120
    assert len(_ids(data / "ticks.duckdb")) == 480

    args = (
        "rebuild",
        "--data-dir",
        data,
        "--since",
        since.isoformat() + "Z",
        "--until",
        until.isoformat() + "Z",
        "--json",
    )
    dry = json.loads(tv(*args, "--dry-run").stdout)
    assert dry["rows_in_range"] == 120 and dry["inserted"] == 0
    assert len(_ids(data / "ticks.duckdb")) == 480
    report = json.loads(tv(*args).stdout)
    assert report["rows_in_range"] == 120
    assert report["inserted"] == 120 and report["already_stored"] == 0
    assert _ids(data / "ticks.duckdb") == list(range(600))
    again = json.loads(tv(*args).stdout)
    assert again["inserted"] == 0 and again["already_stored"] == 120
    assert _ids(data / "ticks.duckdb") == list(range(600))


async def test_size_retention_trims_oldest_acknowledged_first(tmp_path: Path) -> None:
    bus = SqliteBus(tmp_path / "bus.sqlite3")
    await bus.ensure_group("s", "g")
    ids = await bus.append("s", [bytes(100)] * 10)
    await bus.ack("s", "g", [e.id for e in await bus.read("s", "g", "c", 6, 0)])
    # 1000 bytes held, keep 350: the 6 acknowledged may go, oldest first, until <= 350 is
    # impossible without touching unacknowledged ones -> exactly the 6 acknowledged go.
    assert await bus.trim_retained("s", keep_age_s=3600, keep_bytes=350) == 6
    assert [e.id for e in await bus.scan("s", 0)] == ids[6:]
    await bus.ack("s", "g", [e.id for e in await bus.read("s", "g", "c", 10, 0)])
    assert await bus.trim_retained("s", keep_age_s=3600, keep_bytes=250) == 2
    assert [e.id for e in await bus.scan("s", 0)] == ids[8:]
    await bus.close()
