"""Blocking Kafka helpers of :mod:`tickvault.bus.kafka.bus`: producing with a wait for every
acknowledgement (and a new producer after a fatal error), and reading watermarks and
committed offsets for ``info``.

Both run on the bus's worker threads, never on the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tickvault.bus.base import RetainedEntry
from tickvault.bus.kafka.letters import GroupRegistry
from tickvault.bus.kafka.link import KafkaOptions, kafka
from tickvault.core.errors import BusUnavailable

log = logging.getLogger("tickvault.bus.kafka")
Records = list[tuple[bytes, bytes, list[tuple[str, bytes]]]]


def produce_and_wait(producer: Any, topic: str, records: Records, timeout_ms: int) -> list[str]:
    """Produce ``(key, value, headers)`` records and wait until every one is acknowledged
    (``acks=all``); their ids in record order. Any failure raises ``BusUnavailable``."""
    results: list[str | BaseException | None] = [None] * len(records)

    def report(i: int) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                results[i] = BusUnavailable(f"Kafka bus: append to {topic}: {err.str()}")
            else:
                results[i] = f"{msg.partition()}:{msg.offset()}"

        return cb

    for i, (key, value, headers) in enumerate(records):
        while True:
            try:
                producer.produce(
                    topic, value=value, key=key, headers=headers or None, on_delivery=report(i)
                )
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                producer.poll(0.05)
    remaining = producer.flush(timeout_ms / 1000 + 5)
    if remaining:
        raise BusUnavailable(f"Kafka bus: append to {topic}: {remaining} not acknowledged")
    out: list[str] = []
    for r in results:
        if isinstance(r, BaseException):
            raise r
        if r is None:
            raise BusUnavailable(f"Kafka bus: append to {topic}: no delivery report")
        out.append(r)
    return out


class RenewingProducer:
    """The bus's idempotent producer, replaced by a new one after a fatal error.

    An idempotent producer that hits a fatal error (e.g. its sequence numbers were lost
    while brokers died) refuses every later produce. The failing ``produce`` call raises
    ``BusUnavailable`` (its records may or may not have landed: the caller retries them,
    and duplicates on the bus are harmless because store writes are idempotent) and the next
    call uses a new producer with a new producer id.
    """

    def __init__(self, options: KafkaOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._fatal: str | None = None
        self._producer = self._new()

    def _new(self) -> Any:
        return kafka().Producer(self.options.producer_config(error_cb=self._on_error))

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._fatal = err.str()

    def _renew(self) -> None:
        with self._lock:
            if self._fatal is None:
                return
            log.warning("Kafka bus: producer failed fatally (%s); starting a new one", self._fatal)
            old, self._fatal = self._producer, None
            self._producer = self._new()
        old.flush(0)

    def produce(self, topic: str, records: Records) -> list[str]:
        """Produce and wait for every acknowledgement (blocking; see the class doc)."""
        self._renew()
        try:
            return produce_and_wait(self._producer, topic, records, self.options.timeout_ms)
        except Exception:
            reason = self._fatal
            if reason is None:
                raise
            self._renew()
            raise BusUnavailable(f"Kafka bus: append to {topic}: {reason}") from None

    def list_topics(self, *args: Any, **kwargs: Any) -> Any:
        return self._producer.list_topics(*args, **kwargs)

    def flush(self, timeout: float) -> int:
        return int(self._producer.flush(timeout))


class OffsetsInspector:
    """Watermarks and committed offsets of a stream's groups, without joining any group
    (one idle consumer per group name, used only for ``committed``)."""

    def __init__(self, options: KafkaOptions, registry: GroupRegistry) -> None:
        self.options = options
        self.registry = registry
        self._consumers: dict[str, Any] = {}

    def _consumer(self, group: str) -> Any:
        c = self._consumers.get(group)
        if c is None:
            c = self._consumers[group] = kafka().Consumer(self.options.consumer_config(group))
        return c

    def backlog(self, stream: str) -> tuple[dict[int, tuple[int, int]], dict[str, int]]:
        """Watermarks per partition and, per group, records not committed yet."""
        ck = kafka()
        topic = self.options.topic(stream)
        timeout = self.options.timeout_ms / 1000
        meta = self._consumer("~inspect")
        t = meta.list_topics(topic=topic, timeout=timeout).topics.get(topic)
        if t is None or t.error is not None:
            return {}, {}
        marks = {
            p: meta.get_watermark_offsets(ck.TopicPartition(topic, p), timeout=timeout)
            for p in sorted(t.partitions)
        }
        uncommitted: dict[str, int] = {}
        for group in self.registry.of(stream):
            tps = [ck.TopicPartition(topic, p) for p in marks]
            committed = self._consumer(group).committed(tps, timeout=timeout)
            total = 0
            for tp in committed:
                low, high = marks[tp.partition]
                total += high - max(tp.offset if tp.offset >= 0 else low, low)
            uncommitted[group] = total
        return marks, uncommitted

    def scan(
        self,
        stream: str,
        since_ms: int,
        until_ms: int | None,
        limit: int,
        after_id: str | None,
    ) -> list[RetainedEntry]:
        """Up to ``limit`` records the topic still retains with a timestamp in
        ``[since_ms, until_ms)``, partition by partition, each in offset order; paging
        resumes after ``after_id`` (``"<partition>:<offset>"``). Manual assignment: no
        group, no commit. Each partition starts at ``offsets_for_times(since_ms)``."""
        ck = kafka()
        topic = self.options.topic(stream)
        timeout = self.options.timeout_ms / 1000
        c = self._consumer("~scan")
        t = c.list_topics(topic=topic, timeout=timeout).topics.get(topic)
        if t is None or t.error is not None:
            return []
        after_p, after_o = (int(x) for x in after_id.split(":", 1)) if after_id else (-1, -1)
        out: list[RetainedEntry] = []
        for p in sorted(x for x in t.partitions if x >= after_p):
            low, high = c.get_watermark_offsets(ck.TopicPartition(topic, p), timeout=timeout)
            (at,) = c.offsets_for_times([ck.TopicPartition(topic, p, since_ms)], timeout=timeout)
            pos = max(low, at.offset if at.offset >= 0 else high)
            if p == after_p:
                pos = max(pos, after_o + 1)
            if pos >= high:
                continue
            c.assign([ck.TopicPartition(topic, p, pos)])
            deadline = time.monotonic() + timeout
            try:
                while pos < high and len(out) < limit:
                    if time.monotonic() > deadline:
                        raise BusUnavailable(f"Kafka bus: scan of {topic} timed out")
                    for msg in c.consume(min(500, limit - len(out)), 0.2):
                        if msg.error() is not None or msg.partition() != p or msg.offset() < pos:
                            continue
                        pos = msg.offset() + 1
                        ts = msg.timestamp()[1]
                        if ts >= since_ms and (until_ms is None or ts < until_ms):
                            out.append(RetainedEntry(f"{p}:{msg.offset()}", msg.value() or b"", ts))
                            if len(out) >= limit:
                                break
            finally:
                c.unassign()
            if len(out) >= limit:
                break
        return out

    def close(self) -> None:
        for c in self._consumers.values():
            c.close()
        self._consumers.clear()
