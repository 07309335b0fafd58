"""Max-deliveries advisories of the NATS bus, turned into dead letters.

After ``max_deliver`` deliveries JetStream stops delivering an entry and publishes
``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>``. Advisories are plain NATS
messages, lost when nobody listens, so they are captured in the stream
``<prefix>TV_ADVISORIES`` (one subject per data stream) and consumed by the durable consumer
``tv-dlq-feeder``: every reader feeds them to the dead-letter queue at most once a second
(reason ``delivered N times (max M)``, key ``entry:<id>``, so feeding twice records once)
and acknowledges an advisory only after its letter is recorded.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from tickvault.bus.base import NewDeadLetter
from tickvault.bus.nats.letters import NatsDeadLetters
from tickvault.bus.nats.link import Held, Names, NatsLink, NatsOptions

log = logging.getLogger(__name__)
FEEDER = "tv-dlq-feeder"
FEED_EVERY_S = 1.0


class NatsAdvisories:
    """The advisory capture of one :class:`~tickvault.bus.nats.bus.NatsBus`."""

    def __init__(
        self, link: NatsLink, names: Names, letters: NatsDeadLetters, options: NatsOptions
    ) -> None:
        self.link = link
        self.names = names
        self.letters = letters
        self.options = options
        self.dead_lettered = 0
        self._advised: set[str] = set()
        self._last_feed = 0.0
        self._feeder: Any = None

    def due(self) -> bool:
        return time.monotonic() - self._last_feed >= FEED_EVERY_S

    def reset(self) -> None:
        self._feeder = None

    async def ensure(self, js_stream: str) -> None:
        """Capture ``js_stream``'s max-deliveries advisories in the advisory stream."""
        from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        if js_stream in self._advised:
            return
        js = await self.link.js()
        subject = self.names.advisory_subject(js_stream)
        name = self.names.advisory_stream
        try:
            info = await js.stream_info(name)
            subjects = list(info.config.subjects or [])
            if subject not in subjects:
                await js.update_stream(info.config.evolve(subjects=[*subjects, subject]))
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=[subject],
                    storage=StorageType.FILE,
                    num_replicas=self.options.replicas,
                    max_age=7 * 86400,
                )
            )
        try:
            await js.consumer_info(name, FEEDER)
        except NotFoundError:
            await js.add_consumer(
                name,
                ConsumerConfig(
                    durable_name=FEEDER, ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_deliver=-1
                ),
            )
        self._advised.add(js_stream)

    async def feed(self, held: dict[tuple[str, str], dict[str, Held]]) -> int:
        """Turn captured max-deliveries advisories into dead letters; return how many.

        Failures are logged and retried on the next call (the advisories stay captured)."""
        import nats
        from nats.js.errors import NotFoundError

        self._last_feed = time.monotonic()
        if not self._advised:
            return 0
        done = 0
        try:
            js = await self.link.js()
            if self._feeder is None:
                self._feeder = await js.pull_subscribe_bind(
                    durable=FEEDER, stream=self.names.advisory_stream
                )
            try:
                msgs = await self._feeder.fetch(100, timeout=0.05)
            except (TimeoutError, nats.errors.TimeoutError):
                return 0
            for m in msgs:
                adv = json.loads(m.data)
                stream = self.names.tickvault_stream(adv.get("stream", ""))
                if stream is None:
                    await m.ack()
                    continue
                seq, deliveries = int(adv["stream_seq"]), int(adv["deliveries"])
                try:
                    payload = (await js.get_msg(adv["stream"], seq=seq)).data or b""
                except NotFoundError:
                    payload = b""
                reason = f"delivered {deliveries} times (max {self.options.max_deliver})"
                letter = NewDeadLetter(
                    "frame", reason, payload, f"entry:{seq}", str(seq), deliveries
                )
                await self.letters.add(stream, adv.get("consumer"), [letter])
                held.get((stream, adv.get("consumer", "")), {}).pop(str(seq), None)
                await m.ack()
                done += 1
                log.warning("NATS: entry %s of %s dead-lettered: %s", seq, stream, reason)
        except Exception as exc:
            log.warning("NATS: feeding max-deliveries advisories failed: %s", exc)
        self.dead_lettered += done
        return done
