"""Helpers for the stream upkeep tests: wait for idle times by polling, never by sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from tickvault.bus.base import Bus


async def poll_until(
    cond: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``cond`` every 10 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.01)


async def pending_idle_at_least(bus: Bus, stream: str, group: str, ms: int) -> None:
    """Wait until every pending entry of ``group`` has been idle for ``ms``."""

    async def cond() -> bool:
        rows = await bus.pending(stream, group)
        return bool(rows) and all(p.idle_ms >= ms for p in rows)

    await poll_until(cond, what=f"pending entries idle >= {ms} ms")


async def consumer_idle_at_least(bus: Bus, stream: str, group: str, name: str, ms: int) -> None:
    """Wait until consumer ``name`` has been idle for ``ms``."""

    async def cond() -> bool:
        return any(c.name == name and c.idle_ms >= ms for c in await bus.consumers(stream, group))

    await poll_until(cond, what=f"consumer {name} idle >= {ms} ms")
