"""Delivery counts that survive writer restarts, on a real Kafka broker.

A poison entry here is one that kills the writer every time it is processed (as a crash in
a native decoder or driver would): the store wrapper below raises :class:`WriterCrashed`,
which no layer catches, so the writer dies holding the entry unacknowledged. Each
"restart" builds a new bus object and a new writer; nothing of the dead one's memory is
carried over, only what the broker holds. After ``max_deliveries`` deliveries the next
writer must dead-letter the entry instead of dying again, and every valid neighbour must be
stored. Before delivery counts were kept on the broker, every restart started the count at
1 and the group crash-looped forever (this test would exhaust its restarts).

:func:`poison_until_dead_lettered` is shared with ``tests/test_nats_poison.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa

from tickvault.bus import open_bus
from tickvault.bus.base import Bus
from tickvault.core.codec import encode_records
from tickvault.core.records import Trade
from tickvault.delivery.writer import Writer, WriterConfig
from tickvault.stores.duckdb.store import DuckDBStore

from .kafka_server import KafkaServer

S, G = "ticks", "writers"
POISON = "POISON"
MAX_DELIVERIES = 3


class WriterCrashed(BaseException):
    """The writer process died (nothing in the writer catches a BaseException)."""


class CrashOnPoison(DuckDBStore):
    """A DuckDB store that kills its writer whenever a batch holds the poison symbol."""

    async def write_many(self, tables: dict[str, pa.Table]) -> dict[str, int]:
        for table in tables.values():
            if POISON in table.column("symbol").to_pylist():
                raise WriterCrashed
        return await super().write_many(tables)


def _trades(symbol: str, ids: range) -> list[Trade]:
    return [
        Trade(
            exchange="binance",
            symbol=symbol,
            trade_id=i,
            price=100.0 + i,
            qty=1.0,
            ts_event=1_700_000_000_000_000 + i,
            ts_recv=1_700_000_000_000_000 + i,
            buyer_is_maker=False,
        )
        for i in ids
    ]


async def poison_until_dead_lettered(url: str, tmp_path: Path) -> None:
    """Valid entries, one poison entry, more valid entries; writers restart after every
    crash until one drains the group. Asserts the poison is dead-lettered after exactly
    ``MAX_DELIVERIES`` crashes and that every valid record is stored once."""
    publisher = open_bus(url)
    (poison,) = encode_records(_trades(POISON, range(1)))
    valid = [
        p
        for start in range(0, 200, 20)
        for p in encode_records(_trades("A", range(start, start + 20)))
    ]
    valid += [
        p
        for start in range(0, 100, 20)
        for p in encode_records(_trades("B", range(start, start + 20)))
    ]
    try:
        await publisher.ensure_group(S, G)
        await publisher.append(S, valid[:7])
        await publisher.append(S, [poison])
        await publisher.append(S, valid[7:])
    finally:
        await publisher.close()

    store_path = tmp_path / "ticks.duckdb"
    crashes = 0
    drained = asyncio.Event()
    drained.set()
    config = WriterConfig(
        consumer="writer-1",
        max_deliveries=MAX_DELIVERIES,
        batch_entries=1,  # one entry per batch: a crash takes no valid neighbour with it
        linger_ms=0,
        block_ms=100,
        backoff_max_s=0.5,
    )
    letters = []
    for _restart in range(MAX_DELIVERIES + 3):
        bus: Bus = open_bus(url)
        store = CrashOnPoison(store_path)
        try:
            writer = Writer(bus, store, config)
            try:
                await asyncio.wait_for(writer.run(asyncio.Event(), until_drained=drained), 120)
                letters = await bus.dead_letters(S)
                break  # drained: nothing pending, nothing left to read
            except WriterCrashed:
                crashes += 1
        finally:
            await bus.close()
            await store.close()
    assert crashes == MAX_DELIVERIES, f"{crashes} crashes (a count that resets crash-loops)"
    (letter,) = letters
    assert letter.payload == poison
    assert letter.reason == f"delivered {MAX_DELIVERIES + 1} times (max {MAX_DELIVERIES})"
    assert letter.delivery_count == MAX_DELIVERIES + 1

    check = DuckDBStore(store_path)
    try:
        rows = (
            await check.query(
                "SELECT symbol, count(*), count(DISTINCT trade_id) FROM trades GROUP BY symbol"
                " ORDER BY symbol"
            )
        ).rows
    finally:
        await check.close()
    assert [tuple(r) for r in rows] == [("A", 200, 200), ("B", 100, 100)]


async def test_a_poison_entry_is_dead_lettered_after_max_deliveries_across_restarts(
    kafka_server: KafkaServer, tmp_path: Path
) -> None:
    await poison_until_dead_lettered(
        kafka_server.url(group_protocol="consumer", partitions=2), tmp_path
    )


async def test_counts_survive_with_the_classic_group_protocol_too(
    kafka_server: KafkaServer, tmp_path: Path
) -> None:
    await poison_until_dead_lettered(
        kafka_server.url(group_protocol="classic", partitions=2, session_timeout_ms=3000),
        tmp_path,
    )
