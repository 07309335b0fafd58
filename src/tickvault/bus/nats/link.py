"""Connection, URL options, names and error translation of the NATS JetStream bus.

URL: ``nats://host:port[,host:port...][?option=value&...]`` (``tls://`` for TLS; user and
password in the URL go to the server). Options:

* ``prefix`` — put every JetStream name under this prefix (several deployments or tests on
  one server). Letters, digits, ``_`` and ``-`` only.
* ``replicas`` — stream replicas (1; 3 on a three-node cluster for R3 streams).
* ``ack_wait_ms`` — how long a delivered entry may stay unacknowledged before JetStream
  redelivers it (default 30000). This replaces claiming on this bus.
* ``max_deliver`` — deliveries after which JetStream gives up on an entry and emits the
  max-deliveries advisory, which feeds the dead-letter queue (default 20; keep it above the
  writer's ``max_deliveries`` so the writer dead-letters with its own reason first).
* ``retry_s`` — how long connection trouble is retried inside one call before
  :class:`~tickvault.core.errors.BusUnavailable` (default 5).
* ``ack_timeout_ms`` — how long one round of publish acknowledgements is awaited (2000).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from tickvault.core.errors import BackendNotAvailable, BusError, BusUnavailable, ConfigError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

_NAME = re.compile(r"^[A-Za-z0-9_-]*$")
DLQ_STREAM = "TV_DEAD_LETTERS"
REQUEUED_BUCKET = "TV_REQUEUED"
ADVISORY_STREAM = "TV_ADVISORIES"
INTERNAL = (DLQ_STREAM, ADVISORY_STREAM, "KV_" + REQUEUED_BUCKET)
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


@dataclass
class Held:
    """An entry delivered to this client and not acknowledged yet."""

    consumer: str
    reply: str
    deliveries: int
    delivered_at: float
    payload: bytes


def import_nats() -> Any:
    try:
        import nats
    except ImportError:  # pragma: no cover - depends on the environment
        raise BackendNotAvailable("the NATS bus needs nats-py: install tickvault[nats]") from None
    return nats


@dataclass(frozen=True)
class NatsOptions:
    servers: tuple[str, ...]
    prefix: str = ""
    replicas: int = 1
    ack_wait_s: float = 30.0
    max_deliver: int = 20
    retry_s: float = 5.0
    ack_timeout_s: float = 2.0
    duplicate_window_s: float = 120.0
    max_ack_pending: int = 20_000

    @classmethod
    def from_url(cls, url: str) -> NatsOptions:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("nats", "tls"):
            raise ConfigError(f"not a NATS URL: {url!r} (expected nats://host:port)")
        hosts, _, query = rest.partition("?")
        hosts = hosts.rstrip("/")
        if not hosts:
            raise ConfigError(f"NATS URL needs host:port: {url!r}")
        servers = tuple(f"{scheme}://{h}" for h in hosts.split(",") if h)
        opts = {k: v[-1] for k, v in parse_qs(query).items()}
        try:
            parsed = cls(
                servers=servers,
                prefix=opts.pop("prefix", ""),
                replicas=int(opts.pop("replicas", "1")),
                ack_wait_s=int(opts.pop("ack_wait_ms", "30000")) / 1000,
                max_deliver=int(opts.pop("max_deliver", "20")),
                retry_s=float(opts.pop("retry_s", "5")),
                ack_timeout_s=int(opts.pop("ack_timeout_ms", "2000")) / 1000,
            )
        except ValueError as exc:
            raise ConfigError(f"invalid option in NATS URL {url!r}: {exc}") from None
        if opts:
            raise ConfigError(f"unknown option(s) in NATS URL {url!r}: {', '.join(opts)}")
        if not _NAME.match(parsed.prefix):
            raise ConfigError(f"NATS prefix may hold letters, digits, _ and - only: {url!r}")
        if parsed.replicas < 1 or parsed.max_deliver < 2 or parsed.ack_wait_s <= 0:
            raise ConfigError(f"NATS URL {url!r}: replicas >= 1, max_deliver >= 2, ack_wait > 0")
        return parsed


class Names:
    """JetStream names for tickvault's streams under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.token = prefix or "_"
        self.dlq_stream = prefix + DLQ_STREAM
        self.requeued_bucket = prefix + REQUEUED_BUCKET
        self.advisory_stream = prefix + ADVISORY_STREAM

    def stream(self, stream: str) -> str:
        if not stream or not _NAME.match(stream):
            raise BusError(f"NATS bus stream names hold letters, digits, _ and - only: {stream!r}")
        return self.prefix + stream

    def subject(self, stream: str) -> str:
        return f"tv.{self.token}.{stream}"

    def dlq_subject(self, stream: str | None, key_hash: str = "*") -> str:
        return f"tvdlq.{self.token}.{stream or '*'}.{key_hash}"

    def advisory_subject(self, js_stream: str) -> str:
        return f"{MAX_DELIVERIES_ADVISORY}.{js_stream}.*"

    def tickvault_stream(self, js_stream: str) -> str | None:
        if not js_stream.startswith(self.prefix):
            return None
        name = js_stream[len(self.prefix) :]
        if js_stream in (self.dlq_stream, self.advisory_stream, "KV_" + self.requeued_bucket):
            return None
        return name or None


def is_connection_error(exc: BaseException) -> bool:
    """Trouble that retrying later may fix (server down, no leader yet, timeouts)."""
    nats = import_nats()
    from nats.js import errors as jserr

    if isinstance(exc, asyncio.TimeoutError | TimeoutError | OSError | ConnectionError):
        return True
    if isinstance(exc, jserr.ServiceUnavailableError | jserr.NoStreamResponseError):
        return True
    if isinstance(exc, jserr.APIError) and exc.code in (503, 504):
        return True
    return isinstance(
        exc,
        nats.errors.ConnectionClosedError
        | nats.errors.NoServersError
        | nats.errors.TimeoutError
        | nats.errors.OutboundBufferLimitError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.StaleConnectionError
        | nats.errors.NoRespondersError
        | nats.errors.FlushTimeoutError
        | nats.errors.UnexpectedEOF,
    )


def translate(exc: BaseException, what: str) -> BusError:
    if is_connection_error(exc):
        return BusUnavailable(f"NATS bus: {what}: {type(exc).__name__}: {exc}")
    return BusError(f"NATS bus: {what}: {type(exc).__name__}: {exc}")


class NatsLink:
    """One lazily (re)connected client; ``await link.js()`` gives a JetStream context."""

    def __init__(self, options: NatsOptions) -> None:
        self.options = options
        self._nats = import_nats()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()
        self.disconnects = 0

    async def _disconnected(self) -> None:
        self.disconnects += 1

    async def _error(self, exc: Exception) -> None:
        return None  # reported through the calls that fail; keeps nats-py from printing

    async def client(self) -> Client:
        if self._nc is not None and not self._nc.is_closed:
            return self._nc
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                opts = self.options
                try:
                    nc: Client = await asyncio.wait_for(
                        self._nats.connect(
                            servers=list(opts.servers),
                            connect_timeout=1,
                            reconnect_time_wait=0.2,
                            max_reconnect_attempts=-1,
                            allow_reconnect=True,
                            ping_interval=5,
                            max_outstanding_pings=2,
                            disconnected_cb=self._disconnected,
                            error_cb=self._error,
                            pending_size=64 << 20,
                        ),
                        timeout=max(opts.retry_s, 1.0),
                    )
                except Exception as exc:
                    raise BusUnavailable(
                        f"cannot connect to NATS at {', '.join(opts.servers)}: {exc!r}"
                    ) from exc
                self._nc = nc
                self._js = nc.jetstream(timeout=max(opts.ack_timeout_s, 1.0))
        assert self._nc is not None
        return self._nc

    async def js(self) -> JetStreamContext:
        await self.client()
        assert self._js is not None
        return self._js

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), timeout=2)
            except Exception:  # closing a broken connection: nothing more to do
                return
