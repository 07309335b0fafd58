"""Acceptance 4: SIGKILL during a spool drain, restart: 0 lost, 0 duplicated rows.

A spool is filled with known frames while no bus is reachable. A child process then runs the
real drain (:meth:`FailoverPublisher.run`) into a real SQLite bus and is SIGKILLed at random
points of the drain, three times, then runs to the end. A writer stores the bus into DuckDB:
every record is there exactly once. The bus itself may hold a re-sent batch (the one between
the bus's acknowledgement and the cursor's fsync): that is bounded, and harmless because the
store is idempotent on natural keys.
"""

from __future__ import annotations

import asyncio
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from tickvault.bus.sqlite.bus import SqliteBus
from tickvault.delivery.spool import Spool
from tickvault.delivery.writer import Writer, WriterConfig
from tickvault.stores.duckdb.store import DuckDBStore

from .polling import eventually, eventually_sync
from .test_writer import drain, trades

FRAMES, PER_FRAME, BATCH = 300, 200, 4
ROOT = Path(__file__).resolve().parent.parent


def drain_child(spool_dir: str, bus_path: str) -> None:
    """Child process: drain the spool into the bus until it is empty (the pipeline's task)."""
    from tickvault.delivery.failover import FailoverPublisher

    async def main() -> None:
        spool = await Spool(spool_dir).open()
        bus = SqliteBus(bus_path)
        failover = FailoverPublisher([bus], spool, drain_batch=BATCH, check_every_s=0.2)
        stop = asyncio.Event()
        task = asyncio.create_task(failover.run(stop))
        await eventually(lambda: not spool.has_backlog, timeout=300, what="spool drained")
        stop.set()
        await task
        await bus.close()
        await spool.close()

    asyncio.run(main())


def cursor_segment_offset(spool_dir: Path) -> tuple[int, int]:
    try:
        seg, off, _ = struct.unpack("<QQI", (spool_dir / "cursor").read_bytes())
    except (OSError, struct.error):
        return (0, 0)
    return seg, off


def spawn(spool_dir: Path, bus_path: Path) -> subprocess.Popen[bytes]:
    code = (
        "from tests.test_spool_crash import drain_child;"
        f" drain_child({str(spool_dir)!r}, {str(bus_path)!r})"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


def test_sigkill_during_spool_drain_then_restart_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    spool_dir, bus_path = tmp_path / "spool", tmp_path / "bus.sqlite3"

    async def fill() -> None:
        spool = Spool(spool_dir, segment_bytes=1 << 20)
        spool.segment_bytes = 64 << 10  # several segments, so deletions happen mid-drain
        for i in range(FRAMES):
            assert await spool.append("ticks", [trades(i * PER_FRAME, PER_FRAME)])
        await spool.close()

    asyncio.run(fill())
    segments = len(list(spool_dir.glob("seg-*")))
    assert segments > 3
    rng = random.Random(20021)
    kills = 0
    for _ in range(3):
        before = cursor_segment_offset(spool_dir)
        proc = spawn(spool_dir, bus_path)
        # Kill once the drain has made progress (the cursor moved), at a random instant after.
        eventually_sync(
            lambda b=before, p=proc: cursor_segment_offset(spool_dir) > b or p.poll() is not None,
            timeout=60,
            what="drain progress",
        )
        time.sleep(rng.uniform(0.0, 0.05))  # lands the kill at a random point of the drain
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    assert kills >= 2
    assert len(list(spool_dir.glob("seg-*"))) < segments  # drained segments were deleted
    final = spawn(spool_dir, bus_path)
    assert final.wait(timeout=120) == 0
    assert list(spool_dir.glob("seg-*")) == []

    async def check() -> None:
        bus = SqliteBus(bus_path)
        store = DuckDBStore(tmp_path / "t.duckdb")
        info = await bus.info("ticks")
        assert FRAMES <= info.length <= FRAMES + kills * BATCH  # re-sent batches, bounded
        writer = Writer(bus, store, WriterConfig(consumer="w", linger_ms=10))
        await drain(writer, timeout=120)
        rows = (
            await store.query(
                "SELECT count(*), count(DISTINCT trade_id), min(trade_id), max(trade_id)"
                " FROM trades"
            )
        ).rows
        assert rows == [(FRAMES * PER_FRAME, FRAMES * PER_FRAME, 0, FRAMES * PER_FRAME - 1)]
        await bus.close()
        await store.close()

    asyncio.run(check())
