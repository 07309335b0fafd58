"""Incident 002's exact topology: NATS primary, Kafka secondary, disk spool last.

Runs ``docs/examples/seed-002.toml`` with the servers swapped for a real ``nats-server`` and
librdkafka's mock Kafka cluster (three brokers, in this process): the real Pipeline
(synthetic source → FramePublisher → FailoverPublisher → one writer per bus → DuckDB).
NATS is stopped mid-run; frames must go to Kafka (not the spool, Kafka is healthy), the
Kafka writer must store them, and once NATS is back every generated record is stored
exactly once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

from tickvault.breaker import BreakerState
from tickvault.config import load_settings
from tickvault.pipeline import Pipeline
from tickvault.sources.synthetic import SyntheticSource

from .kafka_mock import KafkaMockCluster
from .polling import eventually
from .servers import NatsServer
from .test_failover import OUTAGE_S, RATE, assert_exact_contents, finish, hold, nats_url

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "seed-002.toml"


async def test_nats_stopped_mid_run_frames_go_to_kafka_and_the_store_is_exact(
    tmp_path: Path, kafka_mock_cluster: KafkaMockCluster
) -> None:
    example = load_settings(EXAMPLE, data_dir=tmp_path / "data", env={})
    assert example.bus_url.startswith("nats://")
    (kafka_example,) = example.bus.fallback
    assert kafka_example.startswith("kafka://") and "retention=7d" in kafka_example
    assert example.spool_path is not None

    primary = NatsServer(tmp_path / "nats").start()
    kafka_url = (
        kafka_mock_cluster.url(session_timeout_ms=3000) + "&" + (urlsplit(kafka_example).query)
    )
    settings = load_settings(
        EXAMPLE,
        data_dir=tmp_path / "data",
        bus_url=nats_url(primary),
        store_url=f"duckdb:///{tmp_path / 'ticks.duckdb'}",
        env={},
    )
    settings.bus.fallback = [kafka_url]
    settings.bus.spool_dir = str(tmp_path / "spool")
    settings.bus.health_check_s = 0.5
    settings.breaker.open_base_s = 0.2
    settings.breaker.open_max_s = 1.0
    settings.publisher.frame_records = 1000
    settings.writer.linger_ms = 20
    settings.upkeep.enabled = False
    source = SyntheticSource(rate=RATE, symbols=["EURUSD", "AUDUSD", "BTCUSDT"], seed=2)
    try:
        async with Pipeline(settings, [source], drain_timeout=60) as pipeline:
            run = asyncio.create_task(pipeline.run())
            by_bus = pipeline.failover.stats.frames_by_bus
            nats_writer, kafka_writer = pipeline.writers
            await eventually(lambda: nats_writer.stats.inserted > 5000, what="first rows")
            primary.stop()  # NATS stopped mid-run
            on_kafka = by_bus[1]
            await hold(
                OUTAGE_S,
                lambda: by_bus[1] > on_kafka + 5,
                lambda: kafka_writer.stats.inserted > 0,
                what="frames on Kafka, stored by its writer",
            )
            assert pipeline.failover.breakers[0].state is not BreakerState.CLOSED
            assert pipeline.failover.stats.frames_spooled == 0  # Kafka took them, not the spool
            primary.start()  # same port and store dir: NATS's own backlog drains too
            on_nats = by_bus[0]
            await eventually(lambda: by_bus[0] > on_nats + 5, what="NATS back in use")
            summary = await finish(pipeline, source, run)
            assert summary.drained and summary.backlog == 0 and summary.spool_backlog == 0
            assert nats_writer.stats.inserted > 0 and kafka_writer.stats.inserted > 0
            await assert_exact_contents(pipeline, source)
            status = await pipeline._status_op({})
            assert status["failover"]["buses"][1]["frames"] == by_bus[1]
    finally:
        primary.stop()
