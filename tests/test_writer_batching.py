"""How the writer sizes its batches (real embedded bus and store).

Past the linger time the writer still takes everything already waiting on the bus, so a
backlog becomes few large batches (few commits) however short the linger is, and a short
linger costs no throughput.
"""

from __future__ import annotations

from pathlib import Path

from tickvault.bus.sqlite.bus import SqliteBus
from tickvault.core.config import Settings
from tickvault.delivery.writer import Writer, WriterConfig
from tickvault.stores.duckdb.store import DuckDBStore

from .test_writer import G, S, drain, trades


async def test_backlog_is_taken_in_one_batch_even_without_linger(tmp_path: Path) -> None:
    bus = SqliteBus(tmp_path / "bus.sqlite3")
    store = DuckDBStore(tmp_path / "t.duckdb")
    try:
        await bus.append(S, [trades(i * 10, 10) for i in range(40)])
        writer = Writer(bus, store, WriterConfig(consumer="w1", group=G, linger_ms=0))
        await drain(writer)
        assert writer.stats.inserted == 400
        assert writer.stats.batches == 1  # one read of 4 entries, then all that waited
        assert (await store.counts())["trades"] == 400
    finally:
        await bus.close()
        await store.close()


async def test_batch_limit_still_bounds_a_batch(tmp_path: Path) -> None:
    bus = SqliteBus(tmp_path / "bus.sqlite3")
    store = DuckDBStore(tmp_path / "t.duckdb")
    try:
        await bus.append(S, [trades(i * 10, 10) for i in range(40)])
        cfg = WriterConfig(consumer="w1", group=G, linger_ms=0, batch_entries=16)
        writer = Writer(bus, store, cfg)
        await drain(writer)
        assert writer.stats.inserted == 400
        assert writer.stats.batches == 3  # 16 + 16 + 8 entries
    finally:
        await bus.close()
        await store.close()


def test_default_linger_is_short() -> None:
    assert Settings().writer.linger_ms == WriterConfig().linger_ms == 10
