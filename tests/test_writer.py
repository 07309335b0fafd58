"""The writer's contract against the real embedded bus and store."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pyarrow as pa
import pytest

from tickvault.bus.sqlite.bus import SqliteBus
from tickvault.core.codec import FrameBuilder, encode_frame
from tickvault.core.errors import StoreUnavailable
from tickvault.core.records import Trade
from tickvault.delivery.writer import Writer, WriterConfig
from tickvault.stores.base import QueryResult, Store, StoreHealth
from tickvault.stores.duckdb.store import DuckDBStore

from .polling import eventually

S, G = "ticks", "writers"
T0 = 1_700_000_000_000_000  # 2023-11-14, microseconds


def trades(start: int, n: int, symbol: str = "BTCUSDT") -> bytes:
    b = FrameBuilder("trade")
    for i in range(start, start + n):
        b.add(
            Trade(
                exchange="binance",
                symbol=symbol,
                trade_id=i,
                price=100.0 + i % 7,
                qty=1.0,
                buyer_is_maker=False,
                ts_event=1_700_000_000_000_000 + i,
                ts_recv=1_700_000_000_000_100 + i,
            )
        )
    return b.take()


async def drain(writer: Writer, timeout: float = 30) -> None:
    stop, done = asyncio.Event(), asyncio.Event()
    done.set()
    await asyncio.wait_for(writer.run(stop, until_drained=done), timeout)


async def count(store: Store, table: str = "trades") -> int:
    return (await store.counts())[table]


@pytest.fixture
async def parts(tmp_path: Path):  # type: ignore[no-untyped-def]
    bus = SqliteBus(tmp_path / "bus.sqlite3")
    store = DuckDBStore(tmp_path / "t.duckdb")
    yield bus, store
    await bus.close()
    await store.close()


async def test_writes_acks_and_counts_duplicates(parts) -> None:  # type: ignore[no-untyped-def]
    bus, store = parts
    await bus.append(S, [trades(0, 100), trades(50, 100)])
    writer = Writer(bus, store, WriterConfig(consumer="w1", linger_ms=10))
    await drain(writer)
    assert await count(store) == 150
    assert writer.stats.inserted == 150 and writer.stats.duplicates == 50
    info = await bus.info(S)
    assert info.groups[0].pending == 0 and info.groups[0].lag == 0


async def test_invalid_records_are_dead_lettered_without_blocking_the_batch(parts) -> None:  # type: ignore[no-untyped-def]
    bus, store = parts
    cols = FrameBuilder("trade")
    cols.add_values(["binance", "X", 1, 10.0, 1.0, True, T0, T0 + 1])
    cols.add_values(["binance", "X", 2, float("nan"), 1.0, True, T0, T0 + 1])
    cols.add_values(["binance", "X", 3, 10.0, -1.0, True, T0, T0 + 1])
    cols.add_values(["binance", "", 4, 10.0, 1.0, True, T0, T0 + 1])
    cols.add_values(["binance", "X", 5, "abc", 1.0, True, T0, T0 + 1])
    await bus.append(S, [cols.take()])
    writer = Writer(bus, store, WriterConfig(consumer="w1", linger_ms=10))
    await drain(writer)
    assert await count(store) == 1
    assert await bus.dead_letter_counts(S) == {
        "non-finite price": 1,
        "non-positive qty": 1,
        "empty symbol": 1,
        "non-numeric price": 1,
    }
    letters = await bus.dead_letters(S)
    assert all(x.kind == "trade" and x.entry_id for x in letters)


async def test_undecodable_entry_is_dead_lettered_whole(parts) -> None:  # type: ignore[no-untyped-def]
    bus, store = parts
    await bus.append(S, [b"\x00garbage", encode_frame("candle", {"x": [1]}), trades(0, 10)])
    writer = Writer(bus, store, WriterConfig(consumer="w1", linger_ms=10))
    await drain(writer)
    assert await count(store) == 10
    reasons = {x.reason for x in await bus.dead_letters(S)}
    assert len(reasons) == 2
    assert any(r.startswith("undecodable frame") for r in reasons)
    assert any("unknown record kind 'candle'" in r for r in reasons)
    assert all(x.kind == "frame" for x in await bus.dead_letters(S))


async def test_restart_reclaims_own_pending_first(parts) -> None:  # type: ignore[no-untyped-def]
    bus, store = parts
    await bus.ensure_group(S, G)
    await bus.append(S, [trades(0, 10), trades(10, 10)])
    # A previous incarnation read both entries and died before acknowledging.
    taken = await bus.read(S, G, "w1", 10, 100)
    assert len(taken) == 2
    writer = Writer(bus, store, WriterConfig(consumer="w1", linger_ms=10))
    await drain(writer)
    assert await count(store) == 20
    assert await bus.pending(S, G) == []


async def test_poison_entry_is_dead_lettered_after_max_deliveries(parts) -> None:  # type: ignore[no-untyped-def]
    bus, store = parts
    await bus.ensure_group(S, G)
    await bus.append(S, [trades(0, 5)])
    await bus.read(S, G, "w1", 10, 100)
    for _ in range(5):  # five crashed incarnations each got it again
        await bus.read_own_pending(S, G, "w1", 10)
    writer = Writer(bus, store, WriterConfig(consumer="w1", linger_ms=10, max_deliveries=5))
    await drain(writer)
    assert await count(store) == 0
    (letter,) = await bus.dead_letters(S)
    assert letter.reason == "delivered 7 times (max 5)"
    assert letter.delivery_count == 7


async def test_stale_entries_of_a_dead_consumer_are_claimed(parts) -> None:  # type: ignore[no-untyped-def]
    bus, store = parts
    await bus.ensure_group(S, G)
    await bus.append(S, [trades(0, 10)])
    await bus.read(S, G, "dead-host-writer", 10, 100)
    writer = Writer(bus, store, WriterConfig(consumer="w1", linger_ms=10, claim_idle_ms=0))
    await drain(writer)
    assert await count(store) == 10
    assert await bus.pending(S, G) == []


async def test_store_refusing_a_value_loses_only_that_record(parts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bus, store = parts
    # A stricter trades table (same columns) whose CHECK refuses one price.
    await store.ensure_schema()
    store._con.execute("DROP TABLE trades")  # type: ignore[union-attr]
    store._con.execute(  # type: ignore[union-attr]
        "CREATE TABLE trades (exchange VARCHAR NOT NULL, symbol VARCHAR NOT NULL, trade_id BIGINT"
        " NOT NULL, price DOUBLE NOT NULL CHECK (price <> 103), qty DOUBLE NOT NULL,"
        " buyer_is_maker BOOLEAN NOT NULL, ts_event TIMESTAMP NOT NULL, ts_recv TIMESTAMP NOT"
        " NULL, PRIMARY KEY (exchange, symbol, trade_id))"
    )
    await bus.append(S, [trades(0, 70)])
    writer = Writer(bus, store, WriterConfig(consumer="w1", linger_ms=10))
    await drain(writer)
    refused = [i for i in range(70) if 100.0 + i % 7 == 103]
    assert await count(store) == 70 - len(refused)
    letters = await bus.dead_letters(S)
    assert len(letters) == len(refused)
    assert all(x.reason.startswith("store refused:") and "CHECK" in x.reason for x in letters)


class OutageStore(Store):
    """The real DuckDB store behind a switch that makes writes fail like a full disk."""

    def __init__(self, inner: DuckDBStore) -> None:
        self.inner = inner
        self.down = asyncio.Event()
        self.attempts = 0

    async def ensure_schema(self) -> None:
        await self.inner.ensure_schema()

    async def write(self, kind: str, table: pa.Table) -> int:
        self.attempts += 1
        if self.down.is_set():
            raise StoreUnavailable("[Errno 28] No space left on device")
        return await self.inner.write(kind, table)

    async def query(self, sql: str, limit: int = 10_000) -> QueryResult:
        return await self.inner.query(sql, limit)

    async def counts(self) -> dict[str, int]:
        return await self.inner.counts()

    async def latest(self, kind: str, symbol: str) -> dict[str, object] | None:
        return await self.inner.latest(kind, symbol)

    async def health(self) -> StoreHealth:
        return await self.inner.health()


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def test_store_outage_acks_nothing_keeps_memory_bounded_and_resumes(parts) -> None:  # type: ignore[no-untyped-def]
    bus, inner = parts
    store = OutageStore(inner)
    store.down.set()
    cfg = WriterConfig(consumer="w1", linger_ms=10, batch_entries=4, backoff_max_s=0.05)
    writer = Writer(bus, store, cfg)
    stop, done = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(writer.run(stop, until_drained=done))
    rss_before = _rss_mb()
    for i in range(200):  # 200 frames x 1000 records arrive during the outage
        await bus.append(S, [trades(i * 1000, 1000)])
    await eventually(lambda: store.attempts >= 20)  # the writer keeps retrying...
    info = (await bus.info(S)).groups[0]
    assert info.pending <= cfg.batch_entries  # ...holding one batch, reading no further
    assert info.lag >= 200 - cfg.batch_entries
    assert await inner.counts() == dict.fromkeys(await inner.counts(), 0)
    assert writer.stats.retrying and "No space left" in (writer.stats.last_error or "")
    assert _rss_mb() - rss_before < 100
    store.down.clear()  # the disk has room again
    done.set()
    await asyncio.wait_for(task, 60)
    assert await count(inner) == 200_000
    info = (await bus.info(S)).groups[0]
    assert info.pending == 0 and info.lag == 0


async def test_store_that_cannot_open_is_retried_until_it_can(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's directory should be")
    bus = SqliteBus(tmp_path / "bus.sqlite3")
    store = DuckDBStore(blocker / "t.duckdb")
    await bus.append(S, [trades(0, 10)])
    writer = Writer(bus, store, WriterConfig(consumer="w1", linger_ms=10, backoff_max_s=0.05))
    stop, done = asyncio.Event(), asyncio.Event()
    done.set()
    task = asyncio.create_task(writer.run(stop, until_drained=done))
    await eventually(lambda: writer.stats.store_errors >= 3)
    assert not task.done()
    blocker.unlink()  # the fault clears
    await asyncio.wait_for(task, 30)
    assert await count(store) == 10
    await bus.close()
    await store.close()
