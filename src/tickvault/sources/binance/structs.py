"""The Binance wire messages tickvault reads, as msgspec structs (one per message shape).

Field names are the venue's (case-sensitive single letters); prices and quantities are
declared ``float`` and decoded with ``strict=False``, which converts the venue's decimal
strings in C. Tagged structs carry an ``"e"`` event type and decode through one union;
the others are chosen by stream name or shape (:mod:`tickvault.sources.binance.wire`).
"""

from __future__ import annotations

import msgspec


class WireTrade(msgspec.Struct, tag_field="e", tag="trade"):
    E: int
    s: str
    t: int
    p: float
    q: float
    T: int
    m: bool
    X: str | None = None
    """Futures only: the trade type (``MARKET``; ``INSURANCE_FUND``, ``ADL``, ``NA``...)."""


class WireAggTrade(msgspec.Struct, tag_field="e", tag="aggTrade"):
    E: int
    s: str
    a: int
    p: float
    q: float
    f: int
    l: int  # noqa: E741 - the venue's field name
    T: int
    m: bool


class WireBookTicker(msgspec.Struct):
    u: int
    s: str
    b: float
    B: float
    a: float
    A: float
    T: int | None = None  # futures: transaction time (ms)
    E: int | None = None  # futures: event time (ms)


class WireFuturesBookTicker(msgspec.Struct, tag_field="e", tag="bookTicker"):
    u: int
    s: str
    b: float
    B: float
    a: float
    A: float
    T: int | None = None
    E: int | None = None


class WireDepth(msgspec.Struct, tag_field="e", tag="depthUpdate"):
    E: int
    s: str
    U: int
    u: int
    b: list[tuple[float, float]]
    a: list[tuple[float, float]]


class WirePartialDepth(msgspec.Struct):
    """A top-N book: a spot partial-depth message or REST snapshot (``lastUpdateId``,
    ``bids``, ``asks``), or a futures partial-depth message (diff shape: ``u``, ``b``, ``a``).
    """

    lastUpdateId: int | None = None
    bids: list[tuple[float, float]] | None = None
    asks: list[tuple[float, float]] | None = None
    u: int | None = None
    b: list[tuple[float, float]] | None = None
    a: list[tuple[float, float]] | None = None
    E: int | None = None
    s: str | None = None
    symbol: str | None = None  # COIN-M REST snapshots name their symbol


class WireKlineBody(msgspec.Struct):
    t: int
    s: str
    i: str
    o: float
    c: float
    h: float
    l: float  # noqa: E741 - the venue's field name
    v: float
    n: int
    x: bool
    q: float | None = None


class WireKline(msgspec.Struct, tag_field="e", tag="kline"):
    E: int
    s: str
    k: WireKlineBody


class WireWrapped(msgspec.Struct):
    stream: str
    data: msgspec.Raw


class WireWrappedEvent(msgspec.Struct):
    """A combined-stream message decoded in one pass, its data an event with an ``"e"``."""

    stream: str
    data: WireTrade | WireAggTrade | WireDepth | WireKline
