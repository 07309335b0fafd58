"""Dead letters on Redis: a dead-letter stream per stream plus three small hashes.

Keys (``P`` is the bus prefix, ``S`` the stream the letters came from):

``P S:dlq``           one entry per letter, fields ``key kind reason payload entry_id
                      deliveries group created_at``. A letter's id is ``S/<id in S:dlq>``,
                      so ``tickvault dlq show ID`` finds it from the id alone.
``P S:dlq:keys``      hash: letter key → id in ``S:dlq``; recording a key twice is a no-op.
``P S:dlq:requeued``  hash: id in ``S:dlq`` → time it was requeued.
``P S:dlq:counts``    hash: reason → letters not requeued, so counting is O(reasons).

Letters are written by one Lua script, so a letter, its key and its count land together, and
a whole entry's letter and the ``XACK`` of that entry happen in the same atomic step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tickvault.bus.base import DeadLetter, NewDeadLetter
from tickvault.bus.redis.link import RedisLink, id_tuple, text
from tickvault.core.errors import BusError

DLQ_SUFFIX = ":dlq"
_LETTERS_PER_CALL = 500

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

# KEYS: dlq stream, requeued hash, counts hash. ARGV: the letter's id in the dlq stream, now.
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


def split_letter_id(letter_id: str) -> tuple[str, str] | None:
    """``"ticks/1700000000000-0"`` → ``("ticks", "1700000000000-0")``; None if malformed."""
    stream, sep, xid = letter_id.rpartition("/")
    if not sep or not stream:
        return None
    try:
        id_tuple(xid)
    except ValueError:
        return None
    return stream, xid


class RedisDeadLetters:
    """The dead-letter half of :class:`~tickvault.bus.redis.bus.RedisBus` (same contract)."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._add = link.client.register_script(_ADD_LETTERS)
        self._requeue = link.client.register_script(_MARK_REQUEUED)

    def _dlq(self, stream: str, part: str = "") -> str:
        return self.link.key(stream + DLQ_SUFFIX + part)

    async def write(
        self,
        stream: str,
        group: str | None,
        letters: Sequence[NewDeadLetter],
        ack_id: str = "",
    ) -> int:
        """Record letters not recorded yet (by key); ack ``ack_id`` with the last chunk."""
        keys = [
            self._dlq(stream),
            self._dlq(stream, ":keys"),
            self._dlq(stream, ":counts"),
            self.link.key(stream),
        ]
        added = 0
        for start in range(0, max(len(letters), 1), _LETTERS_PER_CALL):
            last_chunk = start + _LETTERS_PER_CALL >= len(letters)
            args: list[bytes | str | float | int] = [
                time.time(),
                group or "",
                ack_id if last_chunk else "",
            ]
            for x in letters[start : start + _LETTERS_PER_CALL]:
                args += [x.key, x.kind, x.reason, x.payload, x.entry_id or "", x.delivery_count]

            async def op(a: list[bytes | str | float | int] = args) -> int:
                return int(await self._add(keys=keys, args=a))

            added += await self.link.call(f"dead-letter on {stream}", op)
        return added

    async def streams(self) -> list[str]:
        """Streams that have a dead-letter stream."""
        names = await self.link.scan_streams(DLQ_SUFFIX)
        return [n[: -len(DLQ_SUFFIX)] for n in names]

    @staticmethod
    def _letter(stream: str, xid: str, fields: dict[bytes, bytes], requeued: Any) -> DeadLetter:
        f = {text(k): v for k, v in fields.items()}
        return DeadLetter(
            id=f"{stream}/{xid}",
            stream=stream,
            group=text(f["group"]) or None,
            kind=text(f["kind"]),
            reason=text(f["reason"]),
            payload=bytes(f["payload"]),
            entry_id=text(f["entry_id"]) or None,
            delivery_count=int(f["deliveries"]),
            created_at=float(f["created_at"]),
            requeued_at=float(requeued) if requeued is not None else None,
        )

    async def _list_one(self, stream: str, limit: int, include_requeued: bool) -> list[DeadLetter]:
        key, marks = self._dlq(stream), self._dlq(stream, ":requeued")
        client = self.link.client
        taken: list[DeadLetter] = []
        start = "-"
        while len(taken) < limit:

            async def page(s: str = start) -> tuple[Any, Any]:
                rows = await client.xrange(key, s, "+", count=max(limit, 100))
                ids = [text(r[0]) for r in rows]
                return rows, (await client.hmget(marks, ids) if ids else [])

            rows, requeued = await self.link.call(f"dead letters of {stream}", page)
            if not rows:
                break
            for (raw_id, fields), mark in zip(rows, requeued, strict=True):
                if mark is None or include_requeued:
                    taken.append(self._letter(stream, text(raw_id), fields, mark))
            start = "(" + text(rows[-1][0])
        return taken[:limit]

    async def list_letters(
        self, stream: str | None, limit: int, include_requeued: bool
    ) -> list[DeadLetter]:
        streams = [stream] if stream is not None else await self.streams()
        out: list[DeadLetter] = []
        for name in streams:
            out += await self._list_one(name, limit, include_requeued)
        out.sort(key=lambda x: x.created_at)
        return out[:limit]

    async def get(self, letter_id: str) -> DeadLetter | None:
        parts = split_letter_id(letter_id)
        if parts is None:
            return None
        stream, xid = parts
        client = self.link.client

        async def op() -> DeadLetter | None:
            rows = await client.xrange(self._dlq(stream), xid, xid)
            if not rows:
                return None
            mark = await client.hget(self._dlq(stream, ":requeued"), xid)
            return self._letter(stream, xid, rows[0][1], mark)

        return await self.link.call(f"dead letter {letter_id}", op)

    async def mark_requeued(self, letter_id: str) -> None:
        parts = split_letter_id(letter_id)
        if parts is None:
            raise BusError(f"no dead letter {letter_id!r}")
        stream, xid = parts
        keys = [self._dlq(stream), self._dlq(stream, ":requeued"), self._dlq(stream, ":counts")]

        async def op() -> int:
            return int(await self._requeue(keys=keys, args=[xid, time.time()]))

        if await self.link.call(f"requeue {letter_id}", op) < 0:
            raise BusError(f"no dead letter {letter_id!r}")

    async def counts(self, stream: str | None) -> dict[str, int]:
        streams = [stream] if stream is not None else await self.streams()
        totals: dict[str, int] = {}
        for name in streams:

            async def op(n: str = name) -> dict[bytes, bytes]:
                return dict(await self.link.client.hgetall(self._dlq(n, ":counts")))

            for reason, n in (await self.link.call(f"dead-letter counts of {name}", op)).items():
                totals[text(reason)] = totals.get(text(reason), 0) + int(n)
        positive = [(r, n) for r, n in totals.items() if n > 0]
        return dict(sorted(positive, key=lambda kv: -kv[1]))
