"""Wait for a condition with a deadline (polling, never a fixed sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(cond: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {what or cond}")
        await asyncio.sleep(0.01)


def eventually_sync(cond: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {what or cond}")
        time.sleep(0.05)
