"""The Redis Streams bus: ``redis://host:port/db`` (redis-py asyncio client, hiredis parser).

Keys (``P`` is the URL's ``prefix`` option, empty by default; ``S`` is a stream name)
------------------------------------------------------------------------------------
``P S``               the stream. tickvault writes one field ``d`` per entry, holding one frame
                      (a batch of many records). Entries written by other producers are
                      delivered too: with one field its value is the payload, with several the
                      payload is a JSON object of the fields (values decoded as UTF-8).
``P S:dlq``           the dead-letter stream: one entry per letter, fields ``key kind reason
                      payload entry_id deliveries group created_at``. A letter's id is
                      ``S/<id in S:dlq>``, so ``tickvault dlq show`` finds it from the id alone.
``P S:dlq:keys``      hash: letter key → id in ``S:dlq`` (``add_dead_letters`` is idempotent).
``P S:dlq:requeued``  hash: id in ``S:dlq`` → time it was requeued.
``P S:dlq:counts``    hash: reason → letters not requeued (``dead_letter_counts`` in O(1)).

Letters are written by one Lua script, so a letter, its key and its count land together, and
``dead_letter`` acknowledges the entry in that same atomic step.

Durability: ``append`` is one ``MULTI``/``XADD``.../``EXEC`` and returns after Redis replied.
That reply means "on disk" only with ``appendonly yes`` and ``appendfsync always`` (the tests
and the benchmark run that way); with ``everysec`` a crash of the Redis host can lose up to a
second of appends. A one-time warning is logged when the server says otherwise.

Reconnects: a connection error (Redis restarting, loading its AOF, unreachable) is retried
with capped exponential backoff for up to ``retry_s`` seconds (URL option, default 5), then
surfaces as :class:`~tickvault.errors.BusUnavailable`; callers such as the writer keep
retrying with their own backoff. A read whose connection broke may have been delivered by
the server without the reply reaching us: the next ``read`` of that consumer first collects
its pending entries after the last id it returned, so they do not wait for a claim.

Claims loop the ``XAUTOCLAIM`` cursor until it returns ``0-0`` (or ``count`` entries were
found). Entries the stream no longer holds (the reply's third element, or entries without
fields) are acknowledged and counted in :attr:`RedisBus.missing_acked`, never left pending.

``trim_acknowledged`` is ``XTRIM MINID`` (exact) to the minimum over groups of (oldest pending
id, last delivered id + 1): it never removes an entry some group has not acknowledged.

Limits: one Redis node (no cluster hash tags); Redis >= 7.0 (``XAUTOCLAIM``'s deleted ids and
the group ``lag`` field; ``lag`` is computed server-side when Redis cannot report it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import orjson

from tickvault.bus.base import (
    Bus,
    ConsumerInfo,
    DeadLetter,
    Entry,
    GroupInfo,
    NewDeadLetter,
    PendingEntry,
    StreamInfo,
)
from tickvault.errors import BackendNotAvailable, BusError, BusUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)

FIELD = b"d"
_BLOCK_CHUNK_MS = 10_000
_LETTERS_PER_CALL = 500
_UNAVAILABLE = ("LOADING", "MISCONF", "READONLY", "NOREPLICAS", "TRYAGAIN", "MASTERDOWN")

# KEYS: dlq stream, keys hash, counts hash, source stream.
# ARGV: now, group ('' = none), entry id to ack ('' = none), then 6 values per letter.
_ADD_LETTERS = """
local added = 0
for i = 4, #ARGV, 6 do
  local key = ARGV[i]
  if redis.call('HEXISTS', KEYS[2], key) == 0 then
    local id = redis.call('XADD', KEYS[1], '*', 'key', key, 'kind', ARGV[i + 1],
      'reason', ARGV[i + 2], 'payload', ARGV[i + 3], 'entry_id', ARGV[i + 4],
      'deliveries', ARGV[i + 5], 'group', ARGV[2], 'created_at', ARGV[1])
    redis.call('HSET', KEYS[2], key, id)
    redis.call('HINCRBY', KEYS[3], ARGV[i + 2], 1)
    added = added + 1
  end
end
if ARGV[3] ~= '' then redis.call('XACK', KEYS[4], ARGV[2], ARGV[3]) end
return added
"""

# KEYS: dlq stream, requeued hash, counts hash. ARGV: letter's id in the dlq stream, now.
_MARK_REQUEUED = """
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
local f = e[1][2]
for i = 1, #f, 2 do
  if f[i] == 'reason' then redis.call('HINCRBY', KEYS[3], f[i + 1], -1) end
end
return 1
"""

# KEYS: stream. ARGV: last delivered id. Counts the entries after it (the group's lag).
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


def _redis() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendNotAvailable(
            "the Redis bus needs the redis client: install tickvault[redis]"
        ) from exc
    return aioredis


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def id_tuple(entry_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` → ``(1700000000000, 3)`` for ordering ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def next_id(entry_id: str) -> str:
    """The smallest id greater than ``entry_id``."""
    ms, seq = id_tuple(entry_id)
    return f"{ms}-{seq + 1}"


def _payload(fields: dict[bytes, bytes]) -> bytes:
    if len(fields) == 1:
        return next(iter(fields.values()))
    return orjson.dumps(
        {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()}
    )


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _is_missing_key(exc: Exception) -> bool:
    text = str(exc)
    return text.startswith("NOGROUP") or "no such key" in text.lower()


class RedisBus(Bus):
    """Bus on Redis Streams; ``RedisBus.from_url("redis://127.0.0.1:6379/0?prefix=tv:")``."""

    def __init__(self, url: str, *, prefix: str = "", retry_s: float = 5.0) -> None:
        aioredis = _redis()
        from redis import exceptions
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.prefix = prefix
        self.retry_s = retry_s
        self.reconnects = 0
        self.missing_acked = 0
        self._rx = exceptions
        self._transient = (exceptions.ConnectionError, exceptions.TimeoutError, OSError)
        # Retries are ours (below), so a retried command is always a deliberate choice.
        self._r = aioredis.Redis.from_url(
            url,
            protocol=2,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=30.0,
            socket_connect_timeout=5.0,
            socket_keepalive=True,
        )
        self._add_letters = self._r.register_script(_ADD_LETTERS)
        self._mark_requeued = self._r.register_script(_MARK_REQUEUED)
        self._count_after = self._r.register_script(_COUNT_AFTER)
        self._last_read: dict[tuple[str, str, str], str] = {}
        self._interrupted: set[tuple[str, str, str]] = set()
        self._checked_durability = False

    @classmethod
    def from_url(cls, url: str) -> RedisBus:
        """Options: ``prefix`` (key prefix) and ``retry_s`` (reconnect window); the rest of
        the URL goes to redis-py as it is (``redis://``, ``rediss://``, password, db)."""
        parts = urlsplit(url)
        opts = parse_qs(parts.query)
        prefix = opts.pop("prefix", [""])[-1]
        try:
            retry_s = float(opts.pop("retry_s", ["5"])[-1])
        except ValueError:
            raise BusError(f"invalid retry_s in {url!r}") from None
        query = urlencode({k: v[-1] for k, v in opts.items()})
        clean = urlunsplit((parts.scheme, parts.netloc, parts.path or "/0", query, ""))
        return cls(clean, prefix=prefix, retry_s=retry_s)

    # -- plumbing ---------------------------------------------------------------------------

    def _key(self, stream: str) -> str:
        return self.prefix + stream

    def _dlq(self, stream: str, part: str = "") -> str:
        return f"{self.prefix}{stream}:dlq{part}"

    def _error(self, exc: Exception, what: str) -> BusError:
        rx = self._rx
        if isinstance(exc, rx.AuthenticationError):
            return BusError(f"redis bus ({what}): {exc}")
        if isinstance(exc, self._transient) or (
            isinstance(exc, rx.ResponseError) and str(exc).startswith(_UNAVAILABLE)
        ):
            return BusUnavailable(f"redis bus unavailable ({what}): {exc}")
        return BusError(f"redis bus ({what}): {exc}")

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op``; retry connection problems with backoff for ``retry_s``, translate errors."""
        delay = 0.05
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                return await op()
            except (self._rx.RedisError, OSError) as exc:
                err = self._error(exc, what)
                if not isinstance(err, BusUnavailable) or time.monotonic() + delay > deadline:
                    raise err from exc
                self.reconnects += 1
                log.info("redis bus: %s; reconnecting in %.2fs", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _check_durability(self) -> None:
        if self._checked_durability:
            return
        self._checked_durability = True
        try:
            conf = await self._r.config_get("append*")
        except self._rx.RedisError:
            return  # CONFIG is often disabled on managed Redis; nothing to say then
        if _s(conf.get(b"appendonly", b"")) != "yes" or _s(conf.get(b"appendfsync", b"")) != (
            "always"
        ):
            log.warning(
                "redis at %s runs without appendonly=yes/appendfsync=always: appends that "
                "were acknowledged can be lost if the Redis host crashes",
                self.url,
            )

    def _parse_items(self, items: Any) -> tuple[list[tuple[str, bytes]], list[str]]:
        """Entries from a reply: (id, payload) pairs, and ids whose entries no longer exist."""
        found: list[tuple[str, bytes]] = []
        missing: list[str] = []
        for raw_id, fields in items or ():
            if raw_id is None:
                continue
            if fields:
                found.append((_s(raw_id), _payload(fields)))
            else:
                missing.append(_s(raw_id))
        return found, missing

    async def _ack_missing(self, key: str, group: str, ids: list[str]) -> None:
        if ids:
            await self._r.xack(key, group, *ids)
            self.missing_acked += len(ids)

    # -- groups and appends -------------------------------------------------------------------

    async def ensure_group(self, stream: str, group: str) -> None:
        key = self._key(stream)

        async def op() -> None:
            await self._check_durability()
            try:
                await self._r.xgroup_create(key, group, id="0", mkstream=True)
            except self._rx.ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

        await self._call(f"create group {group} on {stream}", op)

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[str]:
        if not payloads:
            return []
        key = self._key(stream)

        async def op() -> list[str]:
            pipe = self._r.pipeline(transaction=True)
            for payload in payloads:
                pipe.xadd(key, {FIELD: payload})
            return [_s(i) for i in await pipe.execute()]

        return await self._call(f"append to {stream}", op)

    # -- delivery ---------------------------------------------------------------------------

    async def _own_after(
        self, key: str, group: str, consumer: str, after: str, count: int
    ) -> list[Entry]:
        """Re-deliver ``consumer``'s pending entries with ids after ``after``, with counts."""
        pipe = self._r.pipeline(transaction=True)
        pipe.xreadgroup(group, consumer, {key: after}, count=count)
        pipe.xpending_range(key, group, next_id(after), "+", count, consumername=consumer)
        reply, rows = await pipe.execute()
        counts = {_s(r["message_id"]): int(r["times_delivered"]) for r in rows}
        found, missing = self._parse_items(reply[0][1] if reply else ())
        await self._ack_missing(key, group, missing)
        return [Entry(i, p, counts.get(i, 1)) for i, p in found]

    async def _read_once(
        self, key: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[Entry]:
        tag = (key, group, consumer)
        try:
            if tag in self._interrupted:
                lost = await self._own_after(
                    key, group, consumer, self._last_read.get(tag, "0"), count
                )
                self._interrupted.discard(tag)
                if lost:
                    self._last_read[tag] = lost[-1].id
                    return lost
            reply = await self._r.xreadgroup(
                group, consumer, {key: ">"}, count=count, block=block_ms or None
            )
        except self._transient:
            self._interrupted.add(tag)
            raise
        found, _ = self._parse_items(reply[0][1] if reply else ())
        if found:
            self._last_read[tag] = found[-1][0]
        return [Entry(i, p, 1) for i, p in found]

    async def read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int = 0
    ) -> list[Entry]:
        key = self._key(stream)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            chunk = min(remaining, _BLOCK_CHUNK_MS)
            entries = await self._call(
                f"read {stream}",
                lambda c=chunk: self._read_once(key, group, consumer, count, c),  # type: ignore[misc]
            )
            if entries or remaining <= chunk:
                return entries

    async def read_own_pending(
        self, stream: str, group: str, consumer: str, count: int
    ) -> list[Entry]:
        key = self._key(stream)
        return await self._call(
            f"read own pending on {stream}",
            lambda: self._own_after(key, group, consumer, "0", count),
        )

    async def claim_stale(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Entry]:
        key = self._key(stream)

        async def op() -> list[Entry]:
            found: list[tuple[str, bytes]] = []
            missing: list[str] = []
            cursor = "0-0"
            while len(found) < count:
                reply = await self._r.xautoclaim(
                    key, group, consumer, min_idle_ms, start_id=cursor, count=count - len(found)
                )
                cursor = _s(reply[0])
                got, gone = self._parse_items(reply[1])
                found += got
                missing += gone
                if len(reply) > 2:
                    missing += [_s(i) for i in reply[2]]
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
                if row and _s(row[0]["consumer"]) == consumer:
                    out.append(Entry(entry_id, payload, int(row[0]["times_delivered"])))
            return out

        return await self._call(f"claim on {stream}", op)

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        key = self._key(stream)
        return int(await self._call(f"ack on {stream}", lambda: self._r.xack(key, group, *ids)))

    async def pending(
        self, stream: str, group: str, consumer: str | None = None, count: int = 1000
    ) -> list[PendingEntry]:
        key = self._key(stream)

        async def op() -> list[PendingEntry]:
            try:
                rows = await self._r.xpending_range(
                    key, group, "-", "+", count, consumername=consumer
                )
            except self._rx.ResponseError as exc:
                if _is_missing_key(exc):
                    return []
                raise
            return [
                PendingEntry(
                    _s(r["message_id"]),
                    _s(r["consumer"]),
                    int(r["times_delivered"]),
                    int(r["time_since_delivered"]),
                )
                for r in rows
            ]

        return await self._call(f"pending on {stream}", op)

    async def consumers(self, stream: str, group: str) -> list[ConsumerInfo]:
        key = self._key(stream)

        async def op() -> list[ConsumerInfo]:
            try:
                rows = await self._r.xinfo_consumers(key, group)
            except self._rx.ResponseError as exc:
                if _is_missing_key(exc):
                    return []
                raise
            return sorted(
                (ConsumerInfo(_s(r["name"]), int(r["pending"]), int(r["idle"])) for r in rows),
                key=lambda c: c.name,
            )

        return await self._call(f"consumers on {stream}", op)

    async def delete_consumer(self, stream: str, group: str, name: str) -> int:
        key = self._key(stream)

        async def op() -> int:
            try:
                return int(await self._r.xgroup_delconsumer(key, group, name))
            except self._rx.ResponseError as exc:
                if _is_missing_key(exc):
                    return 0
                raise

        return await self._call(f"delete consumer {name} on {stream}", op)

    # -- dead letters -----------------------------------------------------------------------

    async def _write_letters(
        self,
        stream: str,
        group: str | None,
        letters: Sequence[NewDeadLetter],
        ack_id: str = "",
    ) -> int:
        keys = [
            self._dlq(stream),
            self._dlq(stream, ":keys"),
            self._dlq(stream, ":counts"),
            self._key(stream),
        ]
        added = 0
        for start in range(0, max(len(letters), 1), _LETTERS_PER_CALL):
            chunk = letters[start : start + _LETTERS_PER_CALL]
            args: list[bytes | str | float | int] = [time.time(), group or ""]
            last = start + _LETTERS_PER_CALL >= len(letters)
            args.append(ack_id if last else "")
            for x in chunk:
                args += [x.key, x.kind, x.reason, x.payload, x.entry_id or "", x.delivery_count]

            async def op(a: list[bytes | str | float | int] = args) -> int:
                return int(await self._add_letters(keys=keys, args=a))

            added += await self._call(f"dead-letter on {stream}", op)
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
        await self._write_letters(stream, group, [letter], ack_id=entry.id)

    async def add_dead_letters(
        self, stream: str, group: str | None, letters: Sequence[NewDeadLetter]
    ) -> int:
        if not letters:
            return 0
        return await self._write_letters(stream, group, letters)

    async def _dlq_streams(self) -> list[str]:
        async def op() -> list[str]:
            pattern = _glob_escape(self.prefix) + "*:dlq"
            names = [
                _s(k)[len(self.prefix) : -len(":dlq")]
                async for k in self._r.scan_iter(match=pattern, count=1000, _type="stream")
            ]
            return sorted(set(names))

        return await self._call("list dead-letter streams", op)

    @staticmethod
    def _letter(stream: str, xid: str, fields: dict[bytes, bytes], requeued: Any) -> DeadLetter:
        f = {_s(k): v for k, v in fields.items()}
        return DeadLetter(
            id=f"{stream}/{xid}",
            stream=stream,
            group=_s(f["group"]) or None,
            kind=_s(f["kind"]),
            reason=_s(f["reason"]),
            payload=bytes(f["payload"]),
            entry_id=_s(f["entry_id"]) or None,
            delivery_count=int(f["deliveries"]),
            created_at=float(f["created_at"]),
            requeued_at=float(requeued) if requeued is not None else None,
        )

    async def dead_letters(
        self, stream: str | None = None, limit: int = 1000, include_requeued: bool = False
    ) -> list[DeadLetter]:
        streams = [stream] if stream is not None else await self._dlq_streams()
        out: list[DeadLetter] = []
        for name in streams:
            key, marks = self._dlq(name), self._dlq(name, ":requeued")
            start = "-"
            taken: list[DeadLetter] = []
            while len(taken) < limit:

                async def page(s: str = start, k: str = key, m: str = marks) -> tuple[Any, Any]:
                    rows = await self._r.xrange(k, s, "+", count=max(limit, 100))
                    ids = [_s(r[0]) for r in rows]
                    requeued = await self._r.hmget(m, ids) if ids else []
                    return rows, requeued

                rows, requeued = await self._call(f"dead letters of {name}", page)
                if not rows:
                    break
                for (raw_id, fields), mark in zip(rows, requeued, strict=True):
                    if mark is None or include_requeued:
                        taken.append(self._letter(name, _s(raw_id), fields, mark))
                start = "(" + _s(rows[-1][0])
            out += taken[:limit]
        out.sort(key=lambda x: x.created_at)
        return out[:limit]

    @staticmethod
    def _split_letter_id(letter_id: str) -> tuple[str, str] | None:
        stream, sep, xid = letter_id.rpartition("/")
        if not sep or not stream:
            return None
        try:
            id_tuple(xid)
        except ValueError:
            return None
        return stream, xid

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        parts = self._split_letter_id(letter_id)
        if parts is None:
            return None
        stream, xid = parts

        async def op() -> DeadLetter | None:
            rows = await self._r.xrange(self._dlq(stream), xid, xid)
            if not rows:
                return None
            mark = await self._r.hget(self._dlq(stream, ":requeued"), xid)
            return self._letter(stream, xid, rows[0][1], mark)

        return await self._call(f"dead letter {letter_id}", op)

    async def mark_requeued(self, letter_id: str) -> None:
        parts = self._split_letter_id(letter_id)
        if parts is None:
            raise BusError(f"no dead letter {letter_id!r}")
        stream, xid = parts
        keys = [self._dlq(stream), self._dlq(stream, ":requeued"), self._dlq(stream, ":counts")]

        async def op() -> int:
            return int(await self._mark_requeued(keys=keys, args=[xid, time.time()]))

        if await self._call(f"requeue {letter_id}", op) < 0:
            raise BusError(f"no dead letter {letter_id!r}")

    async def dead_letter_counts(self, stream: str | None = None) -> dict[str, int]:
        streams = [stream] if stream is not None else await self._dlq_streams()
        totals: dict[str, int] = {}
        for name in streams:
            counts = await self._call(
                f"dead-letter counts of {name}",
                lambda n=name: self._r.hgetall(self._dlq(n, ":counts")),  # type: ignore[misc]
            )
            for reason, n in counts.items():
                totals[_s(reason)] = totals.get(_s(reason), 0) + int(n)
        return dict(sorted(((r, n) for r, n in totals.items() if n > 0), key=lambda kv: -kv[1]))

    # -- upkeep and introspection -----------------------------------------------------------

    async def _groups(self, key: str) -> list[dict[str, Any]]:
        try:
            return list(await self._r.xinfo_groups(key))
        except self._rx.ResponseError as exc:
            if _is_missing_key(exc):
                return []
            raise

    async def trim_acknowledged(self, stream: str) -> int:
        key = self._key(stream)

        async def op() -> int:
            groups = await self._groups(key)
            if not groups:
                return 0
            pipe = self._r.pipeline(transaction=False)
            for g in groups:
                pipe.xpending(key, g["name"])
            summaries = await pipe.execute()
            bound: str | None = None
            for g, summary in zip(groups, summaries, strict=True):
                candidate = next_id(_s(g["last-delivered-id"]))
                if summary["pending"] and id_tuple(_s(summary["min"])) < id_tuple(candidate):
                    candidate = _s(summary["min"])
                if bound is None or id_tuple(candidate) < id_tuple(bound):
                    bound = candidate
            return int(await self._r.xtrim(key, minid=bound, approximate=False))

        return await self._call(f"trim {stream}", op)

    async def info(self, stream: str) -> StreamInfo:
        key = self._key(stream)

        async def op() -> StreamInfo:
            try:
                raw = await self._r.xinfo_stream(key)
            except self._rx.ResponseError as exc:
                if _is_missing_key(exc):
                    return StreamInfo(
                        stream=stream, length=0, first_id=None, last_id=None, groups=[]
                    )
                raise
            groups = await self._groups(key)
            pipe = self._r.pipeline(transaction=False)
            pipe.time()
            for g in groups:
                pipe.xpending(key, g["name"])
            now, *summaries = await pipe.execute()
            now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
            out = []
            for g, summary in zip(groups, summaries, strict=True):
                last = _s(g["last-delivered-id"])
                lag = g.get("lag")
                if lag is None:  # Redis cannot tell after some deletions: count it
                    lag = await self._count_after(keys=[key], args=[last])
                oldest = None
                if summary["pending"]:
                    oldest = max(0, now_ms - id_tuple(_s(summary["min"]))[0])
                out.append(
                    GroupInfo(
                        name=_s(g["name"]),
                        consumers=int(g["consumers"]),
                        pending=int(g["pending"]),
                        lag=int(lag),
                        oldest_pending_age_ms=oldest,
                        last_delivered_id=None if last == "0-0" else last,
                    )
                )
            first, last_entry = raw.get("first-entry"), raw.get("last-entry")
            return StreamInfo(
                stream=stream,
                length=int(raw["length"]),
                first_id=_s(first[0]) if first else None,
                last_id=_s(last_entry[0]) if last_entry else None,
                groups=sorted(out, key=lambda g: g.name),
            )

        return await self._call(f"info on {stream}", op)

    async def streams(self) -> list[str]:
        async def op() -> list[str]:
            names: set[str] = set()
            async for k in self._r.scan_iter(
                match=_glob_escape(self.prefix) + "*", count=1000, _type="stream"
            ):
                name = _s(k)[len(self.prefix) :]
                names.add(name[: -len(":dlq")] if name.endswith(":dlq") else name)
            return sorted(names)

        return await self._call("list streams", op)

    async def close(self) -> None:
        # A bus may be closed from another event loop than the one that used it (test
        # teardown); the connections are then already unusable and are simply dropped.
        with contextlib.suppress(RuntimeError, OSError, self._rx.RedisError):
            await self._r.aclose(close_connection_pool=True)
