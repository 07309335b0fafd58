"""In-memory doubles of the bus and the store, to test your own consumers against.

:class:`InMemoryBus` implements every bus role (:class:`~tickvault.bus.base.Log`,
:class:`~tickvault.bus.base.Groups`, :class:`~tickvault.bus.base.DeadLetters`) in plain Python
dictionaries, with the same contract as the engines (``tests/test_bus_contract.py`` runs it
next to them): ids increase and are never reused, entries stay pending until acknowledged,
``claim_stale`` moves idle entries, dead letters are idempotent on their key, and the
retention-aware trim and ``scan`` work (``capabilities.retention`` is true). What it cannot
have is durability: everything is gone with the object, and another process cannot see it.

:class:`InMemoryStore` is the embedded store (DuckDB) on an in-memory database: the same SQL,
natural keys and read-only query sandbox as ``duckdb:///``, with no file. A hand-written
store could not answer the SQL that ``query`` accepts, so this one is the real engine.

Neither is imported by ``import tickvault`` or the command line; import this module from
your tests::

    import asyncio

    from tickvault import Entry, ReliableConsumer
    from tickvault.testing import InMemoryBus

    async def test_my_handler_sees_every_entry() -> None:
        bus = InMemoryBus()
        await bus.ensure_group("orders", "mine")
        await bus.append("orders", [b"one", b"two"])
        seen: list[bytes] = []

        async def handle(entry: Entry) -> None:
            seen.append(entry.payload)

        consumer = ReliableConsumer(bus, "orders", "mine", handle, block_ms=50)
        task = asyncio.create_task(consumer.run())
        while len(seen) < 2:  # in a real test: with a deadline
            await asyncio.sleep(0.01)
        consumer.stop()
        await task
        assert seen == [b"one", b"two"]
        assert await bus.pending("orders", "mine") == []

Use one object per test, from one event loop: the state lives in the object, and a blocked
``read`` wakes up on the next ``append`` to the same object.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from tickvault.bus.base import (
    Bus,
    Capabilities,
    ConsumerInfo,
    DeadLetter,
    Entry,
    GroupInfo,
    NewDeadLetter,
    PendingEntry,
    RetainedEntry,
    StreamInfo,
)
from tickvault.core.errors import BusError
from tickvault.stores.duckdb.store import DuckDBStore

__all__ = ["InMemoryBus", "InMemoryStore"]


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def _number(entry_id: str) -> int | None:
    try:
        return int(entry_id)
    except ValueError:
        return None


@dataclass
class _Stored:
    payload: bytes
    created_at: float


@dataclass
class _Pending:
    consumer: str
    deliveries: int
    delivered_at: float


@dataclass
class _Group:
    last_id: int = 0
    pending: dict[int, _Pending] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    """Consumers of the group and when each last read."""


class InMemoryBus(Bus):
    """Every bus role in memory, for tests; see the module docstring."""

    capabilities = Capabilities(retention=True)

    def __init__(self) -> None:
        self._next_id = 0
        self._entries: dict[str, dict[int, _Stored]] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._letters: dict[int, DeadLetter] = {}
        self._letter_keys: set[tuple[str, str]] = set()
        self._waiters: set[asyncio.Future[None]] = set()

    # -- log ----------------------------------------------------------------------------------

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[str]:
        if not payloads:
            return []
        entries = self._entries.setdefault(stream, {})
        now = time.time()
        ids = []
        for payload in payloads:
            self._next_id += 1
            entries[self._next_id] = _Stored(bytes(payload), now)
            ids.append(str(self._next_id))
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        return ids

    def _ack_bound(self, stream: str) -> int | None:
        """The smallest entry id some group still needs (delivered-to bound or pending)."""
        bounds = [
            min([g.last_id + 1, *g.pending]) for (s, _), g in self._groups.items() if s == stream
        ]
        return min(bounds) if bounds else None

    async def trim_acknowledged(self, stream: str) -> int:
        bound = self._ack_bound(stream)
        entries = self._entries.get(stream, {})
        if bound is None:
            return 0
        gone = [i for i in entries if i < bound]
        for i in gone:
            del entries[i]
        return len(gone)

    async def trim_retained(
        self, stream: str, *, keep_age_s: float, keep_bytes: int | None = None
    ) -> int:
        bound = self._ack_bound(stream)
        entries = self._entries.get(stream, {})
        if bound is None:
            return 0
        oldest_kept = time.time() - keep_age_s
        total = sum(len(e.payload) for e in entries.values())
        gone: list[int] = []
        for entry_id in sorted(i for i in entries if i < bound):
            stored = entries[entry_id]
            too_big = keep_bytes is not None and total > keep_bytes
            if stored.created_at >= oldest_kept and not too_big:
                break
            gone.append(entry_id)
            total -= len(stored.payload)
        for i in gone:
            del entries[i]
        return len(gone)

    async def scan(
        self,
        stream: str,
        since_ms: int,
        until_ms: int | None = None,
        *,
        limit: int = 1000,
        after_id: str | None = None,
    ) -> list[RetainedEntry]:
        after = _number(after_id) if after_id else 0
        out: list[RetainedEntry] = []
        for entry_id, stored in sorted(self._entries.get(stream, {}).items()):
            if len(out) >= limit:
                break
            if after is not None and entry_id <= after:
                continue
            if stored.created_at < since_ms / 1000:
                continue
            if until_ms is not None and stored.created_at >= until_ms / 1000:
                continue
            out.append(RetainedEntry(str(entry_id), stored.payload, int(stored.created_at * 1000)))
        return out

    async def info(self, stream: str) -> StreamInfo:
        entries = self._entries.get(stream, {})
        now = time.time()
        groups = []
        for (s, name), g in sorted(self._groups.items()):
            if s != stream:
                continue
            created = [entries[i].created_at for i in g.pending if i in entries]
            groups.append(
                GroupInfo(
                    name=name,
                    consumers=len(g.seen),
                    pending=len(g.pending),
                    lag=sum(1 for i in entries if i > g.last_id),
                    oldest_pending_age_ms=_ms(now - min(created)) if created else None,
                    last_delivered_id=str(g.last_id) if g.last_id else None,
                )
            )
        return StreamInfo(
            stream=stream,
            length=len(entries),
            first_id=str(min(entries)) if entries else None,
            last_id=str(max(entries)) if entries else None,
            groups=groups,
        )

    async def streams(self) -> list[str]:
        names = {s for s, _ in self._groups} | set(self._entries)
        names |= {letter.stream for letter in self._letters.values()}
        return sorted(names)

    # -- groups -------------------------------------------------------------------------------

    def _group(self, stream: str, group: str) -> _Group:
        found = self._groups.get((stream, group))
        if found is None:
            raise BusError(f"no group {group!r} on stream {stream!r}")
        return found

    async def ensure_group(self, stream: str, group: str) -> None:
        self._groups.setdefault((stream, group), _Group())

    def _deliver(self, stream: str, group: str, consumer: str, count: int) -> list[Entry]:
        g = self._group(stream, group)
        g.seen[consumer] = time.time()
        entries = self._entries.get(stream, {})
        fresh = sorted(i for i in entries if i > g.last_id)[:count]
        now = time.time()
        for entry_id in fresh:
            g.pending[entry_id] = _Pending(consumer, 1, now)
        if fresh:
            g.last_id = fresh[-1]
        return [Entry(str(i), entries[i].payload, 1) for i in fresh]

    async def read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int = 0
    ) -> list[Entry]:
        deadline = time.monotonic() + block_ms / 1000
        while True:
            entries = self._deliver(stream, group, consumer, count)
            remaining = deadline - time.monotonic()
            if entries or remaining <= 0:
                return entries
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, timeout=remaining)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(waiter)

    def _redeliver(
        self, stream: str, group: str, consumer: str, count: int, min_idle_ms: int | None
    ) -> list[Entry]:
        g = self._groups.get((stream, group))
        if g is None:
            return []
        now = time.time()
        g.seen[consumer] = now
        if min_idle_ms is None:
            chosen = [i for i, p in g.pending.items() if p.consumer == consumer]
        else:
            idle_since = now - min_idle_ms / 1000
            chosen = [i for i, p in g.pending.items() if p.delivered_at <= idle_since]
        entries = self._entries.get(stream, {})
        out: list[Entry] = []
        for entry_id in sorted(chosen)[:count]:
            pending = g.pending[entry_id]
            if entry_id not in entries:  # trimmed underneath: nothing left to deliver
                del g.pending[entry_id]
                continue
            g.pending[entry_id] = _Pending(consumer, pending.deliveries + 1, now)
            out.append(Entry(str(entry_id), entries[entry_id].payload, pending.deliveries + 1))
        return out

    async def read_own_pending(
        self, stream: str, group: str, consumer: str, count: int
    ) -> list[Entry]:
        return self._redeliver(stream, group, consumer, count, None)

    async def claim_stale(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Entry]:
        return self._redeliver(stream, group, consumer, count, min_idle_ms)

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        g = self._groups.get((stream, group))
        if g is None:
            return 0
        done = 0
        for entry_id in ids:
            number = _number(entry_id)
            if number is not None and g.pending.pop(number, None) is not None:
                done += 1
        return done

    async def pending(
        self, stream: str, group: str, consumer: str | None = None, count: int = 1000
    ) -> list[PendingEntry]:
        g = self._groups.get((stream, group))
        if g is None:
            return []
        now = time.time()
        rows = sorted(g.pending.items())
        return [
            PendingEntry(str(i), p.consumer, p.deliveries, _ms(now - p.delivered_at))
            for i, p in rows
            if consumer is None or p.consumer == consumer
        ][:count]

    async def consumers(self, stream: str, group: str) -> list[ConsumerInfo]:
        g = self._groups.get((stream, group))
        if g is None:
            return []
        now = time.time()
        return [
            ConsumerInfo(
                name,
                sum(1 for p in g.pending.values() if p.consumer == name),
                _ms(now - seen),
            )
            for name, seen in sorted(g.seen.items())
        ]

    async def delete_consumer(self, stream: str, group: str, name: str) -> int:
        g = self._groups.get((stream, group))
        if g is None:
            return 0
        # Same semantics as Redis XGROUP DELCONSUMER: its pending entries go with it.
        mine = [i for i, p in g.pending.items() if p.consumer == name]
        for i in mine:
            del g.pending[i]
        g.seen.pop(name, None)
        return len(mine)

    # -- dead letters -------------------------------------------------------------------------

    def _insert_letters(
        self, stream: str, group: str | None, letters: Sequence[NewDeadLetter]
    ) -> int:
        now = time.time()
        added = 0
        for x in letters:
            if (stream, x.key) in self._letter_keys:
                continue
            self._letter_keys.add((stream, x.key))
            letter_id = len(self._letters) + 1
            self._letters[letter_id] = DeadLetter(
                id=str(letter_id),
                stream=stream,
                group=group,
                kind=x.kind,
                reason=x.reason,
                payload=x.payload,
                entry_id=x.entry_id,
                delivery_count=x.delivery_count,
                created_at=now,
            )
            added += 1
        return added

    async def dead_letter(self, stream: str, group: str, entry: Entry, reason: str) -> None:
        letter = NewDeadLetter(
            kind="frame",
            reason=reason,
            payload=entry.payload,
            key=f"entry:{entry.id}",
            entry_id=entry.id,
            delivery_count=entry.delivery_count,
        )
        self._insert_letters(stream, group, [letter])
        await self.ack(stream, group, [entry.id])

    async def add_dead_letters(
        self, stream: str, group: str | None, letters: Sequence[NewDeadLetter]
    ) -> int:
        return self._insert_letters(stream, group, letters)

    async def dead_letters(
        self, stream: str | None = None, limit: int = 1000, include_requeued: bool = False
    ) -> list[DeadLetter]:
        return [
            x
            for x in self._letters.values()
            if (stream is None or x.stream == stream)
            and (include_requeued or x.requeued_at is None)
        ][:limit]

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        number = _number(letter_id)
        return None if number is None else self._letters.get(number)

    async def mark_requeued(self, letter_id: str) -> None:
        number = _number(letter_id)
        if number is not None and number in self._letters:
            self._letters[number] = msgspec.structs.replace(
                self._letters[number], requeued_at=time.time()
            )

    async def dead_letter_counts(self, stream: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for x in await self.dead_letters(stream, limit=len(self._letters)):
            counts[x.reason] = counts.get(x.reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: -item[1]))


class InMemoryStore(DuckDBStore):
    """The embedded store on an in-memory DuckDB database; see the module docstring."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.url = "duckdb:///:memory:"
