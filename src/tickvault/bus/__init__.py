"""Durable buses with consumer groups; :func:`open_bus` picks one by URL scheme."""

from __future__ import annotations

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
from tickvault.core.errors import ConfigError

__all__ = [
    "Bus",
    "Capabilities",
    "ConsumerInfo",
    "DeadLetter",
    "Entry",
    "GroupInfo",
    "NewDeadLetter",
    "PendingEntry",
    "StreamInfo",
    "open_bus",
]


def open_bus(url: str) -> Bus:
    """Return a bus for ``url``; raise ConfigError for unknown or unavailable schemes."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        from tickvault.bus.sqlite.bus import SqliteBus

        return SqliteBus.from_url(url)
    if scheme in ("redis", "rediss", "unix"):
        from tickvault.bus.redis.bus import RedisBus

        return RedisBus.from_url(url)
    if scheme in ("nats", "tls"):
        from tickvault.bus.nats.bus import NatsBus

        return NatsBus.from_url(url)
    if scheme == "kafka":
        from tickvault.bus.kafka.bus import KafkaBus

        return KafkaBus.from_url(url)
    raise ConfigError(
        f"unknown bus URL {url!r}: expected sqlite:///PATH, redis://HOST:PORT/DB,"
        " nats://HOST:PORT or kafka://HOST:PORT/PREFIX"
    )
