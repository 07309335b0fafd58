"""Restore over a large ``position_state`` with mixed valid and malformed rows.

Builds a state store in a temporary directory (default 100,000 rows: 4 rows per trade;
the latest row of each trade is a valid OPEN row, a CLOSED row, or one of several
malformed shapes, including the incident-004 zero-sized OPEN row), then prints one line
per figure:

- the reference, measured in the same run: a plain ``SELECT`` of every row, the same
  columns restore reads, fetched through the same connection;
- restore (dry run: latest row per trade, judge, report), best of ``--repeat``;
- restore with the quarantine copy written (first run, then a repeat that copies nothing);
- the ratio of restore to the reference.

Usage: ``python bench/positions_restore.py [--rows 100000] [--rows-per-trade 4]``
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from tickvault.positions import PositionStore, StateStoreSource, restore
from tickvault.positions.store import STATE_COLUMNS

MALFORMED: list[dict[str, Any]] = [
    {"quantity": 0, "notional": 0},  # incident 004
    {"quantity": "NaN"},
    {"notional": -5.0},
    {"side": None},
    {"status": "PARTIAL"},
    {"entry_price": "abc"},
    {"bars_held": None},
]


def build(path: Path, rows: int, per_trade: int, seed: int = 4) -> dict[str, int]:
    """Write ``rows`` rows; return how many trades end open, closed and malformed."""
    rng = random.Random(seed)
    counts = {"open": 0, "closed": 0, "malformed": 0}
    batch: list[tuple[dict[str, Any], str, str]] = []
    seq = 0
    trades = rows // per_trade
    with PositionStore(path) as store:
        for t in range(trades):
            trade_id = f"trade-{t:07d}"
            price = rng.uniform(1, 1000)
            qty = rng.uniform(0.01, 100)
            base = {
                "trade_id": trade_id, "symbol": f"SYM{t % 50}USDT",
                "side": "LONG" if t % 2 else "SHORT", "status": "OPEN",
                "entry_price": price, "ts": 1_781_000_000_000_000 + t,
            }  # fmt: skip
            for i in range(per_trade):
                seq += 1
                row = base | {"quantity": qty, "notional": qty * price, "bars_held": i, "seq": seq}
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
                batch.append((row, f"bench-{seq}", ""))
            if len(batch) >= 20_000:
                store.insert_raw(batch, origin="import")
                batch.clear()
        if batch:
            store.insert_raw(batch, origin="import")
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
        path = Path(tmp) / "state.sqlite3"
        t0 = time.perf_counter()
        counts = build(path, args.rows, args.rows_per_trade)
        print(
            f"setup: {args.rows:,} rows, {args.rows // args.rows_per_trade:,} trades"
            f" ({counts['open']:,} open, {counts['closed']:,} closed,"
            f" {counts['malformed']:,} malformed latest) in {time.perf_counter() - t0:.2f} s"
        )
        with PositionStore(path) as store:
            conn = store._conn  # the reference reads through the very same connection

            columns = ", ".join(("row_id", *STATE_COLUMNS))

            def plain_select() -> int:
                return len(conn.execute(f"SELECT {columns} FROM position_state").fetchall())

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


if __name__ == "__main__":
    main()
