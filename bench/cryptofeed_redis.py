"""tickvault over Redis against cryptofeed's Redis stream backend, fed the same file.

Starts its own ``redis-server`` (AOF, ``appendfsync always``) and measures, interleaved,
each as a fresh subprocess with its own start-up:

* **tickvault**: ``tickvault replay FILE --bus redis://...`` — parse, frames on a Redis
  stream, writer, DuckDB ``INSERT OR IGNORE`` on the natural key, ack after commit.
* **cryptofeed**: cryptofeed's own ``TradeStream`` backend (``cryptofeed.backends.redis``,
  the released 1.9.3 wheel, the newest one PyPI has as a wheel) fed the same trades the way
  its Binance feed does (``json.loads(msg, parse_float=Decimal)``, unwrap the combined
  stream, ``Decimal`` price and amount, one callback per trade), yielding to the event loop
  every 100 messages as a websocket reader would. It only writes into Redis (one ``XADD``
  per trade, pipelined); the time ends when its queue is drained. That backend imports
  ``aioredis``, whose 2.x API was merged into redis-py as ``redis.asyncio`` (aioredis itself
  no longer imports on Python 3.11), so ``redis.asyncio`` is installed under that name.

Prints every round and the median ratio tickvault / cryptofeed (records per second).
Usage: ``python bench/cryptofeed_redis.py [--records 400000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def feed_cryptofeed(url: str, path: str) -> None:
    """Child: push every trade of ``path`` through cryptofeed's Redis stream backend."""
    import redis.asyncio

    sys.modules.setdefault("aioredis", redis.asyncio)
    from cryptofeed.backends.redis import TradeStream  # type: ignore[import-not-found]
    from yapic import json as yjson  # type: ignore[import-not-found]

    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")

    async def main() -> None:
        backend = TradeStream(host=host, port=int(port))
        before = asyncio.all_tasks()
        backend.start(asyncio.get_running_loop())
        (writer,) = asyncio.all_tasks() - before  # the backend's writer task
        std: dict[str, str] = {}
        with open(path, "rb") as fh:  # noqa: ASYNC230 - a recorded file stands in for a socket
            for i, line in enumerate(fh):
                msg = yjson.loads(line, parse_float=Decimal)
                msg = msg.get("data", msg)
                symbol = std.get(msg["s"]) or std.setdefault(msg["s"], msg["s"][:-4] + "-USDT")
                await backend(
                    feed="BINANCE",
                    symbol=symbol,
                    order_id=msg["t"],
                    side="sell" if msg["m"] else "buy",
                    amount=Decimal(msg["q"]),
                    price=Decimal(msg["p"]),
                    timestamp=msg["E"] / 1000.0,
                    receipt_timestamp=time.time(),
                )
                if i % 100 == 99:
                    await asyncio.sleep(0)
        drained = asyncio.create_task(backend.queue.join())
        await asyncio.wait({drained, writer}, return_when=asyncio.FIRST_COMPLETED)
        if writer.done():  # it only ends by failing; without this the join would hang
            writer.result()
            raise RuntimeError("cryptofeed's writer task stopped")

    asyncio.run(main())


def timed(args: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[1:3]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return time.perf_counter() - started, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("URL", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        feed_cryptofeed(*args.child)
        return
    sys.path.insert(0, str(ROOT))
    import redis
    from tests.servers import RedisServer

    from tickvault.sources.binance.sample import write_recording

    script = Path(sys.executable).with_name("tickvault")
    tv = [str(script)] if script.exists() else [sys.executable, "-m", "tickvault"]
    print(f"machine_cpus {os.cpu_count()}")
    print(f"load_average_1m_start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="tv-cf-bench-") as tmp:
        work = Path(tmp)
        server = RedisServer(work / "redis").start()
        try:
            rec = write_recording(
                work / "trades.jsonl", args.records, duplicate_share=0.0, quote_share=0.0,
                agg_share=0.0, seed=5,
            )  # fmt: skip
            n = rec.unique_records
            ratios = []
            for i in range(args.rounds):
                cf_s, _ = timed([sys.executable, __file__, "--child", server.url, str(rec.path)])
                client = redis.Redis.from_url(server.url)
                written = sum(int(client.xlen(k)) for k in client.scan_iter("trades-*"))
                client.delete(*client.scan_iter("trades-*"))
                client.close()
                assert written == n, (written, n)
                tv_s, out = timed(
                    [*tv, "replay", str(rec.path), "--json", "--data-dir", str(work / f"d{i}"),
                     "--bus", f"{server.url}?prefix=r{i}:"]
                )  # fmt: skip
                summary = json.loads(out)
                assert summary["drained"] and summary["stored"] == n, summary
                ratios.append(cf_s / tv_s)
                print(
                    f"round {i + 1}: tickvault {n / tv_s:,.0f} rec/s ({tv_s:.2f} s, stored+acked),"
                    f" cryptofeed {n / cf_s:,.0f} rec/s ({cf_s:.2f} s, in Redis only),"
                    f" ratio {cf_s / tv_s:.2f}, load {os.getloadavg()[0]:.1f}"
                )
        finally:
            server.stop()
    print(f"records {n}")
    print(f"ratio_tickvault_redis_vs_cryptofeed_redis_stream {statistics.median(ratios):.2f}")
    print(f"load_average_1m_end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
