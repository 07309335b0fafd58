"""Binance collector options and websocket connections: open, watch, replace, forever.

:class:`StreamConnections` keeps one combined-stream connection open per group of streams:

- **Reconnects never stop.** A failed connect, or a connection that dies young, is retried
  after a capped exponential backoff with equal jitter
  (:class:`~tickvault.core.backoff.Backoff`); a long-lived connection that ends is replaced
  at once. There is no retry limit.
- **Stalls.** A connection that delivers nothing for ``stall_timeout_s`` is closed and
  replaced. (Pings are answered by the websocket library while the connection is read, and
  it is read all the time: frames go straight into the :class:`FrameInbox`.)
- **Rollover.** ``rollover_after_s`` after a connection opened (before the venue's 24-hour
  cut) a successor is opened for the same streams; both are read for ``overlap_s``, then the
  old one is closed. Whatever arrives twice is dropped downstream by id.

Times come from the injectable monotonic ``clock``, looked at every ``tick_s``, so a test can
move the clock (a stall, a day) without waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tickvault.core.backoff import Backoff
from tickvault.core.errors import ConfigError

log = logging.getLogger(__name__)

CHANNELS = ("trade", "aggTrade", "bookTicker", "depth")
_STREAM_SUFFIX = {
    "trade": "trade",
    "aggTrade": "aggTrade",
    "bookTicker": "bookTicker",
    "depth": "depth@100ms",
}


@dataclass
class BinanceOptions:
    """Everything the collector can be told; ``BinanceSettings`` in the config maps here."""

    symbols: list[str]
    channels: list[str]
    ws_url: str = "wss://stream.binance.com:9443"
    rest_url: str = "https://api.binance.com"
    api_key: str | None = None
    market: str | None = None
    """The market's name in the key (``binance``, ``binance-usdm``...); ``None``: from
    ``ws_url`` (hosts that are not Binance's own count as spot)."""
    max_streams_per_connection: int = 1024
    stall_timeout_s: float = 60.0
    rollover_after_s: float = 23 * 3600.0
    overlap_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    open_timeout_s: float = 10.0
    gap_settle_s: float = 2.0
    rest_attempts: int = 8
    depth_snapshot_limit: int = 1000
    book_snapshot_every_s: float = 300.0
    record_dir: str | None = None
    record_rotate_s: float = 3600.0
    record_rotate_bytes: int = 256 << 20
    batch_linger_s: float = 0.05
    batch_max_records: int = 5000
    stop_grace_s: float = 5.0
    tick_s: float = 0.1

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ConfigError("binance: symbols must not be empty")
        unknown = [c for c in self.channels if c not in CHANNELS]
        if unknown or not self.channels:
            raise ConfigError(
                f"binance: unknown channel(s) {unknown or self.channels}"
                f" (known: {', '.join(CHANNELS)})"
            )
        if self.max_streams_per_connection < 1:
            raise ConfigError("binance: max_streams_per_connection must be at least 1")


def stream_names(symbols: list[str], channels: list[str]) -> list[str]:
    return [f"{s.lower()}@{_STREAM_SUFFIX[c]}" for s in symbols for c in channels]


def split_streams(streams: list[str], limit: int) -> list[list[str]]:
    return [streams[i : i + limit] for i in range(0, len(streams), limit)]


MAX_QUEUED = 100_000
"""Frames received and not yet parsed, at most; then the readers pause (backpressure)."""
CONNECT_ERRORS = (OSError, TimeoutError, websockets.WebSocketException)

Frame = tuple[str, int, int, bytes]
"""``(connection tag, n-th message on it, receive time µs, raw bytes)``."""


class FrameInbox:
    """Received frames, oldest first. A deque and two events cost a fraction of what an
    ``asyncio.Queue`` costs per frame."""

    def __init__(self) -> None:
        self.frames: deque[Frame] = deque()
        self.arrived = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()

    def release(self) -> None:
        """Called by the consumer after taking frames: let paused readers go on."""
        if not self.room.is_set() and len(self.frames) < MAX_QUEUED:
            self.room.set()


class Connection:
    """One websocket connection and the task that reads it."""

    def __init__(self, tag: str, ws: ClientConnection, now: float, rollover_at: float) -> None:
        self.tag = tag
        self.ws = ws
        self.opened_at = now
        self.last_msg_at = now
        self.rollover_at = rollover_at
        self.messages = 0
        self.reader: asyncio.Task[None] | None = None
        self.close_reason = ""


class StreamConnections:
    """The connections of one collector; see the module docstring."""

    def __init__(
        self,
        options: BinanceOptions,
        groups: list[list[str]],
        inbox: FrameInbox,
        stopping: asyncio.Event,
        *,
        clock: Callable[[], float],
        rng: random.Random,
        note_error: Callable[[str], None],
    ) -> None:
        self.options = options
        self.groups = groups
        self.inbox = inbox
        self.stopping = stopping
        self.clock = clock
        self.rng = rng
        self.note_error = note_error
        self.conns: dict[int, list[Connection]] = {}
        self.reconnects = 0
        self.rollovers = 0
        self.stalls = 0
        self.last_message_at: float | None = None
        self._seq = 0

    def start(self) -> list[asyncio.Task[None]]:
        return [
            asyncio.create_task(self._supervise(i, g), name=f"binance-conn-{i}")
            for i, g in enumerate(self.groups)
        ]

    @property
    def open_connections(self) -> int:
        return sum(len(c) for c in self.conns.values())

    @property
    def connected(self) -> bool:
        """Every group has an open connection."""
        return all(self.conns.get(i) for i in range(len(self.groups)))

    def url_for(self, group: list[str]) -> str:
        return f"{self.options.ws_url.rstrip('/')}/stream?streams={'/'.join(group)}"

    async def _open(self, index: int) -> Connection:
        o = self.options
        ws = await ws_connect(
            self.url_for(self.groups[index]),
            open_timeout=o.open_timeout_s,
            max_size=1 << 22,
            max_queue=1024,
            close_timeout=2.0,
        )
        self._seq += 1
        now = self.clock()
        conn = Connection(f"{index}.{self._seq}", ws, now, now + o.rollover_after_s)
        conn.reader = asyncio.create_task(self._read(conn), name=f"binance-read-{conn.tag}")
        self.conns.setdefault(index, []).append(conn)
        return conn

    async def _read(self, conn: Connection) -> None:
        ws, tag, clock = conn.ws, conn.tag, self.clock
        queued, arrived, room = self.inbox.frames, self.inbox.arrived, self.inbox.room
        seq = 0
        try:
            while True:
                data = await ws.recv(decode=False)
                seq += 1
                now = clock()
                conn.last_msg_at = now
                self.last_message_at = now
                conn.messages = seq
                queued.append((tag, seq, time.time_ns() // 1000, bytes(data)))
                if not arrived.is_set():
                    arrived.set()
                if len(queued) >= MAX_QUEUED:
                    room.clear()
                    await room.wait()  # backpressure: stop reading until parsed
        except websockets.ConnectionClosed as exc:
            conn.close_reason = f"closed by the venue ({exc})"

    async def close(self, index: int, conn: Connection) -> None:
        with contextlib.suppress(ValueError):
            self.conns.get(index, []).remove(conn)
        if not self.conns.get(index):
            self.conns.pop(index, None)
        with contextlib.suppress(Exception):
            await conn.ws.close()
        if conn.reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(conn.reader, timeout=2.0)

    async def close_all(self) -> None:
        for index, conns in list(self.conns.items()):
            for conn in list(conns):
                await self.close(index, conn)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def _watch(self, conn: Connection) -> str:
        o = self.options
        assert conn.reader is not None
        while True:
            if self.stopping.is_set():
                return "stopping"
            if conn.reader.done():
                return "ended"
            now = self.clock()
            if now >= conn.rollover_at:
                return "rollover"  # first: a successor also cures a stall, without a gap
            if now - conn.last_msg_at >= o.stall_timeout_s:
                return "stalled"
            await asyncio.wait({conn.reader}, timeout=o.tick_s)

    def _error(self, text: str) -> None:
        self.note_error(text)
        log.warning("%s", text)

    async def _supervise(self, index: int, group: list[str]) -> None:
        o = self.options
        backoff = Backoff(
            initial=o.backoff_initial_s, cap=o.backoff_max_s, jitter="equal", rng=self.rng.random
        )
        conn: Connection | None = None
        ever_connected = False
        while not self.stopping.is_set():
            if conn is None:
                try:
                    conn = await self._open(index)
                except CONNECT_ERRORS as exc:
                    delay = backoff.next_delay()
                    self._error(
                        f"connect {index}: {type(exc).__name__}: {exc}"
                        f" (retry {backoff.attempt} in {delay:.2f}s)"
                    )
                    await self._pause(delay)
                    continue
                if ever_connected:
                    self.reconnects += 1
                ever_connected = True
                log.info("binance connection %s open (%d streams)", conn.tag, len(group))
            outcome = await self._watch(conn)
            if outcome == "stopping":
                break
            if outcome == "rollover":
                successor = await self._rollover(index, conn)
                if successor is None:
                    conn.rollover_at = self.clock() + backoff.delay(0)
                else:
                    conn = successor
                    self.rollovers += 1
                continue
            if outcome == "stalled":
                self.stalls += 1
                self._error(
                    f"connection {conn.tag} stalled (no message for {o.stall_timeout_s:g}s);"
                    " reconnecting"
                )
            else:
                self._error(f"connection {conn.tag} {conn.close_reason or 'ended'}; reconnecting")
            short_lived = self.clock() - conn.opened_at < max(5.0, o.stall_timeout_s)
            await self.close(index, conn)
            conn = None
            if short_lived:
                await self._pause(backoff.next_delay())
            else:
                backoff.reset()
        for other in list(self.conns.get(index, [])):
            await self.close(index, other)

    async def _rollover(self, index: int, old: Connection) -> Connection | None:
        """Open a successor, read both for ``overlap_s``, close ``old``."""
        o = self.options
        try:
            new = await self._open(index)
        except CONNECT_ERRORS as exc:
            self._error(f"rollover connect {index}: {type(exc).__name__}: {exc}")
            return None
        assert new.reader is not None
        deadline = time.monotonic() + o.overlap_s
        while time.monotonic() < deadline and not new.reader.done():
            if self.stopping.is_set():
                break
            await asyncio.wait({new.reader}, timeout=min(o.tick_s, o.overlap_s))
        if new.reader.done():
            await self.close(index, new)
            return None
        log.info("binance connection %s replaced by %s (rollover)", old.tag, new.tag)
        await self.close(index, old)
        return new
