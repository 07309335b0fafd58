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
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tickvault.bus import open_bus
from tickvault.bus.base import Bus, Entry
from tickvault.core.errors import BusError
from tickvault.delivery.upkeep import StreamUpkeep, UpkeepPolicy, deliveries_reason

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[Entry], Awaitable[None]]


class _Stopped(Exception):
    """Raised internally when a bus retry is abandoned because a stop was requested."""


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
        upkeep = StreamUpkeep(
            bus, self.stream, self.group, self.name, self.policy, handler=self._handle_all
        )
        try:
            await self._retry(lambda: bus.ensure_group(self.stream, self.group))
            await self._upkeep(upkeep)
            await self._own_pending(bus)
            await self._loop(bus, upkeep)
        except _Stopped:
            pass
        finally:
            await self._leave(bus)
            if isinstance(self._bus_arg, str):
                await bus.close()

    async def _loop(self, bus: Bus, upkeep: StreamUpkeep) -> None:
        last_upkeep = last_claim = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_upkeep >= self.upkeep_every_s:
                last_upkeep = last_claim = now
                await self._upkeep(upkeep)
            elif now - last_claim >= self.claim_every_s and bus.capabilities.claim:
                last_claim = now
                claimed = await self._retry(
                    lambda: bus.claim_stale(
                        self.stream, self.group, self.name, self.policy.min_idle_ms, self.batch
                    )
                )
                self.stats.reclaimed += len(claimed)
                await self._handle_all(claimed)
            entries = await self._retry(
                lambda: bus.read(self.stream, self.group, self.name, self.batch, self.block_ms)
            )
            await self._handle_all(entries)

    async def _own_pending(self, bus: Bus) -> None:
        """Entries pending for this name from before a restart, each handled once here."""
        seen: set[str] = set()
        while not self._stop.is_set():
            own = await self._retry(
                lambda: bus.read_own_pending(self.stream, self.group, self.name, self.batch)
            )
            fresh = [e for e in own if e.id not in seen]
            if not fresh:
                return
            seen.update(e.id for e in fresh)
            await self._handle_all(fresh)

    async def _upkeep(self, upkeep: StreamUpkeep) -> None:
        try:
            report = await self._retry(upkeep.run_once)
        except _Stopped:
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
        delay = 0.05
        while True:
            try:
                return await op()
            except BusError as exc:
                self.stats.last_error = str(exc)
                if self._stop.is_set():
                    raise _Stopped from exc
                log.warning("%s; retrying in %.2fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                delay = min(delay * 2, self.backoff_max_s)

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
