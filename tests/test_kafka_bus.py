"""Kafka-specific behaviour: per-symbol keys and order (real broker), retention gaps
(librdkafka's mock cluster, whose size-capped log drops old records at once), and the
delivery-count encoding. The shared contract is in ``tests/test_bus_contract.py``."""

from __future__ import annotations

import json

from tickvault.bus import open_bus
from tickvault.bus.kafka import counts as kafka_counts
from tickvault.bus.kafka.bus import KafkaBus, split_by_symbol
from tickvault.core.codec import column_values, decode_frame, encode_records
from tickvault.core.records import Trade

from .kafka_mock import KafkaMockCluster
from .kafka_server import KafkaServer

S, G = "ticks", "writers"


def _trade(symbol: str, i: int) -> Trade:
    return Trade(
        exchange="binance",
        symbol=symbol,
        trade_id=i,
        price=100.0 + i,
        qty=1.0,
        ts_event=1_700_000_000_000_000 + i,
        ts_recv=1_700_000_000_000_000 + i,
        buyer_is_maker=False,
    )


def test_a_mixed_frame_is_split_per_symbol_in_row_order() -> None:
    (payload,) = encode_records([_trade(s, i) for i, s in enumerate("ABABBA")])
    parts = split_by_symbol(payload)
    assert [k for k, _ in parts] == [b"A", b"B"]
    ids = {k: column_values(decode_frame(v).cols["trade_id"]) for k, v in parts}
    assert ids == {b"A": [0, 2, 5], b"B": [1, 3, 4]}
    (single,) = encode_records([_trade("C", 1), _trade("C", 2)])
    assert split_by_symbol(single) == [(b"C", single)]  # one symbol: sent as it is
    assert split_by_symbol(b"not a frame") == [(b"-", b"not a frame")]


async def test_one_symbols_records_stay_in_order_in_one_partition(
    kafka_server: KafkaServer,
) -> None:
    """On the real session broker (six partitions)."""
    bus = open_bus(kafka_server.url(group_protocol="consumer", partitions=6))
    assert isinstance(bus, KafkaBus)
    try:
        await bus.ensure_group(S, G)
        for start in range(0, 400, 40):  # mixed frames, appended in order
            await bus.append(
                S, encode_records([_trade(s, i) for i in range(start, start + 40) for s in "XYZ"])
            )
        seen: dict[str, list[int]] = {}
        partitions: dict[str, set[str]] = {}
        while batch := await bus.read(S, G, "c", 100, 300):
            for entry in batch:
                frame = decode_frame(entry.payload)
                (symbol,) = set(column_values(frame.cols["symbol"]))
                seen.setdefault(symbol, []).extend(column_values(frame.cols["trade_id"]))
                partitions.setdefault(symbol, set()).add(entry.id.split(":")[0])
        assert seen == {s: list(range(400)) for s in "XYZ"}
        assert all(len(p) == 1 for p in partitions.values())
    finally:
        await bus.close()


async def test_records_retention_removed_before_they_were_stored_become_gap_letters(
    kafka_mock_cluster: KafkaMockCluster,
) -> None:
    """Incident 002's lesson: retention shorter than an outage loses data. The mock cluster
    keeps at most 5 MiB per partition; a group that fell further behind must not skip the
    lost range silently."""
    url = kafka_mock_cluster.url(group_protocol="consumer")
    bus, publisher = KafkaBus.from_url(url), KafkaBus.from_url(url)
    writer: KafkaBus | None = None
    try:
        await bus.ensure_group(S, G)
        await publisher.append(S, [b"first"])
        (entry,) = await bus.read(S, G, "c", 10, 5000)
        partition = entry.id.split(":")[0]
        await bus.ack(S, G, [entry.id])  # committed: the group goes on at offset 1
        await bus.close()  # the writer is down; the backlog outgrows the retention
        for _ in range(4):
            await publisher.append(S, [bytes(200_000)] * 10)  # no symbol: one partition
        writer = KafkaBus.from_url(url)
        got = []
        while batch := await writer.read(S, G, "c", 100, 1000):
            got += batch
            await writer.ack(S, G, [e.id for e in batch])
        assert got and {e.id.split(":")[0] for e in got} == {partition}
        resumed_at = int(got[0].id.split(":")[1])
        assert resumed_at > 1  # the mock dropped the oldest records
        (gap,) = [x for x in await writer.dead_letters(S) if x.kind == "gap"]
        assert json.loads(gap.payload)["first"] == 1
        assert json.loads(gap.payload)["last"] == resumed_at - 1
        assert gap.reason == "removed by retention before it was stored"
        assert writer.retention_gaps == 1
    finally:
        for b in (bus, publisher, writer):
            if b is not None:
                await b.close()


def test_delivery_counts_round_trip_through_commit_metadata() -> None:
    counts = {10: 2, 11: 2, 12: 1, 15: 3}
    text = kafka_counts.encode(counts, start=11)
    assert text == "tv1:11-11x2,12-12x1,15-15x3"  # offsets below the commit point drop out
    assert kafka_counts.decode(text) == {11: 2, 12: 1, 15: 3}
    assert kafka_counts.encode({5: 1}, start=6) == ""
    assert kafka_counts.encode({1: 4, 2: 4, 3: 4}, start=0) == "tv1:1-3x4"


def test_oversized_counts_merge_keeping_the_higher_count_and_bad_metadata_is_ignored() -> None:
    # Alternating counts cannot form runs: 4,000 runs do not fit, so neighbours merge.
    counts = {o: 1 + o % 2 for o in range(4000)}
    text = kafka_counts.encode(counts, start=0)
    assert len(text) <= kafka_counts.MAX_METADATA
    back = kafka_counts.decode(text)
    assert set(back) == set(counts)
    assert all(back[o] >= n for o, n in counts.items())  # never understated
    for foreign in (
        None,
        "",
        "someone else's metadata",
        "tv1:5-3x1",
        "tv1:1-2xq",
        "tv1:0-999999x1",
    ):
        assert kafka_counts.decode(foreign) == {}
