"""End-to-end replay throughput on the embedded defaults, with full durability.

Measured in one run, on the same input:

* **tickvault**: ``replay`` through the whole pipeline (parse → frames → SQLite bus with
  ``synchronous=FULL`` → writer → DuckDB ``INSERT OR IGNORE`` on the natural keys → ack).
* **raw DuckDB**: the same rows, already in Arrow tables, inserted into tables with the same
  primary keys in 20k-row batches — the ceiling for the store alone.
* **naive**: one bus entry per record and one ``INSERT`` per record (a subset, it is slow).

Prints one ``name value`` line per figure; ratios are tickvault / reference.
Usage: ``python bench/e2e.py [--records N] [--naive N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa

from tickvault.core.codec import FrameBuilder, decode_frame, split_valid
from tickvault.core.config import Settings
from tickvault.core.records import KINDS
from tickvault.service.replay_job import plan_replay, run_replay
from tickvault.sources.binance.sample import write_recording
from tickvault.sources.binance.wire import parse_values
from tickvault.stores.duckdb.store import create_table_sql


def arrow_tables(path: Path) -> dict[str, list[pa.Table]]:
    rows: dict[str, list[tuple[object, ...]]] = {}
    for line in path.read_bytes().splitlines():
        kind, row = parse_values(line)
        rows.setdefault(kind, []).append(row)
    out: dict[str, list[pa.Table]] = {}
    for kind, kind_rows in rows.items():
        for i in range(0, len(kind_rows), 20_000):
            builder = FrameBuilder(kind)
            builder.rows.extend(kind_rows[i : i + 20_000])
            table, _ = split_valid(decode_frame(builder.take()))
            out.setdefault(kind, []).append(table)
    return out


def raw_duckdb(tables: dict[str, list[pa.Table]], workdir: Path) -> float:
    con = duckdb.connect(str(workdir / "raw.duckdb"))
    for spec in KINDS.values():
        con.execute(create_table_sql(spec))
    n = sum(t.num_rows for parts in tables.values() for t in parts)
    started = time.perf_counter()
    for kind, parts in tables.items():
        for batch in parts:
            con.register("b", batch)
            con.execute(f"INSERT OR IGNORE INTO {KINDS[kind].table} SELECT * FROM b")
            con.unregister("b")
    elapsed = time.perf_counter() - started
    con.close()
    return n / elapsed


def naive(path: Path, records: int, workdir: Path) -> float:
    """One SQLite-bus entry (own transaction, FULL sync) and one INSERT per record."""
    bus = sqlite3.connect(workdir / "naive-bus.sqlite3", isolation_level=None)
    bus.execute("PRAGMA journal_mode=WAL")
    bus.execute("PRAGMA synchronous=FULL")
    bus.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, payload BLOB, acked INTEGER DEFAULT 0)")
    con = duckdb.connect(str(workdir / "naive.duckdb"))
    for spec in KINDS.values():
        con.execute(create_table_sql(spec))
    lines = path.read_bytes().splitlines()[:records]
    started = time.perf_counter()
    for line in lines:
        kind, row = parse_values(line)
        bus.execute("INSERT INTO q(payload) VALUES (?)", (orjson.dumps([kind, row]),))
    for entry_id, payload in bus.execute("SELECT id, payload FROM q WHERE acked=0").fetchall():
        kind, row = orjson.loads(payload)
        spec = KINDS[kind]
        ts_cols = {spec.columns.index(c) for c in spec.timestamp_columns}
        placeholders = ", ".join(
            "make_timestamp(?)" if i in ts_cols else "?" for i in range(len(row))
        )
        con.execute(f"INSERT OR IGNORE INTO {spec.table} VALUES ({placeholders})", row)
        bus.execute("UPDATE q SET acked=1 WHERE id=?", (entry_id,))
    elapsed = time.perf_counter() - started
    con.close()
    bus.close()
    return len(lines) / elapsed


async def tickvault_e2e(path: Path, workdir: Path) -> tuple[float, int]:
    """Exactly what ``tickvault replay`` runs (producer process, writer, DuckDB)."""
    settings = Settings(data_dir=workdir / "data")
    started = time.perf_counter()
    summary, _ = await run_replay(settings, plan_replay(settings, [path], count=False))
    elapsed = time.perf_counter() - started
    assert summary.drained, summary
    return summary.stored / elapsed, summary.stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--naive", type=int, default=3_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tv-bench-") as tmp:
        workdir = Path(tmp)
        rec = write_recording(workdir / "in.jsonl", args.records, duplicate_share=0.0, seed=5)
        print(f"machine_cpus {os.cpu_count()}")
        print(f"records {rec.unique_records}")
        tables = arrow_tables(rec.path)
        raw = raw_duckdb(tables, workdir)
        e2e, stored = asyncio.run(tickvault_e2e(rec.path, workdir))
        assert stored == rec.unique_records, (stored, rec.unique_records)
        slow = naive(rec.path, args.naive, workdir)
        print(f"tickvault_e2e_records_per_s {e2e:,.0f}")
        print(f"raw_duckdb_pk_insert_records_per_s {raw:,.0f}")
        print(f"naive_per_record_records_per_s {slow:,.0f}")
        print(f"ratio_e2e_vs_raw_duckdb {e2e / raw:.2f}")
        print(f"ratio_e2e_vs_naive {e2e / slow:.1f}")
        print(f"load_average_1m {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
