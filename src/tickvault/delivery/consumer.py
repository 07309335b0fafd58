"""ReliableConsumer: the writer's delivery guarantees for any stream and any handler.

For a service of your own that reads a stream, such as an order-execution worker reading
trade intents::

    import orjson, tickvault

    async def handle(entry: tickvault.Entry) -> None:
        intent = orjson.loads(entry.payload)
        await place_order(intent)        # raise to have the entry retried later

    consumer = tickvault.ReliableConsumer(
        "redis://127.0.0.1:6379/0", "trade.intent", "execution", handle
    )
    consumer.install_signal_handlers()   # SIGTERM/SIGINT → clean shutdown
    await consumer.run()

Guarantees
----------
* **At least once, acknowledged after the handler returns.** An entry is acknowledged only
  once ``handler(entry)`` returned; if the process dies first, it is delivered again (to the
  same consumer name after a restart, or to another consumer by a claim). Make the handler
  idempotent (e.g. on the intent's id).
* **Retries.** A handler that raises leaves the entry pending; it is retried once it has
  been idle for ``min_idle_ms``. Entries that other (crashed) consumers left pending that
  long are claimed and handled too (every ``claim_every_s``).
* **Dead letters.** An entry delivered more than ``max_deliveries`` times is moved to the
  dead-letter queue with its delivery count and reason (``<stream>:dlq`` on Redis) and
  acknowledged: a poison entry never blocks the group.
* **Upkeep.** At start and every ``upkeep_every_s`` a :class:`~tickvault.delivery.upkeep.
  StreamUpkeep` pass runs: stale entries are claimed and handled, consumers idle longer than
  ``zombie_idle_ms`` are deleted once nothing is pending for them.
* **A stable name.** The consumer name defaults to ``<hostname>-<group>``: the same after a
  restart, so the process first re-reads its own pending entries. Run several workers of
  one group on a host by giving each its own stable ``consumer`` name (e.g. the systemd
  instance name), never a per-process id (that is what piled up zombies in incident 003).
* **Clean shutdown removes the consumer.** After :meth:`stop` (or a signal) the current
  entry finishes, and the consumer deletes its own name from the group when nothing is
  pending for it; if something is, the name is kept so those entries stay claimable.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tickvault.bus import open_bus
from tickvault.bus.base import Bus, Entry
from tickvault.core.backoff import Backoff
from tickvault.core.errors import BusError
from tickvault.delivery.group_loop import GroupLoop, GroupStopped
from tickvault.delivery.upkeep import StreamUpkeep, UpkeepPolicy, deliveries_reason

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[Entry], Awaitable[None]]


@dataclass
class ConsumerStats:
    handled: int = 0
    failed: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    upkeep_passes: int = 0
    last_error: str | None = None


class ReliableConsumer:
    """Consume ``stream`` as ``group`` with ``handler``; see the module docstring."""

    def __init__(
        self,
        bus: str | Bus,
        stream: str,
        group: str,
        handler: Handler,
        *,
        consumer: str | None = None,
        batch: int = 16,
        block_ms: int = 1000,
        min_idle_ms: int = 60_000,
        zombie_idle_ms: int = 3_600_000,
        max_deliveries: int = 5,
        claim_every_s: float = 10.0,
        upkeep_every_s: float = 120.0,
        backoff_max_s: float = 5.0,
    ) -> None:
        self._bus_arg = bus
        self.stream = stream
        self.group = group
        self.handler = handler
        self.name = consumer or f"{socket.gethostname()}-{group}"
        self.batch = batch
        self.block_ms = block_ms
        self.policy = UpkeepPolicy(
            min_idle_ms=min_idle_ms, zombie_idle_ms=zombie_idle_ms, max_deliveries=max_deliveries
        )
        self.claim_every_s = claim_every_s
        self.upkeep_every_s = upkeep_every_s
        self.backoff_max_s = backoff_max_s
        self.stats = ConsumerStats()
        self._stop = asyncio.Event()
        self._bus: Bus | None = None
        self._group: GroupLoop | None = None
        self._last_upkeep: float | None = None

    def stop(self) -> None:
        """Ask :meth:`run` to finish the current entry and return."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT call :meth:`stop` (call from inside the running event loop)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    async def run(self) -> None:
        """Consume until :meth:`stop`; bus outages are retried with backoff meanwhile."""
        bus = open_bus(self._bus_arg) if isinstance(self._bus_arg, str) else self._bus_arg
        self._bus = bus
        group = self._group = GroupLoop(
            bus,
            self.stream,
            self.group,
            self.name,
            self._stop,
            batch=self.batch,
            claim_idle_ms=self.policy.min_idle_ms,
            claim_every_s=self.claim_every_s,
            backoff=Backoff(0.05, self.backoff_max_s, jitter="full"),
            retry_on=(BusError,),
            on_error=self._note_error,
            logger=log,
        )
        self._last_upkeep = None
        upkeep = StreamUpkeep(
            bus, self.stream, self.group, self.name, self.policy, handler=self._handle_all
        )

        async def first_upkeep() -> None:
            await self._upkeep(upkeep)

        try:
            await group.run(
                self._handle_all,
                prepare=first_upkeep,
                next_batch=lambda: self._next_batch(group, upkeep),
                own_once_each=True,
            )
        finally:
            await self._leave(bus)
            if isinstance(self._bus_arg, str):
                await bus.close()

    def _note_error(self, exc: BaseException) -> None:
        self.stats.last_error = str(exc)

    async def _next_batch(self, group: GroupLoop, upkeep: StreamUpkeep) -> list[Entry]:
        """An upkeep pass every ``upkeep_every_s``, else stale entries claimed every
        ``claim_every_s``; then new entries (the clocks start once own pending is done)."""
        now = time.monotonic()
        if self._last_upkeep is None:
            self._last_upkeep = group.last_claim = now
        if now - self._last_upkeep >= self.upkeep_every_s:
            self._last_upkeep = group.last_claim = now
            await self._upkeep(upkeep)
        elif group.claim_due():
            claimed = await group.claim()
            self.stats.reclaimed += len(claimed)
            if claimed:
                return claimed
        return await group.read(self.batch, self.block_ms)

    async def _upkeep(self, upkeep: StreamUpkeep) -> None:
        try:
            report = await self._retry(upkeep.run_once)
        except GroupStopped:
            raise
        except Exception as exc:  # a failed pass is retried at the next one
            self.stats.last_error = str(exc)
            log.warning("upkeep of %s/%s failed: %s", self.stream, self.group, exc)
            return
        self.stats.upkeep_passes += 1
        self.stats.reclaimed += report.claimed
        if report.claimed or report.deleted_consumers:
            log.info("upkeep: %s", report.summary())

    async def _handle_all(self, entries: Sequence[Entry]) -> None:
        bus = self._bus
        if bus is None:
            raise RuntimeError("ReliableConsumer: entries handled outside run()")
        for entry in entries:
            if entry.delivery_count > self.policy.max_deliveries:
                reason = deliveries_reason(entry.delivery_count, self.policy.max_deliveries)

                async def dead_letter(e: Entry = entry, r: str = reason) -> None:
                    await bus.dead_letter(self.stream, self.group, e, r)

                await self._retry(dead_letter)
                self.stats.dead_lettered += 1
                log.warning("entry %s of %s dead-lettered: %s", entry.id, self.stream, reason)
                continue
            try:
                await self.handler(entry)
            except Exception as exc:  # the handler's failure: retried after min_idle_ms
                self.stats.failed += 1
                self.stats.last_error = f"handler failed on {entry.id}: {exc!r}"
                log.warning("handler failed on entry %s of %s: %r", entry.id, self.stream, exc)
                continue

            async def ack(e: Entry = entry) -> int:
                return await bus.ack(self.stream, self.group, [e.id])

            await self._retry(ack)
            self.stats.handled += 1

    async def _retry(self, op: Callable[[], Awaitable[T]]) -> T:
        """``op`` retried until it succeeds or :meth:`stop` (:meth:`GroupLoop.call`)."""
        group = self._group
        if group is None:
            raise RuntimeError("ReliableConsumer: bus called outside run()")
        return await group.call(op)

    async def _leave(self, bus: Bus) -> None:
        """Delete this consumer's name from the group unless entries are pending for it."""
        try:
            left = await bus.pending(self.stream, self.group, consumer=self.name, count=1)
            if left:
                log.info("keeping consumer %s: entries are still pending for it", self.name)
                return
            await bus.delete_consumer(self.stream, self.group, self.name)
        except BusError as exc:
            log.warning("could not remove consumer %s at shutdown: %s", self.name, exc)
