"""Alerts: grouping like Alertmanager, and the ``log``, ``webhook`` and ``telegram`` channels.

:class:`AlertRouter` is pure (time is an argument). Alerts are grouped by resource and
deduplicated by ``(resource, code)``: firing the same alert again changes nothing. A new
group is announced ``group_wait`` after its first alert; later changes (new alerts,
resolutions) go out at most once per ``group_interval``; an unchanged firing group is
repeated every ``repeat_interval``. An alert resolved before it was ever announced is
dropped quietly. Escalations bypass the timers: one message per resource until it is
resumed.

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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    resource: str
    code: str
    severity: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    runbook: str | None = None


@dataclass(frozen=True)
class Message:
    kind: str
    """``firing``, ``resolved`` (all of the group's alerts resolved) or ``escalation``."""
    resource: str
    firing: tuple[Alert, ...]
    resolved: tuple[Alert, ...]
    at: float

    @property
    def text(self) -> str:
        head = {
            "firing": f"[FIRING] {self.resource}",
            "resolved": f"[RESOLVED] {self.resource}",
            "escalation": f"[ESCALATED] {self.resource}: automatic actions stopped",
        }[self.kind]
        lines = [head]
        for a in self.firing:
            lines.append(f"- {a.severity} {a.code}: {a.summary}")
            if a.evidence:
                lines.append("  evidence: " + ", ".join(f"{k}={v}" for k, v in a.evidence.items()))
            if a.runbook:
                lines.append(f"  runbook: {a.runbook}")
        lines.extend(f"- resolved {a.code}" for a in self.resolved)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        def one(a: Alert) -> dict[str, Any]:
            return {
                "code": a.code,
                "severity": a.severity,
                "summary": a.summary,
                "evidence": a.evidence,
                "runbook": a.runbook,
            }

        return {
            "kind": self.kind,
            "resource": self.resource,
            "at": self.at,
            "firing": [one(a) for a in self.firing],
            "resolved": [one(a) for a in self.resolved],
            "text": self.text,
        }


@dataclass
class _Group:
    created_at: float
    firing: dict[str, Alert] = field(default_factory=dict)
    announced: set[str] = field(default_factory=set)
    resolved: dict[str, Alert] = field(default_factory=dict)
    last_flush: float | None = None
    dirty: bool = False


class AlertRouter:
    def __init__(
        self,
        group_wait: float = 30.0,
        group_interval: float = 300.0,
        repeat_interval: float = 14_400.0,
    ) -> None:
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self._groups: dict[str, _Group] = {}
        self._escalated: set[str] = set()
        self._outbox: list[Message] = []

    def fire(self, alert: Alert, now: float) -> None:
        group = self._groups.get(alert.resource)
        if group is None:
            group = self._groups[alert.resource] = _Group(created_at=now)
        if alert.code in group.firing:
            return
        group.firing[alert.code] = alert
        group.resolved.pop(alert.code, None)
        group.dirty = True

    def resolve(self, resource: str, code: str | None, now: float) -> None:
        """Resolve one alert of ``resource`` (``code`` None: all of them)."""
        group = self._groups.get(resource)
        if group is None:
            return
        for c in [code] if code is not None else list(group.firing):
            alert = group.firing.pop(c, None) if c is not None else None
            if alert is None:
                continue
            if c in group.announced:
                group.resolved[c] = alert
                group.announced.discard(c)
            group.dirty = True

    def escalate(self, alert: Alert, now: float) -> bool:
        """Queue one escalation message for the resource; False if already escalated."""
        if alert.resource in self._escalated:
            return False
        self._escalated.add(alert.resource)
        group = self._groups.pop(alert.resource, None)
        if group is not None:
            group.firing.clear()
        self._outbox.append(Message("escalation", alert.resource, (alert,), (), now))
        return True

    def clear_escalation(self, resource: str) -> None:
        self._escalated.discard(resource)

    def due(self, now: float) -> list[Message]:
        """Messages to send now (and forget); call once per cycle."""
        out, self._outbox = self._outbox, []
        for resource, g in list(self._groups.items()):
            if g.last_flush is None:
                send = g.dirty and now - g.created_at >= self.group_wait
            elif g.dirty:
                send = now - g.last_flush >= self.group_interval
            else:
                send = bool(g.firing) and now - g.last_flush >= self.repeat_interval
            if send and (g.firing or g.resolved):
                kind = "firing" if g.firing else "resolved"
                out.append(
                    Message(
                        kind, resource, tuple(g.firing.values()), tuple(g.resolved.values()), now
                    )
                )
                g.announced.update(g.firing)
                g.resolved.clear()
                g.last_flush = now
                g.dirty = False
            elif send:
                g.dirty = False
            since = g.last_flush if g.last_flush is not None else g.created_at
            idle = now - since >= self.group_interval  # a flapping group keeps its timers
            if not g.firing and not g.resolved and idle:
                del self._groups[resource]
        return out


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
                            await asyncio.sleep(self.retry_base_s * 2**attempt)
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
