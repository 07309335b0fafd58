"""A writer-only process for the scale-out test and benchmark.

``python -m tests.writer_process BUS_URL STORE_PATH CONSUMER`` opens the bus and its own
DuckDB file, prints ``ready``, waits for a line on stdin (so several writers start
together), drains the ``writers`` group of stream ``ticks`` as ``CONSUMER``, and prints one
JSON line with what it stored, when it started and when it committed its last batch.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import orjson

from tickvault.bus import open_bus
from tickvault.delivery.writer import Writer, WriterConfig
from tickvault.stores.duckdb.store import DuckDBStore


async def drain(bus_url: str, store_path: Path, consumer: str) -> dict[str, float]:
    bus = open_bus(bus_url)
    store = DuckDBStore(store_path)
    try:
        await store.ensure_schema()
        await bus.ensure_group("ticks", "writers")
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        started = time.time()
        writer = Writer(bus, store, WriterConfig(consumer=consumer, claim_idle_ms=600_000))
        drained = asyncio.Event()
        drained.set()
        await writer.run(asyncio.Event(), until_drained=drained)
        return {
            "inserted": writer.stats.inserted,
            "entries": writer.stats.entries,
            "started_at": started,
            "last_commit_at": writer.stats.last_commit_at or started,
            "seconds": time.time() - started,
        }
    finally:
        await bus.close()
        await store.close()


def main() -> None:
    bus_url, store_path, consumer = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    result = asyncio.run(drain(bus_url, store_path, consumer))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
