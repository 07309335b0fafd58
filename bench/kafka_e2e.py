"""End-to-end replay over a real Kafka broker against the embedded bus, in one run.

Measured on the same input, with exactly what ``tickvault replay`` runs (producer process →
bus → writer → DuckDB ``INSERT OR IGNORE`` → commit/ack):

* **embedded**: the default SQLite bus (``synchronous=FULL``), the reference.
* **kafka**: ``kafka://`` on a real Apache Kafka node (KRaft, the version pinned in
  ``scripts/kafka/pom.xml``, started by ``tests/kafka_server.py`` on loopback with a 320 MiB
  heap): idempotent producer, ``acks=all``, frames split per symbol, a consumer group with
  synchronous commits that also carry the delivery counts.
* **kafka_mock** (``--mock``): the same on librdkafka's in-process mock cluster, which keeps
  its log in memory: the client side of tickvault's Kafka path without a server.

Prints one ``name value`` line per figure; the ratios are kafka / embedded.
Usage: ``python bench/kafka_e2e.py [--records N] [--protocol classic|consumer] [--mock]``
(run ``scripts/fetch-kafka.sh`` first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Producer  # noqa: E402
from tests.kafka_server import KafkaServer, kafka_version  # noqa: E402 - repo root first

from tickvault.core.config import load_settings  # noqa: E402
from tickvault.service.replay_job import plan_replay, run_replay  # noqa: E402
from tickvault.sources.binance.sample import write_recording  # noqa: E402


async def replay(path: Path, data_dir: Path, bus_url: str | None) -> tuple[float, int]:
    settings = load_settings(None, data_dir=data_dir, bus_url=bus_url, env={})
    started = time.perf_counter()
    summary, _ = await run_replay(settings, plan_replay(settings, [path]))
    elapsed = time.perf_counter() - started
    assert summary.drained, summary
    return summary.stored / elapsed, summary.stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=120_000)
    parser.add_argument("--protocol", choices=["classic", "consumer"], default="consumer")
    parser.add_argument("--mock", action="store_true", help="also measure the mock cluster")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tv-bench-") as tmp:
        workdir = Path(tmp)
        rec = write_recording(workdir / "in.jsonl", args.records, duplicate_share=0.0, seed=5)
        server = KafkaServer(workdir / "kafka").start()
        try:
            print(f"machine_cpus {os.cpu_count()}")
            print(f"records {rec.unique_records}")
            print(f"kafka_broker_version {kafka_version()}")
            print(f"kafka_group_protocol {args.protocol}")
            embedded, n1 = asyncio.run(replay(rec.path, workdir / "embedded", None))
            url = server.url("bench", group_protocol=args.protocol)
            kafka, n2 = asyncio.run(replay(rec.path, workdir / "kafka", url))
            assert n1 == n2 == rec.unique_records, (n1, n2, rec.unique_records)
            print(f"embedded_e2e_records_per_s {embedded:,.0f}")
            print(f"kafka_broker_e2e_records_per_s {kafka:,.0f}")
            print(f"ratio_kafka_broker_vs_embedded {kafka / embedded:.2f}")
        finally:
            server.kill()
        if args.mock:
            cluster = Producer({"test.mock.num.brokers": 3, "log_level": 0})
            brokers = cluster.list_topics(timeout=10).brokers.values()
            bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)
            mock_url = f"kafka://{bootstrap}/bench?group_protocol={args.protocol}"
            mock, n3 = asyncio.run(replay(rec.path, workdir / "mock", mock_url))
            assert n3 == rec.unique_records
            print(f"kafka_mock_e2e_records_per_s {mock:,.0f}")
            print(f"ratio_kafka_mock_vs_embedded {mock / embedded:.2f}")
        print(f"load_average_1m {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
