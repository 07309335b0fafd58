"""The consumer-group loop under :class:`~tickvault.delivery.writer.Writer` and
:class:`~tickvault.delivery.consumer.ReliableConsumer`.

Both read a stream as one consumer of a group, in the same order of steps:

1. ensure the group exists;
2. a preparation of their own (the writer's store schema, the consumer's first upkeep);
3. re-read this consumer's **own pending** entries (from before a crash or restart) and
   hand them over, until none are left;
4. until stopped: take the next batch (entries other consumers left idle longer than
   ``claim_idle_ms``, claimed every ``claim_every_s`` when the bus can claim; then new
   entries) and hand it over; when there is nothing, ask ``idle`` whether to return.

The handler acknowledges what it handled and dead-letters poison with a reason (through
:meth:`GroupLoop.call`); the loop never acknowledges on its own.

Every bus call goes through :meth:`GroupLoop.call`: retried with :class:`~tickvault.core.
backoff.Backoff` until it succeeds or the stop event is set; then :class:`GroupStopped` ends
:meth:`GroupLoop.run` quietly, and whatever was not acknowledged stays pending on the bus
(redelivered later, harmlessly). With ``cancel_on_stop`` a call that hangs is cancelled
by the stop instead of holding the shutdown up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from tickvault.bus.base import Bus, Entry
from tickvault.core.backoff import Backoff, retry
from tickvault.delivery.breaker import BreakerOpen, CircuitBreaker

T = TypeVar("T")

BatchHandler = Callable[[Sequence[Entry]], Awaitable[None]]


class GroupStopped(Exception):
    """Raised inside the loop when it was asked to stop while a bus call was unfinished."""


async def unless_stopped(call: Awaitable[T], stop: asyncio.Event) -> T:
    """``await call``, unless ``stop`` is set first: then cancel it and raise
    :class:`GroupStopped` (a bus or store that hangs must not hold a shutdown up; whatever
    the call did not finish is redelivered later, harmlessly)."""
    task = asyncio.ensure_future(call)
    if stop.is_set():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise GroupStopped
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise GroupStopped


class GroupLoop:
    """One consumer (``consumer``) of ``group`` on ``stream``; see the module docstring.

    ``retry_on`` are the errors a call retries (others propagate, and ``fatal`` ones
    propagate even when they are a ``retry_on`` kind); ``on_error(exc)`` counts each retried
    error, ``on_wait()`` each wait for an open breaker; ``log_prefix`` + ``describe(exc)`` is
    what the retry log line says of the error, logged on ``logger``.
    """

    def __init__(
        self,
        bus: Bus,
        stream: str,
        group: str,
        consumer: str,
        stop: asyncio.Event,
        *,
        batch: int,
        claim_idle_ms: int,
        claim_every_s: float,
        backoff: Backoff,
        retry_on: tuple[type[BaseException], ...],
        fatal: tuple[type[BaseException], ...] = (),
        cancel_on_stop: bool = False,
        on_error: Callable[[BaseException], None] = lambda exc: None,
        on_wait: Callable[[], None] = lambda: None,
        describe: Callable[[BaseException], object] = lambda exc: exc,
        log_prefix: str = "",
        logger: logging.Logger | None = None,
    ) -> None:
        self.bus = bus
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.stop = stop
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.claim_every_s = claim_every_s
        self.backoff = backoff
        self.retry_on = retry_on
        self.fatal = fatal
        self.cancel_on_stop = cancel_on_stop
        self.on_error = on_error
        self.on_wait = on_wait
        self.describe = describe
        self.log_prefix = log_prefix
        self.log = logger or logging.getLogger(__name__)
        self.last_claim = 0.0
        """When stale entries were last claimed (``time.monotonic()``; 0: never)."""

    async def run(
        self,
        handle: BatchHandler,
        *,
        prepare: Callable[[], Awaitable[None]] | None = None,
        next_batch: Callable[[], Awaitable[Sequence[Entry]]] | None = None,
        idle: Callable[[], Awaitable[bool]] | None = None,
        own_once_each: bool = False,
    ) -> bool:
        """Run the loop until the stop event is set (or ``idle()`` says so when a batch came
        back empty). ``next_batch`` defaults to :meth:`claim_or_read`; with
        ``own_once_each`` an own pending entry is handed over once here even when the
        handler left it pending. True when a stop interrupted a call (:class:`GroupStopped`)."""
        take = next_batch or self.claim_or_read
        try:
            await self.call(lambda: self.bus.ensure_group(self.stream, self.group))
            if prepare is not None:
                await prepare()
            await self.own_pending(handle, once_each=own_once_each)
            while not self.stop.is_set():
                entries = await take()
                if entries:
                    await handle(entries)
                    continue
                if idle is not None and await idle():
                    return False
        except GroupStopped:
            return True
        return False

    async def own_pending(self, handle: BatchHandler, *, once_each: bool = False) -> None:
        """Hand over the entries pending for this consumer's name, until none are left."""
        seen: set[str] = set()
        while not self.stop.is_set():
            own = await self.call(
                lambda: self.bus.read_own_pending(
                    self.stream, self.group, self.consumer, self.batch
                )
            )
            if once_each:
                own = [e for e in own if e.id not in seen]
                seen.update(e.id for e in own)
            if not own:
                return
            await handle(own)

    def claim_due(self, *, force: bool = False) -> bool:
        """Whether stale entries are to be claimed now (the bus can claim, and
        ``claim_every_s`` passed since the last claim, or ``force``); if so, it counts as
        claimed now."""
        now = time.monotonic()
        if not self.bus.capabilities.claim or (
            not force and now - self.last_claim < self.claim_every_s
        ):
            return False
        self.last_claim = now
        return True

    async def claim(self) -> list[Entry]:
        """Claim up to ``batch`` entries idle longer than ``claim_idle_ms`` (retried)."""
        return await self.call(
            lambda: self.bus.claim_stale(
                self.stream, self.group, self.consumer, self.claim_idle_ms, self.batch
            )
        )

    async def read(self, count: int, block_ms: int) -> list[Entry]:
        """Up to ``count`` new entries, waiting at most ``block_ms`` (retried)."""
        return await self.call(
            lambda: self.bus.read(self.stream, self.group, self.consumer, count, block_ms)
        )

    async def claim_or_read(self, block_ms: int = 0) -> list[Entry]:
        """Claimed stale entries when a claim is due and found some, else new entries."""
        if self.claim_due():
            claimed = await self.claim()
            if claimed:
                return claimed
        return await self.read(self.batch, block_ms)

    async def call(
        self, op: Callable[[], Awaitable[T]], breaker: CircuitBreaker | None = None
    ) -> T:
        """Run a bus or store operation until it succeeds, backing off on errors; through
        ``breaker`` when given (an open breaker is waited out, not retried against).
        Raises :class:`GroupStopped` once the stop event is set and the call failed (or,
        with ``cancel_on_stop``, did not finish)."""
        stop = self.stop

        async def attempt() -> T:
            while True:
                if breaker is not None and not breaker.available:
                    self.on_wait()
                    if not await breaker.wait_ready(stop):
                        raise GroupStopped
                    continue
                call = op() if breaker is None else breaker.call(op)
                try:
                    return await (unless_stopped(call, stop) if self.cancel_on_stop else call)
                except BreakerOpen:
                    continue  # another caller holds the half-open trial
                except self.fatal:
                    raise
                except self.retry_on as exc:
                    if breaker is None or breaker.available:
                        raise  # backed off by retry()
                    self._noted(exc)
                    self.log.warning(
                        "%s%s; store breaker %s", self.log_prefix, exc, breaker.state.value
                    )
                    # the breaker times the next trial

        def back_off(exc: BaseException, delay: float) -> None:
            if isinstance(exc, self.fatal):
                raise exc
            self._noted(exc)
            why = self.describe(exc)
            self.log.warning("%s%s; retrying in %.2fs", self.log_prefix, why, delay)

        return await retry(
            attempt, backoff=self.backoff, retry_on=self.retry_on, on_error=back_off, stop=stop
        )

    def _noted(self, exc: BaseException) -> None:
        self.on_error(exc)
        if self.stop.is_set():
            raise GroupStopped from exc
