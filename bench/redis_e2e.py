"""End-to-end replay over the Redis bus, against references measured in the same run.

Starts its own redis-server (AOF, ``appendfsync always``: every acknowledged append is on
disk) on a free loopback port, then measures on the same input:

* **redis e2e**: ``tickvault replay FILE --bus redis://...`` (parse → frames of many records
  per entry → Redis Streams → writer → DuckDB ``INSERT OR IGNORE`` on natural keys → ack).
* **naive publisher**: the same lines parsed and sent with one awaited ``XADD`` per record
  (publishing only, on a subset: it is slow).
* **embedded e2e**: ``tickvault replay FILE`` on the default SQLite bus (``synchronous=FULL``).
* **writers**: a backlog already on the bus drained by one writer process, then by two
  writer processes in one consumer group (each with its own DuckDB file).

The two end-to-end figures are the medians of ``--rounds`` interleaved runs each.
Prints one ``name value`` line per figure; ratios are redis e2e / reference.
Usage: ``python bench/redis_e2e.py [--records N] [--naive N] [--writers-records N] [--rounds N]``.
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
from pathlib import Path

import orjson
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import RedisServer  # noqa: E402 - the repo root must be on the path first

from tickvault.bus import open_bus  # noqa: E402
from tickvault.delivery.publisher import FramePublisher, SourcePump  # noqa: E402
from tickvault.sources.binance.sample import write_recording  # noqa: E402
from tickvault.sources.binance.wire import parse_values  # noqa: E402
from tickvault.sources.replay import ReplaySource  # noqa: E402


def cli_replay(path: Path, data_dir: Path, bus_url: str | None) -> dict[str, float]:
    """Run ``tickvault replay`` and return its JSON summary."""
    args = [sys.executable, "-m", "tickvault", "replay", str(path), "--data-dir", str(data_dir)]
    if bus_url is not None:
        args += ["--bus", bus_url]
    proc = subprocess.run([*args, "--json"], capture_output=True, text=True, check=True)
    summary: dict[str, float] = json.loads(proc.stdout)
    return summary


async def naive_publisher(lines: list[bytes], url: str) -> float:
    """One awaited XADD per record: what a per-message publisher does."""
    client = aioredis.Redis.from_url(url)
    started = time.perf_counter()
    for line in lines:
        kind, row = parse_values(line)
        await client.xadd("naive", {"d": orjson.dumps([kind, row])})
    elapsed = time.perf_counter() - started
    await client.aclose()
    return len(lines) / elapsed


async def publish_backlog(bus_url: str, path: Path) -> None:
    bus = open_bus(bus_url)
    try:
        await bus.ensure_group("ticks", "writers")
        pump = SourcePump(FramePublisher(bus, "ticks"), asyncio.Event(), asyncio.Event())
        await pump.run(ReplaySource([path]))
    finally:
        await bus.close()


def drain_with_writers(bus_url: str, workdir: Path, n: int) -> tuple[float, int]:
    """Start ``n`` writer processes together on the backlog; (seconds, rows stored).

    The time runs from the first start to the last commit, so the writers' final
    "is anything left?" polling is not counted against either setup."""
    procs = [
        subprocess.Popen(
            [
                sys.executable, "-m", "tests.writer_process", bus_url,
                str(workdir / f"w{n}-{i}.duckdb"), f"bench-w{i}",
            ],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        for i in range(n)
    ]  # fmt: skip
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    span = max(r["last_commit_at"] for r in results) - min(r["started_at"] for r in results)
    return span, sum(r["inserted"] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--naive", type=int, default=20_000)
    parser.add_argument("--writers-records", type=int, default=600_000)
    parser.add_argument("--rounds", type=int, default=3, help="e2e runs per bus (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tv-redis-bench-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis").start()
        try:
            url = server.url
            rec = write_recording(workdir / "in.jsonl", args.records, duplicate_share=0.0, seed=5)
            print(f"machine_cpus {os.cpu_count()}")
            print(f"records {rec.unique_records}")
            print("redis_appendfsync always")

            # Interleaved rounds, median of each: the machine is shared and noisy.
            redis_rates, embedded_rates = [], []
            for i in range(args.rounds):
                for rates, bus_url in (
                    (redis_rates, f"{url}?prefix=e2e{i}:"),
                    (embedded_rates, None),
                ):
                    run = cli_replay(rec.path, workdir / f"data-{i}-{bus_url is None}", bus_url)
                    assert run["drained"] and run["stored"] == rec.unique_records, run
                    rates.append(run["stored"] / run["seconds"])
            redis_e2e = statistics.median(redis_rates)
            embedded_e2e = statistics.median(embedded_rates)
            lines = rec.path.read_bytes().splitlines()[: args.naive]
            naive = asyncio.run(naive_publisher(lines, url))

            print(f"e2e_rounds {args.rounds} (median reported)")
            print(f"redis_e2e_records_per_s {redis_e2e:,.0f}")
            print(f"naive_xadd_per_record_records_per_s {naive:,.0f}")
            print(f"ratio_redis_e2e_vs_naive {redis_e2e / naive:.1f}")
            print(f"embedded_e2e_records_per_s {embedded_e2e:,.0f}")
            print(f"ratio_redis_e2e_vs_embedded_e2e {redis_e2e / embedded_e2e:.2f}")

            wrec = write_recording(
                workdir / "backlog.jsonl", args.writers_records, duplicate_share=0.0, seed=9
            )
            rates = {}
            for n in (1, 2):
                bus_url = f"{url}?prefix=writers{n}:"
                asyncio.run(publish_backlog(bus_url, wrec.path))
                seconds, stored = drain_with_writers(bus_url, workdir, n)
                assert stored == wrec.unique_records, (stored, wrec.unique_records)
                rates[n] = stored / seconds
                print(f"drain_{n}_writer{'s' if n > 1 else ''}_records_per_s {rates[n]:,.0f}")
            print(f"ratio_two_writers_vs_one {rates[2] / rates[1]:.2f}")
            print(f"load_average_1m {os.getloadavg()[0]:.2f}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
