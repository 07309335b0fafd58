"""Batching publisher: records in, frames out, one bus append per batch.

Contract: :meth:`FramePublisher.flush` returns only after every record added before the call
is durable on the bus: in a frame, or, when it breaks a rule of its kind (see
:mod:`tickvault.core.rules`; timestamps are checked against the live window for live sources and
the history window for the others), as a dead letter naming the rule. A bad record never
spoils the frame of its neighbours. Records added while a flush is in flight go into fresh
builders; when those fill up too, :meth:`add` waits for the flush (backpressure), so memory
stays bounded. A failed append keeps its frames and dead letters for the next flush: nothing
accepted is ever dropped here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tickvault.bus.base import NewDeadLetter
from tickvault.core.backoff import Backoff, retry
from tickvault.core.codec import FrameBuilder
from tickvault.core.errors import BusError
from tickvault.core.faults import resource_fault
from tickvault.core.records import Record, kind_of
from tickvault.core.rules import HISTORY, TimeWindow
from tickvault.sources.base import Source, SourceBatch

log = logging.getLogger(__name__)

_BUS_RETRY = Backoff(initial=0.05, cap=5.0, jitter="full")


@dataclass
class PublisherStats:
    records: int = 0
    frames: int = 0
    appends: int = 0
    rejected: int = 0
    last_append_at: float | None = None
    by_kind: dict[str, int] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    """Records refused at framing (a rule broken), by reason; each is a dead letter."""


class FrameSink(Protocol):
    """What the publisher needs: a :class:`~tickvault.bus.base.Bus`, or a
    :class:`~tickvault.delivery.failover.FailoverPublisher` in front of several buses and a
    spool."""

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[str]: ...

    async def add_dead_letters(
        self, stream: str, group: str | None, letters: Sequence[NewDeadLetter]
    ) -> int: ...


class FramePublisher:
    """Packs records into per-kind frames and appends them to ``stream`` on ``bus``."""

    def __init__(
        self,
        bus: FrameSink,
        stream: str,
        *,
        max_records: int = 5000,
        window: TimeWindow = HISTORY,
        live_window: TimeWindow | None = None,
    ) -> None:
        """``window``: plausible timestamps of records; ``live_window``: of records added
        with ``live=True`` (default: ``window``)."""
        self.bus = bus
        self.stream = stream
        self.max_records = max_records
        self.window = window
        self.live_window = live_window or window
        self.stats = PublisherStats()
        self._builders: dict[tuple[str, bool], FrameBuilder] = {}
        self._buffered = 0
        self._unsent: list[bytes] = []
        self._unsent_records = 0
        self._unsent_letters: list[NewDeadLetter] = []
        self._lock = asyncio.Lock()

    def _builder(self, kind: str, live: bool) -> FrameBuilder:
        builder = self._builders.get((kind, live))
        if builder is None:
            builder = self._builders[kind, live] = FrameBuilder(kind)
        return builder

    @property
    def buffered(self) -> int:
        """Records accepted but not yet confirmed by the bus."""
        return self._buffered + self._unsent_records

    def add_nowait(self, record: Record, *, live: bool = False) -> bool:
        """Buffer ``record``; return True when the buffer is full and should be flushed."""
        self._builder(kind_of(record), live).add(record)
        self._buffered += 1
        return self._buffered >= self.max_records

    def add_rows_nowait(
        self, kind: str, rows: list[tuple[Any, ...]], *, live: bool = False
    ) -> bool:
        """Buffer pre-normalised rows (tuples in the kind's column order) of one kind."""
        self._builder(kind, live).rows.extend(rows)
        self._buffered += len(rows)
        return self._buffered >= self.max_records

    async def add(self, record: Record) -> None:
        if self.add_nowait(record):
            await self.flush()

    async def flush(self) -> list[str]:
        """Append everything buffered. On a bus error the frames are kept (in order) and
        retried by the next flush; the error propagates so the caller can back off."""
        async with self._lock:
            if self._buffered:
                self._take_frames()
            ids: list[str] = []
            if self._unsent:
                payloads = list(self._unsent)
                ids = await self.bus.append(self.stream, payloads)
                del self._unsent[: len(payloads)]
                self.stats.records += self._unsent_records
                self._unsent_records = 0
                self.stats.frames += len(payloads)
                self.stats.appends += 1
                self.stats.last_append_at = time.time()
            if self._unsent_letters:
                letters = list(self._unsent_letters)
                await self.bus.add_dead_letters(self.stream, None, letters)
                del self._unsent_letters[: len(letters)]
                for letter in letters:
                    self.stats.refused[letter.reason] += 1
            return ids

    def _take_frames(self) -> None:
        """Turn the builders into frames (valid records) and dead letters (the others)."""
        history = self.window.bounds()
        live = self.live_window.bounds()
        refused = 0
        for (_, is_live), builder in self._builders.items():
            if not len(builder):
                continue
            frame, rejects = builder.take_checked(live if is_live else history)
            if frame is not None:
                self._unsent.append(frame)
            refused += len(rejects)
            self._unsent_letters.extend(
                NewDeadLetter(r.kind, r.reason, r.payload, r.key) for r in rejects
            )
        self._unsent_records += self._buffered - refused
        self._buffered = 0

    async def reject(self, letters: Sequence[NewDeadLetter]) -> int:
        """Dead-letter input that never became a record (parse failures), idempotently."""
        if not letters:
            return 0
        self.stats.rejected += len(letters)
        return await self.bus.add_dead_letters(self.stream, None, letters)


class SourcePump:
    """Moves one source's batches onto the bus through a publisher.

    Contract: a batch's records and rejects are durable on the bus before the source's
    ``commit(batch)`` runs, so a source that resumes from its checkpoint never skips
    anything. Bus errors are retried with capped backoff until ``give_up`` is set.
    """

    def __init__(self, publisher: FramePublisher, stop: asyncio.Event, give_up: asyncio.Event):
        self.publisher = publisher
        self.stop = stop
        self.give_up = give_up
        self.lines = 0
        self.parse_rejects: Counter[str] = Counter()
        """Input the source could not turn into records, by reason."""

    @property
    def rejects(self) -> Counter[str]:
        """Everything dead-lettered on the way in, by reason: input the source could not
        parse, and records the publisher refused for a broken rule."""
        return self.parse_rejects + self.publisher.stats.refused

    async def flush(self) -> None:
        def log_or_give_up(exc: BaseException, delay: float) -> None:
            if self.give_up.is_set():
                log.error(
                    "bus unavailable at shutdown: %d records not published (%s)",
                    self.publisher.buffered,
                    exc,
                )
                raise exc
            why = resource_fault(exc, "the bus") or exc
            log.warning("publish failed: %s; retrying in %.2fs", why, delay)

        await retry(
            self.publisher.flush, backoff=_BUS_RETRY, retry_on=BusError, on_error=log_or_give_up
        )

    async def _reject(self, letters: list[NewDeadLetter]) -> None:
        def log_or_give_up(exc: BaseException, delay: float) -> None:
            if self.give_up.is_set():
                raise exc
            log.warning("dead-lettering failed: %s; retrying in %.2fs", exc, delay)

        await retry(
            lambda: self.publisher.reject(letters),
            backoff=_BUS_RETRY,
            retry_on=BusError,
            on_error=log_or_give_up,
        )
        for letter in letters:
            self.parse_rejects[letter.reason] += 1

    async def run(self, source: Source) -> None:
        """Pump ``source`` until it ends or ``stop`` is set.

        Publishing batch N overlaps producing batch N+1: the bus write (and its fsync) runs
        on the bus's own thread while the next batch is parsed. Commits stay in order, each
        after its own batch is durable.
        """
        previous: asyncio.Task[None] | None = None
        try:
            live = source.live
            async for batch in source.batches():
                for record in batch.records:
                    if self.publisher.add_nowait(record, live=live):
                        await self.flush()
                for kind, rows in batch.rows.items():
                    self.publisher.add_rows_nowait(kind, rows, live=live)
                if previous is not None:
                    await previous
                previous = asyncio.create_task(self._complete(source, batch))
                await asyncio.sleep(0)  # let it hand the frames over before producing more
                if self.stop.is_set():
                    break
        finally:
            if previous is not None:
                await previous

    async def _complete(self, source: Source, batch: SourceBatch) -> None:
        await self.flush()
        if batch.rejects:
            await self._reject(batch.rejects)
        self.lines += batch.lines
        await source.commit(batch)
