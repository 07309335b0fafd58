"""End-to-end replay over Kafka (librdkafka's mock cluster) against the embedded bus.

Measured in one run, on the same input, with exactly what ``tickvault replay`` runs
(producer process → bus → writer → DuckDB ``INSERT OR IGNORE`` → commit/ack):

* **embedded**: the default SQLite bus (``synchronous=FULL``).
* **kafka**: ``kafka://`` on librdkafka's in-process mock cluster (three brokers on loopback,
  idempotent producer, ``acks=all``, frames split per symbol, a consumer group with
  synchronous commits). The mock keeps its log in memory and does no replication I/O, so
  this measures the client side of tickvault's Kafka path, not a Kafka server.

Prints one ``name value`` line per figure; the ratio is kafka / embedded.
Usage: ``python bench/kafka_e2e.py [--records N] [--protocol classic|consumer]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer

from tickvault.config import load_settings
from tickvault.replay_job import plan_replay, run_replay
from tickvault.sample import write_recording


async def replay(path: Path, data_dir: Path, bus_url: str | None) -> tuple[float, int]:
    settings = load_settings(None, data_dir=data_dir, bus_url=bus_url, env={})
    started = time.perf_counter()
    summary, _ = await run_replay(settings, plan_replay(settings, [path]))
    elapsed = time.perf_counter() - started
    assert summary.drained, summary
    return summary.stored / elapsed, summary.stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The mock cluster keeps at most 5 MiB per partition (it drops the oldest beyond that):
    # keep the input small enough that the writer never falls that far behind.
    parser.add_argument("--records", type=int, default=120_000)
    parser.add_argument("--protocol", choices=["classic", "consumer"], default="classic")
    args = parser.parse_args()
    cluster = Producer({"test.mock.num.brokers": 3, "log_level": 0})
    brokers = cluster.list_topics(timeout=10).brokers.values()
    bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)
    url = f"kafka://{bootstrap}/bench?group_protocol={args.protocol}"
    with tempfile.TemporaryDirectory(prefix="tv-bench-") as tmp:
        workdir = Path(tmp)
        rec = write_recording(workdir / "in.jsonl", args.records, duplicate_share=0.0, seed=5)
        print(f"machine_cpus {os.cpu_count()}")
        print(f"records {rec.unique_records}")
        embedded, n1 = asyncio.run(replay(rec.path, workdir / "embedded", None))
        kafka, n2 = asyncio.run(replay(rec.path, workdir / "kafka", url))
        assert n1 == n2 == rec.unique_records, (n1, n2, rec.unique_records)
        print(f"embedded_e2e_records_per_s {embedded:,.0f}")
        print(f"kafka_mock_e2e_records_per_s {kafka:,.0f}")
        print(f"ratio_kafka_vs_embedded {kafka / embedded:.2f}")
        print(f"kafka_group_protocol {args.protocol}")
        print(f"load_average_1m {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
