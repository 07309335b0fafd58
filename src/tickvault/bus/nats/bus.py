"""The NATS JetStream bus: ``nats://host:port[,host:port...]`` (nats-py; URL options in
:mod:`tickvault.bus.nats.link`).

Mapping
-------
* A tickvault stream ``S`` is the JetStream stream ``<prefix>S`` on the subject
  ``tv.<prefix>.S`` (file storage, ``replicas`` copies: R3 on a three-node cluster).
* A consumer group is a durable pull consumer with explicit acks, ``ack_wait`` and
  ``max_deliver``; entry ids are stream sequences.
* ``append`` publishes every payload with a ``Nats-Msg-Id`` that is unique per payload and
  stays the same while that call retries, so a publish whose acknowledgement was lost is
  suppressed by the server as a duplicate (within the stream's duplicate window, 2 min).
  Payloads are pipelined (``publish_async``) and the call returns once JetStream
  acknowledged every one, i.e. stored it on a quorum of replicas.

What JetStream cannot do, and what this bus does instead
--------------------------------------------------------
JetStream keeps one pending set per *durable consumer* and knows nothing of tickvault's
consumer names, and it has no XCLAIM. :attr:`NatsBus.capabilities` therefore says
``claim=False`` and ``consumer_registry=False``:

* ``claim_stale`` always returns ``[]``. An entry that a crashed or stuck reader left
  unacknowledged is **redelivered by the server** to the next ``read`` of any reader of the
  group once ``ack_wait`` has passed, with its delivery count raised; that replaces claims.
* ``pending``, ``read_own_pending``, ``consumers`` and ``delete_consumer`` describe the entries
  *this client* holds (delivered and not yet acknowledged). After a restart the client holds
  nothing; the entries come back through ``read`` after ``ack_wait``. ``delete_consumer``
  negatively acknowledges what the name held, so it is redelivered at once.
* ``info`` reports the server's exact numbers per group (``pending`` is the consumer's
  ack-pending count, ``lag`` the entries not yet delivered), so the writer's "drained" test
  holds across processes.
* After ``max_deliver`` deliveries JetStream stops delivering an entry and publishes the
  max-deliveries advisory. The bus captures those advisories in the stream
  ``<prefix>TV_ADVISORIES`` (so none is lost while no reader runs) and every reader turns
  them into dead letters (reason ``delivered N times (max M)``, key ``entry:<id>``).
* Dead letters: see :mod:`tickvault.bus.nats.letters` (a letter stream with one message per
  key, plus a KV bucket of requeue marks).
* ``trim_acknowledged`` purges up to the lowest ack floor of all groups.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
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
    StreamInfo,
)
from tickvault.bus.nats.advisories import NatsAdvisories
from tickvault.bus.nats.letters import NatsDeadLetters
from tickvault.bus.nats.link import (
    Held,
    Names,
    NatsLink,
    NatsOptions,
    is_connection_error,
    translate,
)
from tickvault.core.backoff import Backoff, retry
from tickvault.core.errors import BusError, BusUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

_RECONNECT = Backoff(initial=0.05, cap=0.5, jitter="full")


def _connection_errors_until(deadline: float, what: str) -> Callable[[BaseException, float], None]:
    """A :func:`retry` hook: retry connection trouble until ``deadline``; a
    :class:`BusError` propagates as it is, anything else translated."""

    def give_up(exc: BaseException, delay: float) -> None:
        if isinstance(exc, BusError):
            raise exc
        if not is_connection_error(exc) or time.monotonic() + delay > deadline:
            raise translate(exc, what) from exc

    return give_up


class NatsBus(Bus):
    """Bus on NATS JetStream; ``NatsBus.from_url("nats://127.0.0.1:4222?replicas=3")``."""

    capabilities = Capabilities(
        per_entry_ack=True, claim=False, delivery_counts=True, consumer_registry=False
    )

    def __init__(self, options: NatsOptions) -> None:
        self.options = options
        self.link = NatsLink(options)
        self.names = Names(options.prefix)
        self.letters = NatsDeadLetters(self.link, self.names, options.replicas)
        self.advisories = NatsAdvisories(self.link, self.names, self.letters, options)
        self._streams: set[str] = set()
        self._groups: set[tuple[str, str]] = set()
        self._subs: dict[tuple[str, str], Any] = {}
        self._held: dict[tuple[str, str], dict[str, Held]] = {}
        self._seen: dict[tuple[str, str], dict[str, float]] = {}
        self._ids = itertools.count()
        self._id_prefix = os.urandom(8).hex()

    @classmethod
    def from_url(cls, url: str) -> NatsBus:
        return cls(NatsOptions.from_url(url))

    # -- plumbing ---------------------------------------------------------------------------

    async def _retrying(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn``, retrying connection trouble for up to ``retry_s``."""
        deadline = time.monotonic() + self.options.retry_s
        return await retry(
            fn,
            backoff=_RECONNECT,
            retry_on=Exception,
            on_error=_connection_errors_until(deadline, what),
        )

    async def _ensure_stream(self, stream: str) -> str:
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig
        from nats.js.errors import BadRequestError, NotFoundError

        name = self.names.stream(stream)
        if name in self._streams:
            return name
        js = await self.link.js()
        try:
            await js.stream_info(name)
        except NotFoundError:
            try:
                await js.add_stream(
                    StreamConfig(
                        name=name,
                        subjects=[self.names.subject(stream)],
                        storage=StorageType.FILE,
                        retention=RetentionPolicy.LIMITS,
                        num_replicas=self.options.replicas,
                        duplicate_window=self.options.duplicate_window_s,
                    )
                )
            except BadRequestError:  # created meanwhile by another client
                await js.stream_info(name)
        self._streams.add(name)
        return name

    async def _sub(self, stream: str, group: str) -> Any:
        key = (stream, group)
        sub = self._subs.get(key)
        if sub is None:
            js = await self.link.js()
            sub = await js.pull_subscribe_bind(durable=group, stream=self.names.stream(stream))
            self._subs[key] = sub
        return sub

    def _touch(self, stream: str, group: str, consumer: str) -> None:
        self._seen.setdefault((stream, group), {})[consumer] = time.time()

    # -- groups and appends -----------------------------------------------------------------

    async def ensure_group(self, stream: str, group: str) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import BadRequestError, NotFoundError

        self.names.stream(group)  # consumer names follow the same rules

        async def op() -> None:
            name = await self._ensure_stream(stream)
            js = await self.link.js()
            try:
                await js.consumer_info(name, group)
            except NotFoundError:
                config = ConsumerConfig(
                    durable_name=group,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=self.options.ack_wait_s,
                    max_deliver=self.options.max_deliver,
                    max_ack_pending=self.options.max_ack_pending,
                )
                try:
                    await js.add_consumer(name, config)
                except BadRequestError:
                    await js.consumer_info(name, group)
            await self.advisories.ensure(name)

        await self._retrying("ensure group", op)
        self._groups.add((stream, group))

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[str]:
        if not payloads:
            return []
        await self._retrying("create stream", lambda: self._ensure_stream(stream))
        subject = self.names.subject(stream)
        msg_ids = [f"{self._id_prefix}-{next(self._ids)}" for _ in payloads]
        seqs: list[int | None] = [None] * len(payloads)
        deadline = time.monotonic() + self.options.retry_s

        async def publish_unacknowledged() -> list[str]:
            js = await self.link.js()
            if not (await self.link.client()).is_connected:
                # Never queue frames in the client's reconnect buffer: they would all be
                # sent (and stored) on reconnect, long after this call gave up on them.
                raise ConnectionError("not connected (reconnecting)")
            todo = [i for i, s in enumerate(seqs) if s is None]
            futures = [
                (
                    i,
                    await js.publish_async(
                        subject, payloads[i], headers={"Nats-Msg-Id": msg_ids[i]}
                    ),
                )
                for i in todo
            ]
            await asyncio.wait([f for _, f in futures], timeout=self.options.ack_timeout_s)
            error: BaseException | None = None
            for i, fut in futures:
                if not fut.done():
                    fut.cancel()
                    error = error or TimeoutError("publish not acknowledged in time")
                elif fut.cancelled():
                    error = error or TimeoutError("publish cancelled")
                elif fut.exception() is not None:
                    error = error or fut.exception()
                else:
                    seqs[i] = fut.result().seq
            if error is not None:
                raise error
            return [str(s) for s in seqs]

        return await retry(
            publish_unacknowledged,
            backoff=_RECONNECT,
            retry_on=Exception,
            on_error=_connection_errors_until(deadline, f"append to {stream}"),
        )

    # -- delivery ---------------------------------------------------------------------------

    async def read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int = 0
    ) -> list[Entry]:
        import nats

        self._touch(stream, group, consumer)
        sub = await self._retrying("subscribe", lambda: self._sub(stream, group))
        try:
            msgs = await sub.fetch(count, timeout=max(block_ms, 10) / 1000)
        except (TimeoutError, nats.errors.TimeoutError):
            msgs = []
            nc = await self.link.client()
            if not nc.is_connected:
                raise BusUnavailable("NATS bus: read: not connected (reconnecting)") from None
        except Exception as exc:
            raise translate(exc, f"read {stream}/{group}") from exc
        held = self._held.setdefault((stream, group), {})
        now = time.monotonic()
        entries = []
        for m in msgs:
            meta = m.metadata
            entry_id = str(meta.sequence.stream)
            held[entry_id] = Held(consumer, m.reply, meta.num_delivered, now, m.data)
            entries.append(Entry(entry_id, m.data, meta.num_delivered))
        if self.advisories.due():
            await self.feed_advisories()
        return entries

    def _mine(self, stream: str, group: str, consumer: str | None) -> list[tuple[str, Held]]:
        held = self._held.get((stream, group), {})
        rows = [(i, h) for i, h in held.items() if consumer is None or h.consumer == consumer]
        return sorted(rows, key=lambda r: int(r[0]))

    async def read_own_pending(
        self, stream: str, group: str, consumer: str, count: int
    ) -> list[Entry]:
        self._touch(stream, group, consumer)
        out = []
        for entry_id, h in self._mine(stream, group, consumer)[:count]:
            h.deliveries += 1
            h.delivered_at = time.monotonic()
            out.append(Entry(entry_id, h.payload, h.deliveries))
        return out

    async def _reply(self, replies: Sequence[str], body: bytes, what: str) -> None:
        try:
            nc = await self.link.client()
            timeout = max(1.0, self.options.ack_timeout_s)
            if body == b"+ACK":
                # Double ack: the server answers once the consumer recorded the ack, so trims
                # see the new ack floor at once. A delivery from before a server restart may
                # get no answer; then the plain ack below is all the server can take.
                try:
                    await asyncio.gather(*(nc.request(r, body, timeout=timeout) for r in replies))
                    return
                except Exception:
                    pass
            for reply in replies:
                await nc.publish(reply, body)
            await nc.flush(timeout=int(timeout))
        except Exception as exc:
            raise translate(exc, what) from exc

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        held = self._held.get((stream, group), {})
        taken = {i: held.pop(i) for i in dict.fromkeys(ids) if i in held}
        if not taken:
            return 0
        try:
            await self._reply([h.reply for h in taken.values()], b"+ACK", "ack")
        except BusError:
            held.update(taken)  # still pending: the caller retries the ack
            raise
        return len(taken)

    async def pending(
        self, stream: str, group: str, consumer: str | None = None, count: int = 1000
    ) -> list[PendingEntry]:
        now = time.monotonic()
        return [
            PendingEntry(i, h.consumer, h.deliveries, int((now - h.delivered_at) * 1000))
            for i, h in self._mine(stream, group, consumer)[:count]
        ]

    async def claim_stale(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Entry]:
        """Always ``[]``: the server redelivers idle entries after ``ack_wait`` instead."""
        return []

    async def consumers(self, stream: str, group: str) -> list[ConsumerInfo]:
        seen = self._seen.get((stream, group), {})
        now = time.time()
        held = self._mine(stream, group, None)
        return [
            ConsumerInfo(name, sum(h.consumer == name for _, h in held), int((now - at) * 1000))
            for name, at in sorted(seen.items())
        ]

    async def delete_consumer(self, stream: str, group: str, name: str) -> int:
        held = self._held.get((stream, group), {})
        dropped = [i for i, h in held.items() if h.consumer == name]
        replies = [held.pop(i).reply for i in dropped]
        if replies:  # hand them back to the group at once
            await self._reply(replies, b"-NAK", "nak")
        self._seen.get((stream, group), {}).pop(name, None)
        return len(dropped)

    # -- dead letters -----------------------------------------------------------------------

    async def dead_letter(self, stream: str, group: str, entry: Entry, reason: str) -> None:
        letter = NewDeadLetter(
            "frame", reason, entry.payload, f"entry:{entry.id}", entry.id, entry.delivery_count
        )
        await self.letters.add(stream, group, [letter])
        h = self._held.get((stream, group), {}).pop(entry.id, None)
        if h is not None:
            await self._reply([h.reply], b"+TERM", "terminate dead-lettered entry")

    async def add_dead_letters(
        self, stream: str, group: str | None, letters: Sequence[NewDeadLetter]
    ) -> int:
        return await self._retrying(
            "dead letters", lambda: self.letters.add(stream, group, letters)
        )

    async def dead_letters(
        self, stream: str | None = None, limit: int = 1000, include_requeued: bool = False
    ) -> list[DeadLetter]:
        return await self.letters.scan(stream, limit, include_requeued)

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        return await self.letters.get(letter_id)

    async def mark_requeued(self, letter_id: str) -> None:
        await self.letters.mark_requeued(letter_id)

    async def dead_letter_counts(self, stream: str | None = None) -> dict[str, int]:
        return await self.letters.counts(stream)

    async def feed_advisories(self) -> int:
        """Turn captured max-deliveries advisories into dead letters; return how many."""
        return await self.advisories.feed(self._held)

    # -- upkeep and introspection -----------------------------------------------------------

    async def trim_acknowledged(self, stream: str) -> int:
        from nats.js.errors import NotFoundError

        async def op() -> int:
            js = await self.link.js()
            name = self.names.stream(stream)
            try:
                consumers = await js.consumers_info(name)
                info = await js.stream_info(name)
            except NotFoundError:
                return 0
            if not consumers or not info.state.messages:
                return 0
            floor = min(c.ack_floor.stream_seq for c in consumers if c.ack_floor is not None)
            first = info.state.first_seq
            if floor < first:
                return 0
            await js.purge_stream(name, seq=floor + 1)
            return int(floor + 1 - first)

        return await self._retrying("trim", op)

    async def info(self, stream: str) -> StreamInfo:
        from nats.js.errors import NotFoundError

        async def op() -> StreamInfo:
            js = await self.link.js()
            name = self.names.stream(stream)
            try:
                si = await js.stream_info(name)
                consumers = await js.consumers_info(name)
            except NotFoundError:
                return StreamInfo(stream=stream, length=0, first_id=None, last_id=None, groups=[])
            groups = []
            for c in sorted(consumers, key=lambda c: c.name):
                groups.append(
                    GroupInfo(
                        name=c.name,
                        consumers=len(self._seen.get((stream, c.name), {})),
                        pending=c.num_ack_pending or 0,
                        lag=c.num_pending or 0,
                        oldest_pending_age_ms=await self._oldest_age(name, c),
                        last_delivered_id=str(c.delivered.stream_seq)
                        if c.delivered and c.delivered.stream_seq
                        else None,
                    )
                )
            n = si.state.messages
            return StreamInfo(
                stream=stream,
                length=n,
                first_id=str(si.state.first_seq) if n else None,
                last_id=str(si.state.last_seq) if n else None,
                groups=groups,
            )

        return await self._retrying("info", op)

    async def _oldest_age(self, name: str, c: Any) -> int | None:
        """Age of the oldest entry the group has not acknowledged (None if none pending)."""
        from nats.js.errors import NotFoundError

        if not c.num_ack_pending:
            return None
        js = await self.link.js()
        seq = (c.ack_floor.stream_seq if c.ack_floor else 0) + 1
        try:
            msg = await js.get_msg(name, seq=seq)
        except NotFoundError:
            return 0
        if msg.time is None:
            return 0
        return max(0, int((time.time() - msg.time.timestamp()) * 1000))

    async def streams(self) -> list[str]:
        async def op() -> list[str]:
            js = await self.link.js()
            out = []
            for si in await js.streams_info():
                name = self.names.tickvault_stream(si.config.name or "")
                if name and si.config.subjects == [self.names.subject(name)]:
                    out.append(name)
            return sorted(out)

        return await self._retrying("list streams", op)

    async def close(self) -> None:
        self._subs.clear()
        self.advisories.reset()
        await self.link.close()
