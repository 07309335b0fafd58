"""The Kafka bus against one real Kafka broker (KRaft, ``tests/kafka_server.py``).

* The topics tickvault creates carry the settings of its URL, as the broker reports them:
  ``retention.ms`` / ``retention.bytes`` (the replay window ``tickvault rebuild`` relies
  on), ``min.insync.replicas``; and the producer is idempotent with ``acks=all``.
* A broker ``kill -9`` and restart while records flow: the writer acknowledges only after
  the store committed, so whatever the broker lost in flight is re-read: 0 lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from tickvault.bus.kafka.bus import KafkaBus
from tickvault.service.rebuild import rebuild
from tickvault.stores.duckdb.store import DuckDBStore

from .kafka_flow import Flow, G, S, frame
from .kafka_server import KafkaServer
from .polling import eventually


def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ResourceType.TOPIC, topic)
    return {k: v.value for k, v in admin.describe_configs([res])[res].result(30).items()}


async def test_topics_are_created_with_the_configured_retention_and_min_insync(
    kafka_server: KafkaServer,
) -> None:
    url = kafka_server.url(retention="36h", retention_bytes=50_000_000, partitions=4)
    bus = KafkaBus.from_url(url)
    try:
        await bus.ensure_group(S, G)
        topic = bus.options.topic(S)
        config = _topic_config(kafka_server.bootstrap, topic)
        assert config["retention.ms"] == str(36 * 3_600_000)
        assert config["retention.bytes"] == "50000000"
        assert config["cleanup.policy"] == "delete"
        # min_insync defaults to 2, capped at the replication factor (one broker here).
        assert config["min.insync.replicas"] == "1"
        md = AdminClient({"bootstrap.servers": kafka_server.bootstrap}).list_topics(timeout=30)
        assert len(md.topics[topic].partitions) == 4
        # Dead letters and the group registry are kept forever.
        assert _topic_config(kafka_server.bootstrap, bus.options.dlq_topic)["retention.ms"] == "-1"
        # What `tickvault status` shows: confirmed by the broker, not echoed from the URL.
        assert await bus.retention(S) == {
            "retention_ms": 36 * 3_600_000,
            "retention_bytes": 50_000_000,
            "min_insync_replicas": 1,
            "source": "broker",
        }
        producer = bus.options.producer_config()
        assert producer["enable.idempotence"] is True and producer["acks"] == "all"
        # The broker's own log shows the producer is idempotent: its batches carry a
        # producer id and sequence numbers (a plain producer writes producerId -1).
        (entry_id,) = await bus.append(S, [b"one record"])
        partition = int(entry_id.split(":")[0])
        batches = [
            line
            for line in kafka_server.dump_log(topic, partition).splitlines()
            if "baseOffset:" in line
        ]
        assert batches and all("producerId: -1" not in b for b in batches)
        assert all("baseSequence: -1" not in b for b in batches)
    finally:
        await bus.close()


async def test_broker_kill9_and_restart_while_records_flow_loses_nothing(
    kafka_server: KafkaServer, tmp_path: Path
) -> None:
    """On the session broker (restarted before the test ends: same ports, same log dir)."""
    url = kafka_server.url(group_protocol="consumer", partitions=3, timeout_ms=10_000)
    flow = await Flow(url, tmp_path, frames=250).start()
    try:
        await eventually(lambda: flow.stored >= 2000, timeout=120, what="records stored")
        kafka_server.kill()  # kill -9 mid-run: appends and commits in flight are cut off
        stored_at_kill = flow.stored
        await asyncio.to_thread(kafka_server.start)  # it recovers its log; flow goes on
        await eventually(lambda: flow.stored > stored_at_kill + 1000, timeout=120, what="resumed")
        await flow.finish()
        await flow.assert_exact()
    finally:
        await flow.close()
        if not kafka_server.running:
            kafka_server.start()


async def test_rebuild_replays_what_the_topic_retains_into_the_store(
    kafka_server: KafkaServer, tmp_path: Path
) -> None:
    """Retention is the replay window: ``rebuild`` reads the records the topic still holds
    (``scan``: pages by partition and offset, bounded by append time) into a store."""
    bus = KafkaBus.from_url(kafka_server.url(partitions=3))
    store = DuckDBStore(tmp_path / "rebuilt.duckdb")
    try:
        await bus.ensure_group(S, G)
        ids = await bus.append(S, [frame(i, 10) for i in range(12)])  # 4 symbols, 3 partitions
        first = await bus.scan(S, since_ms=0, limit=5)
        rest = await bus.scan(S, since_ms=0, limit=100, after_id=first[-1].id)
        assert sorted(e.id for e in first + rest) == sorted(ids)  # each once, none skipped
        assert len({e.id for e in first + rest}) == 12
        assert await bus.scan(S, since_ms=int(time.time() * 1000) + 60_000) == []
        assert await bus.scan(S, since_ms=0, until_ms=min(e.appended_ms for e in first)) == []

        since = dt.datetime(2023, 11, 14)  # before the frames' event times (2023-11-14 22:13)
        report = await rebuild(bus, store, S, since)
        assert report.entries_scanned == 12 and report.inserted == 120
        again = await rebuild(bus, store, S, since)  # idempotent: nothing new
        assert again.inserted == 0 and again.already_stored == 120
    finally:
        await bus.close()
        await store.close()
