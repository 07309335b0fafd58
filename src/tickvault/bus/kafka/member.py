"""Per-symbol keys and group membership of the Kafka bus (see :mod:`tickvault.bus.kafka.bus`).

:class:`Member` holds the offset bookkeeping: per assigned partition the offsets delivered
(in order) and those done; ``commit`` writes, per partition, ``offset + 1`` of the last entry
of the contiguous done prefix, with the partition's delivery counts as the commit's
metadata (:mod:`tickvault.bus.kafka.counts`). Rebalance callbacks run on the member's own
thread inside ``consume``; every state change happens under its lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tickvault.bus.kafka import counts as kafka_counts
from tickvault.bus.kafka.link import kafka, translate
from tickvault.core.codec import FrameBuilder, column_values, decode_frame
from tickvault.core.errors import BusError, DecodeError
from tickvault.core.records import spec_for

NO_SYMBOL = b"-"
"""Key of payloads that carry no symbol (they share a partition and keep their order)."""


def split_by_symbol(payload: bytes) -> list[tuple[bytes, bytes]]:
    """``(key, payload)`` parts of one bus payload: one frame per symbol, in row order."""
    try:
        frame = decode_frame(payload)
        symbols = column_values(frame.cols["symbol"])
    except (DecodeError, KeyError):
        return [(NO_SYMBOL, payload)]
    distinct = dict.fromkeys(symbols)
    if len(distinct) <= 1:
        return [(str(next(iter(distinct), "")).encode() or NO_SYMBOL, payload)]
    spec = spec_for(frame.kind)
    columns = [column_values(frame.cols[name]) for name in spec.columns]
    builders = {s: FrameBuilder(frame.kind) for s in distinct}
    for sym, row in zip(symbols, zip(*columns, strict=True), strict=True):
        builders[sym].rows.append(row)
    return [(str(s).encode(), b.take()) for s, b in builders.items()]


@dataclass
class Held:
    consumer: str
    payload: bytes
    deliveries: int
    delivered_at: float
    appended_ms: int


@dataclass
class Member:
    """This bus object's membership in one (stream, group): a Kafka consumer on its own
    thread, and the in-flight state the commits are computed from."""

    topic: str
    consumer: Any
    executor: ThreadPoolExecutor
    lock: threading.Lock = field(default_factory=threading.Lock)
    assigned_once: threading.Event = field(default_factory=threading.Event)
    assigned: set[int] = field(default_factory=set)
    delivered: dict[int, deque[int]] = field(default_factory=dict)
    done: dict[int, set[int]] = field(default_factory=dict)
    to_commit: dict[int, int] = field(default_factory=dict)
    held: dict[str, Held] = field(default_factory=dict)
    returned: deque[str] = field(default_factory=deque)
    expect: dict[int, int | None] = field(default_factory=dict)
    gaps: list[tuple[int, int, int]] = field(default_factory=list)
    """(partition, first missing offset, next offset read): records the topic's retention
    removed before this group stored them."""
    early: deque[Any] = field(default_factory=deque)
    """Messages polled while joining, handed out by the next ``read``."""
    seen: dict[str, float] = field(default_factory=dict)
    counts: dict[int, dict[int, int]] = field(default_factory=dict)
    """Per partition: deliveries of each delivered, uncommitted offset (all owners so far)."""
    committed_at: dict[int, int] = field(default_factory=dict)
    """Per partition: the group's commit point as this member last knew it."""
    uncounted: dict[int, int] = field(default_factory=dict)
    """Partitions whose latest deliveries are not recorded on the broker yet (→ a number
    that changes with every delivery, so a record in flight clears only what it carried)."""

    # -- rebalance callbacks (run on the member's thread, inside consume) -------------------

    def on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        try:  # where each partition must go on from: a jump past it is a retention gap
            committed = consumer.committed(partitions, timeout=10) if partitions else []
        except Exception:
            committed = []
        start = {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
        loaded = {tp.partition: kafka_counts.decode(tp.metadata) for tp in committed}
        with self.lock:
            for tp in partitions:
                p = tp.partition
                self.assigned.add(p)
                self.delivered[p] = deque()
                self.done[p] = set()
                self.expect[p] = start.get(p)
                self.counts[p] = loaded.get(p, {})
                if p in start:
                    self.committed_at[p] = start[p]
        self.assigned_once.set()

    def take(self, msg: Any) -> int:
        """Record a delivered message (locked); its delivery count, or 0 if its partition
        is not ours now."""
        p, o = msg.partition(), msg.offset()
        if p not in self.assigned:
            return 0
        expected = self.expect.get(p)
        if expected is not None and o > expected:
            self.gaps.append((p, expected, o))
        self.expect[p] = o + 1
        self.delivered[p].append(o)
        return self.count_delivery(p, o)

    def count_delivery(self, p: int, o: int) -> int:
        """One more delivery of offset ``o`` of partition ``p`` (locked); the new count."""
        counts = self.counts.setdefault(p, {})
        n = counts.get(o, 0) + 1
        counts[o] = n
        self.uncounted[p] = self.uncounted.get(p, 0) + 1
        return n

    def on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        lost = {tp.partition for tp in partitions}
        with self.lock:
            for p in lost:
                self._advance(p)
        # Never past unfinished work: only the done prefix. If the commit fails, the new
        # owner re-delivers from the last commit (harmless duplicates).
        with contextlib.suppress(BusError):
            self.commit(only=lost)
        self._forget(lost)

    def on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._forget({tp.partition for tp in partitions})

    def _forget(self, partitions: set[int]) -> None:
        with self.lock:
            for p in partitions:
                self.assigned.discard(p)
                self.delivered.pop(p, None)
                self.done.pop(p, None)
                self.to_commit.pop(p, None)
                self.counts.pop(p, None)
                self.committed_at.pop(p, None)
                self.uncounted.pop(p, None)
            for entry_id in [i for i in self.held if int(i.split(":", 1)[0]) in partitions]:
                del self.held[entry_id]
            self.returned = deque(i for i in self.returned if i in self.held)
            self.early = deque(x for x in self.early if x.partition() not in partitions)

    # -- offsets ----------------------------------------------------------------------------

    def _advance(self, p: int) -> None:
        """Move partition ``p``'s commit point over its contiguous done prefix (locked)."""
        dq, done = self.delivered.get(p), self.done.get(p)
        if dq is None or done is None:
            return
        last = None
        while dq and dq[0] in done:
            last = dq.popleft()
            done.discard(last)
        if last is not None:
            self.to_commit[p] = last + 1

    def mark_done(self, ids: Sequence[str]) -> int:
        n = 0
        with self.lock:
            touched = set()
            for entry_id in dict.fromkeys(ids):
                if self.held.pop(entry_id, None) is None:
                    continue
                p, o = (int(x) for x in entry_id.split(":", 1))
                if p in self.done:
                    self.done[p].add(o)
                    touched.add(p)
                n += 1
            for p in touched:
                self._advance(p)
        return n

    def poll(self, count: int, timeout_s: float) -> list[Any]:
        """Commit what is pending, then consume (blocking; member thread)."""
        self.commit()
        return list(self.consumer.consume(count, timeout_s))

    def _point(self, p: int) -> int | None:
        """Where partition ``p``'s commit stands, or is about to (locked)."""
        if p in self.to_commit:
            return self.to_commit[p]
        if p in self.committed_at:
            return self.committed_at[p]
        dq = self.delivered.get(p)
        # Never committed: this member started at the partition's first record, so the
        # first offset it delivered is a safe commit point (it skips nothing).
        return dq[0] if dq else None

    def commit(self, only: set[int] | None = None, record_counts: bool = False) -> None:
        """Commit the pending commit points synchronously (blocking; member thread); with
        ``record_counts``, also re-commit the current point of every partition whose deliveries are
        not recorded yet, so the counts reach the broker before the entries are handed out."""
        ck = kafka()
        with self.lock:
            todo = {p: o for p, o in self.to_commit.items() if only is None or p in only}
            if record_counts:
                for p in self.uncounted.keys() & self.assigned:
                    point = self._point(p)
                    if point is not None and (only is None or p in only):
                        todo.setdefault(p, point)
            if not todo:
                return
            recorded = {p: g for p, g in self.uncounted.items() if p in todo}
            offsets = [
                ck.TopicPartition(
                    self.topic, p, o, metadata=kafka_counts.encode(self.counts.get(p, {}), o)
                )
                for p, o in sorted(todo.items())
            ]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except ck.KafkaException as exc:
            if exc.args[0].code() in _REBALANCING(ck):
                # The group is rebalancing: the commit points stay pending and are committed
                # by the revocation (or the next poll); retrying here without polling would
                # keep the member from rejoining. If they never make it, the partitions'
                # next owner re-reads from the last commit: duplicates, never a gap.
                return
            raise translate(exc, "commit") from exc
        with self.lock:
            for p, generation in recorded.items():
                if self.uncounted.get(p) == generation:
                    del self.uncounted[p]
            for p, o in todo.items():
                if p in self.assigned:
                    self.committed_at[p] = o
                    counts = self.counts.get(p, {})
                    for offset in [x for x in counts if x < o]:
                        del counts[offset]
                if self.to_commit.get(p) == o:
                    del self.to_commit[p]


def close_member(m: Member) -> None:
    """Commit what is done, then leave the group (its partitions move on at once)."""
    with contextlib.suppress(BusError):
        m.commit()
    with contextlib.suppress(Exception):  # closing must not fail the caller
        m.consumer.close()  # runs on_revoke: commits the done prefix once more


def _REBALANCING(ck: Any) -> set[int]:
    e = ck.KafkaError
    return {e.REBALANCE_IN_PROGRESS, e.ILLEGAL_GENERATION, e.UNKNOWN_MEMBER_ID, e._STATE}
