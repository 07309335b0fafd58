"""librdkafka's built-in mock cluster as the Kafka stand-in for the tests.

The cluster lives inside one librdkafka client instance (a producer configured with
``test.mock.num.brokers``); its brokers listen on loopback ports, and real producers and
consumers, in this process or in subprocesses, talk the Kafka protocol to them. It lives
as long as that client object: keep a :class:`KafkaMockCluster` alive for as long as
anything (a killed and restarted ``tickvault`` subprocess too) uses it.

What the mock cluster does not implement (librdkafka 2.x): CreateTopics, DescribeConfigs,
DescribeGroups/ListGroups, DeleteRecords. Topics are auto-created with 4 partitions; the
first join of a consumer group waits ~3 s (its initial rebalance delay).
"""

from __future__ import annotations

import uuid
from typing import Any

from confluent_kafka import Producer


class KafkaMockCluster:
    def __init__(self, brokers: int = 3) -> None:
        self._owner: Any = Producer(
            {"test.mock.num.brokers": brokers, "log_level": 0, "client.id": "tv-mock-cluster"}
        )
        md = self._owner.list_topics(timeout=10)
        assert len(md.brokers) == brokers, md.brokers
        self.bootstrap = ",".join(
            f"{b.host}:{b.port}" for b in sorted(md.brokers.values(), key=lambda b: b.id)
        )

    def url(self, prefix: str | None = None, **opts: str | int) -> str:
        prefix = prefix or f"t{uuid.uuid4().hex[:12]}"
        query = "&".join(f"{k}={v}" for k, v in opts.items())
        return f"kafka://{self.bootstrap}/{prefix}" + (f"?{query}" if query else "")

    def close(self) -> None:
        self._owner.flush(1)
        self._owner = None
