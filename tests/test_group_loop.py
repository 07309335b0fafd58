"""The consumer-group loop under the writer and ReliableConsumer, on the embedded bus."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest

from tickvault.bus.base import Bus, Entry
from tickvault.core.backoff import Backoff
from tickvault.core.errors import BatchRejected, BusError, BusUnavailable, StoreError
from tickvault.delivery.group_loop import GroupLoop, GroupStopped

S, G = "orders", "workers"
BusFactory = Callable[[], Awaitable[Bus]]


def _loop(
    bus: Bus,
    stop: asyncio.Event,
    *,
    claim_every_s: float = 3600.0,
    backoff: Backoff | None = None,
    fatal: tuple[type[BaseException], ...] = (),
    cancel_on_stop: bool = False,
    on_error: Callable[[BaseException], None] = lambda exc: None,
) -> GroupLoop:
    return GroupLoop(
        bus,
        S,
        G,
        "c1",
        stop,
        batch=4,
        claim_idle_ms=0,
        claim_every_s=claim_every_s,
        backoff=backoff or Backoff(initial=0.0, cap=0.0),
        retry_on=(BusError, StoreError),
        fatal=fatal,
        cancel_on_stop=cancel_on_stop,
        on_error=on_error,
    )


async def test_own_pending_first_then_new_entries_until_idle(
    sqlite_bus_factory: BusFactory,
) -> None:
    bus = await sqlite_bus_factory()
    await bus.ensure_group(S, G)
    await bus.append(S, [b"old-1", b"old-2"])
    assert len(await bus.read(S, G, "c1", 10, 0)) == 2  # delivered before a "crash"
    await bus.append(S, [b"new-1", b"new-2", b"new-3"])
    stop = asyncio.Event()
    loop = _loop(bus, stop)
    handed: list[list[bytes]] = []
    order: list[str] = []

    async def handle(entries: Sequence[Entry]) -> None:
        handed.append([e.payload for e in entries])
        await bus.ack(S, G, [e.id for e in entries])

    async def prepare() -> None:
        order.append("prepare")

    async def idle() -> bool:
        order.append("idle")
        return True

    interrupted = await loop.run(handle, prepare=prepare, idle=idle)
    assert not interrupted
    assert handed[0] == [b"old-1", b"old-2"]  # own pending before anything new
    assert [p for batch in handed[1:] for p in batch] == [b"new-1", b"new-2", b"new-3"]
    assert order == ["prepare", "idle"]
    assert await bus.pending(S, G) == []


async def test_own_pending_once_each_when_the_handler_leaves_it_pending(
    sqlite_bus_factory: BusFactory,
) -> None:
    bus = await sqlite_bus_factory()
    await bus.ensure_group(S, G)
    await bus.append(S, [b"poison"])
    await bus.read(S, G, "c1", 10, 0)
    stop = asyncio.Event()
    calls = 0

    async def fail(entries: Sequence[Entry]) -> None:
        nonlocal calls
        calls += 1  # never acknowledged: the entry stays pending

    await _loop(bus, stop).own_pending(fail, once_each=True)
    assert calls == 1
    assert len(await bus.pending(S, G)) == 1


async def test_a_stale_entry_of_another_consumer_is_claimed_when_due(
    sqlite_bus_factory: BusFactory,
) -> None:
    bus = await sqlite_bus_factory()
    await bus.ensure_group(S, G)
    await bus.append(S, [b"left-behind"])
    await bus.read(S, G, "crashed", 10, 0)
    loop = _loop(bus, asyncio.Event(), claim_every_s=0.0)
    (entry,) = await loop.claim_or_read()
    assert entry.payload == b"left-behind"
    assert [p.consumer for p in await bus.pending(S, G)] == ["c1"]
    loop.claim_every_s = 3600.0
    assert not loop.claim_due()  # claimed just now: the next claim waits claim_every_s


async def test_call_retries_counts_and_lets_fatal_errors_through(
    sqlite_bus_factory: BusFactory,
) -> None:
    bus = await sqlite_bus_factory()
    noted: list[str] = []
    loop = _loop(
        bus, asyncio.Event(), fatal=(BatchRejected,), on_error=lambda e: noted.append(str(e))
    )
    failures = [BusUnavailable("bus down"), StoreError("store down")]

    async def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    assert await loop.call(flaky) == "ok"
    assert noted == ["bus down", "store down"]

    async def refused() -> None:
        raise BatchRejected("value out of range")

    with pytest.raises(BatchRejected):
        await loop.call(refused)
    assert noted == ["bus down", "store down"]  # refused data is not an outage


async def test_a_stop_ends_a_failing_call(sqlite_bus_factory: BusFactory) -> None:
    bus = await sqlite_bus_factory()
    stop = asyncio.Event()
    slow = Backoff(initial=3600.0, cap=3600.0, jitter="none")
    loop = _loop(bus, stop, backoff=slow)

    async def down() -> None:
        stop.set()  # asked to stop during an outage
        raise BusUnavailable("down")

    with pytest.raises(GroupStopped):
        await asyncio.wait_for(loop.call(down), timeout=60)


async def test_cancel_on_stop_cuts_a_hanging_call(sqlite_bus_factory: BusFactory) -> None:
    bus = await sqlite_bus_factory()
    stop = asyncio.Event()
    loop = _loop(bus, stop, cancel_on_stop=True)
    started = asyncio.Event()
    cancelled = False

    async def hang() -> None:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled = True
            raise

    call = asyncio.create_task(loop.call(hang))
    await started.wait()
    stop.set()
    with pytest.raises(GroupStopped):
        await asyncio.wait_for(call, timeout=60)
    assert cancelled
