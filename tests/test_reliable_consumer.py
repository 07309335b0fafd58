"""ReliableConsumer: at-least-once handling for a user's own service, on SQLite and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sized

import pytest

from tickvault import Entry, ReliableConsumer
from tickvault.bus.base import Bus
from tickvault.bus.redis.bus import RedisBus

from .servers import RedisServer
from .stream_helpers import poll_until

S, G = "trade.intent", "execution"


@pytest.fixture(params=["sqlite", "redis"])
async def bus(request: pytest.FixtureRequest) -> Bus:
    """The buses with per-entry claims (``Capabilities.claim``), which this relies on."""
    factory: Callable[[], Awaitable[Bus]] = request.getfixturevalue(f"{request.param}_bus_factory")
    return await factory()


async def _run_until(consumer: ReliableConsumer, handled: Sized, n: int) -> None:
    """Run ``consumer`` until ``handled`` has ``n`` items, then stop it cleanly."""
    task = asyncio.create_task(consumer.run())

    async def enough() -> bool:
        return len(handled) >= n

    try:
        await poll_until(enough, what=f"{n} entries handled")
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=10)


async def test_handles_each_entry_once_acks_and_leaves_the_group_on_shutdown(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    payloads = [f"intent-{i}".encode() for i in range(50)]
    await bus.append(S, payloads)
    seen: list[bytes] = []

    async def handle(entry: Entry) -> None:
        seen.append(entry.payload)

    consumer = ReliableConsumer(bus, S, G, handle, consumer="exec-a", batch=8, block_ms=50)
    await _run_until(consumer, seen, 50)

    assert seen == payloads
    assert consumer.stats.handled == 50 and consumer.stats.failed == 0
    assert await bus.pending(S, G) == []
    assert "exec-a" not in {c.name for c in await bus.consumers(S, G)}


async def test_restart_with_the_same_name_handles_its_own_pending_entries_first(
    bus: Bus,
) -> None:
    await bus.ensure_group(S, G)
    await bus.append(S, [b"a", b"b", b"c"])
    await bus.read(S, G, "exec-a", 2, 100)  # a previous run read two, then was killed
    seen: list[Entry] = []

    async def handle(entry: Entry) -> None:
        seen.append(entry)

    # min_idle is far away: the entries can only come back as this name's own pending ones.
    consumer = ReliableConsumer(
        bus, S, G, handle, consumer="exec-a", block_ms=50, min_idle_ms=600_000
    )
    await _run_until(consumer, seen, 3)

    assert [(e.payload, e.delivery_count) for e in seen] == [(b"a", 2), (b"b", 2), (b"c", 1)]
    assert await bus.pending(S, G) == []


async def test_a_failing_handler_is_retried_after_min_idle_until_it_succeeds(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    await bus.append(S, [b"flaky"])
    attempts: list[int] = []
    done: list[Entry] = []

    async def handle(entry: Entry) -> None:
        attempts.append(entry.delivery_count)
        if len(attempts) < 3:
            raise ConnectionError("exchange unreachable")
        done.append(entry)

    consumer = ReliableConsumer(
        bus, S, G, handle, consumer="exec-a", min_idle_ms=50, claim_every_s=0.05, block_ms=50
    )
    await _run_until(consumer, done, 1)

    assert attempts == [1, 2, 3]
    assert await bus.pending(S, G) == [] and await bus.dead_letters(S) == []


async def test_shutdown_keeps_the_consumer_while_entries_are_pending_for_it(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    await bus.append(S, [b"always-fails"])
    attempts: list[Entry] = []

    async def handle(entry: Entry) -> None:
        attempts.append(entry)
        raise RuntimeError("bug")

    consumer = ReliableConsumer(bus, S, G, handle, consumer="exec-a", block_ms=50)
    await _run_until(consumer, attempts, 1)

    # Deleting the name now would drop the pending entry (XGROUP DELCONSUMER): it stays.
    (pending,) = await bus.pending(S, G)
    assert pending.consumer == "exec-a"
    assert "exec-a" in {c.name for c in await bus.consumers(S, G)}


async def test_runs_from_a_redis_url(redis_session_server: RedisServer) -> None:
    url = f"{redis_session_server.url}?prefix=rc-url:"
    bus = RedisBus.from_url(url)
    try:
        await bus.ensure_group(S, G)
        await bus.append(S, [b"x", b"y"])
        seen: list[bytes] = []

        async def handle(entry: Entry) -> None:
            seen.append(entry.payload)

        consumer = ReliableConsumer(url, S, G, handle, consumer="exec-url", block_ms=50)
        await _run_until(consumer, seen, 2)
        assert seen == [b"x", b"y"]
        assert await bus.pending(S, G) == []
    finally:
        await bus.close()
