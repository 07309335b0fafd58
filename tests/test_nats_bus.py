"""What the NATS bus does beyond the shared contract: redelivery instead of claims, the
max-deliveries advisory feeding the dead-letter queue, server-side duplicate suppression,
and outages of a real nats-server (SIGKILL, restart on the same port and store dir)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tickvault.bus import open_bus
from tickvault.bus.nats.bus import NatsBus
from tickvault.core.errors import BusUnavailable, ConfigError

from .servers import NatsServer

S, G = "ticks", "writers"


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv = NatsServer(tmp_path / "nats").start()
    yield srv
    srv.stop()


async def test_entries_over_max_deliver_become_dead_letters_via_the_advisory(
    server: NatsServer,
) -> None:
    bus = NatsBus.from_url(f"{server.url}?ack_wait_ms=300&max_deliver=2")
    await bus.ensure_group(S, G)
    (entry_id,) = await bus.append(S, [b"poison"])
    deliveries = []
    deadline = time.monotonic() + 15
    while len(deliveries) < 2 and time.monotonic() < deadline:  # a reader that never acks
        deliveries += [e.delivery_count for e in await bus.read(S, G, "c", 10, 400)]
    assert deliveries == [1, 2]

    # The server emits the advisory when it would deliver a third time, i.e. on a pull;
    # every read also turns captured advisories into dead letters.
    deadline = time.monotonic() + 15
    while not await bus.dead_letters(S):
        assert time.monotonic() < deadline, "no dead letter from the advisory"
        assert await bus.read(S, G, "c", 10, 300) == []
        await bus.feed_advisories()
    (letter,) = await bus.dead_letters(S)
    assert letter.reason == "delivered 2 times (max 2)"
    assert letter.payload == b"poison" and letter.entry_id == entry_id and letter.group == G
    assert (await bus.info(S)).groups[0].pending == 0  # never delivered again
    assert await bus.read(S, G, "c", 10, 700) == []
    await bus.feed_advisories()
    assert len(await bus.dead_letters(S)) == 1  # feeding twice records it once
    await bus.close()


async def test_a_retried_publish_is_suppressed_by_its_msg_id(server: NatsServer) -> None:
    bus = NatsBus.from_url(server.url)
    first = await bus.append(S, [b"a", b"b"])
    bus._ids = iter(range(2))  # the ids a retry of the same call would carry
    again = await bus.append(S, [b"a", b"b"])
    assert again == first
    assert (await bus.info(S)).length == 2
    await bus.close()


async def test_server_killed_and_restarted_keeps_entries_and_pending(server: NatsServer) -> None:
    bus = NatsBus.from_url(f"{server.url}?retry_s=0.5&ack_timeout_ms=300&ack_wait_ms=1000")
    await bus.ensure_group(S, G)
    ids = await bus.append(S, [b"x", b"y", b"z"])
    got = await bus.read(S, G, "c", 1, 500)
    assert [e.id for e in got] == ids[:1]
    server.kill()
    with pytest.raises(BusUnavailable):
        await bus.append(S, [b"lost?"])
    server.start()  # same port and store dir
    rest: list[str] = []

    async def collect() -> bool:
        try:
            rest.extend(e.id for e in await bus.read(S, G, "c", 10, 300))
        except BusUnavailable:
            return False
        return set(rest) >= set(ids)

    deadline = time.monotonic() + 30
    while not await collect():  # the unacked first entry comes back after ack_wait
        assert time.monotonic() < deadline, rest
    await bus.ack(S, G, rest)
    info = await bus.info(S)
    assert info.length == 3 and info.groups[0].lag == 0
    await bus.close()


def test_urls(server: NatsServer) -> None:
    bus = open_bus("nats://127.0.0.1:1,127.0.0.1:2?replicas=3&prefix=a_&ack_wait_ms=5000")
    assert isinstance(bus, NatsBus)
    assert bus.options.servers == ("nats://127.0.0.1:1", "nats://127.0.0.1:2")
    assert bus.options.replicas == 3 and bus.options.ack_wait_s == 5.0
    for bad in ("nats://h:1?replicas=x", "nats://h:1?prefix=a.b", "nats://h:1?nope=1", "nats://"):
        with pytest.raises(ConfigError):
            open_bus(bad)
