"""Run a source the way the pump does and keep what it yields; a movable clock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from typing import Any

from tickvault.bus.base import NewDeadLetter
from tickvault.sources.base import Source


class OffsetClock:
    """``time.monotonic()`` plus an offset the test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Collected:
    """``async with Collected(source) as got:`` iterates ``source.batches()`` in a task,
    committing each batch, and keeps every row and reject."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.rejects: list[NewDeadLetter] = []
        self.batches = 0
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collected:
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for batch in self.source.batches():
            self.batches += 1
            for kind, rows in batch.rows.items():
                self.rows[kind].extend(rows)
            self.rejects.extend(batch.rejects)
            await self.source.commit(batch)

    def ids(self, kind: str, symbol: str) -> list[int]:
        """Key ids (column 2) of ``kind`` rows for ``symbol``, in arrival order."""
        return [r[2] for r in self.rows[kind] if r[1] == symbol]

    def gaps(self, channel: str | None = None) -> list[tuple[Any, ...]]:
        return [g for g in self.rows["gap"] if channel is None or g[2] == channel]

    def gap_state(self) -> dict[tuple[str, str, int, int], str]:
        """``(symbol, channel, from, to) → current status`` (the final row wins over open)."""
        state: dict[tuple[str, str, int, int], str] = {}
        for g in self.rows["gap"]:
            key = (g[1], g[2], g[3], g[4])
            if g[6] != "open" or key not in state:
                state[key] = g[6]
        return state

    async def stop(self) -> None:
        assert self.task is not None
        stop = getattr(self.source, "stop", None)
        if callable(stop):
            stop()
        await asyncio.wait_for(self.task, 20)

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None and not self.task.done() and exc[0] is None:
            await self.stop()  # graceful: the final batch carries what is still in flight
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await self.source.close()
