"""Incident 003 (zombie consumers and stale pending entries), on the SQLite and Redis buses.

The incident: an execution service named its consumer after its PID, so each restart left a
dead consumer behind, and entries a crashed process had read but not acknowledged stayed
pending forever. The runbook's fix (claim stale entries, delete idle consumers with nothing
pending) is :class:`~tickvault.delivery.upkeep.StreamUpkeep`; these are its regression tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from tickvault.bus.base import Bus, Entry
from tickvault.delivery.consumer import ReliableConsumer
from tickvault.delivery.upkeep import StreamUpkeep, UpkeepPolicy
from tickvault.guardian.actions import ActionContext, ActionRunner
from tickvault.guardian.journal import Journal

from .stream_helpers import consumer_idle_at_least, pending_idle_at_least, poll_until

S, G = "trade.intent", "execution"
CRASHED = "execution-prod-1-3933260"
LIVE = "execution-prod-1"


@pytest.fixture(params=["sqlite", "redis"])
async def bus(request: pytest.FixtureRequest) -> Bus:
    """The buses with per-entry claims (``Capabilities.claim``), which this relies on."""
    factory: Callable[[], Awaitable[Bus]] = request.getfixturevalue(f"{request.param}_bus_factory")
    return await factory()


async def _intents(bus: Bus, n: int) -> list[bytes]:
    await bus.ensure_group(S, G)
    payloads = [f'{{"intent": {i}}}'.encode() for i in range(n)]
    await bus.append(S, payloads)
    return payloads


async def test_crashed_consumers_stale_entries_are_claimed_and_processed(bus: Bus) -> None:
    payloads = await _intents(bus, 3)
    assert len(await bus.read(S, G, CRASHED, 10, 100)) == 3  # read, then the process died
    await pending_idle_at_least(bus, S, G, 200)
    handled: list[Entry] = []

    async def handler(entries: Sequence[Entry]) -> None:
        handled.extend(entries)
        await bus.ack(S, G, [e.id for e in entries])

    policy = UpkeepPolicy(min_idle_ms=200, zombie_idle_ms=3_600_000)
    report = await StreamUpkeep(bus, S, G, LIVE, policy, handler=handler).run_once()

    assert report.claimed == 3 and report.processed == 3 and report.dead_lettered == 0
    assert sorted(e.payload for e in handled) == sorted(payloads)
    assert all(e.delivery_count == 2 for e in handled)
    assert await bus.pending(S, G) == []
    # The crashed consumer is below the zombie threshold: kept, even with nothing pending.
    assert CRASHED in report.kept_consumers and report.deleted_consumers == []


async def test_crashed_consumers_entries_are_processed_by_a_reliable_consumer(bus: Bus) -> None:
    payloads = await _intents(bus, 4)
    await bus.read(S, G, CRASHED, 10, 100)
    await pending_idle_at_least(bus, S, G, 150)
    seen: list[bytes] = []

    async def handle(entry: Entry) -> None:
        seen.append(entry.payload)

    consumer = ReliableConsumer(bus, S, G, handle, consumer=LIVE, min_idle_ms=150, block_ms=50)
    task = asyncio.create_task(consumer.run())

    async def all_handled() -> bool:
        return len(seen) >= 4

    await poll_until(all_handled, what="the crashed consumer's entries handled")
    consumer.stop()
    await asyncio.wait_for(task, timeout=10)
    assert sorted(seen) == sorted(payloads)
    assert await bus.pending(S, G) == []


async def test_zombie_with_nothing_pending_is_deleted(bus: Bus) -> None:
    await _intents(bus, 2)
    entries = await bus.read(S, G, CRASHED, 10, 100)
    await bus.ack(S, G, [e.id for e in entries])
    await consumer_idle_at_least(bus, S, G, CRASHED, 300)

    policy = UpkeepPolicy(min_idle_ms=100, zombie_idle_ms=300)
    report = await StreamUpkeep(bus, S, G, LIVE, policy).run_once()

    assert report.deleted_consumers == [CRASHED]
    assert CRASHED not in {c.name for c in await bus.consumers(S, G)}
    (action,) = [c for c in report.consumers if c.name == CRASHED]
    assert action.action == "deleted" and action.pending == 0


async def test_consumer_with_pending_entries_is_never_deleted_before_they_are_claimed(
    bus: Bus,
) -> None:
    payloads = await _intents(bus, 3)
    await bus.read(S, G, CRASHED, 10, 100)
    await consumer_idle_at_least(bus, S, G, CRASHED, 300)
    await pending_idle_at_least(bus, S, G, 300)

    # Idle past the zombie threshold, but its entries are not claimable yet: it must stay.
    strict = UpkeepPolicy(min_idle_ms=600_000, zombie_idle_ms=300)
    report = await StreamUpkeep(bus, S, G, LIVE, strict).run_once()
    assert report.deleted_consumers == [] and CRASHED in report.kept_consumers
    assert report.claimed == 0
    pending = await bus.pending(S, G)
    assert len(pending) == 3 and {p.consumer for p in pending} == {CRASHED}

    # A dry run says it would claim them and then delete the consumer, and changes nothing.
    policy = UpkeepPolicy(min_idle_ms=300, zombie_idle_ms=300)
    dry = await StreamUpkeep(bus, S, G, LIVE, policy).run_once(dry_run=True)
    assert dry.claimed == 3 and dry.deleted_consumers == [CRASHED]
    assert [p.consumer for p in await bus.pending(S, G)] == [CRASHED] * 3
    assert CRASHED in {c.name for c in await bus.consumers(S, G)}

    # The real pass (no handler, as ExecStartPre runs it) claims first, then deletes.
    report = await StreamUpkeep(bus, S, G, LIVE, policy).run_once()
    assert report.claimed == 3 and report.deleted_consumers == [CRASHED]
    pending = await bus.pending(S, G)
    assert len(pending) == 3 and {p.consumer for p in pending} == {LIVE}
    assert CRASHED not in {c.name for c in await bus.consumers(S, G)}
    # Nothing was lost: the live consumer re-reads them as its own pending entries.
    own = await bus.read_own_pending(S, G, LIVE, 10)
    assert sorted(e.payload for e in own) == sorted(payloads)


async def test_live_consumer_is_untouched(bus: Bus) -> None:
    await _intents(bus, 4)
    mine = await bus.read(S, G, LIVE, 2, 100)
    before = await bus.pending(S, G)

    policy = UpkeepPolicy(min_idle_ms=10_000, zombie_idle_ms=20_000)
    report = await StreamUpkeep(bus, S, G, "recover-prod-1", policy).run_once()

    assert report.claimed == 0 and report.deleted_consumers == []
    assert LIVE in report.kept_consumers
    after = await bus.pending(S, G)
    assert [(p.entry_id, p.consumer, p.delivery_count) for p in after] == [
        (p.entry_id, p.consumer, p.delivery_count) for p in before
    ]
    assert [p.entry_id for p in after] == [e.id for e in mine]
    assert LIVE in {c.name for c in await bus.consumers(S, G)}


async def test_upkeep_dead_letters_an_entry_delivered_too_often(bus: Bus) -> None:
    await _intents(bus, 1)
    await bus.read(S, G, CRASHED, 10, 100)
    for _ in range(4):  # the consumer crash-looped on it: 5 deliveries so far
        await bus.read_own_pending(S, G, CRASHED, 10)
    await pending_idle_at_least(bus, S, G, 100)

    policy = UpkeepPolicy(min_idle_ms=100, zombie_idle_ms=3_600_000, max_deliveries=5)
    report = await StreamUpkeep(bus, S, G, LIVE, policy).run_once()

    assert report.claimed == 1 and report.dead_lettered == 1
    assert await bus.pending(S, G) == []
    (letter,) = await bus.dead_letters(S)
    assert letter.delivery_count == 6
    assert letter.reason == "delivered 6 times (max 5)"
    assert letter.payload == b'{"intent": 0}'


async def test_poison_entry_ends_in_the_dead_letter_queue_after_max_deliveries(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    await bus.append(S, [b"ok-1", b"poison", b"ok-2"])
    calls: dict[bytes, int] = {}

    async def handle(entry: Entry) -> None:
        calls[entry.payload] = calls.get(entry.payload, 0) + 1
        if entry.payload == b"poison":
            raise ValueError("cannot execute this intent")

    consumer = ReliableConsumer(
        bus, S, G, handle, consumer=LIVE, min_idle_ms=50, claim_every_s=0.05, block_ms=50,
        max_deliveries=3,
    )  # fmt: skip
    task = asyncio.create_task(consumer.run())

    async def dead_lettered() -> bool:
        return len(await bus.dead_letters(S)) == 1

    await poll_until(dead_lettered, what="the poison entry dead-lettered")
    consumer.stop()
    await asyncio.wait_for(task, timeout=10)

    (letter,) = await bus.dead_letters(S)
    assert letter.payload == b"poison"
    assert letter.delivery_count == 4
    assert letter.reason == "delivered 4 times (max 3)"
    assert calls == {b"ok-1": 1, b"poison": 3, b"ok-2": 1}
    assert await bus.pending(S, G) == []
    assert consumer.stats.dead_lettered == 1 and consumer.stats.failed == 3
    # A clean shutdown with nothing pending removes the consumer's own name.
    assert LIVE not in {c.name for c in await bus.consumers(S, G)}


async def test_guardian_upkeep_never_takes_the_live_consumers_own_entries(
    bus: Bus, tmp_path: Path
) -> None:
    """The live incident: a store outage left the writer holding its in-flight batch; the
    guardian's upkeep moved it to a consumer named ``guardian`` that reads nothing. Now the
    guardian claims to the live writer, leaves that writer's own entries alone, and hands a
    dead consumer's entries to the writer's handler."""
    payloads = await _intents(bus, 6)
    held = await bus.read(S, G, LIVE, 3, 100)  # the live writer's in-flight batch
    await pending_idle_at_least(bus, S, G, 200)
    handled: list[Entry] = []

    async def writer_process(entries: Sequence[Entry]) -> None:
        handled.extend(entries)
        await bus.ack(S, G, [e.id for e in entries])

    journal = Journal(tmp_path / "g.sqlite3")
    ctx = ActionContext(bus=bus, stream=S, group=G, consumer=LIVE, upkeep_handler=writer_process)
    runner = ActionRunner(ctx, journal, clock=time.time)
    params = {"min_idle_ms": 200}
    report = await runner.run("stream_upkeep", f"bus/{S}/{G}", params)
    assert report.ok and report.detail["claimed"] == 0 and handled == []
    pending = await bus.pending(S, G)
    assert [(p.entry_id, p.consumer) for p in pending] == [(e.id, LIVE) for e in held]
    assert {c.name for c in await bus.consumers(S, G)} == {LIVE}

    # A crashed consumer's entries, on the other hand, go to the writer and are stored.
    crashed = await bus.read(S, G, CRASHED, 3, 100)
    await pending_idle_at_least(bus, S, G, 200)
    report = await runner.run("stream_upkeep", f"bus/{S}/{G}", params)
    assert report.ok and report.detail["processed"] == len(crashed) == 3
    assert sorted(e.payload for e in handled) == sorted(payloads[3:])
    assert {p.consumer for p in await bus.pending(S, G)} == {LIVE}

    # Without a known live consumer the action is not even available.
    assert not ActionRunner(ActionContext(bus=bus), journal, clock=time.time).available(
        "stream_upkeep"
    )
    journal.close()
