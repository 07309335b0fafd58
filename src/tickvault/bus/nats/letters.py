"""Dead letters on NATS JetStream: one stream of letters plus a KV bucket of requeue marks.

* Letters live in the stream ``<prefix>TV_DEAD_LETTERS``; a letter is one message on the
  subject ``tvdlq.<prefix>.<stream>.<sha256 of the letter key>``, msgpack-encoded. The stream
  keeps at most one message per subject and refuses new ones for a full subject
  (``max_msgs_per_subject=1``, ``discard=new`` per subject), so recording a letter whose key
  was recorded before is refused by the server itself (error 10077): idempotency by key is
  atomic, with no read-then-write race between processes.
* A letter's id is its sequence in that stream.
* Requeue marks live in the KV bucket ``<prefix>TV_REQUEUED`` (letter id → time).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgspec

from tickvault.bus.base import DeadLetter, NewDeadLetter
from tickvault.bus.nats.link import Names, NatsLink, is_connection_error, translate
from tickvault.core.errors import BusError

_PER_SUBJECT_FULL = 10077


class _Letter(msgspec.Struct, array_like=True):
    stream: str
    group: str | None
    kind: str
    reason: str
    payload: bytes
    key: str
    entry_id: str | None
    delivery_count: int
    created_at: float


class NatsDeadLetters:
    """The dead-letter queue of one :class:`~tickvault.bus.nats.bus.NatsBus`."""

    def __init__(self, link: NatsLink, names: Names, replicas: int) -> None:
        self.link = link
        self.names = names
        self.replicas = replicas
        self._ready = False
        self._kv: Any = None

    async def _ensure(self) -> Any:
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig
        from nats.js.errors import BucketNotFoundError, NotFoundError

        js = await self.link.js()
        if self._ready:
            return js
        try:
            await js.stream_info(self.names.dlq_stream)
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=self.names.dlq_stream,
                    subjects=[f"tvdlq.{self.names.token}.>"],
                    storage=StorageType.FILE,
                    num_replicas=self.replicas,
                    max_msgs_per_subject=1,
                    discard=DiscardPolicy.NEW,
                    discard_new_per_subject=True,
                )
            )
        try:
            self._kv = await js.key_value(self.names.requeued_bucket)
        except BucketNotFoundError:
            self._kv = await js.create_key_value(
                bucket=self.names.requeued_bucket, replicas=self.replicas
            )
        self._ready = True
        return js

    def _subject(self, stream: str, key: str) -> str:
        digest = hashlib.sha256(f"{stream}\0{key}".encode()).hexdigest()[:40]
        return self.names.dlq_subject(stream, digest)

    async def add(self, stream: str, group: str | None, letters: Sequence[NewDeadLetter]) -> int:
        """Record the letters not recorded before (by key); return how many were new."""
        if not letters:
            return 0
        self.names.stream(stream)  # validates the name
        from nats.js.errors import APIError

        try:
            js = await self._ensure()
            now = time.time()
            bodies = [
                (
                    self._subject(stream, x.key),
                    msgspec.msgpack.encode(
                        _Letter(
                            stream,
                            group,
                            x.kind,
                            x.reason,
                            x.payload,
                            x.key,
                            x.entry_id,
                            x.delivery_count,
                            now,
                        )
                    ),
                )
                for x in letters
            ]
            # Plain request/replies: nats-py's publish_async never resolves on an API error.
            results = await asyncio.gather(
                *(js.publish(subject, body) for subject, body in bodies), return_exceptions=True
            )
            new = 0
            for result in results:
                if isinstance(result, APIError) and result.err_code == _PER_SUBJECT_FULL:
                    continue
                if isinstance(result, BaseException):
                    raise result
                new += 1
            return new
        except BusError:
            raise
        except Exception as exc:
            raise translate(exc, "add dead letters") from exc

    @staticmethod
    def _letter(seq: int, data: bytes, requeued: dict[str, float]) -> DeadLetter:
        x = msgspec.msgpack.decode(data, type=_Letter)
        return DeadLetter(
            id=str(seq),
            stream=x.stream,
            group=x.group,
            kind=x.kind,
            reason=x.reason,
            payload=x.payload,
            entry_id=x.entry_id,
            delivery_count=x.delivery_count,
            created_at=x.created_at,
            requeued_at=requeued.get(str(seq)),
        )

    async def _requeued(self) -> dict[str, float]:
        from nats.js.errors import NoKeysError

        out: dict[str, float] = {}
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return out
        for key in keys:
            entry = await self._kv.get(key)
            if entry.value:
                out[key] = float(entry.value.decode())
        return out

    async def scan(
        self, stream: str | None, limit: int | None, include_requeued: bool
    ) -> list[DeadLetter]:
        from nats.js.errors import NotFoundError

        try:
            js = await self._ensure()
            requeued = await self._requeued()
            subject = self.names.dlq_subject(stream) if stream else f"tvdlq.{self.names.token}.>"
            out: list[DeadLetter] = []
            seq = 1
            while limit is None or len(out) < limit:
                try:
                    msg = await js.get_msg(
                        self.names.dlq_stream, seq=seq, subject=subject, next=True
                    )
                except NotFoundError:
                    break
                assert msg.seq is not None and msg.data is not None
                letter = self._letter(msg.seq, msg.data, requeued)
                if include_requeued or letter.requeued_at is None:
                    out.append(letter)
                seq = msg.seq + 1
            return out
        except BusError:
            raise
        except Exception as exc:
            raise translate(exc, "list dead letters") from exc

    async def get(self, letter_id: str) -> DeadLetter | None:
        from nats.js.errors import KeyNotFoundError, NotFoundError

        try:
            seq = int(letter_id)
        except ValueError:
            return None
        try:
            js = await self._ensure()
            try:
                msg = await js.get_msg(self.names.dlq_stream, seq=seq)
            except NotFoundError:
                return None
            requeued: dict[str, float] = {}
            try:
                entry = await self._kv.get(letter_id)
                if entry.value:
                    requeued[letter_id] = float(entry.value.decode())
            except KeyNotFoundError:
                pass
            assert msg.data is not None
            return self._letter(seq, msg.data, requeued)
        except Exception as exc:
            if isinstance(exc, BusError):
                raise
            raise translate(exc, "get dead letter") from exc

    async def mark_requeued(self, letter_id: str) -> None:
        try:
            await self._ensure()
            await self._kv.put(letter_id, str(time.time()).encode())
        except Exception as exc:
            raise translate(exc, "mark requeued") from exc

    async def counts(self, stream: str | None) -> dict[str, int]:
        letters = await self.scan(stream, None, include_requeued=False)
        return dict(Counter(x.reason for x in letters).most_common())


__all__ = ["NatsDeadLetters", "is_connection_error"]
