"""Dead letters and the group registry of the Kafka bus, each on a topic of its own.

Dead letters live on ``<prefix>.dlq``: one record per letter (value = the payload, headers =
stream, group, kind, reason, entry id, delivery count, time), keyed by ``<stream>\\n<key>``,
so every record about one letter lands in one partition, in order. Marking a letter
requeued appends a ``requeued`` record with the same key. A letter's id is
``<partition>:<offset>`` of its record.

Kafka has no lookups, so idempotence by key works like this: the bus reads the topic in
full (dead letters are few) into an index and appends only letters whose key it does not
hold. Two processes adding the same new key at the same instant may both append it;
reading folds records by key and keeps the first, so a letter is never *listed* twice (a
compacted topic would not help: compaction keeps the last record per key, and runs late).

The group registry (``<prefix>.groups``, one record per stream/group) lets ``info`` and
``tickvault status`` in another process name a stream's groups: the mock cluster, and
clusters without ``DescribeGroups`` rights, cannot list them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from tickvault.bus.base import DeadLetter, NewDeadLetter
from tickvault.bus.kafka.link import KafkaOptions, TableRecord, TopicTable

Produce = Callable[[str, list[tuple[bytes, bytes, list[tuple[str, bytes]]]]], list[str]]
"""Append (key, value, headers) records to a topic durably; return their ids."""

LETTER, REQUEUED = b"letter", b"requeued"
log = logging.getLogger("tickvault.bus.kafka")


def _key(stream: str, key: str) -> bytes:
    return f"{stream}\n{key}".encode()


class KafkaDeadLetters:
    """Blocking; the bus calls it from its admin worker thread."""

    def __init__(self, options: KafkaOptions, produce: Produce) -> None:
        self.table = TopicTable(options, options.dlq_topic)
        self.produce = produce
        self.letters: dict[bytes, DeadLetter] = {}
        self.by_id: dict[str, bytes] = {}
        self.requeued: dict[str, float] = {}

    def _fold(self, records: Sequence[TableRecord]) -> None:
        for r in records:
            h = r.headers
            if h.get("type") == REQUEUED:
                self.requeued.setdefault(r.value.decode(), float(h.get("at", b"0")))
                continue
            if r.key in self.letters:
                continue  # a concurrent duplicate: the first record wins
            group = h.get("group", b"").decode() or None
            entry = h.get("entry", b"").decode() or None
            self.letters[r.key] = DeadLetter(
                id=r.id,
                stream=h.get("stream", b"").decode(),
                group=group,
                kind=h.get("kind", b"").decode(),
                reason=h.get("reason", b"").decode(),
                payload=r.value,
                entry_id=entry,
                delivery_count=int(h.get("deliveries", b"0")),
                created_at=float(h.get("at", b"0")),
            )
            self.by_id[r.id] = r.key

    def refresh(self) -> None:
        self._fold(self.table.refresh())

    def add(self, stream: str, group: str | None, letters: Sequence[NewDeadLetter]) -> int:
        self.refresh()
        fresh: dict[bytes, NewDeadLetter] = {}
        for x in letters:
            k = _key(stream, x.key)
            if k not in self.letters and k not in fresh:
                fresh[k] = x
        if not fresh:
            return 0
        now = str(time.time()).encode()
        records = [
            (
                k,
                x.payload,
                [
                    ("type", LETTER),
                    ("stream", stream.encode()),
                    ("group", (group or "").encode()),
                    ("kind", x.kind.encode()),
                    ("reason", x.reason.encode()),
                    ("entry", (x.entry_id or "").encode()),
                    ("deliveries", str(x.delivery_count).encode()),
                    ("at", now),
                ],
            )
            for k, x in fresh.items()
        ]
        self.produce(self.table.topic, records)
        self.refresh()
        return len(fresh)

    def _visible(self, letter: DeadLetter, include_requeued: bool) -> DeadLetter | None:
        at = self.requeued.get(letter.id)
        if at is None:
            return letter
        if not include_requeued:
            return None
        return DeadLetter(**{**_fields(letter), "requeued_at": at})

    def scan(self, stream: str | None, limit: int, include_requeued: bool) -> list[DeadLetter]:
        self.refresh()
        out: list[DeadLetter] = []
        for letter in self.letters.values():
            if stream is not None and letter.stream != stream:
                continue
            shown = self._visible(letter, include_requeued)
            if shown is not None:
                out.append(shown)
        out.sort(key=lambda x: (x.created_at, x.id))
        return out[:limit]

    def get(self, letter_id: str) -> DeadLetter | None:
        self.refresh()
        key = self.by_id.get(letter_id)
        return None if key is None else self._visible(self.letters[key], True)

    def mark_requeued(self, letter_id: str) -> None:
        self.refresh()
        key = self.by_id.get(letter_id)
        if key is None or letter_id in self.requeued:
            return
        at = str(time.time()).encode()
        mark = (key, letter_id.encode(), [("type", REQUEUED), ("at", at)])
        self.produce(self.table.topic, [mark])
        self.refresh()

    def counts(self, stream: str | None) -> dict[str, int]:
        out: dict[str, int] = {}
        for letter in self.scan(stream, 10**9, False):
            out[letter.reason] = out.get(letter.reason, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def close(self) -> None:
        self.table.close()


def gap_letters(
    topic: str, group: str, gaps: Sequence[tuple[int, int, int]]
) -> list[NewDeadLetter]:
    """Dead letters (kind ``gap``, logged as errors) for ``(partition, first missing offset,
    next offset read)`` ranges that retention removed before ``group`` stored them."""
    letters = []
    for p, first, nxt in gaps:
        log.error(
            "Kafka bus: %s partition %d: offsets %d..%d were removed by retention before"
            " group %s stored them",
            topic,
            p,
            first,
            nxt - 1,
            group,
        )
        detail = {"topic": topic, "partition": p, "first": first, "last": nxt - 1}
        letters.append(
            NewDeadLetter(
                "gap",
                "removed by retention before it was stored",
                json.dumps(detail).encode(),
                f"gap:{group}:{p}:{first}",
            )
        )
    return letters


def _fields(letter: DeadLetter) -> dict[str, Any]:
    return {f: getattr(letter, f) for f in letter.__struct_fields__}


class GroupRegistry:
    """Which groups exist on which stream (``<prefix>.groups``). Blocking."""

    def __init__(self, options: KafkaOptions, produce: Produce) -> None:
        self.table = TopicTable(options, options.groups_topic)
        self.produce = produce
        self.groups: set[tuple[str, str]] = set()

    def refresh(self) -> set[tuple[str, str]]:
        for r in self.table.refresh():
            stream, _, group = r.key.decode().partition("\n")
            self.groups.add((stream, group))
        return self.groups

    def add(self, stream: str, group: str) -> None:
        if (stream, group) in self.groups or (stream, group) in self.refresh():
            return
        self.produce(self.table.topic, [(f"{stream}\n{group}".encode(), b"", [])])
        self.groups.add((stream, group))

    def of(self, stream: str) -> list[str]:
        return sorted(g for s, g in self.refresh() if s == stream)

    def close(self) -> None:
        self.table.close()
