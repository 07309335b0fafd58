"""End-to-end replay over NATS JetStream, against the embedded bus in the same run.

Starts its own ``nats-server`` (JetStream, file storage) on a free loopback port, then
measures on the same input, in interleaved rounds (median reported; the machine is shared):

* **nats e2e**: ``tickvault replay FILE --bus nats://...`` (parse → frames of many records
  per message → JetStream, every publish acknowledged → writer → DuckDB ``INSERT OR IGNORE``
  on natural keys → ack).
* **embedded e2e**: ``tickvault replay FILE`` on the default SQLite bus (``synchronous=FULL``).
* **publish references**: JetStream publishes of one record per message (awaited one by one,
  what a per-message publisher does) against tickvault's frames (pipelined).

Prints one ``name value`` line per figure; ratios are nats / reference.
Usage: ``python bench/nats_e2e.py [--records N] [--rounds N] [--naive N]``.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import NatsServer  # noqa: E402 - the repo root must be on the path first

from tickvault.bus.nats.bus import NatsBus  # noqa: E402
from tickvault.delivery.publisher import FramePublisher, SourcePump  # noqa: E402
from tickvault.sources.binance.sample import write_recording  # noqa: E402
from tickvault.sources.binance.wire import parse_values  # noqa: E402
from tickvault.sources.replay import ReplaySource  # noqa: E402


def cli_replay(path: Path, data_dir: Path, bus_url: str | None) -> dict[str, float]:
    args = [sys.executable, "-m", "tickvault", "replay", str(path), "--data-dir", str(data_dir)]
    if bus_url is not None:
        args += ["--bus", bus_url]
    proc = subprocess.run([*args, "--json"], capture_output=True, text=True, check=True)
    summary: dict[str, float] = json.loads(proc.stdout)
    return summary


async def naive_publisher(lines: list[bytes], url: str) -> float:
    """One awaited JetStream publish per record."""
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="naive", subjects=["naive"])
    started = time.perf_counter()
    for line in lines:
        kind, row = parse_values(line)
        await js.publish("naive", orjson.dumps([kind, row]))
    elapsed = time.perf_counter() - started
    await nc.close()
    return len(lines) / elapsed


async def framed_publisher(path: Path, url: str) -> tuple[float, int]:
    """tickvault's publishing side alone: parse → frames → NatsBus.append."""
    bus = NatsBus.from_url(url)
    publisher = FramePublisher(bus, "ticks")
    pump = SourcePump(publisher, asyncio.Event(), asyncio.Event())
    started = time.perf_counter()
    await pump.run(ReplaySource([path]))
    elapsed = time.perf_counter() - started
    await bus.close()
    return publisher.stats.records / elapsed, publisher.stats.frames


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--naive", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3, help="e2e runs per bus (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tv-nats-bench-") as tmp:
        workdir = Path(tmp)
        server = NatsServer(workdir / "nats").start()
        try:
            rec = write_recording(workdir / "in.jsonl", args.records, duplicate_share=0.0, seed=5)
            print(f"machine_cpus {os.cpu_count()}")
            print(f"records {rec.unique_records}")
            nats_rates, embedded_rates = [], []
            for i in range(args.rounds):
                for rates, bus_url in (
                    (nats_rates, f"{server.url}?prefix=e2e{i}_"),
                    (embedded_rates, None),
                ):
                    run = cli_replay(rec.path, workdir / f"data-{i}-{bus_url is None}", bus_url)
                    assert run["drained"] and run["stored"] == rec.unique_records, run
                    rates.append(run["stored"] / run["seconds"])
            nats_e2e = statistics.median(nats_rates)
            embedded_e2e = statistics.median(embedded_rates)
            print(f"e2e_rounds {args.rounds} (median reported)")
            print(f"nats_e2e_records_per_s {nats_e2e:,.0f}")
            print(f"embedded_e2e_records_per_s {embedded_e2e:,.0f}")
            print(f"ratio_nats_e2e_vs_embedded_e2e {nats_e2e / embedded_e2e:.2f}")

            framed, frames = asyncio.run(framed_publisher(rec.path, f"{server.url}?prefix=pub_"))
            lines = rec.path.read_bytes().splitlines()[: args.naive]
            naive = asyncio.run(naive_publisher(lines, server.url))
            print(f"nats_framed_publish_records_per_s {framed:,.0f} ({frames} messages)")
            print(f"nats_one_record_per_publish_records_per_s {naive:,.0f}")
            print(f"ratio_framed_vs_one_record_per_publish {framed / naive:.1f}")
            print(f"load_average_1m {os.getloadavg()[0]:.2f}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
