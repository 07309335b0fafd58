"""Restore over a user's ClickHouse ``position_state`` table (the incident-004 deployment).

Starts its own ``clickhouse-server``, fills a table the way a trader would have (default
100,000 rows, 4 per trade; each trade's latest row is a valid OPEN row, a CLOSED row, or a
malformed one such as the incident's zero-sized OPEN row), then prints one line per figure:

- the reference, measured in the same run: a plain ``SELECT`` of every row and the columns
  restore reads, as ``JSONCompact`` through the same HTTP client, decoded with orjson;
- restore (dry run: latest row per trade in the query, judge, report), best of ``--repeat``;
- restore with the quarantine copy written (first run, then a repeat that copies nothing);
- the ratio of restore to the reference.

Usage: ``python bench/positions_restore_clickhouse.py [--rows 100000] [--rows-per-trade 4]``
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import ClickHouseServer

from tickvault.positions import StateStoreSource, restore
from tickvault.positions.clickhouse_store import ClickHousePositionStore
from tickvault.positions.clickhouse_wire import json_doc

DDL = """CREATE TABLE bench.position_state (
    trade_id String, symbol String, side String, status String, quantity Float64,
    notional Float64, entry_price Float64, bars_held UInt32, ts DateTime, seq UInt64
) ENGINE = MergeTree() ORDER BY (trade_id, seq)"""

MALFORMED: list[dict[str, Any]] = [
    {"quantity": 0, "notional": 0},  # incident 004
    {"notional": -5.0},
    {"status": "PARTIAL"},
    {"side": "BUY"},
    {"entry_price": 0.0},
]


def build(base: str, rows: int, per_trade: int, seed: int = 4) -> dict[str, int]:
    rng = random.Random(seed)
    counts = {"open": 0, "closed": 0, "malformed": 0}
    lines: list[bytes] = []
    for t in range(rows // per_trade):
        price, qty = rng.uniform(1, 1000), rng.uniform(0.01, 100)
        for i in range(per_trade):
            row: dict[str, Any] = {
                "trade_id": f"trade-{t:07d}", "symbol": f"SYM{t % 50}USDT",
                "side": "LONG" if t % 2 else "SHORT", "status": "OPEN", "quantity": qty,
                "notional": qty * price, "entry_price": price, "bars_held": i,
                "ts": 1_781_000_000 + t, "seq": i + 1,
            }  # fmt: skip
            if i == per_trade - 1:
                kind = rng.random()
                if kind < 0.2:
                    row |= {"status": "CLOSED", "quantity": 0.0, "notional": 0.0}
                    counts["closed"] += 1
                elif kind < 0.3:
                    row |= rng.choice(MALFORMED)
                    counts["malformed"] += 1
                else:
                    counts["open"] += 1
            lines.append(orjson.dumps(row))
    query = "INSERT INTO bench.position_state FORMAT JSONEachRow"
    response = httpx.post(base, params={"query": query}, content=b"\n".join(lines), timeout=120)
    response.raise_for_status()
    return counts


def best(fn: Any, repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rows-per-trade", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("tickvault.positions").setLevel(logging.ERROR)  # quarantine warnings

    with tempfile.TemporaryDirectory(prefix="tv-bench-") as tmp:
        server = ClickHouseServer(Path(tmp)).start()
        try:
            base = f"http://127.0.0.1:{server.http_port}/"
            httpx.post(base, content=b"CREATE DATABASE bench").raise_for_status()
            httpx.post(base, content=DDL.encode()).raise_for_status()
            t0 = time.perf_counter()
            counts = build(base, args.rows, args.rows_per_trade)
            print(
                f"setup: {args.rows:,} rows, {args.rows // args.rows_per_trade:,} trades"
                f" ({counts['open']:,} open, {counts['closed']:,} closed,"
                f" {counts['malformed']:,} malformed latest) in {time.perf_counter() - t0:.2f} s"
            )
            store = ClickHousePositionStore.from_url(server.url("bench"), table="position_state")
            columns = "trade_id, symbol, side, status, quantity, notional, entry_price,"
            columns += " bars_held, ts, seq"

            def plain_select() -> int:
                sql = f"SELECT {columns} FROM bench.position_state"
                doc = store._loop.run(json_doc(store._http, sql, {}))
                return len(doc["data"])

            ref_s, fetched = best(plain_select, args.repeat)
            assert fetched == args.rows
            print(f"reference: plain SELECT of {fetched:,} rows   {ref_s:8.3f} s")
            source = StateStoreSource(store)
            dry_s, report = best(lambda: restore([source], dry_run=True), args.repeat)
            assert len(report.restored) == counts["open"]
            assert len(report.quarantined) == counts["malformed"]
            print(
                f"restore (dry run)                        {dry_s:8.3f} s"
                f"   ({len(report.restored):,} restored, {len(report.quarantined):,} quarantined)"
            )
            t0 = time.perf_counter()
            first = restore([source], quarantine_store=store)
            first_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = restore([source], quarantine_store=store)
            again_s = time.perf_counter() - t0
            print(
                f"restore + quarantine copy (first/again)  {first_s:8.3f} s / {again_s:.3f} s"
                f"   (copied {first.quarantine_copied:,} then {again.quarantine_copied:,})"
            )
            print(f"ratio restore / reference                {dry_s / ref_s:8.2f} x")
            store.close()
        finally:
            server.stop(signal.SIGKILL)


if __name__ == "__main__":
    main()
