"""Records flowing through a Kafka bus into DuckDB while a test breaks brokers.

:class:`Flow` appends numbered trade frames at a steady pace (retrying an append that fails
with :class:`~tickvault.core.errors.BusUnavailable`, and recording every such failure: an outage
must be reported, never silent), while one :class:`~tickvault.delivery.writer.Writer` stores them.
``finish`` waits until everything appended is stored and the group committed it all.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tickvault.bus.kafka.bus import KafkaBus
from tickvault.core.codec import encode_records
from tickvault.core.errors import BusUnavailable
from tickvault.core.records import Trade
from tickvault.delivery.writer import Writer, WriterConfig
from tickvault.stores.duckdb.store import DuckDBStore

S, G = "ticks", "writers"
SYMBOLS = ("AAA", "BBB", "CCC", "DDD")


def frame(i: int, records: int) -> bytes:
    """Frame ``i``: ``records`` trades of one symbol with ids ``i*records ...``."""
    symbol = SYMBOLS[i % len(SYMBOLS)]
    trades = [
        Trade(
            exchange="binance",
            symbol=symbol,
            trade_id=i * records + k,
            price=100.0,
            qty=1.0,
            ts_event=1_700_000_000_000_000 + i,
            ts_recv=time.time_ns() // 1000,
            buyer_is_maker=False,
        )
        for k in range(records)
    ]
    (payload,) = encode_records(trades)
    return payload


class Flow:
    def __init__(self, url: str, tmp_path: Path, frames: int, records: int = 50) -> None:
        self.publisher = KafkaBus.from_url(url)
        self.writer_bus = KafkaBus.from_url(url)
        self.store = DuckDBStore(tmp_path / "ticks.duckdb")
        self.frames, self.records = frames, records
        self.appended = 0
        self.failures: list[str] = []
        self.writer = Writer(
            self.writer_bus,
            self.store,
            WriterConfig(consumer="w", linger_ms=20, backoff_max_s=0.5),
        )
        self._stop = asyncio.Event()
        self._published = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> Flow:
        await self.publisher.ensure_group(S, G)
        self._tasks = [
            asyncio.create_task(self._publish()),
            asyncio.create_task(self.writer.run(self._stop, until_drained=self._published)),
        ]
        return self

    async def _publish(self) -> None:
        for i in range(self.frames):
            payload = frame(i, self.records)
            while True:
                try:
                    await self.publisher.append(S, [payload])
                    break
                except BusUnavailable as exc:  # reported, then retried after a backoff
                    self.failures.append(str(exc))
                    await asyncio.sleep(0.2)
            self.appended += 1
            await asyncio.sleep(0.005)  # pacing: records keep flowing while brokers break
        self._published.set()

    @property
    def stored(self) -> int:
        return self.writer.stats.inserted

    async def finish(self, timeout: float = 180.0) -> None:
        """Wait for the publisher and for the writer to drain the group."""
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout)

    async def assert_exact(self) -> None:
        """Every appended record stored once: ``frames * records`` distinct, consecutive ids."""
        (row,) = (
            await self.store.query(
                "SELECT count(*), count(DISTINCT trade_id), min(trade_id), max(trade_id)"
                " FROM trades"
            )
        ).rows
        total = self.frames * self.records
        assert tuple(row) == (total, total, 0, total - 1)
        info = await self.writer_bus.info(S)
        (group,) = info.groups
        assert group.pending == 0 and group.lag == 0  # the group committed everything

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.publisher.close()
        await self.writer_bus.close()
        await self.store.close()
