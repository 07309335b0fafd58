"""The writer: read a consumer group, decode, validate, store, then acknowledge.

Contract
--------
* An entry is acknowledged only after every valid record in it is committed to the store
  and every invalid record in it is recorded as a dead letter. A crash at any point leaves
  the entry pending; it is re-delivered and re-written harmlessly (natural keys).
* An entry that cannot be decoded, or that was delivered more than ``max_deliveries``
  times, is dead-lettered whole with the reason.
* Conflicting duplicates (same key, other content) are never dropped silently: the first
  stored version stays, and each conflict becomes a dead letter showing both versions
  (:mod:`tickvault.core.conflicts`), counted in ``stats.conflicts``.
* When the store refuses a batch's data (:class:`BatchRejected`, e.g. a value the server
  will not take), the batch is bisected until the refused records are isolated; those are
  dead-lettered with the server's message and the rest is written.
* While the store fails, the writer keeps its one in-flight batch, stops reading, and
  retries with capped exponential backoff: memory stays bounded, nothing is acknowledged,
  and it resumes by itself when the store is back. Store calls go through a circuit breaker
  (:mod:`tickvault.delivery.breaker`, shared by every writer of one store): after
  ``failure_threshold`` consecutive failures it opens and the writer waits for its half-open
  trial instead of hammering the store. Nothing ever discards the in-flight batch: the
  backlog stays on the bus, where it is durable.
* On start it first re-delivers its own pending entries (from before a crash), then reads
  new ones, and periodically claims entries that other consumers left idle too long.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import orjson
import pyarrow as pa

from tickvault.bus.base import Bus, Entry, NewDeadLetter
from tickvault.core.backoff import Backoff
from tickvault.core.codec import Frame, decode_frame, split_valid, split_valid_many
from tickvault.core.conflicts import (
    UNCHECKED_KINDS,
    conflict_letter,
    first_versions,
    stored_conflicts,
)
from tickvault.core.errors import BatchRejected, BusError, DecodeError, StoreError
from tickvault.core.faults import resource_fault
from tickvault.core.latency import (
    LatencyHistogram,
    batch_seconds_histogram,
    seconds_since,
    tick_to_stored_histogram,
)
from tickvault.core.records import KINDS
from tickvault.core.rejects import Reject
from tickvault.core.rules import HISTORY, Bounds, TimeWindow
from tickvault.delivery.breaker import BreakerPolicy, CircuitBreaker
from tickvault.delivery.group_loop import GroupLoop, GroupStopped
from tickvault.stores.base import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

_BYTES_PER_RECORD = 45  # a packed trade or quote frame, per record (an estimate for batching)
_FIRST_READ = 4


def default_consumer_name(role: str = "writer") -> str:
    """A name stable across restarts of this role on this host (so pending work is found)."""
    return f"{socket.gethostname()}-{role}"


@dataclass
class WriterConfig:
    stream: str = "ticks"
    group: str = "writers"
    consumer: str = field(default_factory=default_consumer_name)
    batch_records: int = 20_000
    batch_entries: int = 512
    linger_ms: int = 10
    block_ms: int = 200
    max_deliveries: int = 5
    claim_idle_ms: int = 60_000
    claim_every_s: float = 10.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 5.0
    window: TimeWindow = HISTORY
    """Plausible timestamps (``[validation]``); a record outside is dead-lettered."""


@dataclass
class WriterStats:
    entries: int = 0
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    """Records whose key was stored already with the same content (redeliveries)."""
    conflicts: int = 0
    """Records whose key was stored already with other content (see tickvault.core.conflicts)."""
    batches: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    store_errors: int = 0
    retrying: bool = False
    last_error: str | None = None
    last_commit_at: float | None = None
    inserted_by_table: Counter[str] = field(default_factory=Counter)
    last_batch_s: float = 0.0
    tick_to_stored: LatencyHistogram = field(default_factory=tick_to_stored_histogram)
    """Store commit time minus ``ts_recv``, for every record written (duplicates too)."""
    batch_seconds: LatencyHistogram = field(default_factory=batch_seconds_histogram)
    """Time per processed batch: decode, validate, write, dead letters, ack."""


WriterStopped = GroupStopped
"""Raised inside the writer when it was asked to stop while a batch was unwritten."""


class Writer:
    """Consumes ``config.stream`` as ``config.group`` and writes into ``store``."""

    def __init__(
        self,
        bus: Bus,
        store: Store,
        config: WriterConfig | None = None,
        *,
        store_breaker: CircuitBreaker | None = None,
    ) -> None:
        self.bus = bus
        self.store = store
        self.config = config or WriterConfig()
        self.stats = WriterStats()
        cfg = self.config
        self.store_breaker = store_breaker or CircuitBreaker(
            "store",
            BreakerPolicy(open_base_s=cfg.backoff_initial_s, open_max_s=cfg.backoff_max_s),
        )
        self._loop: GroupLoop | None = None

    def _group(self, stop: asyncio.Event) -> GroupLoop:
        """The consumer-group loop of this writer for ``stop`` (the one :meth:`run` uses,
        or a new one for a caller of :meth:`process` with a stop event of its own)."""
        if self._loop is not None and self._loop.stop is stop:
            return self._loop
        cfg = self.config
        loop = GroupLoop(
            self.bus,
            cfg.stream,
            cfg.group,
            cfg.consumer,
            stop,
            batch=cfg.batch_entries,
            claim_idle_ms=cfg.claim_idle_ms,
            claim_every_s=cfg.claim_every_s,
            backoff=Backoff(cfg.backoff_initial_s, cfg.backoff_max_s, jitter="full"),
            retry_on=(BusError, StoreError),
            fatal=(BatchRejected,),  # the data is refused: retrying cannot help, bisect
            cancel_on_stop=True,
            on_error=self._note_error,
            on_wait=self._note_waiting,
            describe=lambda exc: resource_fault(exc, "the bus or store") or exc,
            log_prefix="writer: ",
            logger=log,
        )
        if self._loop is not None:
            loop.last_claim = self._loop.last_claim
        return loop

    def _note_error(self, exc: BaseException) -> None:
        self.stats.retrying = True
        self.stats.last_error = str(exc)
        if isinstance(exc, StoreError):
            self.stats.store_errors += 1

    def _note_waiting(self) -> None:
        self.stats.retrying = True

    async def run(self, stop: asyncio.Event, *, until_drained: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set; with ``until_drained``, also return once that event is
        set and the group has nothing left (no new entries, nothing pending)."""
        loop = self._loop = self._group(stop)

        async def ensure_schema() -> None:
            await loop.call(self.store.ensure_schema, self.store_breaker)

        async def process(entries: Sequence[Entry]) -> None:
            await self.process(entries, stop)

        async def drained() -> bool:
            return (
                until_drained is not None and until_drained.is_set() and await self._drained(stop)
            )

        interrupted = await loop.run(
            process,
            prepare=ensure_schema,
            next_batch=lambda: self._next_batch(stop),
            idle=drained,
        )
        if interrupted:
            log.info("writer stopped with a batch unwritten; it stays pending on the bus")

    async def _drained(self, stop: asyncio.Event) -> bool:
        info = await self.bus.info(self.config.stream)
        for group in info.groups:
            if group.name == self.config.group:
                if group.pending and self.bus.capabilities.claim:
                    # Entries pending for a consumer that no longer runs (another name):
                    # take them over once they are idle long enough, and write them.
                    cfg = self.config
                    if self._group(stop).claim_due(force=True):
                        claimed = await self.bus.claim_stale(
                            cfg.stream,
                            cfg.group,
                            cfg.consumer,
                            cfg.claim_idle_ms,
                            cfg.batch_entries,
                        )
                        if claimed:
                            await self.process(claimed, stop)
                return group.pending == 0 and group.lag == 0
        return True

    async def _next_batch(self, stop: asyncio.Event) -> list[Entry]:
        """Up to ``batch_records`` worth of entries, waiting at most ``linger_ms`` to fill.

        The first read asks for a few entries; later reads ask only for as many as the
        records seen so far say are still missing, so one consumer never takes a whole
        backlog that other consumers of its group could share.
        """
        cfg = self.config
        loop = self._group(stop)
        entries: list[Entry] = await loop.claim() if loop.claim_due() else []
        deadline = time.monotonic() + cfg.linger_ms / 1000
        approx_records = sum(len(e.payload) for e in entries) // _BYTES_PER_RECORD
        first = True
        while len(entries) < cfg.batch_entries and approx_records < cfg.batch_records:
            # Past the linger deadline, reads still take what is already there (block 0)
            # and stop at the first empty one: what arrived while the previous batch was
            # being written goes into this one, so batches grow with the load by themselves.
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            want = cfg.batch_entries - len(entries)
            if entries:
                per_entry = max(1, approx_records // len(entries))
                want = min(want, max(1, (cfg.batch_records - approx_records) // per_entry))
            else:
                want = min(want, _FIRST_READ)
            block = cfg.block_ms if first and not entries else max(0, remaining_ms)
            got = await loop.read(want, block)
            first = False
            if not got:
                break
            entries.extend(got)
            approx_records += sum(len(e.payload) for e in got) // _BYTES_PER_RECORD
        return entries

    async def _retry(
        self,
        op: Callable[[], Awaitable[T]],
        stop: asyncio.Event,
        breaker: CircuitBreaker | None = None,
    ) -> T:
        """Run a bus or store operation until it succeeds, backing off on errors; through
        ``breaker`` when given (:meth:`GroupLoop.call`)."""
        return await self._group(stop).call(op, breaker)

    async def _write_bisecting(
        self, kind: str, table: pa.Table, stop: asyncio.Event
    ) -> tuple[int, list[NewDeadLetter]]:
        """Write ``table``; if the store refuses its data, split it in halves until the
        refused rows are isolated, and return them as dead letters with the store's reason."""

        async def write() -> int:
            return await self.store.write(kind, table)

        try:
            return await self._retry(write, stop, self.store_breaker), []
        except BatchRejected as exc:
            if table.num_rows == 1:
                row = table.to_pylist()[0]
                spec = KINDS[kind]
                key = "|".join(str(row.get(k)) for k in spec.key)
                payload = orjson.dumps(row, default=str)
                return 0, [
                    NewDeadLetter(
                        kind, f"store refused: {exc}", payload, f"{kind}:{key}:store-refused"
                    )
                ]
            half = table.num_rows // 2
            a_ins, a_bad = await self._write_bisecting(kind, table.slice(0, half), stop)
            b_ins, b_bad = await self._write_bisecting(kind, table.slice(half), stop)
            return a_ins + b_ins, a_bad + b_bad

    @staticmethod
    def _validate(
        items: list[tuple[Entry, Frame]], bounds: Bounds
    ) -> list[tuple[Entry, Frame, tuple[pa.Table, list[Reject]] | str]]:
        """Validate one kind's frames: once for all of them when they are clean, frame by
        frame otherwise; a frame that cannot be read at all yields its error text."""
        try:
            results = split_valid_many([frame for _, frame in items], bounds)
            return [(e, f, r) for (e, f), r in zip(items, results, strict=True)]
        except DecodeError:
            out: list[tuple[Entry, Frame, tuple[pa.Table, list[Reject]] | str]] = []
            for entry, frame in items:
                try:
                    out.append((entry, frame, split_valid(frame, bounds)))
                except DecodeError as exc:
                    out.append((entry, frame, str(exc)))
            return out

    async def _stored_conflicts(
        self, kind: str, table: pa.Table, stop: asyncio.Event
    ) -> list[NewDeadLetter]:
        """Conflict letters for rows of ``table`` whose key the store already held with
        other content (asked only when the store inserted fewer rows than offered)."""
        stored = await self._retry(
            lambda: self.store.stored_versions(kind, table), stop, self.store_breaker
        )
        if stored is None:
            return []
        spec = KINDS[kind]
        return [conflict_letter(spec, p) for p in stored_conflicts(spec, table, stored)]

    async def process(self, entries: Sequence[Entry], stop: asyncio.Event) -> None:
        """Write one batch of entries and acknowledge it (see the module contract)."""
        cfg = self.config
        started = time.perf_counter()
        tables: dict[str, list[pa.Table]] = {}
        decoded: dict[str, list[tuple[Entry, Frame]]] = {}
        letters: list[NewDeadLetter] = []
        ack_ids: list[str] = []
        whole: list[tuple[Entry, str]] = []
        for entry in entries:
            if self.bus.capabilities.delivery_counts and entry.delivery_count > cfg.max_deliveries:
                whole.append(
                    (entry, f"delivered {entry.delivery_count} times (max {cfg.max_deliveries})")
                )
                continue
            try:
                frame = decode_frame(entry.payload)
            except DecodeError as exc:
                whole.append((entry, str(exc)))
                continue
            decoded.setdefault(frame.kind, []).append((entry, frame))
        bounds = cfg.window.bounds()
        for kind, items in decoded.items():
            for entry, frame, result in self._validate(items, bounds):
                if isinstance(result, str):
                    whole.append((entry, result))
                    continue
                table, rejects = result
                if table.num_rows:
                    tables.setdefault(kind, []).append(table)
                letters.extend(
                    NewDeadLetter(
                        r.kind, r.reason, r.payload, r.key, entry.id, entry.delivery_count
                    )
                    for r in rejects
                )
                self.stats.records += len(frame)
                ack_ids.append(entry.id)

        batch = {k: pa.concat_tables(p) if len(p) > 1 else p[0] for k, p in tables.items()}
        offered = {k: t.num_rows for k, t in batch.items()}
        conflicts: Counter[str] = Counter()
        for kind in list(batch):  # one version per key: the first in bus order
            batch[kind], pairs = first_versions(KINDS[kind], batch[kind])
            conflicts[kind] += len(pairs)
            letters.extend(conflict_letter(KINDS[kind], p) for p in pairs)
        refused_by_kind: dict[str, int] = {}
        try:
            counts = await self._retry(
                lambda: self.store.write_many(batch), stop, self.store_breaker
            )
        except BatchRejected:
            counts = {}  # some value was refused: isolate it kind by kind, half by half
            for kind, table in batch.items():
                counts[kind], refused = await self._write_bisecting(kind, table, stop)
                refused_by_kind[kind] = len(refused)
                letters.extend(refused)
        for kind, table in batch.items():
            inserted = counts.get(kind, 0)
            if (
                inserted + refused_by_kind.get(kind, 0) < table.num_rows
                and kind not in UNCHECKED_KINDS
            ):
                found = await self._stored_conflicts(kind, table, stop)
                conflicts[kind] += len(found)
                letters.extend(found)
            self.stats.inserted += inserted
            self.stats.duplicates += (
                offered[kind] - inserted - refused_by_kind.get(kind, 0) - conflicts[kind]
            )
            self.stats.conflicts += conflicts[kind]
            self.stats.inserted_by_table[kind] += inserted
            if "ts_recv" in table.column_names:  # measured per table, in Arrow kernels
                committed_us = time.time_ns() // 1000
                self.stats.tick_to_stored.observe_array(
                    seconds_since(table.column("ts_recv"), committed_us)
                )
        self.stats.retrying = False

        if letters:
            await self._retry(
                lambda: self.bus.add_dead_letters(cfg.stream, cfg.group, letters), stop
            )
            for letter in letters:
                self.stats.dead_letters[letter.reason] += 1
        for entry, reason in whole:
            await self._retry(
                functools.partial(self.bus.dead_letter, cfg.stream, cfg.group, entry, reason), stop
            )
            self.stats.dead_letters[reason] += 1
            log.warning("writer: entry %s dead-lettered: %s", entry.id, reason)
        await self._retry(lambda: self.bus.ack(cfg.stream, cfg.group, ack_ids), stop)
        self.stats.entries += len(entries)
        self.stats.batches += 1
        self.stats.last_commit_at = time.time()
        self.stats.last_batch_s = time.perf_counter() - started
        self.stats.batch_seconds.observe(self.stats.last_batch_s)
