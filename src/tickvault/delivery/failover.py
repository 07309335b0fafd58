"""Failover publishing: primary bus → secondary bus(es) → local disk spool.

:class:`FailoverPublisher` has the small surface
:class:`~tickvault.delivery.publisher.FramePublisher` uses from a bus (``append``,
``add_dead_letters``), so the publisher sits on top of it unchanged.

Contract
--------
* ``append`` returns once **one** place has the frames durably: the first bus (in configured
  order) whose circuit breaker is closed and that acknowledged the append, else the spool.
  Frames are never split across places within one call.
* While the spool holds anything, new frames are appended to the spool too, behind the
  older ones, so frames reach a bus in the order they were accepted. When the drain is down
  to its last batch, new appends wait for that batch (one bus round trip) and then go to
  the bus directly: a live source cannot keep the spool from ever emptying.
* Each bus has its own :class:`~tickvault.delivery.breaker.CircuitBreaker`. A failed append opens it
  (``bus_failure_threshold``, default 1: a bus append already retries internally for the
  bus's ``retry_s``), so later appends skip a dead bus at once instead of waiting again.
* Live appends never probe a sick bus. The background task :meth:`run` does, every
  ``check_every_s`` (2 s): it drains the spool, oldest first, to the first bus whose breaker
  admits a call (the drain append is the half-open trial), or, with nothing to drain, makes
  a cheap ``info`` call as the trial. A bus is back in use once its breaker closed.
* A drained batch is committed in the spool (cursor fsync'd; segments deleted once every
  frame in them is committed) only after the bus acknowledged all of it. A crash in between
  re-sends that batch: harmless, because store writes are idempotent on natural keys.
* :meth:`path` names where an append made now goes (a bus's name, ``spool``, or ``none``),
  and ``last_path`` where the last one went; ``snapshot()`` (``tickvault status``) and
  ``/metrics`` (``tickvault_failover_path``) show both, so an operator sees at any moment
  which path carries the traffic.
* With ``spool=None`` and every bus failing, ``append`` raises
  :class:`~tickvault.core.errors.BusUnavailable` and the publisher keeps the frames (and holds
  the source back) as it always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tickvault.bus.base import Bus, NewDeadLetter
from tickvault.core.backoff import wait_unless_stopped
from tickvault.core.codec import decode_frame
from tickvault.core.errors import BusError, BusUnavailable, DecodeError
from tickvault.core.events import EVENTS, EventLog
from tickvault.delivery.breaker import BreakerOpen, BreakerPolicy, BreakerState, CircuitBreaker
from tickvault.delivery.spool import FRAME, Spool, SpoolRecord

log = logging.getLogger(__name__)
T = TypeVar("T")


def _bus_failure(exc: BaseException) -> bool:
    return isinstance(exc, BusError)


def frame_records(payloads: Sequence[bytes]) -> int:
    """Records carried by these frames (for exact drop counts); undecodable ones count 0."""
    n = 0
    for p in payloads:
        with contextlib.suppress(DecodeError):
            n += len(decode_frame(p))
    return n


@dataclass
class FailoverStats:
    frames_by_bus: list[int] = field(default_factory=list)
    frames_spooled: int = 0
    frames_drained: int = 0
    letters_spooled: int = 0
    failed_appends: int = 0


class FailoverPublisher:
    """``buses[0]`` is the primary; the others are fallbacks in order; then ``spool``."""

    def __init__(
        self,
        buses: Sequence[Bus],
        spool: Spool | None,
        *,
        names: Sequence[str] | None = None,
        policy: BreakerPolicy | None = None,
        check_every_s: float = 2.0,
        drain_batch: int = 256,
        probe_stream: str = "ticks",
        events: EventLog | None = None,
    ) -> None:
        if not buses:
            raise ValueError("FailoverPublisher needs at least one bus")
        self.buses = list(buses)
        self.spool = spool
        self.names = list(names or [f"bus{i}" for i in range(len(buses))])
        self.events = events if events is not None else EVENTS
        base = policy or BreakerPolicy(failure_threshold=1)
        # A down bus is tried again at least every check interval.
        bus_policy = BreakerPolicy(
            failure_threshold=base.failure_threshold,
            success_threshold=base.success_threshold,
            open_base_s=min(base.open_base_s, check_every_s),
            open_max_s=min(base.open_max_s, check_every_s),
            jitter=base.jitter,
        )
        self.breakers = [
            CircuitBreaker(f"bus:{name}", bus_policy, events=self.events, is_failure=_bus_failure)
            for name in self.names
        ]
        self.check_every_s = check_every_s
        self.drain_batch = drain_batch
        self.probe_stream = probe_stream
        self.stats = FailoverStats(frames_by_bus=[0] * len(self.buses))
        self._spooling = False
        self._handoff: asyncio.Event | None = None
        self.last_path: str | None = None
        """Where the last append went: a bus's name or ``spool`` (None before any)."""

    # -- the publisher's surface ------------------------------------------------------------

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[str]:
        if not payloads:
            return []
        while self._handoff is not None:  # the drain is sending the spool's last batch
            await self._handoff.wait()
        if self.spool is not None and not self.spool.opened:
            await self.spool.open()
        if not (self.spool is not None and self.spool.has_backlog):
            for i, bus in enumerate(self.buses):
                ids = await self._try(i, functools.partial(bus.append, stream, payloads))
                if ids is not None:
                    self.stats.frames_by_bus[i] += len(payloads)
                    self.last_path = self.names[i]
                    return list(ids)
        if self.spool is None:
            raise BusUnavailable(f"every bus failed ({', '.join(self.names)}) and no spool")
        self._note_spooling()
        if not await self.spool.append(stream, payloads, lambda: frame_records(payloads)):
            return []  # dropped by the spool's quota policy: counted and alerted there
        self.stats.frames_spooled += len(payloads)
        self.last_path = "spool"
        return [
            f"spool:{self.spool.stats.appended - len(payloads) + k}" for k in range(len(payloads))
        ]

    async def add_dead_letters(
        self, stream: str, group: str | None, letters: Sequence[NewDeadLetter]
    ) -> int:
        if not letters:
            return 0
        for i, bus in enumerate(self.buses):
            n = await self._try(i, functools.partial(bus.add_dead_letters, stream, group, letters))
            if n is not None:
                return int(n)
        if self.spool is None:
            raise BusUnavailable(f"every bus failed ({', '.join(self.names)}) and no spool")
        self._note_spooling()
        await self.spool.append_letters(stream, group, letters)
        self.stats.letters_spooled += len(letters)
        return len(letters)

    async def _try(self, i: int, op: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``op`` on bus ``i`` if its breaker is closed; None if skipped or failed."""
        breaker = self.breakers[i]
        if breaker.state is not BreakerState.CLOSED:
            return None
        try:
            return await breaker.call(op)
        except BreakerOpen:
            return None
        except BusError as exc:
            self.stats.failed_appends += 1
            log.warning("failover: bus %s failed: %s", self.names[i], exc)
            return None

    def _note_spooling(self) -> None:
        if not self._spooling:
            self._spooling = True
            self.events.emit(
                "failover",
                "failover.spooling",
                f"no bus takes frames ({', '.join(self.names)}): spooling to"
                f" {self.spool.directory if self.spool else '-'}",
                level="warning",
            )

    # -- health checks and the spool drain --------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: probe sick buses and drain the spool (see the module contract)."""
        try:
            if self.spool is not None:
                await self.spool.open()  # counts what a previous run left, drains it first
            await self._run(stop)
        finally:
            self._release_handoff()

    def _release_handoff(self) -> None:
        if self._handoff is not None:
            self._handoff.set()
            self._handoff = None

    async def _run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            moved = 0
            try:
                if self.spool is not None and self.spool.has_backlog:
                    moved = await self.drain_once()
                else:
                    await self._probe()
            except Exception as exc:  # never let the health task die
                self._release_handoff()
                log.warning("failover: health check failed: %s", exc)
            if moved:
                continue  # drain at full speed while a bus takes it
            delay = self.check_every_s
            for b in self.breakers:
                if b.state is not BreakerState.CLOSED:
                    delay = min(delay, max(b.retry_in_s(), 0.05))
            await wait_unless_stopped(delay, stop)

    async def _probe(self) -> None:
        for i, bus in enumerate(self.buses):
            breaker = self.breakers[i]
            if breaker.state is BreakerState.CLOSED or not breaker.available:
                continue
            with contextlib.suppress(BreakerOpen, BusError):
                await breaker.call(functools.partial(bus.info, self.probe_stream))

    async def drain_once(self) -> int:
        """Move one batch from the spool to the first bus that takes it; return how many
        records were committed (0 if no bus would take them)."""
        assert self.spool is not None
        records, pos = await self.spool.read(max_records=self.drain_batch)
        if not records:
            await self.spool.commit(pos, 0)  # only skipped (torn/corrupt) bytes were left
            return 0
        for i, bus in enumerate(self.buses):
            breaker = self.breakers[i]
            if not breaker.available:
                continue
            try:
                await breaker.call(functools.partial(self._send, bus, records))
            except (BreakerOpen, BusError) as exc:
                log.warning("failover: draining to %s failed: %s", self.names[i], exc)
                continue
            await self.spool.commit(pos, len(records))
            frames = sum(r.type == FRAME for r in records)
            self.stats.frames_drained += frames
            self.stats.frames_by_bus[i] += frames
            if self.spool.has_backlog:
                if self._handoff is None and self.spool.stats.backlog <= self.drain_batch:
                    self._handoff = asyncio.Event()  # hold new appends for the last batch
                return len(records)
            self._release_handoff()
            if self._spooling:
                self._spooling = False
                self.events.emit(
                    "failover",
                    "failover.drained",
                    f"spool drained to {self.names[i]}",
                    level="info",
                    frames_drained=self.stats.frames_drained,
                )
            return len(records)
        self._release_handoff()
        return 0

    @staticmethod
    async def _send(bus: Bus, records: Sequence[SpoolRecord]) -> None:
        """Send records in order, one append per run of frames of one stream."""
        run: list[bytes] = []
        run_stream = ""
        for rec in records:
            if rec.type == FRAME and (not run or rec.stream == run_stream):
                run.append(rec.payload)
                run_stream = rec.stream
                continue
            if run:
                await bus.append(run_stream, run)
                run = []
            if rec.type == FRAME:
                run, run_stream = [rec.payload], rec.stream
            else:
                await bus.add_dead_letters(rec.stream, rec.group, list(rec.letters))
        if run:
            await bus.append(run_stream, run)

    def path(self) -> str:
        """Where an append made now goes: the first bus whose breaker is closed (while the
        spool holds no backlog), else ``spool``, else ``none`` (appends fail)."""
        if not (self.spool is not None and self.spool.has_backlog):
            for name, breaker in zip(self.names, self.breakers, strict=True):
                if breaker.state is BreakerState.CLOSED:
                    return name
        return "spool" if self.spool is not None else "none"

    def snapshot(self) -> dict[str, Any]:
        return {
            "path": self.path(),
            "last_path": self.last_path,
            "buses": [
                {"name": name, "frames": n, "breaker": b.snapshot()}
                for name, n, b in zip(
                    self.names, self.stats.frames_by_bus, self.breakers, strict=True
                )
            ],
            "frames_spooled": self.stats.frames_spooled,
            "frames_drained": self.stats.frames_drained,
            "letters_spooled": self.stats.letters_spooled,
            "failed_appends": self.stats.failed_appends,
            "spool": self.spool.snapshot() if self.spool is not None else None,
        }
