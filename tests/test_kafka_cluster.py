"""Three real Kafka nodes (KRaft quorum of three combined broker + controller nodes),
replication factor 3, ``min.insync.replicas=2``, records flowing into the store:

* one node ``kill -9``-ed mid-run: appends go on (two in-sync replicas remain), 0 lost;
* a second one killed: no append can be acknowledged by two replicas any more, so appends
  **fail** with ``BusUnavailable`` (an outage, reported and retried by the publisher),
  instead of being acknowledged by one replica and lost later;
* both restarted: everything the publisher retried lands, every record is stored once.

The cluster is started once for this module (three JVMs are expensive on two cores).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from .kafka_flow import Flow, G, S
from .kafka_server import KafkaCluster, kafka_cluster
from .polling import eventually


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    nodes = kafka_cluster(tmp_path_factory.mktemp("kafka-cluster"), size=3).start()
    yield nodes
    nodes.stop()


async def test_one_broker_down_loses_nothing_two_down_is_an_outage_not_a_loss(
    cluster: KafkaCluster, tmp_path: Path
) -> None:
    url = cluster.url(
        group_protocol="consumer", partitions=3, replication=3, min_insync=2, timeout_ms=6000
    )
    flow = Flow(url, tmp_path, frames=500)
    await flow.publisher.ensure_group(S, G)
    topic = flow.publisher.options.topic(S)
    md = AdminClient({"bootstrap.servers": cluster.bootstrap}).list_topics(timeout=30)
    assert {len(p.replicas) for p in md.topics[topic].partitions.values()} == {3}
    assert (await flow.publisher.retention(S))["min_insync_replicas"] == 2
    first, second, _third = cluster.nodes
    await flow.start()
    try:
        await eventually(lambda: flow.stored >= 2000, timeout=120, what="records stored")
        first.kill()  # one of three: two in-sync replicas remain
        appended = flow.appended
        await eventually(
            lambda: flow.appended > appended + 100 and flow.stored > appended * 50,
            timeout=120,
            what="appends and writes go on with one broker down",
        )
        second.kill()  # two of three: no quorum, no second in-sync replica
        failures = len(flow.failures)
        await eventually(
            lambda: len(flow.failures) > failures, timeout=120, what="appends fail loudly"
        )
        assert any("Kafka bus: append" in f for f in flow.failures[failures:])
        stalled_at = flow.appended
        first.launch()
        second.launch()  # both back (same ports and log dirs)
        await eventually(
            lambda: flow.appended > stalled_at + 20, timeout=180, what="appends resume"
        )
        await flow.finish(timeout=240)
        await flow.assert_exact()
    finally:
        await flow.close()
