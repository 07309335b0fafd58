"""Conflicting duplicates (same key, other content): the first stored version stays, every
conflict is recorded with both versions and counted (real bus, real store, real CLI)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from tickvault.bus.sqlite.bus import SqliteBus
from tickvault.core.codec import FrameBuilder
from tickvault.core.conflicts import CONFLICT_REASON
from tickvault.core.records import Trade
from tickvault.delivery.writer import Writer, WriterConfig
from tickvault.sources.binance.hostile import TS_MS
from tickvault.stores.duckdb.store import DuckDBStore

from .cli_helpers import tv, tv_json

S = "ticks"
T0 = TS_MS * 1000


def _frame(versions: list[tuple[int, float]]) -> bytes:
    b = FrameBuilder("trade")
    for tid, price in versions:
        b.add(
            Trade(
                exchange="binance",
                symbol="BTCUSDT",
                trade_id=tid,
                price=price,
                qty=1.0,
                buyer_is_maker=False,
                ts_event=T0 + tid,
                ts_recv=T0 + tid,
            )
        )
    return b.take()


@pytest.fixture
async def parts(tmp_path: Path):  # type: ignore[no-untyped-def]
    bus = SqliteBus(tmp_path / "bus.sqlite3")
    store = DuckDBStore(tmp_path / "t.duckdb")
    yield bus, store
    await bus.close()
    await store.close()


async def _drain(writer: Writer) -> None:
    stop, done = asyncio.Event(), asyncio.Event()
    done.set()
    await asyncio.wait_for(writer.run(stop, until_drained=done), 120)


async def _prices(store: DuckDBStore) -> dict[int, float]:
    result = await store.query("SELECT trade_id, price FROM trades")
    return {int(t): float(p) for t, p in result.rows}


async def test_first_version_wins_in_a_batch_and_against_the_store(parts) -> None:  # type: ignore[no-untyped-def]
    bus, store = parts
    n = 5_000
    # One batch: each key first at price 1, then at price 2 (a conflict) and 1 (a repeat).
    await bus.append(S, [_frame([(i, 1.0) for i in range(n)])])
    await bus.append(
        S, [_frame([(i, 2.0) for i in range(n)]), _frame([(i, 1.0) for i in range(n)])]
    )
    writer = Writer(bus, store, WriterConfig(consumer="w", linger_ms=50, batch_records=50_000))
    await _drain(writer)
    assert set((await _prices(store)).values()) == {1.0}
    assert writer.stats.inserted == n
    assert writer.stats.conflicts == n
    assert writer.stats.duplicates == n
    # Later batches: the stored version stays; each different version is recorded once.
    await bus.append(S, [_frame([(i, 3.0) for i in range(0, n, 2)])])
    await bus.append(S, [_frame([(i, 3.0) for i in range(0, n, 2)])])
    await _drain(writer)
    assert set((await _prices(store)).values()) == {1.0}
    counts = await bus.dead_letter_counts(S)
    assert counts == {CONFLICT_REASON: n + n // 2}
    letters = await bus.dead_letters(S, limit=100_000)
    shown = orjson.loads(next(x.payload for x in letters if b'"price":3.0' in x.payload))
    assert shown["kind"] == "trade" and shown["kept"]["price"] == 1.0
    assert shown["refused"]["price"] == 3.0
    assert shown["key"] == {
        "exchange": "binance",
        "symbol": "BTCUSDT",
        "trade_id": shown["kept"]["trade_id"],
    }


async def test_identical_redeliveries_are_not_conflicts(parts) -> None:  # type: ignore[no-untyped-def]
    bus, store = parts
    frame = _frame([(i, 5.0) for i in range(100)])
    await bus.append(S, [frame, frame])
    writer = Writer(bus, store, WriterConfig(consumer="w", linger_ms=10))
    await _drain(writer)
    await bus.append(S, [frame])
    await _drain(writer)
    assert writer.stats.inserted == 100 and writer.stats.duplicates == 200
    assert writer.stats.conflicts == 0
    assert await bus.dead_letter_counts(S) == {}


def test_replay_reports_conflicts_in_summary_status_and_dead_letters(tmp_path: Path) -> None:
    def line(tid: int, price: str) -> bytes:
        doc = {"e": "trade", "E": TS_MS, "s": "ETHUSDT", "t": tid, "p": price, "q": "1"}
        return orjson.dumps(doc | {"T": TS_MS, "m": True})

    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([line(1, "10"), line(2, "20"), line(1, "11"), line(2, "20")]))
    data = tmp_path / "data"
    summary = tv_json("replay", path, "--data-dir", data)
    assert summary["stored"] == 2 and summary["conflicts"] == 1 and summary["duplicates"] == 1
    assert summary["dead_letters"] == {CONFLICT_REASON: 1}
    assert tv_json("status", "--data-dir", data)["conflicts"] == 1
    rows = tv_json("query", "SELECT trade_id, price FROM trades ORDER BY 1", "--data-dir", data)
    assert rows == [{"trade_id": 1, "price": 10.0}, {"trade_id": 2, "price": 20.0}]
    (letter,) = tv_json("dlq", "list", "--data-dir", data)
    payload = orjson.loads(letter["payload"])
    assert (payload["kept"]["price"], payload["refused"]["price"]) == (10.0, 11.0)
    proc = tv("dlq", "requeue", str(letter["id"]), "--data-dir", data, check=False)
    assert proc.returncode == 1 and "conflicting duplicate" in proc.stderr


@pytest.mark.parametrize("backend", ["duckdb", "clickhouse", "questdb"])
async def test_store_answers_with_the_first_stored_versions(
    backend: str, request: pytest.FixtureRequest
) -> None:
    from tickvault.core.codec import decode_frame, split_valid
    from tickvault.core.conflicts import stored_conflicts
    from tickvault.core.records import KINDS

    store = await request.getfixturevalue(f"{backend}_store_factory")()
    first, _ = split_valid(decode_frame(_frame([(1, 1.0), (2, 2.0)])))
    later, _ = split_valid(decode_frame(_frame([(1, 1.5), (2, 2.0), (3, 3.0)])))
    assert await store.write("trade", first) == 2
    assert await store.write("trade", later) == 1
    stored = await store.stored_versions("trade", later)
    assert stored is not None
    assert sorted(stored.column("price").to_pylist()) == [1.0, 2.0, 3.0]
    pairs = stored_conflicts(KINDS["trade"], later, stored)
    assert [(kept["price"], refused["price"]) for kept, refused in pairs] == [(1.0, 1.5)]
    # Another version an hour later in event time (QuestDB's designated timestamp, part of its
    # UPSERT KEYS): still the same key, still refused, the first version stays.
    moved = later.slice(1, 1).set_column(
        later.schema.get_field_index("price"), "price", pa.array([9.0])
    )
    ts = later.schema.get_field_index("ts_event")
    hour = pa.array([later.column("ts_event")[1].as_py() + dt.timedelta(hours=1)])
    moved = moved.set_column(ts, "ts_event", hour.cast(later.schema.field(ts).type))
    assert await store.write("trade", moved) == 0
    again = await store.stored_versions("trade", moved)
    assert again is not None and again.column("price").to_pylist() == [2.0]
    prices = await store.query("SELECT price FROM trades ORDER BY trade_id")
    assert [r[0] for r in prices.rows] == [1.0, 2.0, 3.0]
