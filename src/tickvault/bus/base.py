"""The Bus interface: a durable log with consumer groups.

Contract (every backend; checked by ``tests/test_bus_contract.py``):

* ``append`` returns only after the payloads are durable on the bus, in order, and returns
  their ids. Ids are strings, unique within a stream and increasing in append order.
* ``read`` delivers entries a group has never delivered before (``>`` in Redis terms) and
  records them as pending for ``consumer`` with a delivery count of 1. It may return fewer
  than ``count`` entries, and returns ``[]`` after ``block_ms`` without new entries.
* An entry stays pending until ``ack``; a crashed consumer's entries are re-delivered by
  ``read_own_pending`` (same consumer name) or moved by ``claim_stale`` (another consumer),
  each bumping the delivery count. Acknowledging twice or an unknown id is harmless.
* ``dead_letter`` moves one pending entry to the dead-letter queue with a reason and
  acknowledges it, so it is never lost and never blocks the group again.
  ``add_dead_letters`` records individual bad records (not whole entries); it is idempotent
  on each letter's ``key``.
* ``delete_consumer`` removes a consumer and returns how many pending entries it still had;
  callers claim them first (Redis silently drops them).
* ``trim_acknowledged`` removes only entries that every group has acknowledged.
* ``trim_retained`` is the retention-aware trim: it removes acknowledged entries only once
  they are older than ``keep_age_s`` or, oldest first, while the stream holds more than
  ``keep_bytes`` of payload; it never removes an entry some group has not acknowledged.
  Backends that cannot (``capabilities.retention`` false) remove nothing and rely on the
  server's own limits.
* ``scan`` returns the entries still held on a stream appended in ``[since_ms, until_ms)``,
  oldest first, whatever any group did with them (``tickvault rebuild`` replays them).

Backends that are logs with offsets (Kafka) cannot do per-entry pending lists or claims;
they say so in :attr:`Bus.capabilities` and the writer adapts.

Roles: :class:`Bus` is the union of three narrow interfaces, :class:`Log` (append, info,
streams, trims, scan), :class:`Groups` (ensure_group, read, read_own_pending, ack, pending,
claim_stale, consumers, delete_consumer) and :class:`DeadLetters` (dead_letter,
add_dead_letters, dead_letters, get_dead_letter, mark_requeued, dead_letter_counts). Every
engine implements :class:`Bus`; a caller is typed on the role it uses. An in-memory double of
every role is :class:`tickvault.testing.InMemoryBus`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from tickvault.core.errors import BusError


@dataclass(frozen=True)
class Capabilities:
    per_entry_ack: bool = True
    claim: bool = True
    delivery_counts: bool = True
    consumer_registry: bool = True
    retention: bool = False
    """``trim_retained`` and ``scan`` are implemented (acknowledged entries can be kept)."""


@dataclass(frozen=True)
class Entry:
    id: str
    payload: bytes
    delivery_count: int = 1


@dataclass(frozen=True)
class RetainedEntry:
    """An entry as ``scan`` returns it: with the wall-clock time it was appended."""

    id: str
    payload: bytes
    appended_ms: int


class PendingEntry(msgspec.Struct, frozen=True):
    entry_id: str
    consumer: str
    delivery_count: int
    idle_ms: int


class ConsumerInfo(msgspec.Struct, frozen=True):
    name: str
    pending: int
    idle_ms: int


class GroupInfo(msgspec.Struct, frozen=True):
    name: str
    consumers: int
    pending: int
    lag: int
    oldest_pending_age_ms: int | None
    last_delivered_id: str | None


class StreamInfo(msgspec.Struct, frozen=True):
    stream: str
    length: int
    first_id: str | None
    last_id: str | None
    groups: list[GroupInfo]


class NewDeadLetter(msgspec.Struct, frozen=True):
    """A dead letter to record: ``key`` makes recording it twice a no-op."""

    kind: str
    reason: str
    payload: bytes
    key: str
    entry_id: str | None = None
    delivery_count: int = 0


class DeadLetter(msgspec.Struct, frozen=True):
    id: str
    stream: str
    group: str | None
    kind: str
    reason: str
    payload: bytes
    entry_id: str | None
    delivery_count: int
    created_at: float
    requeued_at: float | None = None


class BusRole(abc.ABC):  # noqa: B024 - no abstract method: the roles below have them
    """What every role shares: the engine's capabilities and ``close``."""

    capabilities: Capabilities = Capabilities()

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the bus must not be used afterwards."""


class Log(BusRole):
    """The durable log: append, inspect, trim and scan streams (a producer needs only this)."""

    @abc.abstractmethod
    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[str]: ...

    @abc.abstractmethod
    async def info(self, stream: str) -> StreamInfo: ...

    @abc.abstractmethod
    async def streams(self) -> list[str]: ...

    @abc.abstractmethod
    async def trim_acknowledged(self, stream: str) -> int: ...

    async def trim_retained(
        self, stream: str, *, keep_age_s: float, keep_bytes: int | None = None
    ) -> int:
        """Remove acknowledged entries beyond the retention; see the module contract.

        The default (backends without retention support) removes nothing.
        """
        return 0

    async def scan(
        self,
        stream: str,
        since_ms: int,
        until_ms: int | None = None,
        *,
        limit: int = 1000,
        after_id: str | None = None,
    ) -> list[RetainedEntry]:
        """Up to ``limit`` retained entries appended in ``[since_ms, until_ms)`` with ids
        after ``after_id`` (for paging), oldest first."""
        raise BusError(f"{type(self).__name__} cannot scan retained entries")


class Groups(BusRole):
    """Consumer groups: delivery, acknowledgement, pending lists, claims and members."""

    @abc.abstractmethod
    async def ensure_group(self, stream: str, group: str) -> None:
        """Create ``group`` on ``stream`` (starting at the beginning) unless it exists."""

    @abc.abstractmethod
    async def read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int = 0
    ) -> list[Entry]: ...

    @abc.abstractmethod
    async def read_own_pending(
        self, stream: str, group: str, consumer: str, count: int
    ) -> list[Entry]:
        """Re-deliver entries already pending for ``consumer`` (used after a restart)."""

    @abc.abstractmethod
    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int: ...

    @abc.abstractmethod
    async def pending(
        self, stream: str, group: str, consumer: str | None = None, count: int = 1000
    ) -> list[PendingEntry]: ...

    @abc.abstractmethod
    async def claim_stale(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Entry]: ...

    @abc.abstractmethod
    async def consumers(self, stream: str, group: str) -> list[ConsumerInfo]: ...

    @abc.abstractmethod
    async def delete_consumer(self, stream: str, group: str, name: str) -> int: ...


class DeadLetters(BusRole):
    """The dead-letter queue: record, list, fetch, count and mark letters requeued."""

    @abc.abstractmethod
    async def dead_letter(self, stream: str, group: str, entry: Entry, reason: str) -> None: ...

    @abc.abstractmethod
    async def add_dead_letters(
        self, stream: str, group: str | None, letters: Sequence[NewDeadLetter]
    ) -> int:
        """Record letters not yet recorded (by key); return how many were new."""

    @abc.abstractmethod
    async def dead_letters(
        self, stream: str | None = None, limit: int = 1000, include_requeued: bool = False
    ) -> list[DeadLetter]: ...

    @abc.abstractmethod
    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None: ...

    @abc.abstractmethod
    async def mark_requeued(self, letter_id: str) -> None: ...

    @abc.abstractmethod
    async def dead_letter_counts(self, stream: str | None = None) -> dict[str, int]:
        """Dead letters not yet requeued, by reason."""


class Bus(Log, Groups, DeadLetters):
    """Abstract durable log with consumer groups and a dead-letter queue: every role at once.

    See the module docstring for the contract. Callers that need only part of it take the
    narrow role (:class:`Log`, :class:`Groups`, :class:`DeadLetters`).
    """
