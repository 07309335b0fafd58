"""Incident 002's exact topology, end to end with real servers: NATS JetStream primary, Kafka
secondary (a real KRaft broker), disk spool last.

Runs ``docs/examples/seed-002.toml`` with the servers swapped for a real ``nats-server`` and
a real Kafka broker (``tests/kafka_server.py``): the real Pipeline (synthetic source →
FramePublisher → FailoverPublisher → one writer per bus → DuckDB). Then, as in the
incident's failure matrix:

1. NATS killed (``kill -9``) mid-run: frames go to Kafka (not the spool) and the Kafka
   writer stores them;
2. Kafka killed too: frames go to the spool;
3. Kafka restored: the spool drains to Kafka within seconds, and new frames follow it there;
4. NATS restored: the traffic returns to the primary; both writers finish what they hold.

(Draining to NATS is covered by ``tests/test_failover.py``.)

At every step ``status`` (``failover.path``) and ``/metrics`` (``tickvault_failover_path``)
name the path carrying the traffic. At the end every generated record is stored exactly
once and the spool is empty.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

from tickvault.core.config import load_settings
from tickvault.delivery.breaker import BreakerState
from tickvault.service.pipeline import Pipeline
from tickvault.sources.synthetic import SyntheticSource
from tickvault.web.metrics import PipelineCollector

from .kafka_server import KafkaServer
from .polling import eventually
from .servers import NatsServer
from .test_failover import OUTAGE_S, RATE, assert_exact_contents, finish, hold, nats_url

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "seed-002.toml"
DRAIN_WITHIN_S = 20.0
"""'Within seconds' on a loaded two-core test machine (a quiet one drains in about one)."""


def metric_path(pipeline: Pipeline) -> str:
    """The path ``/metrics`` reports as carrying traffic (``tickvault_failover_path`` = 1)."""
    for family in PipelineCollector(pipeline).collect():
        if family.name == "tickvault_failover_path":
            (path,) = [s.labels["path"] for s in family.samples if s.value == 1]
            return path
    raise AssertionError("no tickvault_failover_path metric")


async def test_nats_then_kafka_killed_then_both_restored_loses_and_duplicates_nothing(
    tmp_path: Path, kafka_server: KafkaServer
) -> None:
    example = load_settings(EXAMPLE, data_dir=tmp_path / "data", env={})
    assert example.bus_url.startswith("nats://")
    (kafka_example,) = example.bus.fallback
    assert kafka_example.startswith("kafka://") and "retention=7d" in kafka_example
    assert example.spool_path is not None

    primary = NatsServer(tmp_path / "nats").start()
    kafka = kafka_server  # the session's broker: killed and restarted (same ports and log)
    kafka_url = (
        kafka.url(group_protocol="consumer", partitions=3, timeout_ms=3000)
        + "&"
        + urlsplit(kafka_example).query
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
        async with Pipeline(settings, [source], drain_timeout=90) as pipeline:
            run = asyncio.create_task(pipeline.run())
            failover = pipeline.failover
            nats_name, kafka_name = failover.names
            by_bus = failover.stats.frames_by_bus
            nats_writer, kafka_writer = pipeline.writers
            assert pipeline.spool is not None
            spool = pipeline.spool

            async def path() -> str:
                status = await pipeline._status_op({})
                assert status["failover"]["path"] == metric_path(pipeline)
                return str(status["failover"]["path"])

            await eventually(lambda: nats_writer.stats.inserted > 5000, what="first rows")
            assert await path() == nats_name

            primary.kill()  # 1. NATS down: Kafka takes the frames
            on_kafka = by_bus[1]
            await hold(
                OUTAGE_S,
                lambda: by_bus[1] > on_kafka + 5,
                lambda: kafka_writer.stats.inserted > 0,
                what="frames on Kafka, stored by its writer",
            )
            assert failover.breakers[0].state is not BreakerState.CLOSED
            assert failover.stats.frames_spooled == 0  # Kafka took them, not the spool
            assert await path() == kafka_name
            assert failover.last_path == kafka_name

            kafka.kill()  # 2. Kafka down too: the spool takes them
            await hold(OUTAGE_S, lambda: spool.stats.backlog > 10, what="frames spooled")
            assert await path() == "spool" and failover.last_path == "spool"
            assert failover.breakers[1].state is not BreakerState.CLOSED

            await asyncio.to_thread(kafka.start)  # 3. Kafka back: the spool drains to it
            back = time.monotonic()
            await eventually(
                lambda: not spool.has_backlog, timeout=DRAIN_WITHIN_S, what="spool drained"
            )
            drained_in = time.monotonic() - back
            # Kafka's breaker closes after its trial successes; until then new frames may
            # still queue in the spool for a moment, then they follow the drain to Kafka.
            await eventually(lambda: failover.last_path == kafka_name, what="Kafka in use")
            assert await path() == kafka_name

            primary.start()  # 4. NATS back (same port and store dir): traffic returns to it
            await eventually(lambda: failover.last_path == nats_name, what="NATS in use")
            assert await path() == nats_name
            assert failover.breakers[1].state is BreakerState.CLOSED  # Kafka healthy too
            summary = await finish(pipeline, source, run)
            assert summary.drained and summary.backlog == 0 and summary.spool_backlog == 0
            assert failover.stats.frames_drained == failover.stats.frames_spooled > 10
            assert nats_writer.stats.inserted > 0 and kafka_writer.stats.inserted > 0
            assert list(spool.directory.glob("seg-*")) == []
            await assert_exact_contents(pipeline, source)
            status = await pipeline._status_op({})
            assert status["failover"]["buses"][1]["frames"] == by_bus[1]
            assert drained_in < DRAIN_WITHIN_S
    finally:
        primary.stop()
        if not kafka.running:
            kafka.start()
