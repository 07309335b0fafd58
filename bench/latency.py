"""Tick-to-stored latency at a steady synthetic rate: embedded defaults and over Redis.

Tick-to-stored is measured inside the writer (:class:`tickvault.delivery.writer.WriterStats`):
store commit time minus each record's ``ts_recv`` (the moment the source produced it), for
every record. The same pipeline ``tickvault run`` uses ingests a synthetic source at
``--rate`` records/s for ``--warmup`` + ``--seconds``; percentiles cover the measured part
only (the writer's sample window is reset after the warm-up; it keeps every 10th record).

The load is :class:`PacedSource`: row tuples on the source fast path, one batch every 50 ms
(the live collectors' batching), each record stamped with ``ts_recv`` at the moment it was
due, so the wait for its batch to close counts in its latency. The stock
``SyntheticSource`` builds a msgspec struct per record with several ``random`` calls each,
which alone takes most of a core at 20k/s and would measure the generator sharing the event
loop, not the data plane (``--stock-source`` measures that too).

Configurations, in one run:

* **embedded**: SQLite bus (WAL, ``synchronous=FULL``) + DuckDB, all defaults.
* **redis**: a ``redis-server`` started here on a free loopback port (AOF, ``appendfsync
  always``) + DuckDB.

Reference in the same run: the writer's own batch time (decode, validate, write, ack) p50 /
p99 — the part of the latency the store path costs; the rest is batching (publisher frames,
writer linger) and waiting behind the previous batch.

Prints one ``name value`` line per figure. Usage:
``python bench/latency.py [--rate 20000] [--seconds 20] [--warmup 5] [--only embedded|redis]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers import RedisServer

from tickvault.core.config import Settings
from tickvault.service.pipeline import Pipeline
from tickvault.sources.base import Source, SourceBatch, SourceHealth
from tickvault.sources.synthetic import SyntheticSource


class PacedSource(Source):
    """``rate`` records/s (60 % trades, 40 % quotes on three symbols) as row tuples."""

    name = "paced"
    kind = "synthetic"

    def __init__(self, rate: float, tick_s: float = 0.05) -> None:
        self.rate = rate
        self.tick_s = tick_s
        self.generated = 0
        self._stopped = False
        self._next_id = 1

    def stop(self) -> None:
        self._stopped = True

    async def batches(self) -> AsyncIterator[SourceBatch]:
        """One batch per tick, as the live collectors batch (``batch_linger_s`` 50 ms).

        Each record's ``ts_recv`` is the moment it was due (spread over the tick), not the
        moment its batch is emitted: the time a record waits for its batch to close is
        part of its tick-to-stored latency, as it is for a collector's websocket message.
        """
        started = time.monotonic()
        started_us = time.time_ns() // 1000
        symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
        step_us = 1_000_000 / self.rate
        while not self._stopped:
            await asyncio.sleep(self.tick_s)
            due = int((time.monotonic() - started) * self.rate) - self.generated
            if due <= 0:
                continue
            first = self._next_id
            at = [started_us + int((self.generated + k) * step_us) for k in range(due)]
            n_trades = due * 6 // 10
            trades = [
                ("bench", symbols[i % 3], i, 100.0 + i % 97, 0.5, i % 2 == 0, t - 300, t)
                for i, t in zip(range(first, first + n_trades), at, strict=False)
            ]
            quotes = [
                ("bench", symbols[i % 3], i, 99.5, 1.0, 100.5, 2.0, None, t)
                for i, t in zip(range(first + n_trades, first + due), at[n_trades:], strict=True)
            ]
            self._next_id = first + due
            self.generated += due
            yield SourceBatch(rows={"trade": trades, "quote": quotes})

    def health(self) -> SourceHealth:
        return SourceHealth(self.name, self.kind, not self._stopped, messages=self.generated)


async def measure(
    name: str,
    data_dir: Path,
    bus_url: str | None,
    rate: float,
    seconds: float,
    warmup: float,
    stock: bool = False,
    linger_ms: int | None = None,
) -> dict[str, float]:
    settings = Settings(data_dir=data_dir)
    settings.bus.url = bus_url
    if linger_ms is not None:
        settings.writer.linger_ms = linger_ms
    source: PacedSource | SyntheticSource = (
        SyntheticSource(rate=rate, symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"], seed=7)
        if stock
        else PacedSource(rate)
    )
    async with Pipeline(settings, [source]) as pipeline:
        run = asyncio.create_task(pipeline.run())
        await asyncio.sleep(warmup)  # a benchmark phase, not synchronisation
        stats = pipeline.writer.stats
        stats.tick_to_stored.reset_window()
        stats.batch_seconds.reset_window()
        stored_before, started = stats.inserted, time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - started
        stored = stats.inserted - stored_before
        q = stats.tick_to_stored.quantiles((0.5, 0.99, 0.999)) or [float("nan")] * 3
        b = stats.batch_seconds.quantiles((0.5, 0.99)) or [float("nan")] * 2
        pipeline.stop_sources.set()
        source.stop()
        summary = await run
    return {
        f"{name}_stored_per_s": stored / elapsed,
        f"{name}_tick_to_stored_p50_ms": q[0] * 1000,
        f"{name}_tick_to_stored_p99_ms": q[1] * 1000,
        f"{name}_tick_to_stored_p999_ms": q[2] * 1000,
        f"{name}_writer_batch_p50_ms": b[0] * 1000,
        f"{name}_writer_batch_p99_ms": b[1] * 1000,
        f"{name}_backlog_at_end": float(summary.backlog),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--only", choices=["embedded", "redis"])
    parser.add_argument(
        "--stock-source", action="store_true", help="Also measure with SyntheticSource."
    )
    parser.add_argument(
        "--linger-ms",
        default="",
        help="Comma-separated [writer] linger_ms values to compare in this run (default: the"
        " configured default only).",
    )
    args = parser.parse_args()
    lingers: list[int | None] = [int(v) for v in args.linger_ms.split(",") if v] or [None]
    print(f"rate_records_per_s {args.rate:.0f}")
    with tempfile.TemporaryDirectory(prefix="tv-latency-") as tmp:
        work = Path(tmp)
        results: dict[str, float] = {}
        if args.only in (None, "embedded"):
            for linger in lingers:
                name = "embedded" if linger is None else f"embedded_linger{linger}"
                results |= asyncio.run(
                    measure(
                        name, work / name, None, args.rate, args.seconds, args.warmup,
                        linger_ms=linger,
                    )
                )  # fmt: skip
        if args.stock_source:
            results |= asyncio.run(
                measure(
                    "embedded_stock_source",
                    work / "stock",
                    None,
                    args.rate,
                    args.seconds,
                    args.warmup,
                    stock=True,
                )
            )
        if args.only in (None, "redis"):
            redis = RedisServer(work / "redis").start()
            try:
                for linger in lingers:
                    name = "redis" if linger is None else f"redis_linger{linger}"
                    results |= asyncio.run(
                        measure(
                            name, work / name, f"{redis.url}?prefix={name}:", args.rate,
                            args.seconds, args.warmup, linger_ms=linger,
                        )
                    )  # fmt: skip
            finally:
                redis.stop()
        for key, value in results.items():
            print(f"{key} {value:.1f}")


if __name__ == "__main__":
    main()
