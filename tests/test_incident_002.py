"""Incident 002 regression: a store outage under a steady source loses nothing.

The incident's writer kept failed batches in memory and, past a size, *cleared its buffer to
prevent OOM*: every record in it was lost. Here the store goes down for a while during
steady ingest (a real DuckDB behind an outage switch, as a full disk would do): the store
breaker opens, the writer holds its one batch and stops reading (the backlog stays on the
durable bus), resident memory stays flat, nothing is acknowledged or cleared; when the store
returns the breaker closes and the backlog drains at several times the ingest rate.

The outage lasts 8 s instead of the acceptance's 60 s: nothing depends on its length (the
writer reads nothing while the breaker is open, so memory does not grow with time; the
breaker's trials are capped at ``open_max_s``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from tickvault.bus.sqlite.bus import SqliteBus
from tickvault.core.events import EventLog
from tickvault.delivery.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from tickvault.delivery.failover import FailoverPublisher
from tickvault.delivery.publisher import FramePublisher, SourcePump
from tickvault.delivery.spool import Spool
from tickvault.delivery.writer import Writer, WriterConfig
from tickvault.sources.base import SourceBatch
from tickvault.sources.synthetic import SyntheticSource
from tickvault.stores.duckdb.store import DuckDBStore

from .polling import eventually
from .test_writer import OutageStore

S, G = "ticks", "writers"
RATE = 3000.0
OUTAGE_S = 8.0


class SteadySource(SyntheticSource):
    """The synthetic generator, delivering ``rate / 10`` records every 100 ms (a venue feed
    batched per network read) instead of a few records per event-loop turn."""

    async def batches(self) -> AsyncIterator[SourceBatch]:
        started = time.monotonic()
        while not self._stopped:
            due = int((time.monotonic() - started) * self.rate) - self.generated
            if due > 0:
                now_us = time.time_ns() // 1000
                batch = SourceBatch(records=[self._record(now_us) for _ in range(due)])
                self.generated += due  # counted before the yield: the pump may not resume us
                yield batch
            await asyncio.sleep(0.1)


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def backlog(bus: SqliteBus) -> int:
    info = await bus.info(S)
    return sum(g.lag + g.pending for g in info.groups if g.name == G)


async def test_store_outage_with_a_steady_source_clears_nothing_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """Acceptance 3: breaker opens, RSS grows < 100 MB, 0 lost, drain >= 5x ingest rate."""
    bus = SqliteBus(tmp_path / "bus.sqlite3")
    inner = DuckDBStore(tmp_path / "ticks.duckdb")
    store = OutageStore(inner)
    events = EventLog()
    breaker = CircuitBreaker(
        "store",
        BreakerPolicy(failure_threshold=3, open_base_s=0.1, open_max_s=0.5),
        events=events,
    )
    cfg = WriterConfig(consumer="w1", linger_ms=20)
    writer = Writer(bus, store, cfg, store_breaker=breaker)
    spool = Spool(tmp_path / "spool")
    publisher = FramePublisher(FailoverPublisher([bus], spool, events=events), S)
    source = SteadySource(rate=RATE, symbols=["BTCUSDT", "ETHUSDT"], seed=2)
    stop_sources, stop_writer, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    pump = SourcePump(publisher, stop_sources, stop_writer)
    pump_task = asyncio.create_task(pump.run(source))
    writer_task = asyncio.create_task(writer.run(stop_writer, until_drained=done))
    try:
        await eventually(lambda: writer.stats.inserted > 3000, what="first rows stored")
        rss_before = rss_mb()
        peak = rss_before
        store.down.set()  # the disk is full
        outage_started = time.monotonic()
        attempts_at_open = None
        while time.monotonic() - outage_started < OUTAGE_S:
            peak = max(peak, rss_mb())
            if attempts_at_open is None and breaker.state is not BreakerState.CLOSED:
                attempts_at_open = store.attempts
            info = (await bus.info(S)).groups[0]
            assert info.pending <= cfg.batch_entries  # one batch held, nothing more read
            await asyncio.sleep(0.2)  # sampling cadence of the memory probe
        assert attempts_at_open is not None, "the store breaker never opened"
        assert breaker.times_opened >= 1
        # The open breaker spares the store: a handful of trials, not a retry storm.
        assert store.attempts - attempts_at_open <= 2 * OUTAGE_S / 0.1
        held = await backlog(bus)
        assert held >= RATE * OUTAGE_S * 0.8 / 1000  # the backlog is on the bus, in frames
        assert writer.stats.retrying
        assert peak - rss_before < 100, f"RSS grew {peak - rss_before:.1f} MB"

        stored_before = writer.stats.inserted
        generated_before = source.generated
        store.down.clear()  # the disk has room again
        back = time.monotonic()
        # Caught up once everything generated before the store came back is stored.
        await eventually(
            lambda: writer.stats.inserted >= generated_before, timeout=30, what="backlog drained"
        )
        drain_s = time.monotonic() - back
        drain_rate = (writer.stats.inserted - stored_before) / drain_s
        assert breaker.state is BreakerState.CLOSED
        assert drain_rate >= 5 * RATE, f"drained at {drain_rate:,.0f}/s vs ingest {RATE:,.0f}/s"

        source.stop()
        stop_sources.set()
        await asyncio.wait_for(pump_task, 30)
        done.set()
        await asyncio.wait_for(writer_task, 60)
        counts = await inner.counts()
        assert counts["trades"] + counts["quotes"] == source.generated
        rows = (
            await inner.query(
                "SELECT (SELECT count(*) - count(DISTINCT (symbol, trade_id)) FROM trades)"
                " + (SELECT count(*) - count(DISTINCT (symbol, update_id)) FROM quotes)"
            )
        ).rows
        assert rows == [(0,)]
        moves = [(e.data["from_state"], e.data["to_state"]) for e in events.since(0)]
        assert ("closed", "open") in moves and moves[-1] == ("half_open", "closed")
        assert spool.stats.appended == 0  # the bus was up all along: nothing spooled
    finally:
        stop_writer.set()
        source.stop()
        for task in (pump_task, writer_task):
            if not task.done():
                task.cancel()
        await asyncio.gather(pump_task, writer_task, return_exceptions=True)
        await spool.close()
        await bus.close()
        await inner.close()
