"""The connection under :class:`~tickvault.bus.redis.bus.RedisBus`: client, retries, error mapping.

redis-py is imported lazily (the ``redis`` extra is optional) and its own retries are turned
off: every command goes through :meth:`RedisLink.call`, which retries connection problems
(Redis restarting, loading its AOF, unreachable) with capped exponential backoff for up to
``retry_s`` seconds, then raises :class:`~tickvault.core.errors.BusUnavailable`. Other Redis
errors become :class:`~tickvault.core.errors.BusError` at once. Callers never see a redis-py
exception.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from tickvault.core.backoff import Backoff, retry
from tickvault.core.errors import BackendNotAvailable, BusError, BusUnavailable

T = TypeVar("T")
log = logging.getLogger("tickvault.bus.redis")

_RECONNECT = Backoff(initial=0.05, cap=1.0, jitter="full")
_UNAVAILABLE = ("LOADING", "MISCONF", "READONLY", "NOREPLICAS", "TRYAGAIN", "MASTERDOWN")


def import_redis() -> Any:
    """The ``redis.asyncio`` module, or BackendNotAvailable telling what to install."""
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendNotAvailable(
            "the Redis bus needs the redis client: install tickvault[redis]"
        ) from exc
    return aioredis


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def id_tuple(entry_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` → ``(1700000000000, 3)``, for ordering entry ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def next_id(entry_id: str) -> str:
    """The smallest entry id greater than ``entry_id``."""
    ms, seq = id_tuple(entry_id)
    return f"{ms}-{seq + 1}"


def payload_of(fields: dict[bytes, bytes]) -> bytes:
    """An entry's payload: the value of its only field, else a JSON object of its fields."""
    if len(fields) == 1:
        return next(iter(fields.values()))
    return orjson.dumps(
        {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()}
    )


def glob_escape(value: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in value)


def is_missing_key(exc: Exception) -> bool:
    """True for "no such stream / no such group" replies."""
    message = str(exc)
    return message.startswith("NOGROUP") or "no such key" in message.lower()


class RedisLink:
    """One redis-py client (a connection pool) with tickvault's retry and error rules."""

    def __init__(self, url: str, *, prefix: str = "", retry_s: float = 5.0) -> None:
        aioredis = import_redis()
        from redis import exceptions
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.prefix = prefix
        self.retry_s = retry_s
        self.reconnects = 0
        self.errors = exceptions
        self.transient: tuple[type[BaseException], ...] = (
            exceptions.ConnectionError,
            exceptions.TimeoutError,
            OSError,
        )
        self.client = aioredis.Redis.from_url(
            url,
            protocol=2,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=30.0,
            socket_connect_timeout=5.0,
            socket_keepalive=True,
        )
        self._checked_durability = False

    def key(self, name: str) -> str:
        return self.prefix + name

    def translate(self, exc: Exception, what: str) -> BusError:
        rx = self.errors
        if isinstance(exc, rx.AuthenticationError):
            return BusError(f"redis bus ({what}): {exc}")
        if isinstance(exc, self.transient) or (
            isinstance(exc, rx.ResponseError) and str(exc).startswith(_UNAVAILABLE)
        ):
            return BusUnavailable(f"redis bus unavailable ({what}): {exc}")
        return BusError(f"redis bus ({what}): {exc}")

    async def call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op``; retry connection problems with backoff for ``retry_s``; translate."""
        deadline = time.monotonic() + self.retry_s

        async def translated() -> T:
            try:
                return await op()
            except (self.errors.RedisError, OSError) as exc:
                raise self.translate(exc, what) from exc

        def give_up_after_deadline(err: BaseException, delay: float) -> None:
            if time.monotonic() + delay > deadline:
                raise err
            self.reconnects += 1
            log.info("%s; reconnecting in %.2fs", err, delay)

        return await retry(
            translated,
            backoff=_RECONNECT,
            retry_on=BusUnavailable,
            on_error=give_up_after_deadline,
        )

    async def scan_streams(self, suffix: str = "") -> list[str]:
        """Names (without the prefix) of the stream keys under the prefix ending in ``suffix``."""

        async def op() -> list[str]:
            pattern = glob_escape(self.prefix) + "*" + glob_escape(suffix)
            return sorted(
                {
                    text(k)[len(self.prefix) :]
                    async for k in self.client.scan_iter(match=pattern, count=1000, _type="stream")
                }
            )

        return await self.call("list streams", op)

    async def check_durability(self) -> None:
        """Warn once when the server would not keep acknowledged appends through a crash."""
        if self._checked_durability:
            return
        self._checked_durability = True
        try:
            conf = await self.client.config_get("append*")
        except self.errors.RedisError:
            return  # CONFIG is often disabled on managed Redis: nothing to say then
        values = {text(k): text(v) for k, v in conf.items()}
        durable = values.get("appendonly") == "yes" and values.get("appendfsync") == "always"
        if not durable:
            log.warning(
                "redis at %s runs without appendonly=yes and appendfsync=always: appends it"
                " acknowledged can be lost if the Redis host crashes",
                self.url,
            )

    async def close(self) -> None:
        # A bus may be closed from another event loop than the one that used it (test
        # teardown); its connections are then unusable anyway and are simply dropped.
        with contextlib.suppress(RuntimeError, OSError, self.errors.RedisError):
            await self.client.aclose(close_connection_pool=True)
