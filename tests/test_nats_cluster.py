"""Acceptance 5: a three-node NATS cluster with an R3 stream; the stream leader is killed
mid-run; nothing is lost.

The pipeline connects to all three nodes (``nats://a,b,c?replicas=3``). JetStream
acknowledges an append only once a quorum (2 of 3) stored it, so killing any one node loses
nothing acknowledged; the client reconnects to a survivor and the stream elects a new
leader. Appends that fail meanwhile go to the disk spool and are drained afterwards.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tickvault.bus.nats.bus import NatsBus
from tickvault.service.pipeline import Pipeline
from tickvault.sources.synthetic import SyntheticSource

from .polling import eventually
from .servers import nats_cluster
from .test_failover import assert_exact_contents, finish, hold, outage_settings


async def test_r3_stream_survives_killing_its_leader(tmp_path: Path) -> None:
    nodes = nats_cluster(tmp_path / "cluster")
    for node in nodes:
        node.start()
    hosts = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    url = f"nats://{hosts}?replicas=3&retry_s=5&ack_timeout_ms=2000&ack_wait_ms=3000"
    settings = outage_settings(tmp_path, url, [])
    source = SyntheticSource(rate=3000.0, symbols=["BTCUSDT", "ETHUSDT"], seed=5)
    try:
        async with Pipeline(settings, [source], drain_timeout=90) as pipeline:
            run = asyncio.create_task(pipeline.run())
            await eventually(
                lambda: pipeline.writer.stats.inserted > 3000, timeout=60, what="first rows"
            )
            bus = pipeline.bus
            assert isinstance(bus, NatsBus)
            js = await bus.link.js()
            info = await js.stream_info(bus.names.stream("ticks"))
            assert info.config.num_replicas == 3
            assert info.cluster is not None and info.cluster.leader
            (leader,) = [n for n in nodes if n.name == info.cluster.leader]
            leader.kill()
            stored = pipeline.writer.stats.inserted
            await hold(
                4.0, lambda: pipeline.writer.stats.inserted > stored + 3000, what="ingest goes on"
            )
            summary = await finish(pipeline, source, run)
            assert summary.drained and summary.spool_backlog == 0
            await assert_exact_contents(pipeline, source)
            info = await js.stream_info(bus.names.stream("ticks"))
            assert info.cluster is not None and info.cluster.leader != leader.name
    finally:
        for node in nodes:
            node.stop()
