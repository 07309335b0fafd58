"""The Kafka bus: ``kafka://host:port[,host:port...]/topic-prefix`` (confluent-kafka, i.e.
librdkafka; URL options in :mod:`tickvault.bus.kafka.link`).

Mapping
-------
* A tickvault stream ``S`` is the topic ``<prefix>.S`` (``partitions`` partitions,
  ``replication`` replicas, ``retention.ms`` from the URL, 7 days by default as in
  incident 002). Entry ids are ``"<partition>:<offset>"``.
* ``append`` produces with an idempotent producer (``enable.idempotence``, ``acks=all``) and
  returns once every record is acknowledged by the in-sync replicas. Records are keyed by
  symbol, so one symbol's records stay in one partition, in order. A frame that carries
  several symbols is split here into one frame per symbol (same kind, same rows), because
  keying a mixed frame by one of its symbols would put the others' records out of order;
  ``append`` returns one id per payload (its first part's). Payloads that are not frames
  share one key and so keep their append order. A retried append may land twice (store
  writes are idempotent on natural keys).
* A consumer group is a Kafka consumer group with auto-commit off. Each bus object is one
  group member per (stream, group); tickvault consumer names are tracked in-process on top.

Offsets instead of per-entry acknowledgements (``per_entry_ack=False``)
---------------------------------------------------------------------
``ack`` marks entries done and commits, per partition, the contiguous done prefix (commit
``offset + 1`` of the last done entry with nothing undone before it), synchronously, so
``ack`` returns once the commit is durable. An entry not acknowledged (a failed batch)
holds its partition's commit back: after a crash or a rebalance everything from it on is
delivered again, by ``read`` (that is how Kafka re-delivers: the new owner starts at the
committed offset). On revocation the member commits its done prefix and forgets the
partition's in-flight entries; it never commits past unfinished work.

What Kafka cannot do, and what this bus does instead
----------------------------------------------------
* ``claim=False``: no claims; a dead member's partitions move to a live member when its
  session times out (rebalance). ``claim_stale`` returns ``[]``.
* ``delivery_counts=True``, although Kafka does not count deliveries: the bus keeps each
  uncommitted offset's count in the metadata of the group's committed offset, written
  before the entries are handed out, so a poison entry that crashes every writer that reads
  it is dead-lettered after ``max_deliveries`` even across restarts and rebalances (see
  :mod:`tickvault.bus.kafka.counts`).
* ``consumer_registry=False``: ``pending``, ``consumers``, ``read_own_pending`` and
  ``delete_consumer`` describe this client's in-flight entries (delivered, not committed).
  ``delete_consumer`` hands the name's entries back; the next ``read`` delivers them again.
* ``trim_acknowledged`` returns 0: the topic's retention removes old records; ``scan``
  reads what it still holds (``tickvault rebuild``).
* ``info``: ``pending`` = this client's in-flight entries, ``lag`` = everything else the
  group has not committed (high watermark - committed offset), so ``pending + lag == 0``
  means the group committed everything, whichever process consumed it.
* Dead letters: :mod:`tickvault.bus.kafka.letters`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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
from tickvault.bus.kafka.info import OffsetsInspector, RenewingProducer
from tickvault.bus.kafka.letters import GroupRegistry, KafkaDeadLetters, gap_letters
from tickvault.bus.kafka.link import KafkaOptions, Topics, kafka, translate
from tickvault.bus.kafka.member import Held, Member, close_member, split_by_symbol
from tickvault.core.errors import BusError, BusUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)


class KafkaBus(Bus):
    """Bus on Kafka; ``KafkaBus.from_url("kafka://127.0.0.1:9092/tickvault?retention=7d")``."""

    capabilities = Capabilities(
        per_entry_ack=False, claim=False, delivery_counts=True, consumer_registry=False
    )

    def __init__(self, options: KafkaOptions) -> None:
        self.options = options
        self._producer = RenewingProducer(options)
        self._produce_pool = ThreadPoolExecutor(1, thread_name_prefix="kafka-produce")
        self._admin_pool = ThreadPoolExecutor(1, thread_name_prefix="kafka-admin")
        self.topics = Topics(options, self._producer)
        self.letters = KafkaDeadLetters(options, self._produce_sync)
        self.registry = GroupRegistry(options, self._produce_sync)
        self._members: dict[tuple[str, str], Member] = {}
        self.offsets = OffsetsInspector(options, self.registry)
        self._closed = False
        self.retention_gaps = 0
        """Ranges of records lost to retention before this bus's groups stored them."""

    @classmethod
    def from_url(cls, url: str) -> KafkaBus:
        return cls(KafkaOptions.from_url(url))

    # -- plumbing ---------------------------------------------------------------------------

    async def _on(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise BusError("Kafka bus: used after close")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, fn, *args)
        except BusError:
            raise
        except Exception as exc:
            raise translate(exc, getattr(fn, "__name__", "call")) from exc

    def _produce_sync(
        self, topic: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
    ) -> list[str]:
        return self._producer.produce(topic, records)

    def _ensure_topic(self, stream: str) -> str:
        topic = self.options.topic(stream)
        config = {
            "retention.ms": str(self.options.retention_ms),
            "retention.bytes": str(self.options.retention_bytes),
            "cleanup.policy": "delete",
        }
        self.topics.ensure(topic, config, self.options.partitions)
        return topic

    def _ensure_side_topics(self) -> None:
        forever = {"retention.ms": "-1", "cleanup.policy": "delete"}
        self.topics.ensure(self.options.dlq_topic, forever, 1)
        self.topics.ensure(self.options.groups_topic, forever, 1)

    async def _member(self, stream: str, group: str) -> Member:
        key = (stream, group)
        member = self._members.get(key)
        if member is None:
            topic = await self._on(self._admin_pool, self._ensure_topic, stream)
            ck = kafka()
            consumer = ck.Consumer(self.options.consumer_config(group))
            member = Member(topic, consumer, ThreadPoolExecutor(1, thread_name_prefix="kafka-c"))
            consumer.subscribe(
                [topic],
                on_assign=member.on_assign,
                on_revoke=member.on_revoke,
                on_lost=member.on_lost,
            )
            self._members[key] = member
        if not member.assigned_once.is_set():
            deadline = time.monotonic() + self.options.join_timeout_ms / 1000
            while not member.assigned_once.is_set():
                if time.monotonic() > deadline:
                    raise BusUnavailable(f"Kafka bus: group {group} did not assign partitions")
                # Drives the join. Anything polled right after the assignment is kept for
                # the next read: dropping it would let a later commit pass over it.
                msgs = await self._poll(member, 100, 0.05)
                with member.lock:
                    member.early.extend(msgs)
            # The first read after joining should see what the group has not committed yet:
            # wait (briefly) for the first fetch when there is something to fetch.
            if await self._on(member.executor, self._backlog, member):
                settle = time.monotonic() + 5
                while not member.early and time.monotonic() < settle:
                    msgs = await self._poll(member, 100, 0.05)
                    with member.lock:
                        member.early.extend(msgs)
        return member

    def _backlog(self, m: Member) -> int:
        """Records on the member's partitions past the group's commits (member thread)."""
        ck = kafka()
        timeout = self.options.timeout_ms / 1000
        with m.lock:
            tps = [ck.TopicPartition(m.topic, p) for p in sorted(m.assigned)]
        total = 0
        for tp in m.consumer.committed(tps, timeout=timeout) if tps else []:
            low, high = m.consumer.get_watermark_offsets(tp, timeout=timeout)
            total += high - max(tp.offset, low)
        return total

    async def _poll(self, m: Member, count: int, timeout_s: float) -> list[Any]:
        msgs: list[Any] = await self._on(m.executor, m.poll, count, timeout_s)
        out = []
        for msg in msgs:
            err = msg.error()
            if err is None:
                out.append(msg)
            elif err.fatal():
                raise BusError(f"Kafka bus: read: {err.str()}")
        return out

    # -- groups and appends -----------------------------------------------------------------

    async def ensure_group(self, stream: str, group: str) -> None:
        def op() -> None:
            self._ensure_topic(stream)
            self._ensure_side_topics()
            self.registry.add(stream, group)

        await self._on(self._admin_pool, op)

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[str]:
        if not payloads:
            return []
        topic = await self._on(self._admin_pool, self._ensure_topic, stream)
        records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
        firsts: list[int] = []
        for payload in payloads:
            firsts.append(len(records))
            records.extend((k, v, []) for k, v in split_by_symbol(payload))
        ids = await self._on(self._produce_pool, self._produce_sync, topic, records)
        return [ids[i] for i in firsts]

    # -- delivery ---------------------------------------------------------------------------

    async def read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int = 0
    ) -> list[Entry]:
        m = await self._member(stream, group)
        now = time.monotonic()
        m.seen[consumer] = time.time()
        with m.lock:
            back: list[Entry] = []
            while m.returned and len(back) < count:
                entry_id = m.returned.popleft()
                h = m.held.get(entry_id)
                if h is not None:
                    h.consumer, h.delivered_at = consumer, now
                    p, o = (int(x) for x in entry_id.split(":", 1))
                    h.deliveries = m.count_delivery(p, o)
                    back.append(Entry(entry_id, h.payload, h.deliveries))
        if back:
            await self._record_counts(m)
            return back
        deadline = now + block_ms / 1000
        while True:
            remaining = deadline - time.monotonic()
            with m.lock:
                msgs = [m.early.popleft() for _ in range(min(count, len(m.early)))]
            if not msgs:
                msgs = await self._poll(m, count, max(0.0, min(0.05, remaining)))
            entries = []
            with m.lock:
                for msg in msgs:
                    deliveries = m.take(msg)
                    if not deliveries:
                        continue  # revoked while the batch was in flight: the owner re-reads
                    p, o = msg.partition(), msg.offset()
                    entry_id = f"{p}:{o}"
                    payload = msg.value() or b""
                    ts = msg.timestamp()[1]
                    m.held[entry_id] = Held(consumer, payload, deliveries, time.monotonic(), ts)
                    entries.append(Entry(entry_id, payload, deliveries))
            if m.gaps:
                await self._report_gaps(stream, group, m)
            if entries:
                await self._record_counts(m)
            if entries or remaining <= 0:
                return entries

    async def _record_counts(self, m: Member) -> None:
        """Put the delivery counts on the broker before the entries are handed out
        (:mod:`tickvault.bus.kafka.counts`); a failure only delays the count."""
        try:
            await self._on(m.executor, m.commit, None, True)
        except BusError as exc:
            log.warning("Kafka bus: delivery counts of %s not recorded: %s", m.topic, exc)

    async def _report_gaps(self, stream: str, group: str, m: Member) -> None:
        """Dead-letter (kind ``gap``) the ranges the topic's retention removed before the
        group stored them: never a silent loss."""
        with m.lock:
            gaps, m.gaps = m.gaps, []
        self.retention_gaps += len(gaps)
        await self.add_dead_letters(stream, group, gap_letters(m.topic, group, gaps))

    async def read_own_pending(
        self, stream: str, group: str, consumer: str, count: int
    ) -> list[Entry]:
        m = self._members.get((stream, group))
        if m is None:
            return []  # a fresh member: uncommitted entries come back through read
        out = []
        with m.lock:
            for entry_id, h in m.held.items():
                if h.consumer == consumer and entry_id not in m.returned:
                    p, o = (int(x) for x in entry_id.split(":", 1))
                    h.deliveries = m.count_delivery(p, o)
                    h.delivered_at = time.monotonic()
                    out.append(Entry(entry_id, h.payload, h.deliveries))
                    if len(out) >= count:
                        break
        if out:
            await self._record_counts(m)
        return out

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        m = self._members.get((stream, group))
        if m is None:
            return 0
        n = m.mark_done(ids)
        await self._on(m.executor, m.commit)
        return n

    async def pending(
        self, stream: str, group: str, consumer: str | None = None, count: int = 1000
    ) -> list[PendingEntry]:
        m = self._members.get((stream, group))
        if m is None:
            return []
        now = time.monotonic()
        with m.lock:
            rows = [(i, h) for i, h in m.held.items() if consumer in (None, h.consumer)]
        return [
            PendingEntry(i, h.consumer, h.deliveries, int((now - h.delivered_at) * 1000))
            for i, h in rows[:count]
        ]

    async def claim_stale(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Entry]:
        """Always ``[]``: a dead member's partitions move to live members by rebalancing."""
        return []

    async def consumers(self, stream: str, group: str) -> list[ConsumerInfo]:
        m = self._members.get((stream, group))
        if m is None:
            return []
        now = time.time()
        with m.lock:
            held = list(m.held.values())
            seen = sorted(m.seen.items())
        return [
            ConsumerInfo(name, sum(h.consumer == name for h in held), int((now - at) * 1000))
            for name, at in seen
        ]

    async def delete_consumer(self, stream: str, group: str, name: str) -> int:
        m = self._members.get((stream, group))
        if m is None:
            return 0
        with m.lock:
            mine = [i for i, h in m.held.items() if h.consumer == name and i not in m.returned]
            m.returned.extend(mine)  # the next read hands them out again
            m.seen.pop(name, None)
        return len(mine)

    # -- dead letters -----------------------------------------------------------------------

    async def dead_letter(self, stream: str, group: str, entry: Entry, reason: str) -> None:
        letter = NewDeadLetter(
            "frame", reason, entry.payload, f"entry:{entry.id}", entry.id, entry.delivery_count
        )
        await self.add_dead_letters(stream, group, [letter])
        await self.ack(stream, group, [entry.id])

    async def add_dead_letters(
        self, stream: str, group: str | None, letters: Sequence[NewDeadLetter]
    ) -> int:
        if not letters:
            return 0

        def op() -> int:
            self._ensure_side_topics()
            return self.letters.add(stream, group, letters)

        return await self._on(self._admin_pool, op)

    async def dead_letters(
        self, stream: str | None = None, limit: int = 1000, include_requeued: bool = False
    ) -> list[DeadLetter]:
        return await self._on(self._admin_pool, self.letters.scan, stream, limit, include_requeued)

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        return await self._on(self._admin_pool, self.letters.get, letter_id)

    async def mark_requeued(self, letter_id: str) -> None:
        await self._on(self._admin_pool, self.letters.mark_requeued, letter_id)

    async def dead_letter_counts(self, stream: str | None = None) -> dict[str, int]:
        return await self._on(self._admin_pool, self.letters.counts, stream)

    # -- upkeep and introspection -----------------------------------------------------------

    async def trim_acknowledged(self, stream: str) -> int:
        """0: the topic's ``retention.ms`` removes old records, acknowledged or not."""
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
        """What the topic's retention still holds (``tickvault rebuild``): partition by
        partition, oldest first in each (see :meth:`OffsetsInspector.scan`)."""
        op = self.offsets.scan
        return await self._on(self._admin_pool, op, stream, since_ms, until_ms, limit, after_id)

    async def retention(self, stream: str) -> dict[str, Any]:
        """The stream topic's retention (the replay window of ``tickvault rebuild``)."""
        topic = self.options.topic(stream)
        return await self._on(self._admin_pool, self.topics.retention, topic)

    async def info(self, stream: str) -> StreamInfo:
        marks, uncommitted = await self._on(self._admin_pool, self.offsets.backlog, stream)
        groups = []
        for group, total in sorted(uncommitted.items()):
            m = self._members.get((stream, group))
            held: list[Held] = []
            consumers = 0
            if m is not None:
                with m.lock:
                    held = list(m.held.values())
                    consumers = len(m.seen)
            now_ms = int(time.time() * 1000)
            oldest = min((h.appended_ms for h in held), default=None)
            groups.append(
                GroupInfo(
                    name=group,
                    consumers=consumers,
                    pending=len(held),
                    lag=max(0, total - len(held)),
                    oldest_pending_age_ms=None if oldest is None else max(0, now_ms - oldest),
                    last_delivered_id=None,
                )
            )
        filled = [(p, lo, hi) for p, (lo, hi) in marks.items() if hi > lo]
        return StreamInfo(
            stream=stream,
            length=sum(hi - lo for _, lo, hi in filled),
            first_id=f"{filled[0][0]}:{filled[0][1]}" if filled else None,
            last_id=f"{filled[-1][0]}:{filled[-1][2] - 1}" if filled else None,
            groups=groups,
        )

    async def streams(self) -> list[str]:
        def op() -> list[str]:
            md = self._producer.list_topics(timeout=self.options.timeout_ms / 1000)
            return sorted(s for t in md.topics if (s := self.options.stream_of(t)) is not None)

        return await self._on(self._admin_pool, op)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        for m in self._members.values():
            await loop.run_in_executor(m.executor, close_member, m)
            m.executor.shutdown(wait=True)
        self._members.clear()

        def close_rest() -> None:
            self._producer.flush(5)
            self.letters.close()
            self.registry.close()
            self.offsets.close()

        await loop.run_in_executor(self._admin_pool, close_rest)
        self._admin_pool.shutdown(wait=True)
        self._produce_pool.shutdown(wait=True)
