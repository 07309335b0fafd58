"""tickvault's ClickHouse write path against raw bulk HTTP inserts of the same rows.

Starts its own ``clickhouse-server`` on free ports in a temp dir (or uses ``--url``), then
inserts the same trades, in batches of the writer's default size, three ways, each into a
fresh database:

* ``tickvault``: ``ClickHouseStore.write`` (in-batch dedup, key lookup, Native insert);
* ``raw JSONEachRow``: rows serialised with orjson and POSTed (serialisation timed);
* ``raw Native``: the same Native bytes tickvault sends, encoded beforehand (timing is the
  server's insert alone: the ceiling for any client).

Prints one line per figure and the ratios, e.g. ``python bench/clickhouse_write.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers import ClickHouseServer

from tickvault.core.records import KINDS
from tickvault.stores.clickhouse.native import encode_block
from tickvault.stores.clickhouse.store import ClickHouseStore

T0 = 1_700_000_000_000_000


def trades(n: int, start: int) -> pa.Table:
    ids = range(start, start + n)
    return pa.table(
        {
            "exchange": ["binance"] * n,
            "symbol": [("BTCUSDT", "ETHUSDT", "SOLUSDT")[i % 3] for i in ids],
            "trade_id": pa.array(ids, pa.int64()),
            "price": [100.0 + (i % 1000) / 100 for i in ids],
            "qty": [0.001 * (1 + i % 50) for i in ids],
            "buyer_is_maker": [i % 2 == 0 for i in ids],
            "ts_event": pa.array([T0 + i * 1000 for i in ids], pa.timestamp("us")),
            "ts_recv": pa.array([T0 + i * 1000 + 7 for i in ids], pa.timestamp("us")),
        },
        schema=KINDS["trade"].schema,
    )


async def tickvault_path(url: str, batches: list[pa.Table]) -> float:
    store = ClickHouseStore.from_url(url)
    await store.ensure_schema()
    started = time.perf_counter()
    for batch in batches:
        await store.write("trade", batch)
    elapsed = time.perf_counter() - started
    assert (await store.counts())["trades"] == sum(b.num_rows for b in batches)
    await store.close()
    return elapsed


async def _fresh_table(url: str) -> tuple[str, str]:
    """Create the tables through tickvault, return (http base, qualified table)."""
    store = ClickHouseStore.from_url(url)
    await store.ensure_schema()
    await store.close()
    rest = url[len("clickhouse://") :]
    host, database = rest.split("/", 1)
    return f"http://{host}", f"{database}.trades"


async def raw_json(url: str, batches: list[pa.Table]) -> float:
    base, table = await _fresh_table(url)
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        started = time.perf_counter()
        for batch in batches:
            t = batch.set_column(6, "ts_event", batch.column("ts_event").cast(pa.int64()))
            t = t.set_column(7, "ts_recv", t.column("ts_recv").cast(pa.int64()))
            body = b"".join(
                orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in t.to_pylist()
            )
            r = await client.post(
                "/", params={"query": f"INSERT INTO {table} FORMAT JSONEachRow"}, content=body
            )
            r.raise_for_status()
        return time.perf_counter() - started


async def raw_native(url: str, batches: list[pa.Table], types: dict[str, str]) -> float:
    base, table = await _fresh_table(url)
    bodies = [encode_block(b, types) for b in batches]
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        started = time.perf_counter()
        for body in bodies:
            r = await client.post(
                "/", params={"query": f"INSERT INTO {table} FORMAT Native"}, content=body
            )
            r.raise_for_status()
        return time.perf_counter() - started


async def main(url_base: str, rows: int, batch: int, rounds: int) -> None:
    batches = [trades(batch, i) for i in range(0, rows, batch)]
    probe = ClickHouseStore.from_url(f"{url_base}/tv_bench_probe")
    await probe.ensure_schema()
    features = await probe.features()
    types = probe._types["trades"]
    await probe.close()
    best: dict[str, float] = {}
    for _ in range(rounds):  # interleaved rounds; best of each, because the machine is noisy
        for name, run in (
            ("tickvault", lambda u: tickvault_path(u, batches)),
            ("raw JSONEachRow", lambda u: raw_json(u, batches)),
            ("raw Native", lambda u: raw_native(u, batches, types)),
        ):
            elapsed = await run(f"{url_base}/tv_bench_{uuid.uuid4().hex[:8]}")
            best[name] = min(best.get(name, float("inf")), elapsed)
    print(f"server: ClickHouse {features.version_text}; {rows:,} trades in batches of {batch:,}")
    for name, elapsed in best.items():
        print(f"{name:<16} {rows / elapsed:>12,.0f} records/s")
    tv = rows / best["tickvault"]
    print(f"ratio tickvault / raw JSONEachRow: {tv / (rows / best['raw JSONEachRow']):.0%}")
    print(f"ratio tickvault / raw Native:      {tv / (rows / best['raw Native']):.0%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="clickhouse://host:port of a server to use (no database)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    if opts.url:
        asyncio.run(main(opts.url.rstrip("/"), opts.rows, opts.batch, opts.rounds))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            server = ClickHouseServer(Path(tmp) / "clickhouse").start()
            try:
                base = f"clickhouse://127.0.0.1:{server.http_port}"
                asyncio.run(main(base, opts.rows, opts.batch, opts.rounds))
            finally:
                server.stop()
