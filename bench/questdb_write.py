"""tickvault's QuestDB write path against the bare ``questdb`` client sending the same rows.

Starts its own QuestDB (the pinned jar, ``tests/questdb_server.py``, with the JIT at full
level and a 1 GiB heap) in a temp dir, then writes the same trades, in batches of the
writer's default size, two ways, each into a freshly created table of the same shape,
twice (the first round warms the JVM up and is not reported):

* ``tickvault``: ``QuestDBStore.write`` — in-batch dedup, a lookup of the batch's keys already
  stored, one transactional ILP/HTTP request, then a wait until ``wal_tables()`` shows the
  WAL applied (so the rows are visible when it returns);
* ``bare client``: ``Sender`` over ILP/HTTP, one ``buffer.row`` per row and one transactional
  flush per batch, and one wait for the WAL at the very end (rows are not yet visible when a
  flush returns).

Prints one line per figure and the ratio, e.g. ``python bench/questdb_write.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from questdb import Sender, TimestampMicros, TimestampNanos

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.questdb_server import QuestDBServer

from tickvault.core.records import KINDS
from tickvault.stores.questdb.store import QuestDBStore, create_table_sql

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


def exec_sql(port: int, sql: str) -> dict[str, Any]:
    query = urllib.parse.urlencode({"query": sql})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/exec?{query}", timeout=60) as r:
        doc: dict[str, Any] = orjson.loads(r.read())
    return doc


def wait_applied(port: int, table: str) -> None:
    while True:
        doc = exec_sql(
            port, f"SELECT writerTxn, sequencerTxn FROM wal_tables() WHERE name = '{table}'"
        )
        writer, sequencer = doc["dataset"][0]
        if writer >= sequencer:
            return
        time.sleep(0.005)  # polling the server's own progress


async def tickvault_path(url: str, batches: list[pa.Table]) -> float:
    store = QuestDBStore.from_url(url)
    await store.ensure_schema()
    started = time.perf_counter()
    for batch in batches:
        await store.write("trade", batch)
    elapsed = time.perf_counter() - started
    await store.close()
    return elapsed


def bare_client(port: int, table: str, batches: list[pa.Table]) -> float:
    exec_sql(port, create_table_sql(KINDS["trade"], "VARCHAR").replace(" trades ", f" {table} "))
    conf = f"http::addr=127.0.0.1:{port};protocol_version=1;auto_flush=off;"
    started = time.perf_counter()
    with Sender.from_conf(conf) as sender:
        for batch in batches:
            plain = ("exchange", "symbol", "trade_id", "price", "qty", "buyer_is_maker")
            cols = {n: batch.column(n).to_pylist() for n in plain}
            at = pc.cast(batch.column("ts_event"), pa.int64()).to_pylist()
            recv = pc.cast(batch.column("ts_recv"), pa.int64()).to_pylist()
            buf = sender.new_buffer()
            for i in range(batch.num_rows):
                buf.row(
                    table,
                    symbols={"exchange": cols["exchange"][i], "symbol": cols["symbol"][i]},
                    columns={
                        "trade_id": cols["trade_id"][i],
                        "price": cols["price"][i],
                        "qty": cols["qty"][i],
                        "buyer_is_maker": cols["buyer_is_maker"][i],
                        "ts_recv": TimestampMicros(recv[i]),
                    },
                    at=TimestampNanos(at[i] * 1000),
                )
            sender.flush(buf, transactional=True)
    wait_applied(port, table)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=20_000)
    args = parser.parse_args()
    batches = [trades(args.batch, s) for s in range(0, args.rows, args.batch)]
    rows = sum(b.num_rows for b in batches)
    with tempfile.TemporaryDirectory(prefix="tv-bench-questdb-") as tmp:
        server = QuestDBServer(Path(tmp), jvm_args=("-Xms256m", "-Xmx1g")).start()
        try:
            # Round 0 warms the JVM up (JIT, page cache); round 1 is measured. Each round
            # writes into fresh tables.
            for round_ in range(2):
                exec_sql(server.http_port, "DROP TABLE IF EXISTS trades")
                reference = bare_client(server.http_port, f"trades_bare{round_}", batches)
                ours = asyncio.run(tickvault_path(server.url, batches))
                count = exec_sql(server.http_port, "SELECT count() FROM trades")["dataset"][0][0]
                assert count == rows, (count, rows)
        finally:
            server.stop()
    print(f"rows: {rows} in batches of {args.batch}")
    print(f"bare questdb client (ILP/HTTP, per-batch flush): {rows / reference:,.0f} rows/s")
    print(f"tickvault QuestDBStore.write (dedup lookup + applied wait): {rows / ours:,.0f} rows/s")
    print(f"ratio tickvault / bare client: {reference / ours:.2f}")


if __name__ == "__main__":
    main()
