"""The in-memory doubles of :mod:`tickvault.testing` as a user would test a consumer with them.

Their contracts are checked by tests/test_bus_contract.py and tests/test_store_contract.py,
which run them next to the engines; this runs a ReliableConsumer end to end on the bus double.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from tickvault import Entry, ReliableConsumer
from tickvault.testing import InMemoryBus

from .stream_helpers import poll_until

S, G = "orders", "mine"


async def test_reliable_consumer_handles_retries_and_dead_letters_on_the_memory_bus() -> None:
    bus = InMemoryBus()
    await bus.ensure_group(S, G)
    await bus.append(S, [b"one", b"flaky", b"poison"])
    handled: list[bytes] = []
    flaky_attempts: list[int] = []

    async def handle(entry: Entry) -> None:
        if entry.payload == b"poison":
            raise ValueError("never valid")
        if entry.payload == b"flaky":
            flaky_attempts.append(entry.delivery_count)
            if len(flaky_attempts) < 2:
                raise ConnectionError("venue unreachable")
        handled.append(entry.payload)

    consumer = ReliableConsumer(
        bus,
        S,
        G,
        handle,
        consumer="c1",
        block_ms=50,
        min_idle_ms=20,
        claim_every_s=0.02,
        max_deliveries=2,
    )
    task = asyncio.create_task(consumer.run())

    async def settled() -> bool:
        return len(handled) == 2 and len(await bus.dead_letters(S)) == 1

    try:
        await poll_until(settled, what="two handled and one dead letter")
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=10)

    assert handled == [b"one", b"flaky"]
    assert flaky_attempts == [1, 2]
    (letter,) = await bus.dead_letters(S)
    assert letter.payload == b"poison" and letter.delivery_count > 2
    assert await bus.pending(S, G) == []
    assert "c1" not in {c.name for c in await bus.consumers(S, G)}


def test_the_doubles_are_not_imported_by_the_package_or_the_cli() -> None:
    code = (
        "import sys, tickvault, tickvault.cli; "
        "print('tickvault.testing' in sys.modules, 'tickvault.testing' in tickvault.__all__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]
