"""The Redis Streams bus: ``redis://host:port/db`` (redis-py asyncio client, hiredis parser).

URL options: ``?prefix=P`` puts every key under ``P`` (several deployments or tests on one
Redis), ``?retry_s=N`` sets how long connection problems are retried before
:class:`~tickvault.core.errors.BusUnavailable` (default 5 s; see :mod:`tickvault.bus.redis.link`).

Entries
-------
A stream ``S`` is the key ``P S``. tickvault writes one field ``d`` per entry holding one
frame, i.e. a batch of many records (see :mod:`tickvault.core.codec`), so one ``XADD`` carries
thousands of records. Entries written by other producers are delivered too: with one field
its value is the payload; with several, the payload is a JSON object of the fields. Dead
letters live in ``P S:dlq`` (see :mod:`tickvault.bus.redis.letters`).

Durability
----------
``append`` is one ``MULTI``/``XADD``.../``EXEC`` and returns after Redis replied. That reply
means "on disk" only with ``appendonly yes`` and ``appendfsync always`` (the tests and the
benchmark run so); with ``everysec`` a crash of the Redis host can lose up to a second of
appends. The bus logs a warning once when the server says it runs otherwise. An append
retried after its connection broke may land twice if the first attempt had reached Redis;
the store's natural keys make the duplicate frame harmless.

Delivery
--------
* ``read`` is ``XREADGROUP ... >``; long blocks are split into chunks of at most 10 s.
  A read whose connection broke may have been delivered by Redis without the reply reaching
  us: the next ``read`` of that consumer first collects its pending entries after the last
  id it returned (``XREADGROUP`` with that id), so they do not wait for a claim.
* ``read_own_pending`` is ``XREADGROUP ... 0`` plus ``XPENDING`` for the delivery counts, in
  one ``MULTI``.
* ``claim_stale`` loops the ``XAUTOCLAIM`` cursor until it returns ``0-0`` or ``count``
  entries were found. Entries the stream no longer holds (the reply's third element, or
  entries without fields) are acknowledged and counted in :attr:`RedisBus.missing_acked`,
  never left pending.
* ``trim_acknowledged`` is ``XTRIM MINID`` (exact) to the minimum over groups of (oldest
  pending id, last delivered id + 1): it never removes an entry a group has not acknowledged.
* ``info`` reports each group's ``lag`` from ``XINFO GROUPS``; when Redis cannot tell (after
  deletions in the middle of the stream) it is counted server-side. The oldest pending age is
  the server's clock minus the millisecond part of the oldest pending id.

Limits: one Redis node (no cluster hash tags); Redis >= 7.0.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

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
from tickvault.bus.redis.letters import DLQ_SUFFIX, RedisDeadLetters
from tickvault.bus.redis.link import (
    RedisLink,
    id_tuple,
    is_missing_key,
    next_id,
    payload_of,
    text,
)
from tickvault.core.errors import BusError

FIELD = b"d"
_BLOCK_CHUNK_MS = 10_000

# KEYS: stream. ARGV: last delivered id. Counts the entries after it (a group's lag).
_COUNT_AFTER = """
local n = 0
local cur = ARGV[1]
while true do
  local r = redis.call('XRANGE', KEYS[1], '(' .. cur, '+', 'COUNT', 100)
  if #r == 0 then return n end
  n = n + #r
  cur = r[#r][1]
end
"""

_Tag = tuple[str, str, str]


class RedisBus(Bus):
    """Bus on Redis Streams; ``RedisBus.from_url("redis://127.0.0.1:6379/0?prefix=tv:")``."""

    capabilities = Capabilities(retention=True)

    def __init__(self, url: str, *, prefix: str = "", retry_s: float = 5.0) -> None:
        self.link = RedisLink(url, prefix=prefix, retry_s=retry_s)
        self.letters = RedisDeadLetters(self.link)
        self.missing_acked = 0
        self._r = self.link.client
        self._count_after = self._r.register_script(_COUNT_AFTER)
        self._last_read: dict[_Tag, str] = {}
        self._interrupted: set[_Tag] = set()

    @classmethod
    def from_url(cls, url: str) -> RedisBus:
        """``prefix`` and ``retry_s`` are ours; the rest of the URL goes to redis-py as it is
        (``redis://``, ``rediss://``, ``unix://``, user and password, db number)."""
        parts = urlsplit(url)
        opts = parse_qs(parts.query)
        prefix = opts.pop("prefix", [""])[-1]
        try:
            retry_s = float(opts.pop("retry_s", ["5"])[-1])
        except ValueError:
            raise BusError(f"invalid retry_s in bus URL {url!r}") from None
        query = urlencode({k: v[-1] for k, v in opts.items()})
        clean = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
        return cls(clean, prefix=prefix, retry_s=retry_s)

    @property
    def prefix(self) -> str:
        """The key prefix (``?prefix=``); a stream ``S`` is the key ``prefix + S``."""
        return self.link.prefix

    @property
    def reconnects(self) -> int:
        """Connection problems retried so far."""
        return self.link.reconnects

    def _parse(self, items: Any) -> tuple[list[tuple[str, bytes]], list[str]]:
        """(id, payload) pairs from a reply, and the ids whose entries no longer exist."""
        found: list[tuple[str, bytes]] = []
        missing: list[str] = []
        for raw_id, fields in items or ():
            if raw_id is None:
                continue
            if fields:
                found.append((text(raw_id), payload_of(fields)))
            else:
                missing.append(text(raw_id))
        return found, missing

    async def _ack_missing(self, key: str, group: str, ids: list[str]) -> None:
        if ids:
            await self._r.xack(key, group, *ids)
            self.missing_acked += len(ids)

    # -- groups and appends -------------------------------------------------------------------

    async def ensure_group(self, stream: str, group: str) -> None:
        key = self.link.key(stream)

        async def op() -> None:
            await self.link.check_durability()
            try:
                await self._r.xgroup_create(key, group, id="0", mkstream=True)
            except self.link.errors.ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

        await self.link.call(f"create group {group} on {stream}", op)

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[str]:
        if not payloads:
            return []
        key = self.link.key(stream)

        async def op() -> list[str]:
            pipe = self._r.pipeline(transaction=True)
            for payload in payloads:
                pipe.xadd(key, {FIELD: payload})
            return [text(i) for i in await pipe.execute()]

        return await self.link.call(f"append to {stream}", op)

    # -- delivery ---------------------------------------------------------------------------

    async def _own_after(
        self, key: str, group: str, consumer: str, after: str, count: int
    ) -> list[Entry]:
        """Re-deliver ``consumer``'s pending entries with ids after ``after``, with counts."""
        pipe = self._r.pipeline(transaction=True)
        pipe.xreadgroup(group, consumer, {key: after}, count=count)
        pipe.xpending_range(key, group, next_id(after), "+", count, consumername=consumer)
        reply, rows = await pipe.execute()
        counts = {text(r["message_id"]): int(r["times_delivered"]) for r in rows}
        found, missing = self._parse(reply[0][1] if reply else ())
        await self._ack_missing(key, group, missing)
        return [Entry(i, p, counts.get(i, 1)) for i, p in found]

    async def _read_once(
        self, key: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[Entry]:
        tag = (key, group, consumer)
        try:
            if tag in self._interrupted:
                after = self._last_read.get(tag, "0")
                lost = await self._own_after(key, group, consumer, after, count)
                self._interrupted.discard(tag)
                if lost:
                    self._last_read[tag] = lost[-1].id
                    return lost
            reply = await self._r.xreadgroup(
                group, consumer, {key: ">"}, count=count, block=block_ms or None
            )
        except self.link.transient:
            self._interrupted.add(tag)
            raise
        found, _ = self._parse(reply[0][1] if reply else ())
        if found:
            self._last_read[tag] = found[-1][0]
        return [Entry(i, p, 1) for i, p in found]

    async def read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int = 0
    ) -> list[Entry]:
        key = self.link.key(stream)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            chunk = min(remaining, _BLOCK_CHUNK_MS)

            async def once(c: int = chunk) -> list[Entry]:
                return await self._read_once(key, group, consumer, count, c)

            entries = await self.link.call(f"read {stream}", once)
            if entries or remaining <= chunk:
                return entries

    async def read_own_pending(
        self, stream: str, group: str, consumer: str, count: int
    ) -> list[Entry]:
        key = self.link.key(stream)
        return await self.link.call(
            f"read own pending on {stream}",
            lambda: self._own_after(key, group, consumer, "0", count),
        )

    async def claim_stale(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Entry]:
        key = self.link.key(stream)

        async def op() -> list[Entry]:
            found: list[tuple[str, bytes]] = []
            missing: list[str] = []
            cursor = "0-0"
            while len(found) < count:
                reply = await self._r.xautoclaim(
                    key, group, consumer, min_idle_ms, start_id=cursor, count=count - len(found)
                )
                cursor = text(reply[0])
                got, gone = self._parse(reply[1])
                found += got
                missing += gone
                if len(reply) > 2:
                    missing += [text(i) for i in reply[2]]
                if cursor == "0-0":
                    break
            await self._ack_missing(key, group, missing)
            if not found:
                return []
            pipe = self._r.pipeline(transaction=False)
            for entry_id, _ in found:
                pipe.xpending_range(key, group, entry_id, entry_id, 1)
            rows = await pipe.execute()
            out = []
            for (entry_id, payload), row in zip(found, rows, strict=True):
                # Another claimer may have taken it since: then it is theirs to process.
                if row and text(row[0]["consumer"]) == consumer:
                    out.append(Entry(entry_id, payload, int(row[0]["times_delivered"])))
            return out

        return await self.link.call(f"claim on {stream}", op)

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        key = self.link.key(stream)

        async def op() -> int:
            return int(await self._r.xack(key, group, *ids))

        return await self.link.call(f"ack on {stream}", op)

    async def pending(
        self, stream: str, group: str, consumer: str | None = None, count: int = 1000
    ) -> list[PendingEntry]:
        key = self.link.key(stream)

        async def op() -> list[PendingEntry]:
            try:
                rows = await self._r.xpending_range(
                    key, group, "-", "+", count, consumername=consumer
                )
            except self.link.errors.ResponseError as exc:
                if is_missing_key(exc):
                    return []
                raise
            return [
                PendingEntry(
                    text(r["message_id"]),
                    text(r["consumer"]),
                    int(r["times_delivered"]),
                    int(r["time_since_delivered"]),
                )
                for r in rows
            ]

        return await self.link.call(f"pending on {stream}", op)

    async def consumers(self, stream: str, group: str) -> list[ConsumerInfo]:
        key = self.link.key(stream)

        async def op() -> list[ConsumerInfo]:
            try:
                rows = await self._r.xinfo_consumers(key, group)
            except self.link.errors.ResponseError as exc:
                if is_missing_key(exc):
                    return []
                raise
            infos = [ConsumerInfo(text(r["name"]), int(r["pending"]), int(r["idle"])) for r in rows]
            return sorted(infos, key=lambda c: c.name)

        return await self.link.call(f"consumers on {stream}", op)

    async def delete_consumer(self, stream: str, group: str, name: str) -> int:
        key = self.link.key(stream)

        async def op() -> int:
            try:
                return int(await self._r.xgroup_delconsumer(key, group, name))
            except self.link.errors.ResponseError as exc:
                if is_missing_key(exc):
                    return 0
                raise

        return await self.link.call(f"delete consumer {name} on {stream}", op)

    # -- dead letters -----------------------------------------------------------------------

    async def dead_letter(self, stream: str, group: str, entry: Entry, reason: str) -> None:
        letter = NewDeadLetter(
            kind="frame",
            reason=reason,
            payload=entry.payload,
            key=f"entry:{entry.id}",
            entry_id=entry.id,
            delivery_count=entry.delivery_count,
        )
        await self.letters.write(stream, group, [letter], ack_id=entry.id)

    async def add_dead_letters(
        self, stream: str, group: str | None, letters: Sequence[NewDeadLetter]
    ) -> int:
        if not letters:
            return 0
        return await self.letters.write(stream, group, letters)

    async def dead_letters(
        self, stream: str | None = None, limit: int = 1000, include_requeued: bool = False
    ) -> list[DeadLetter]:
        return await self.letters.list_letters(stream, limit, include_requeued)

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        return await self.letters.get(letter_id)

    async def mark_requeued(self, letter_id: str) -> None:
        await self.letters.mark_requeued(letter_id)

    async def dead_letter_counts(self, stream: str | None = None) -> dict[str, int]:
        return await self.letters.counts(stream)

    # -- upkeep and introspection -----------------------------------------------------------

    async def _groups(self, key: str) -> list[dict[str, Any]]:
        try:
            return list(await self._r.xinfo_groups(key))
        except self.link.errors.ResponseError as exc:
            if is_missing_key(exc):
                return []
            raise

    async def _ack_bound(self, key: str) -> str | None:
        """The smallest id some group still needs (next undelivered or oldest pending)."""
        groups = await self._groups(key)
        if not groups:
            return None
        pipe = self._r.pipeline(transaction=False)
        for g in groups:
            pipe.xpending(key, g["name"])
        summaries = await pipe.execute()
        bound: str | None = None
        for g, summary in zip(groups, summaries, strict=True):
            candidate = next_id(text(g["last-delivered-id"]))
            if summary["pending"] and id_tuple(text(summary["min"])) < id_tuple(candidate):
                candidate = text(summary["min"])
            if bound is None or id_tuple(candidate) < id_tuple(bound):
                bound = candidate
        return bound

    async def trim_acknowledged(self, stream: str) -> int:
        key = self.link.key(stream)

        async def op() -> int:
            bound = await self._ack_bound(key)
            if bound is None:
                return 0
            return int(await self._r.xtrim(key, minid=bound, approximate=False))

        return await self.link.call(f"trim {stream}", op)

    async def trim_retained(
        self, stream: str, *, keep_age_s: float, keep_bytes: int | None = None
    ) -> int:
        """``XTRIM MINID`` at the older of the acknowledgement bound and ``now - keep_age_s``
        (entry ids carry the server's append time). ``keep_bytes`` is not enforced here: set
        ``maxmemory`` / stream limits on the server."""
        key = self.link.key(stream)

        async def op() -> int:
            bound = await self._ack_bound(key)
            if bound is None:
                return 0
            secs, micros = await self._r.time()
            now_ms = int(secs) * 1000 + int(micros) // 1000
            age_bound = f"{max(0, now_ms - int(keep_age_s * 1000))}-0"
            if id_tuple(age_bound) < id_tuple(bound):
                bound = age_bound
            return int(await self._r.xtrim(key, minid=bound, approximate=False))

        return await self.link.call(f"trim {stream}", op)

    async def scan(
        self,
        stream: str,
        since_ms: int,
        until_ms: int | None = None,
        *,
        limit: int = 1000,
        after_id: str | None = None,
    ) -> list[RetainedEntry]:
        key = self.link.key(stream)
        start = f"({after_id}" if after_id else f"{since_ms}-0"
        end = f"({until_ms}-0" if until_ms is not None else "+"

        async def op() -> list[RetainedEntry]:
            rows = await self._r.xrange(key, start, end, count=limit)
            out = []
            for raw_id, fields in rows or ():
                entry_id = text(raw_id)
                ms = id_tuple(entry_id)[0]
                if fields and ms >= since_ms:
                    out.append(RetainedEntry(entry_id, payload_of(fields), ms))
            return out

        return await self.link.call(f"scan {stream}", op)

    async def _group_infos(self, key: str, groups: list[dict[str, Any]]) -> list[GroupInfo]:
        pipe = self._r.pipeline(transaction=False)
        pipe.time()
        for g in groups:
            pipe.xpending(key, g["name"])
        now, *summaries = await pipe.execute()
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        out = []
        for g, summary in zip(groups, summaries, strict=True):
            last = text(g["last-delivered-id"])
            lag = g.get("lag")
            if lag is None:  # Redis cannot tell after some deletions: count it
                lag = await self._count_after(keys=[key], args=[last])
            oldest = None
            if summary["pending"]:
                oldest = max(0, now_ms - id_tuple(text(summary["min"]))[0])
            out.append(
                GroupInfo(
                    name=text(g["name"]),
                    consumers=int(g["consumers"]),
                    pending=int(g["pending"]),
                    lag=int(lag),
                    oldest_pending_age_ms=oldest,
                    last_delivered_id=None if last == "0-0" else last,
                )
            )
        return sorted(out, key=lambda g: g.name)

    async def info(self, stream: str) -> StreamInfo:
        key = self.link.key(stream)

        async def op() -> StreamInfo:
            try:
                raw = await self._r.xinfo_stream(key)
            except self.link.errors.ResponseError as exc:
                if is_missing_key(exc):
                    return StreamInfo(stream, 0, None, None, [])
                raise
            first, last = raw.get("first-entry"), raw.get("last-entry")
            return StreamInfo(
                stream=stream,
                length=int(raw["length"]),
                first_id=text(first[0]) if first else None,
                last_id=text(last[0]) if last else None,
                groups=await self._group_infos(key, await self._groups(key)),
            )

        return await self.link.call(f"info on {stream}", op)

    async def streams(self) -> list[str]:
        names = set(await self.link.scan_streams())
        return sorted({n[: -len(DLQ_SUFFIX)] if n.endswith(DLQ_SUFFIX) else n for n in names})

    async def close(self) -> None:
        await self.link.close()
