"""What the Redis bus does beyond the shared contract: keys, reconnects, missing entries, lag."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from tickvault.bus import open_bus
from tickvault.bus.redis.bus import RedisBus
from tickvault.core.errors import BusError, BusUnavailable
from tickvault.delivery.upkeep import StreamUpkeep, UpkeepPolicy

from .servers import RedisServer, free_port
from .stream_helpers import pending_idle_at_least, poll_until

S, G = "ticks", "writers"


@pytest.fixture
async def raw(redis_session_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_session_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def prefixed(redis_session_server: RedisServer) -> AsyncIterator[RedisBus]:
    bus = RedisBus.from_url(f"{redis_session_server.url}?prefix=p{uuid.uuid4().hex[:8]}:")
    yield bus
    await bus.close()


async def test_open_bus_selects_redis_and_prefix_isolates(
    redis_session_server: RedisServer,
) -> None:
    a = open_bus(f"{redis_session_server.url}?prefix=iso-a:")
    b = open_bus(f"{redis_session_server.url}?prefix=iso-b:")
    try:
        assert isinstance(a, RedisBus)
        await a.ensure_group("only-in-a", G)
        await a.append("only-in-a", [b"x"])
        assert "only-in-a" in await a.streams()
        assert "only-in-a" not in await b.streams()
    finally:
        await a.close()
        await b.close()


async def test_ensure_group_tolerates_a_group_created_by_someone_else(
    prefixed: RedisBus, raw: aioredis.Redis
) -> None:
    key = prefixed.prefix + S
    await raw.xgroup_create(key, G, id="0", mkstream=True)
    await prefixed.ensure_group(S, G)  # BUSYGROUP is not an error
    await prefixed.ensure_group(S, G)
    assert [g.name for g in (await prefixed.info(S)).groups] == [G]


async def test_frames_are_one_field_entries_and_foreign_entries_are_delivered(
    prefixed: RedisBus, raw: aioredis.Redis
) -> None:
    key = prefixed.prefix + S
    await prefixed.ensure_group(S, G)
    (own,) = await prefixed.append(S, [b"\x00frame\xff"])
    await raw.xadd(key, {"payload": b'{"side": "buy"}'})
    await raw.xadd(key, {"symbol": "BTCUSDT", "qty": "0.5"})
    rows = await raw.xrange(key, own, own)
    assert rows[0][1] == {b"d": b"\x00frame\xff"}
    entries = await prefixed.read(S, G, "c", 10, 100)
    assert [e.payload for e in entries[:2]] == [b"\x00frame\xff", b'{"side": "buy"}']
    assert orjson.loads(entries[2].payload) == {"symbol": "BTCUSDT", "qty": "0.5"}


async def test_claim_acknowledges_entries_the_stream_no_longer_holds(
    prefixed: RedisBus, raw: aioredis.Redis
) -> None:
    key = prefixed.prefix + S
    await prefixed.ensure_group(S, G)
    ids = await prefixed.append(S, [f"e{i}".encode() for i in range(5)])
    await prefixed.read(S, G, "crashed", 10, 100)
    await raw.xdel(key, ids[1], ids[3])
    await pending_idle_at_least(prefixed, S, G, 100)

    policy = UpkeepPolicy(min_idle_ms=100, zombie_idle_ms=3_600_000)
    report = await StreamUpkeep(prefixed, S, G, "live", policy).run_once()

    assert report.claimed == 3 and report.acked_missing == 2
    assert prefixed.missing_acked == 2
    pending = await prefixed.pending(S, G)
    assert [p.entry_id for p in pending] == [ids[0], ids[2], ids[4]]
    assert {p.consumer for p in pending} == {"live"}


async def test_own_pending_skips_and_acks_deleted_entries(
    prefixed: RedisBus, raw: aioredis.Redis
) -> None:
    await prefixed.ensure_group(S, G)
    ids = await prefixed.append(S, [b"a", b"b", b"c"])
    await prefixed.read(S, G, "c1", 10, 100)
    await raw.xdel(prefixed.prefix + S, ids[1])
    again = await prefixed.read_own_pending(S, G, "c1", 10)
    assert [(e.id, e.payload, e.delivery_count) for e in again] == [
        (ids[0], b"a", 2),
        (ids[2], b"c", 2),
    ]
    assert [p.entry_id for p in await prefixed.pending(S, G)] == [ids[0], ids[2]]


async def test_trim_keeps_unacknowledged_entries_of_every_group(prefixed: RedisBus) -> None:
    await prefixed.ensure_group(S, "fast")
    await prefixed.ensure_group(S, "slow")
    ids = await prefixed.append(S, [f"e{i}".encode() for i in range(6)])
    fast = await prefixed.read(S, "fast", "f", 10, 100)
    await prefixed.ack(S, "fast", [e.id for e in fast])
    slow = await prefixed.read(S, "slow", "s", 3, 100)
    await prefixed.ack(S, "slow", [slow[0].id, slow[2].id])  # slow[1] still pending

    assert await prefixed.trim_acknowledged(S) == 1
    info = await prefixed.info(S)
    assert info.first_id == ids[1] and info.length == 5
    again = await prefixed.read_own_pending(S, "slow", "s", 10)
    assert [e.payload for e in again] == [b"e1"]
    assert [e.id for e in await prefixed.read(S, "slow", "s", 10, 100)] == ids[3:]


async def test_lag_is_counted_when_redis_cannot_report_it(
    prefixed: RedisBus, raw: aioredis.Redis
) -> None:
    await prefixed.ensure_group(S, G)
    ids = await prefixed.append(S, [f"e{i}".encode() for i in range(6)])
    await prefixed.read(S, G, "c", 2, 100)
    await raw.xdel(prefixed.prefix + S, ids[3])  # a tombstone after last-delivered
    groups = await raw.xinfo_groups(prefixed.prefix + S)
    assert groups[0]["lag"] is None  # what Redis 7 says here
    (group,) = (await prefixed.info(S)).groups
    assert group.lag == 3 and group.pending == 2


async def test_dead_letter_stream_holds_reason_and_delivery_count(
    prefixed: RedisBus, raw: aioredis.Redis
) -> None:
    await prefixed.ensure_group(S, G)
    await prefixed.append(S, [b"poison"])
    (entry,) = await prefixed.read(S, G, "c", 10, 100)
    await prefixed.dead_letter(S, G, entry, "delivered 6 times (max 5)")
    await prefixed.dead_letter(S, G, entry, "delivered 6 times (max 5)")  # idempotent
    rows = await raw.xrange(f"{prefixed.prefix}{S}:dlq")
    assert len(rows) == 1
    fields = rows[0][1]
    assert fields[b"payload"] == b"poison"
    assert fields[b"reason"] == b"delivered 6 times (max 5)"
    assert fields[b"deliveries"] == b"1" and fields[b"entry_id"] == entry.id.encode()
    (letter,) = await prefixed.dead_letters(S)
    assert letter.id == f"{S}/{rows[0][0].decode()}"
    assert await prefixed.get_dead_letter(letter.id) == letter
    assert await prefixed.get_dead_letter("no-such-letter") is None
    await prefixed.mark_requeued(letter.id)
    await prefixed.mark_requeued(letter.id)  # twice is harmless
    assert await prefixed.dead_letter_counts(S) == {}
    with pytest.raises(BusError):
        await prefixed.mark_requeued(f"{S}/1-1")


async def _wait_for_blocked_client(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:

        async def blocked() -> bool:
            return any("b" in c["flags"] for c in await client.client_list())

        await poll_until(blocked, what="a client blocked in XREADGROUP")
    finally:
        await client.aclose()


async def test_reconnects_after_redis_restarts_and_keeps_acknowledged_appends(
    redis_server: RedisServer,
) -> None:
    bus = RedisBus.from_url(redis_server.url + "?retry_s=20")
    try:
        await bus.ensure_group(S, G)
        await bus.append(S, [b"before"])
        (first,) = await bus.read(S, G, "c", 10, 1000)
        await bus.ack(S, G, [first.id])
        reader = asyncio.create_task(bus.read(S, G, "c", 10, 15_000))
        await _wait_for_blocked_client(redis_server.url)
        await asyncio.to_thread(redis_server.restart)
        await bus.append(S, [b"after"])
        (entry,) = await asyncio.wait_for(reader, timeout=20)
        assert entry.payload == b"after"
        assert bus.reconnects >= 1
        info = await bus.info(S)  # the acknowledged append survived the restart (AOF)
        assert info.length == 2 and info.first_id == first.id
        assert await bus.pending(S, G) != []
    finally:
        await bus.close()


async def test_unreachable_redis_raises_bus_unavailable_after_the_retry_window() -> None:
    bus = RedisBus.from_url(f"redis://127.0.0.1:{free_port()}/0?retry_s=0.3")
    try:
        with pytest.raises(BusUnavailable):
            await bus.append(S, [b"x"])
        assert bus.reconnects >= 1
    finally:
        await bus.close()


async def test_reads_resume_after_redis_was_down_for_a_while(redis_server: RedisServer) -> None:
    bus = RedisBus.from_url(redis_server.url + "?retry_s=0.2")
    try:
        await bus.ensure_group(S, G)
        await bus.append(S, [b"one"])
        await asyncio.to_thread(redis_server.stop)
        with pytest.raises(BusUnavailable):
            await bus.read(S, G, "c", 10, 100)
        await asyncio.to_thread(redis_server.start)
        (entry,) = await bus.read(S, G, "c", 10, 1000)
        assert entry.payload == b"one"
    finally:
        await bus.close()
