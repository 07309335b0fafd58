"""Stream upkeep: reclaim stuck entries, dead-letter poison, remove dead consumers safely.

This is the fix for incident 003 (a consumer that crashed left entries pending forever, and
dead consumer names piled up). It works over the generic :class:`~tickvault.bus.base.Bus`
interface (``pending``, ``claim_stale``, ``consumers``, ``delete_consumer``,
``dead_letter``), so it runs on Redis and on the embedded SQLite bus alike.

One pass of :meth:`StreamUpkeep.run_once`
-----------------------------------------
1. **Reclaim.** Entries pending longer than ``min_idle`` are claimed to ``consumer`` (a live
   consumer's name), calling ``claim_stale`` until it finds nothing more; on Redis each call
   loops the ``XAUTOCLAIM`` cursor until ``0-0``. For each claimed entry:

   * delivered more than ``max_deliveries`` times → dead-lettered with its delivery count and
     the reason, which also acknowledges it;
   * with a ``handler`` (inside a running service) → handed to it; the handler acknowledges
     what it processed;
   * without one (``tickvault streams recover``, e.g. as the service's ``ExecStartPre``) →
     left pending for ``consumer``, which re-reads its own pending entries first when it
     starts. Entries already pending for ``consumer`` are then not claimed again unless
     other consumers' entries are stale too: a claim counts as a delivery, and passes
     repeated while the service is stopped must not push its entries to the dead letters.

   With ``claim_own=False`` (the guardian's passes, whose ``consumer`` is the live writer)
   a pass claims only when another consumer's entries are stale, and the live consumer's
   own in-flight entries (held while the store is down) are never handed to the handler or
   dead-lettered: they stay its own. (``XAUTOCLAIM`` cannot filter by owner, so on Redis
   they are re-claimed to the same consumer: their idle time restarts and their delivery
   count rises by one; the guardian's recovery budget bounds how often.)

   Stale entries the stream no longer holds are acknowledged by the claim (never left in the
   pending list) and counted in ``acked_missing``.
2. **Zombies.** A consumer other than ``consumer`` idle longer than ``zombie_idle`` is deleted
   only when it has nothing pending (step 1 claimed what it held), re-checked right before
   the delete, because deleting a consumer silently drops its pending entries on Redis. One
   that still has pending entries is kept and reported. A consumer idle less than
   ``zombie_idle`` is never deleted, and its entries are only claimed once they have been
   idle longer than ``min_idle`` (standard claim semantics).
3. **Trim** (opt-in): entries every group has acknowledged are removed; with a
   :class:`Retention` (``[bus] retention`` / ``retention_bytes``) on a bus that supports it,
   only those older than the retention or beyond its size, so ``tickvault rebuild`` can
   replay them into a store.

``dry_run`` only reads, and reports what the pass would do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tickvault.bus.base import Bus, ConsumerInfo, Entry, PendingEntry
from tickvault.core.errors import ConfigError

if TYPE_CHECKING:
    from tickvault.core.config import UpkeepSettings
    from tickvault.delivery.writer import Writer

log = logging.getLogger(__name__)

EntriesHandler = Callable[[Sequence[Entry]], Awaitable[None]]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(value: str) -> int:
    """``"500ms"``, ``"60s"``, ``"5m"``, ``"1h"``, ``"1d"`` → milliseconds; ConfigError else."""
    match = _DURATION.match(value)
    if match is None:
        raise ConfigError(
            f"invalid duration {value!r}: use a number and a unit, e.g. 500ms, 60s, 1h"
        )
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


def format_duration_ms(ms: int) -> str:
    """The shortest exact spelling :func:`parse_duration_ms` reads back (``3600000`` → ``1h``)."""
    for unit in ("d", "h", "m", "s"):
        if ms and ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


def deliveries_reason(count: int, limit: int) -> str:
    """The dead-letter reason of an entry delivered too often (same text as the writer's)."""
    return f"delivered {count} times (max {limit})"


@dataclass(frozen=True)
class UpkeepPolicy:
    """Thresholds of a pass (the defaults are those of incident 003's runbook)."""

    min_idle_ms: int = 60_000
    zombie_idle_ms: int = 3_600_000
    max_deliveries: int = 5
    claim_batch: int = 64
    scan_limit: int = 10_000
    """Pending entries looked at per pass (for the dry-run estimate and ``acked_missing``)."""


@dataclass(frozen=True)
class Retention:
    """How long / how much acknowledged payload the bus keeps for rebuilds."""

    keep_age_s: float
    keep_bytes: int | None = None


@dataclass
class ConsumerAction:
    name: str
    pending: int
    idle_ms: int
    action: str
    """``deleted`` or ``kept``."""
    reason: str


@dataclass
class UpkeepReport:
    """What one pass did (or, with ``dry_run``, would do)."""

    stream: str
    group: str
    consumer: str
    dry_run: bool
    group_exists: bool = True
    claimed: int = 0
    processed: int = 0
    dead_lettered: int = 0
    acked_missing: int = 0
    trimmed: int = 0
    deleted_consumers: list[str] = field(default_factory=list)
    kept_consumers: list[str] = field(default_factory=list)
    consumers: list[ConsumerAction] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verb = "would " if self.dry_run else ""
        return (
            f"{self.stream}/{self.group}: {verb}claim {self.claimed}, {verb}dead-letter"
            f" {self.dead_lettered}, {verb}delete {len(self.deleted_consumers)} consumer(s),"
            f" kept {len(self.kept_consumers)}, acked missing {self.acked_missing}"
        )


class StreamUpkeep:
    """Upkeep of one consumer group; see the module docstring for what a pass does."""

    def __init__(
        self,
        bus: Bus,
        stream: str,
        group: str,
        consumer: str,
        policy: UpkeepPolicy | None = None,
        *,
        handler: EntriesHandler | None = None,
        trim: bool = False,
        retention: Retention | None = None,
        claim_own: bool = True,
    ) -> None:
        self.bus = bus
        self.claim_own = claim_own
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.policy = policy or UpkeepPolicy()
        self.handler = handler
        self.trim = trim
        self.retention = retention
        self.last_report: UpkeepReport | None = None

    async def _stale(self) -> list[PendingEntry]:
        rows = await self.bus.pending(self.stream, self.group, count=self.policy.scan_limit)
        return [p for p in rows if p.idle_ms >= self.policy.min_idle_ms]

    def _must_claim(self, stale: Sequence[PendingEntry]) -> bool:
        if not self.bus.capabilities.claim:
            return False
        if self.handler is not None and self.claim_own:
            return bool(stale)
        return any(p.consumer != self.consumer for p in stale)

    async def run_once(self, *, dry_run: bool = False) -> UpkeepReport:
        """One pass. Bus errors propagate (as :class:`~tickvault.core.errors.BusError`)."""
        started = time.monotonic()
        report = UpkeepReport(self.stream, self.group, self.consumer, dry_run)
        info = await self.bus.info(self.stream)
        if not any(g.name == self.group for g in info.groups):
            report.group_exists = False
            return self._finish(report, started)
        stale = await self._stale()
        claim = self._must_claim(stale)
        if dry_run:
            would = stale if claim else []
            report.claimed = len(would)
            report.dead_lettered = sum(
                p.delivery_count + 1 > self.policy.max_deliveries for p in would
            )
        elif claim:
            own = (
                set()
                if self.claim_own
                else {p.entry_id for p in stale if p.consumer == self.consumer}
            )
            await self._reclaim(report, {p.entry_id for p in stale}, own)
        consumers = await self.bus.consumers(self.stream, self.group)
        claimed_from: dict[str, int] = {}
        for p in stale if claim else ():
            claimed_from[p.consumer] = claimed_from.get(p.consumer, 0) + 1
        for c in consumers:
            await self._zombie(report, c, claimed_from.get(c.name, 0))
        if self.trim and not dry_run and self.bus.capabilities.per_entry_ack:
            keep = self.retention
            if keep is not None and self.bus.capabilities.retention:
                report.trimmed = await self.bus.trim_retained(
                    self.stream, keep_age_s=keep.keep_age_s, keep_bytes=keep.keep_bytes
                )
            else:
                report.trimmed = await self.bus.trim_acknowledged(self.stream)
        return self._finish(report, started)

    def _finish(self, report: UpkeepReport, started: float) -> UpkeepReport:
        report.seconds = time.monotonic() - started
        self.last_report = report
        return report

    async def _reclaim(
        self,
        report: UpkeepReport,
        stale_ids: set[str],
        own: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        policy = self.policy
        seen: set[str] = set()
        while True:
            batch = await self.bus.claim_stale(
                self.stream, self.group, self.consumer, policy.min_idle_ms, policy.claim_batch
            )
            batch = [e for e in batch if e.id not in seen]  # a tiny min_idle must not loop
            if not batch:
                break
            seen.update(e.id for e in batch)
            batch = [e for e in batch if e.id not in own]  # still the live consumer's own
            report.claimed += len(batch)
            keep: list[Entry] = []
            for entry in batch:
                if entry.delivery_count > policy.max_deliveries:
                    reason = deliveries_reason(entry.delivery_count, policy.max_deliveries)
                    await self.bus.dead_letter(self.stream, self.group, entry, reason)
                    report.dead_lettered += 1
                    log.warning("upkeep: entry %s dead-lettered: %s", entry.id, reason)
                else:
                    keep.append(entry)
            if keep and self.handler is not None:
                await self.handler(keep)
                report.processed += len(keep)
        unclaimed = stale_ids - seen
        if unclaimed:
            still = await self.bus.pending(self.stream, self.group, count=policy.scan_limit)
            report.acked_missing = len(unclaimed - {p.entry_id for p in still})

    async def _zombie(self, report: UpkeepReport, c: ConsumerInfo, claimed: int) -> None:
        def keep(reason: str) -> None:
            report.kept_consumers.append(c.name)
            report.consumers.append(ConsumerAction(c.name, c.pending, c.idle_ms, "kept", reason))

        if c.name == self.consumer:
            return keep("the live consumer of this pass")
        if c.idle_ms < self.policy.zombie_idle_ms:
            return keep("active")
        left = c.pending - claimed if report.dry_run else c.pending
        if left > 0:
            return keep(f"idle but {left} pending entries are not claimed yet")
        if not report.dry_run:
            # Re-check: the consumer may have read something since the listing above.
            if await self.bus.pending(self.stream, self.group, consumer=c.name, count=1):
                return keep("read new entries during the pass")
            lost = await self.bus.delete_consumer(self.stream, self.group, c.name)
            if lost:  # pragma: no cover - a race the re-check above makes very unlikely
                log.error("upkeep: consumer %s had %d pending entries when deleted", c.name, lost)
            log.info("upkeep: deleted consumer %s (idle %d ms, nothing pending)", c.name, c.idle_ms)
        report.deleted_consumers.append(c.name)
        reason = "idle, its pending entries claimed first" if claimed else "idle, nothing pending"
        report.consumers.append(ConsumerAction(c.name, c.pending, c.idle_ms, "deleted", reason))
        return None

    async def run_periodically(self, every_s: float, stop: asyncio.Event) -> None:
        """A pass every ``every_s`` seconds until ``stop``; failures are logged, never fatal."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)
            if stop.is_set():
                return
            try:
                report = await self.run_once()
            except Exception as exc:  # the next pass retries; never kill the host
                log.warning("upkeep of %s/%s failed: %s", self.stream, self.group, exc)
                continue
            if report.claimed or report.deleted_consumers or report.dead_lettered:
                log.info("upkeep: %s", report.summary())


async def start_service_upkeep(
    bus: Bus,
    writer: Writer,
    settings: UpkeepSettings,
    stop: asyncio.Event,
    retention: Retention | None = None,
) -> asyncio.Task[None] | None:
    """Upkeep for the service's writer group: one pass now, then a task repeating it.

    The first pass runs before the writer consumes and has no handler: what it claims stays
    pending for the writer's consumer, which re-reads its own pending entries first. The
    periodic passes hand what they claim to :meth:`Writer.process`. Thresholds come from the
    ``[writer]`` settings (``claim_idle_ms``, ``max_deliveries``), ``[upkeep]`` and
    ``retention`` (see :func:`bus_retention`). Returns
    the periodic task (cancel it on shutdown), or None when upkeep is disabled.
    """
    if not settings.enabled:
        return None
    cfg = writer.config
    policy = UpkeepPolicy(
        min_idle_ms=cfg.claim_idle_ms,
        zombie_idle_ms=settings.zombie_idle_ms,
        max_deliveries=cfg.max_deliveries,
    )
    first = StreamUpkeep(
        bus, cfg.stream, cfg.group, cfg.consumer, policy, trim=settings.trim, retention=retention
    )
    try:
        report = await first.run_once()
        if report.claimed or report.deleted_consumers or report.dead_lettered:
            log.info("upkeep at start: %s", report.summary())
    except Exception as exc:  # the writer retries the bus by itself
        log.warning("upkeep at start failed: %s", exc)

    async def process(entries: Sequence[Entry]) -> None:
        await writer.process(entries, stop)

    periodic = StreamUpkeep(
        bus,
        cfg.stream,
        cfg.group,
        cfg.consumer,
        policy,
        handler=process,
        trim=settings.trim,
        retention=retention,
    )
    return asyncio.create_task(periodic.run_periodically(settings.every_s, stop))


def bus_retention(retention: str, retention_bytes: int | str) -> Retention:
    """``[bus] retention`` / ``retention_bytes`` as a :class:`Retention` (ConfigError if bad)."""
    from tickvault.delivery.spool import parse_size

    size = parse_size(retention_bytes)
    return Retention(parse_duration_ms(retention) / 1000, size or None)
