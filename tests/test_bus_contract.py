"""The Bus contract, run against every backend in ``BUS_BACKENDS`` and the in-memory double
:class:`tickvault.testing.InMemoryBus`."""

from __future__ import annotations

import asyncio
import time

import pytest

from tickvault.bus.base import Bus, NewDeadLetter
from tickvault.testing import InMemoryBus

from .conftest import BUS_BACKENDS, BusFactory, peer_of

S, G = "ticks", "writers"


@pytest.fixture
def memory_bus_factory() -> BusFactory:
    async def make() -> Bus:
        return InMemoryBus()

    return make


@pytest.fixture(params=[*BUS_BACKENDS, "memory"])
def bus_factory(request: pytest.FixtureRequest) -> BusFactory:
    """The engines and the in-memory double (this suite only: other suites need engines)."""
    factory: BusFactory = request.getfixturevalue(f"{request.param}_bus_factory")
    return factory


async def _fill(bus: Bus, n: int, stream: str = S) -> list[str]:
    return await bus.append(stream, [f"payload-{i}".encode() for i in range(n)])


async def test_append_returns_increasing_ids_and_read_delivers_in_order(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    ids = await _fill(bus, 5)
    assert len(set(ids)) == 5
    entries = await bus.read(S, G, "c1", count=10, block_ms=100)
    assert [e.id for e in entries] == ids
    assert [e.payload for e in entries] == [f"payload-{i}".encode() for i in range(5)]
    assert all(e.delivery_count == 1 for e in entries)


async def test_read_blocks_then_returns_empty(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    started = time.monotonic()
    assert await bus.read(S, G, "c1", count=10, block_ms=150) == []
    assert time.monotonic() - started >= 0.1


async def test_read_wakes_up_on_append(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    reader = asyncio.create_task(bus.read(S, G, "c1", count=10, block_ms=5000))
    await asyncio.sleep(0)
    await _fill(bus, 1)
    entries = await asyncio.wait_for(reader, timeout=5)
    assert len(entries) == 1


async def test_ensure_group_is_idempotent_and_does_not_rewind(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    await _fill(bus, 3)
    assert len(await bus.read(S, G, "c1", 10, 100)) == 3
    await bus.ensure_group(S, G)
    assert await bus.read(S, G, "c1", 10, 50) == []


async def test_groups_are_independent(bus: Bus) -> None:
    await bus.ensure_group(S, "a")
    await bus.ensure_group(S, "b")
    await _fill(bus, 4)
    assert len(await bus.read(S, "a", "x", 10, 100)) == 4
    assert len(await bus.read(S, "b", "y", 10, 100)) == 4


async def test_pending_until_ack_and_ack_is_idempotent(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    await _fill(bus, 3)
    entries = await bus.read(S, G, "c1", 10, 100)
    pending = await bus.pending(S, G)
    assert [p.entry_id for p in pending] == [e.id for e in entries]
    assert all(p.consumer == "c1" and p.delivery_count == 1 for p in pending)
    assert await bus.ack(S, G, [entries[0].id]) == 1
    assert await bus.ack(S, G, [entries[0].id]) == 0
    assert [p.entry_id for p in await bus.pending(S, G)] == [e.id for e in entries[1:]]


async def test_two_consumers_never_get_the_same_entry(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    await _fill(bus, 50)
    a = await bus.read(S, G, "a", 20, 100)
    b = await bus.read(S, G, "b", 100, 100)
    assert {e.id for e in a}.isdisjoint({e.id for e in b})
    assert len(a) + len(b) == 50


async def test_own_pending_is_redelivered_after_restart(bus_factory) -> None:  # type: ignore[no-untyped-def]
    bus = await bus_factory()
    await bus.ensure_group(S, G)
    await _fill(bus, 3)
    first = await bus.read(S, G, "c1", 10, 100)
    await bus.ack(S, G, [first[0].id])
    again = await bus.read_own_pending(S, G, "c1", 10)
    assert [e.id for e in again] == [e.id for e in first[1:]]
    assert all(e.delivery_count == 2 for e in again)
    assert await bus.read_own_pending(S, G, "other", 10) == []


async def test_claim_stale_moves_only_idle_entries(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    await _fill(bus, 2)
    await bus.read(S, G, "dead", 10, 100)
    assert await bus.claim_stale(S, G, "live", min_idle_ms=60_000, count=10) == []
    await asyncio.sleep(0.06)
    if bus.capabilities.claim:
        claimed = await bus.claim_stale(S, G, "live", min_idle_ms=50, count=10)
    elif not bus.capabilities.per_entry_ack:
        # Declared fallback (Kafka): no claims; when the dead member leaves the group, the
        # rebalance gives its partitions to a live member, which re-reads from the last
        # commit. The delivery counts travel with the group's commit (kafka_counts), so the
        # new member's count goes on from the dead member's: 2.
        assert await bus.claim_stale(S, G, "live", min_idle_ms=50, count=10) == []
        live = peer_of(bus)  # another process's bus on the same topics
        try:
            await bus.close()
            claimed = []
            deadline = time.monotonic() + 30
            while len(claimed) < 2 and time.monotonic() < deadline:
                claimed += await live.read(S, G, "live", 10, 500)
            assert len(claimed) == 2
            assert all(e.delivery_count == 2 for e in claimed)
            assert {p.consumer for p in await live.pending(S, G)} == {"live"}
        finally:
            await live.close()
        return
    else:
        # Declared fallback (NATS): no claims; once the group's ack_wait has passed, the
        # server redelivers the idle entries to the next reader.
        assert await bus.claim_stale(S, G, "live", min_idle_ms=50, count=10) == []
        claimed = []
        deadline = time.monotonic() + 15
        while len(claimed) < 2 and time.monotonic() < deadline:
            claimed += await bus.read(S, G, "live", 10, 500)
    assert len(claimed) == 2
    assert all(e.delivery_count == 2 for e in claimed)
    assert {p.consumer for p in await bus.pending(S, G)} == {"live"}


async def test_consumers_and_delete_consumer_reports_lost_pending(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    await _fill(bus, 2)
    await bus.read(S, G, "a", 1, 100)
    await bus.read(S, G, "b", 1, 100)
    names = {c.name: c for c in await bus.consumers(S, G)}
    assert set(names) >= {"a", "b"}
    assert names["a"].pending == 1
    assert await bus.delete_consumer(S, G, "a") == 1
    assert "a" not in {c.name for c in await bus.consumers(S, G)}


async def test_dead_letter_moves_entry_with_reason_and_acks(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    await _fill(bus, 1)
    (entry,) = await bus.read(S, G, "c1", 10, 100)
    await bus.dead_letter(S, G, entry, "undecodable frame")
    assert await bus.pending(S, G) == []
    letters = await bus.dead_letters(S)
    assert len(letters) == 1
    assert letters[0].reason == "undecodable frame"
    assert letters[0].payload == entry.payload
    assert letters[0].entry_id == entry.id
    assert await bus.dead_letter_counts(S) == {"undecodable frame": 1}


async def test_add_dead_letters_is_idempotent_by_key(bus: Bus) -> None:
    letters = [
        NewDeadLetter("raw", "malformed JSON", b"{", "f:1"),
        NewDeadLetter("raw", "non-finite price", b'{"p":"NaN"}', "f:2"),
    ]
    assert await bus.add_dead_letters(S, None, letters) == 2
    assert await bus.add_dead_letters(S, None, letters) == 0
    assert await bus.dead_letter_counts(S) == {"malformed JSON": 1, "non-finite price": 1}
    got = await bus.get_dead_letter((await bus.dead_letters(S))[0].id)
    assert got is not None and got.payload == b"{"
    await bus.mark_requeued(got.id)
    assert len(await bus.dead_letters(S)) == 1
    assert len(await bus.dead_letters(S, include_requeued=True)) == 2


async def test_trim_removes_only_what_every_group_acknowledged(bus: Bus) -> None:
    await bus.ensure_group(S, "a")
    await bus.ensure_group(S, "b")
    ids = await _fill(bus, 4)
    ea = await bus.read(S, "a", "x", 10, 100)
    await bus.ack(S, "a", [e.id for e in ea])
    eb = await bus.read(S, "b", "y", 2, 100)
    await bus.ack(S, "b", [eb[0].id])
    trimmed = await bus.trim_acknowledged(S)
    info = await bus.info(S)
    if not bus.capabilities.per_entry_ack:
        # Declared fallback (Kafka, a log with offsets): the topic's retention removes old
        # records; nothing is trimmed early, and what is acknowledged stays readable.
        assert trimmed == 0 and info.length == 4
    else:
        assert trimmed == 1
        assert info.length == 3
        assert info.first_id == ids[1]
    rest = await bus.read(S, "b", "y", 10, 100)
    assert [e.id for e in rest] == ids[2:]


async def test_info_reports_lag_pending_and_consumers(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    await _fill(bus, 5)
    await bus.read(S, G, "c1", 2, 100)
    info = await bus.info(S)
    assert info.length == 5
    (group,) = [g for g in info.groups if g.name == G]
    assert group.pending == 2
    assert group.lag == 3
    assert group.consumers >= 1
    assert group.oldest_pending_age_ms is not None
    assert S in await bus.streams()


@pytest.mark.parametrize("n", [1, 250])
async def test_payloads_round_trip_bytes_exactly(bus: Bus, n: int) -> None:
    await bus.ensure_group(S, G)
    payloads = [bytes(range(256)) * (i % 3 + 1) for i in range(n)]
    await bus.append(S, payloads)
    got: list[bytes] = []
    while len(got) < n:
        batch = await bus.read(S, G, "c", 100, 100)
        assert batch
        got.extend(e.payload for e in batch)
    assert got == payloads


# -- retention and scan (the bus as a replay source for `tickvault rebuild`) -----------------


async def test_trim_retained_keeps_young_acknowledged_entries(bus: Bus) -> None:
    await bus.ensure_group(S, G)
    ids = await _fill(bus, 4)
    await bus.ack(S, G, [e.id for e in await bus.read(S, G, "c", 10, 100)])
    if not bus.capabilities.retention:
        assert await bus.trim_retained(S, keep_age_s=0) == 0
        assert (await bus.info(S)).length == 4
        return
    assert await bus.trim_retained(S, keep_age_s=3600) == 0
    held = await bus.scan(S, since_ms=0)
    assert [e.id for e in held] == ids
    assert [e.payload for e in held] == [f"payload-{i}".encode() for i in range(4)]
    assert all(abs(e.appended_ms - time.time() * 1000) < 60_000 for e in held)


async def test_trim_retained_never_passes_unacknowledged_entries(bus: Bus) -> None:
    if not bus.capabilities.retention:
        return
    await bus.ensure_group(S, "a")
    await bus.ensure_group(S, "b")
    ids = await _fill(bus, 5)
    await bus.ack(S, "a", [e.id for e in await bus.read(S, "a", "x", 10, 100)])
    eb = await bus.read(S, "b", "y", 3, 100)
    await bus.ack(S, "b", [eb[0].id, eb[2].id])  # ids[1] still pending on b
    assert await bus.trim_retained(S, keep_age_s=0) == 1
    assert [e.id for e in await bus.scan(S, since_ms=0)] == ids[1:]
    assert [e.id for e in await bus.read(S, "b", "y", 10, 100)] == ids[3:]


async def test_scan_pages_and_bounds_by_append_time(bus: Bus) -> None:
    if not bus.capabilities.retention:
        return
    ids = await _fill(bus, 7)
    first = await bus.scan(S, since_ms=0, limit=3)
    second = await bus.scan(S, since_ms=0, limit=10, after_id=first[-1].id)
    assert [e.id for e in first + second] == ids
    assert await bus.scan(S, since_ms=int(time.time() * 1000) + 60_000) == []
    assert await bus.scan(S, since_ms=0, until_ms=first[0].appended_ms) == []
