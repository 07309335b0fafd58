"""``tickvault replay`` against the script a user would write instead, start-up included.

For each file size (default 400,000 and 2,000,000 trades, bare and combined-stream lines),
measured in the same run, each as a fresh subprocess that pays its own interpreter start-up:

* **tickvault**: ``tickvault replay FILE --json`` on the embedded defaults (producer process
  → SQLite bus with ``synchronous=FULL`` → writer → DuckDB ``INSERT OR IGNORE`` on the natural
  key → ack after commit).
* **script**: ``bench/hand_script.py`` (one thread: read, ``orjson.loads``, Arrow batches,
  ``INSERT OR IGNORE`` into a table with the same primary key).
* **store ceiling** (in this process, not a subprocess): the same rows already in Arrow
  batches inserted into the same table — what DuckDB alone takes.

Also the peak RSS of the replay's process tree (owner + producer, sampled every 0.1 s).
Runs are interleaved (``--rounds``); every round prints its ratios, then the medians.
Usage: ``python bench/vs_script.py [--sizes 400000,2000000] [--rounds 3] [--batch 100000]``.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import tickvault  # noqa: E402
from hand_script import DDL, SCHEMA  # noqa: E402 - bench/ must be on the path first
from proctree import run_sampled  # noqa: E402
from tickvault.sources.binance.sample import write_recording  # noqa: E402


def trade_file(path: Path, records: int) -> int:
    rec = write_recording(
        path, records, duplicate_share=0.0, quote_share=0.0, agg_share=0.0, seed=5
    )
    return rec.unique_records


def tickvault_cmd() -> list[str]:
    script = Path(sys.executable).with_name("tickvault")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tickvault"]


def arrow_batches(path: Path, batch: int) -> list[pa.Table]:
    cols: list[list[object]] = [[] for _ in SCHEMA.names]
    out: list[pa.Table] = []

    def flush() -> None:
        arrays = [pa.array(c, type=f.type) for c, f in zip(cols, SCHEMA, strict=True)]
        out.append(pa.Table.from_arrays(arrays, schema=SCHEMA))
        for c in cols:
            c.clear()

    with open(path, "rb") as fh:
        for line in fh:
            m = orjson.loads(line)
            m = m.get("data", m)
            row = ("binance", m["s"], m["t"], float(m["p"]), float(m["q"]), m["m"])
            for c, v in zip(cols, (*row, m["T"] * 1000, m["E"] * 1000), strict=True):
                c.append(v)
            if len(cols[0]) >= batch:
                flush()
    if cols[0]:
        flush()
    return out


def store_ceiling(batches: list[pa.Table], db: Path) -> float:
    """Seconds DuckDB takes to insert ready Arrow batches with the key (no parse, no bus)."""
    con = duckdb.connect(str(db))
    con.execute(DDL)
    started = time.perf_counter()
    for table in batches:
        con.register("batch", table)
        con.execute("INSERT OR IGNORE INTO trades SELECT * FROM batch")
        con.unregister("batch")
    seconds = time.perf_counter() - started
    con.close()
    return seconds


def one_round(path: Path, n: int, work: Path, batch: int) -> dict[str, float]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    script = run_sampled(
        [sys.executable, str(BENCH / "hand_script.py"), str(path), str(work / "h.duckdb"),
         str(batch)],
        interval=0.1,
    )  # fmt: skip
    assert int(script.stdout.strip()) == n, script.stdout
    tv = run_sampled(
        [*tickvault_cmd(), "replay", str(path), "--data-dir", str(work / "tv"), "--json"],
        interval=0.1,
    )
    summary = json.loads(tv.stdout)
    assert summary["drained"] and summary["stored"] == n, summary
    return {
        "script_s": script.seconds,
        "tickvault_s": tv.seconds,
        "ratio": script.seconds / tv.seconds,
        "peak_tree_rss_mb": tv.peak_tree_rss_mb,
        "peak_process_rss_mb": tv.peak_process_rss_mb,
        "script_peak_rss_mb": script.peak_tree_rss_mb,
        "tickvault_cpu_s": tv.cpu_seconds,
        "script_cpu_s": script.cpu_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="400000,2000000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100_000, help="script/ceiling batch rows")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    # An installed wheel has its bytecode compiled; an editable checkout under
    # PYTHONDONTWRITEBYTECODE would recompile tickvault in every process of every run.
    compileall.compile_dir(str(Path(tickvault.__file__).parent), quiet=1)
    print(f"machine_cpus {os.cpu_count()}")
    print(f"load_average_1m_start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="tv-vs-script-") as tmp:
        workdir = Path(tmp)
        for size in sizes:
            path = workdir / f"trades-{size}.jsonl"
            n = trade_file(path, size)
            batches = arrow_batches(path, args.batch)
            ceiling_s = store_ceiling(batches, workdir / f"ceiling-{size}.duckdb")
            del batches
            rounds = []
            for i in range(args.rounds):
                r = one_round(path, n, workdir / f"run-{size}-{i}", args.batch)
                rounds.append(r)
                print(
                    f"[{size}] round {i + 1}: tickvault {r['tickvault_s']:.2f} s"
                    f" ({n / r['tickvault_s']:,.0f} rec/s), script {r['script_s']:.2f} s"
                    f" ({n / r['script_s']:,.0f} rec/s), ratio {r['ratio']:.2f},"
                    f" peak RSS tree {r['peak_tree_rss_mb']:.0f} MB"
                    f" (largest process {r['peak_process_rss_mb']:.0f} MB;"
                    f" script {r['script_peak_rss_mb']:.0f} MB), CPU tickvault"
                    f" {r['tickvault_cpu_s']:.1f} s / script {r['script_cpu_s']:.1f} s,"
                    f" load {os.getloadavg()[0]:.1f}"
                )
            tv_s = statistics.median(r["tickvault_s"] for r in rounds)
            print(f"records_{size} {n}")
            print(f"tickvault_replay_records_per_s_{size} {n / tv_s:,.0f}")
            script_s = statistics.median(r["script_s"] for r in rounds)
            print(f"script_records_per_s_{size} {n / script_s:,.0f}")
            print(f"store_ceiling_records_per_s_{size} {n / ceiling_s:,.0f}")
            ratio = statistics.median(r["ratio"] for r in rounds)
            print(f"ratio_tickvault_vs_script_{size} {ratio:.2f}")
            print(f"ratio_tickvault_vs_store_ceiling_{size} {ceiling_s / tv_s:.2f}")
            print(f"peak_tree_rss_mb_{size} {max(r['peak_tree_rss_mb'] for r in rounds):.0f}")
            path.unlink()
    print(f"load_average_1m_end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
