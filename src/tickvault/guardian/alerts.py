"""Alert channels: ``log``, ``webhook`` and ``telegram``, behind one :class:`Dispatcher`.

Grouping, timing and FIRING/RESOLVED pairing are :mod:`tickvault.guardian.routing`'s
(:class:`AlertRouter`, re-exported here).

:class:`Dispatcher` delivers messages on one task per channel behind a bounded queue, so a
slow or failing channel never blocks or crashes the guardian: ``submit`` never waits, send
errors are retried with backoff and then counted and logged.
:class:`TelegramChannel` sends at most one message per ``min_interval_s`` per chat and, on
HTTP 429, waits the ``retry_after`` the Bot API asks for and sends the same message again.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

import httpx

from tickvault.core.backoff import Backoff
from tickvault.guardian.routing import Alert, AlertRouter, Message

__all__ = [
    "Alert",
    "AlertChannel",
    "AlertRouter",
    "Dispatcher",
    "LogChannel",
    "Message",
    "TelegramChannel",
    "WebhookChannel",
]

log = logging.getLogger(__name__)


# -- channels ------------------------------------------------------------------------------


class AlertChannel(abc.ABC):
    name: str = "channel"

    @abc.abstractmethod
    async def send(self, message: Message) -> None:
        """Deliver one message or raise; the dispatcher retries."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


class LogChannel(AlertChannel):
    name = "log"

    async def send(self, message: Message) -> None:
        level = logging.INFO if message.kind == "resolved" else logging.WARNING
        log.log(level, "guardian alert: %s", message.text)


class WebhookChannel(AlertChannel):
    """``POST`` of :meth:`Message.as_dict` as JSON; any 2xx is delivered."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self._client = httpx.AsyncClient(timeout=timeout)

    async def send(self, message: Message) -> None:
        response = await self._client.post(self.url, json=message.as_dict())
        response.raise_for_status()

    async def close(self) -> None:
        await self._client.aclose()


class TelegramChannel(AlertChannel):
    """Bot API ``sendMessage``; paced per chat, honouring 429 ``retry_after``."""

    name = "telegram"

    def __init__(
        self,
        token: str,
        chat_id: str,
        *,
        api_url: str = "https://api.telegram.org",
        min_interval_s: float = 1.0,
        timeout: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.chat_id = chat_id
        self.min_interval_s = min_interval_s
        self._endpoint = f"{api_url.rstrip('/')}/bot{token}/sendMessage"
        self._client = httpx.AsyncClient(timeout=timeout)
        self._sleep = sleep
        self._last_sent: float | None = None
        self.sent_at: list[float] = []
        self.throttled = 0

    async def _pace(self) -> None:
        if self._last_sent is not None:
            wait = self._last_sent + self.min_interval_s - time.monotonic()
            if wait > 0:
                await self._sleep(wait)

    async def send(self, message: Message) -> None:
        while True:
            await self._pace()
            self._last_sent = time.monotonic()
            response = await self._client.post(
                self._endpoint, json={"chat_id": self.chat_id, "text": message.text[:4096]}
            )
            if response.status_code == 429:
                self.throttled += 1
                try:
                    retry_after = float(response.json()["parameters"]["retry_after"])
                except (ValueError, KeyError, TypeError):
                    retry_after = 5.0
                await self._sleep(max(retry_after, self.min_interval_s))
                continue
            response.raise_for_status()
            self.sent_at.append(self._last_sent)
            return

    async def close(self) -> None:
        await self._client.aclose()


class Dispatcher:
    """One queue and one delivery task per channel."""

    def __init__(
        self,
        channels: list[AlertChannel],
        *,
        queue_size: int = 1000,
        attempts: int = 5,
        retry_base_s: float = 1.0,
    ) -> None:
        self.channels = channels
        self.attempts = attempts
        self.retry_base_s = retry_base_s
        self.backoff = Backoff(initial=retry_base_s, cap=math.inf, jitter="full")
        """Waits between a channel's attempts at one message (no cap: attempts are few)."""
        self._queues: dict[str, asyncio.Queue[Message]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._queue_size = queue_size
        self.delivered: dict[str, int] = {c.name: 0 for c in channels}
        self.failed: dict[str, int] = {c.name: 0 for c in channels}
        self.dropped: dict[str, int] = {c.name: 0 for c in channels}

    def start(self) -> None:
        for channel in self.channels:
            queue: asyncio.Queue[Message] = asyncio.Queue(self._queue_size)
            self._queues[channel.name] = queue
            self._tasks.append(asyncio.create_task(self._deliver(channel, queue)))

    def submit(self, message: Message) -> None:
        """Never blocks: a full queue drops its oldest message (counted)."""
        for name, queue in self._queues.items():
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                    queue.task_done()
                self.dropped[name] += 1
            queue.put_nowait(message)

    async def _deliver(self, channel: AlertChannel, queue: asyncio.Queue[Message]) -> None:
        while True:
            message = await queue.get()
            try:
                for attempt in range(self.attempts):
                    try:
                        await channel.send(message)
                        self.delivered[channel.name] += 1
                        break
                    except Exception as exc:  # a channel's trouble stays in the channel
                        log.warning("alert channel %s: %s", channel.name, exc)
                        if attempt + 1 < self.attempts:
                            await asyncio.sleep(self.backoff.delay(attempt))
                else:
                    self.failed[channel.name] += 1
            finally:
                queue.task_done()

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until every queued message was delivered or given up (for shutdown/tests)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(q.join() for q in self._queues.values())), timeout
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for channel in self.channels:
            with contextlib.suppress(Exception):
                await channel.close()
