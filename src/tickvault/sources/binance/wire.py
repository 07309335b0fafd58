"""Binance wire messages (spot, USD-M and COIN-M futures) → tickvault records.

Parsing is the hot path of both the live collector and ``tickvault replay``: each message
kind is decoded straight into a typed msgspec struct (prices arrive as decimal strings and
are converted in C with ``strict=False``), about four times faster than ``orjson.loads``
followed by dict look-ups. The message kind is sniffed from a byte marker first; anything
the fast path cannot place falls back to a generic JSON decode, so key order and
whitespace do not matter for correctness.

Every failure raises :class:`ParseError` whose ``reason`` is short and stable (it becomes
the dead-letter reason): ``malformed JSON``, ``missing field `p```, ``unknown event type
'foo'``, ``non-finite price``, ``negative qty``... A message that is valid but carries no
record (an open kline) raises :class:`SkippedMessage` (a ``ParseError``): callers count it
instead of dead-lettering it.

Every market (spot, USD-M, COIN-M, Binance.US, Binance TR) has its own id spaces, so the
``exchange`` column names the market (:mod:`tickvault.sources.binance.markets`); the caller
passes it. Partial-depth streams (``@depth5/10/20``) are top-of-book snapshots: they become
``book_snapshot`` rows (origin ``partial``), never depth diffs; a bare REST depth snapshot
(``{"lastUpdateId":..}``) becomes one with origin ``rest``. Closed klines become bars.
"""

from __future__ import annotations

import math
import time
from typing import Any

import msgspec
import orjson

from tickvault.core.errors import RecordError
from tickvault.core.records import KINDS, Bar, Record
from tickvault.sources.binance.structs import (
    WireAggTrade,
    WireBookTicker,
    WireDepth,
    WireFuturesBookTicker,
    WireKline,
    WirePartialDepth,
    WireTrade,
    WireWrapped,
    WireWrappedEvent,
)

EXCHANGE = "binance"
_BAR_COLUMNS = KINDS["bar"].columns
# Columns a kline does not give (``adjusted``: Binance publishes one price basis, crypto
# has no splits) take the Bar record's defaults.
_BAR_DEFAULTS: dict[str, Any] = {
    name: default
    for name, default in zip(
        reversed(Bar.__struct_fields__), reversed(Bar.__struct_defaults__), strict=False
    )
}


class ParseError(RecordError):
    """A venue message could not be turned into a valid record."""


class SkippedMessage(ParseError):
    """A valid message that carries no record (an open kline): counted, not dead-lettered."""


class NonMarketTrade(SkippedMessage):
    """A futures trade whose type ``X`` is not ``MARKET`` (an insurance-fund or ADL fill).

    Binance's futures REST trade lists and aggregates contain market trades only, so these
    are skipped with a count rather than stored: the stored history stays the one REST
    backfill and the venue's dumps can restore. The trade id is kept (``trade_id``) so the
    collector still counts it as seen and opens no gap for it.
    """

    def __init__(self, trade_type: str, symbol: str, trade_id: int, ts_us: int) -> None:
        super().__init__(f"non-market trade (X={trade_type})")
        self.symbol = symbol
        self.trade_id = trade_id
        self.ts_us = ts_us


class SymbolNeeded(ParseError):
    """A depth snapshot that does not name its symbol (a bare REST snapshot line)."""


_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "trade": msgspec.json.Decoder(WireTrade, strict=False),
    "aggTrade": msgspec.json.Decoder(WireAggTrade, strict=False),
    "bookTicker": msgspec.json.Decoder(WireBookTicker, strict=False),
    "depthUpdate": msgspec.json.Decoder(WireDepth, strict=False),
    "kline": msgspec.json.Decoder(WireKline, strict=False),
    "partialDepth": msgspec.json.Decoder(WirePartialDepth, strict=False),
}
_TYPES: dict[str, type[msgspec.Struct]] = {
    "trade": WireTrade,
    "aggTrade": WireAggTrade,
    "bookTicker": WireBookTicker,
    "depthUpdate": WireDepth,
    "kline": WireKline,
    "partialDepth": WirePartialDepth,
}
_WRAPPED = msgspec.json.Decoder(WireWrapped)
_WRAPPED_EVENT = msgspec.json.Decoder(WireWrappedEvent, strict=False)
_ONE_PASS: dict[str | None, type[msgspec.Struct]] = {
    "trade": WireTrade,
    "aggTrade": WireAggTrade,
    "depthUpdate": WireDepth,
    "kline": WireKline,
}
"""Stream kinds whose messages :func:`_one_pass` decodes (book tickers are not: their
spot form has no ``"e"``)."""
# Events with an "e" field decode in one pass through a union tagged by that field.
_EVENT = msgspec.json.Decoder(
    WireTrade | WireAggTrade | WireDepth | WireFuturesBookTicker | WireKline, strict=False
)
_STREAM_SUFFIX = {"trade": "trade", "aggTrade": "aggTrade", "bookTicker": "bookTicker"}
# Binance's month interval is "1M"; "1mo" keeps it apart from a minute on case-blind systems.
_TIMEFRAMES = {"1M": "1mo"}


_INF = math.inf


def _price_reason(name: str, value: float) -> str:
    return f"non-finite {name}" if not math.isfinite(value) else f"non-positive {name}"


def _size_reason(name: str, value: float) -> str:
    return f"non-finite {name}" if not math.isfinite(value) else f"negative {name}"


def _stream_kind(stream: str) -> str | None:
    _, _, channel = stream.partition("@")
    if channel in _STREAM_SUFFIX:
        return _STREAM_SUFFIX[channel]
    if channel.startswith("depth"):
        # depth5 / depth10 / depth20 (optionally @100ms...) are top-N snapshots.
        level = channel[5:].partition("@")[0]
        return "partialDepth" if level.isdigit() or level == "Snapshot" else "depthUpdate"
    if channel.startswith("kline"):
        return "kline"
    return None


def _sniff(data: bytes) -> str | None:
    if b'"e":"trade"' in data:
        return "trade"
    if b'"e":"aggTrade"' in data:
        return "aggTrade"
    if b'"e":"depthUpdate"' in data:
        return "depthUpdate"
    if b'"e":"kline"' in data:
        return "kline"
    if b'"lastUpdateId"' in data:
        return "partialDepth"
    if b'"u"' in data and b'"b"' in data and (b'"e"' not in data or b'"bookTicker"' in data):
        return "bookTicker"
    return None


def _reason(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if text.startswith("Object missing required field"):
        name, _, where = text.split("field", 1)[1].strip().partition(" - at `$")
        path = where.rstrip("`").replace("[", ".").replace("]", "").strip(".")
        return f"missing field `{path}.{name.strip('`')}`" if path else f"missing field {name}"
    return f"bad value: {text}"


def _decode(kind: str, data: bytes) -> msgspec.Struct:
    try:
        return _DECODERS[kind].decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise ParseError(_reason(exc)) from None
    except msgspec.DecodeError:
        raise ParseError("malformed JSON") from None


def _generic(data: bytes) -> tuple[str, msgspec.Struct, str | None]:
    """Slow path: decode to a dict, find the message kind, convert; also the stream name."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ParseError("malformed JSON") from None
    if not isinstance(doc, dict):
        raise ParseError("not a JSON object")
    stream = None
    if "stream" in doc and "data" in doc:
        inner = doc["data"]
        stream = str(doc["stream"])
        kind = _stream_kind(stream)
        if kind is None and isinstance(inner, dict):
            kind = inner.get("e")
        doc = inner
        if not isinstance(doc, dict):
            raise ParseError("not a JSON object")
    else:
        kind = doc.get("e")
        if kind is None and {"u", "s", "b", "a"} <= doc.keys():
            kind = "bookTicker"
        elif kind is None and "lastUpdateId" in doc:
            kind = "partialDepth"
    if kind not in _TYPES:
        raise ParseError(f"unknown event type {kind!r}" if kind else "unknown message type")
    try:
        return kind, msgspec.convert(doc, _TYPES[kind], strict=False), stream
    except msgspec.ValidationError as exc:
        raise ParseError(_reason(exc)) from None


def _symbol_of(stream: str) -> str:
    return stream.partition("@")[0].upper()


def _one_pass(data: bytes) -> msgspec.Struct | None:
    """The event of a combined-stream message whose stream names an event kind, decoded
    in one pass (no copy of the inner message, no second decoder); None when the stream
    or the data is anything else (the two-pass path then finds the exact reason). The
    result is the one the two-pass path gives: the same struct decoded the same way."""
    end = data.find(b'"', 11)
    kind = _stream_kind(data[11:end].decode("utf-8", "replace")) if end > 11 else None
    if kind not in _ONE_PASS:
        return None
    try:
        msg = _WRAPPED_EVENT.decode(data).data
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return msg if type(msg) is _ONE_PASS[kind] else None


def parse_values(
    data: bytes,
    recv_us: int | None = None,
    exchange: str = EXCHANGE,
    symbol: str | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """Parse one raw websocket message (bare or combined-stream wrapped).

    Returns ``(kind, row)`` with ``row`` in the column order of ``KINDS[kind]``: the hot path
    of the collector and of replay. ``exchange`` is the market the message came from
    (``binance``, ``binance-usdm``...). ``recv_us`` is the local receive time; when ``None``
    (replays of files without receive times) the venue's event time is used, so replaying
    the same file twice yields the same rows (spot book tickers and spot depth snapshots,
    which carry no time, get the replay time). ``symbol`` names the symbol of a depth
    snapshot that does not name it itself (a REST snapshot line). Raises
    :class:`ParseError` (:class:`SkippedMessage` for an open kline).
    """
    msg: msgspec.Struct
    stream: str | None = None
    if data.startswith(b'{"stream":"') and (one_pass := _one_pass(data)) is not None:
        msg = one_pass
    elif data.startswith(b'{"stream"'):
        try:
            wrapped = _WRAPPED.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            _, msg, stream = _generic(data)
        else:
            inner = bytes(wrapped.data)
            stream = wrapped.stream
            kind = _stream_kind(stream) or _sniff(inner)
            msg = _generic(inner)[1] if kind is None else _decode(kind, inner)
    elif data.startswith(b'{"e":'):
        try:
            msg = _EVENT.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            _, msg, stream = _generic(data)  # the slow path finds the precise reason
    else:
        # A wrapped message with its keys in another order takes the slow path.
        kind = None if b'"stream"' in data else _sniff(data)
        if kind is None:
            _, msg, stream = _generic(data)
        else:
            msg = _decode(kind, data)
    if type(msg) is WirePartialDepth:
        if stream is None:
            return _snapshot(msg, recv_us, exchange, symbol, "rest")
        # A partial-depth stream is a top-N snapshot; a generated snapshot in a stream
        # (Tardis' "<symbol>@depthSnapshot") is a full REST one.
        origin = "rest" if stream.endswith("@depthSnapshot") else "partial"
        return _snapshot(msg, recv_us, exchange, _symbol_of(stream), origin)
    return to_values(msg, recv_us, exchange)


def parse_message(
    data: bytes, recv_us: int | None = None, exchange: str = EXCHANGE, symbol: str | None = None
) -> Record:
    """Like :func:`parse_values` but returns a typed record (convenient, slower)."""
    kind, row = parse_values(data, recv_us, exchange, symbol)
    spec = KINDS[kind]
    return spec.record_type(**dict(zip(spec.columns, row, strict=True)))  # type: ignore[return-value]


def _check_levels(levels: list[tuple[float, float]]) -> None:
    for price, qty in levels:
        if not 0 < price < _INF:
            raise ParseError(_price_reason("price", price))
        if not 0 <= qty < _INF:
            raise ParseError(_size_reason("qty", qty))


def _snapshot(
    msg: msgspec.Struct, recv_us: int | None, exchange: str, symbol: str | None, origin: str
) -> tuple[str, tuple[Any, ...]]:
    """A partial-depth message or REST depth snapshot → a ``book_snapshot`` row."""
    assert isinstance(msg, WirePartialDepth)
    update_id = msg.lastUpdateId if msg.lastUpdateId is not None else msg.u
    if update_id is None:
        raise ParseError("missing field `lastUpdateId`")
    bids = msg.bids if msg.bids is not None else msg.b
    asks = msg.asks if msg.asks is not None else msg.a
    if bids is None or asks is None:
        raise ParseError("missing field `bids`" if bids is None else "missing field `asks`")
    name = msg.s or msg.symbol or symbol
    if not name:
        raise SymbolNeeded(
            "depth snapshot names no symbol (a bare REST snapshot line): replay it with --symbol"
        )
    _check_levels(bids)
    _check_levels(asks)
    if recv_us is None:
        recv_us = msg.E * 1000 if msg.E is not None else time.time_ns() // 1000
    return "book_snapshot", (
        exchange,
        name,
        update_id,
        origin,
        [p for p, _ in bids],
        [q for _, q in bids],
        [p for p, _ in asks],
        [q for _, q in asks],
        recv_us,
    )


def _bar(msg: WireKline, exchange: str) -> tuple[str, tuple[Any, ...]]:
    k = msg.k
    if not k.x:
        raise SkippedMessage("open kline (not final)")
    for name, value in (("open", k.o), ("high", k.h), ("low", k.l), ("close", k.c)):
        if not 0 < value < _INF:
            raise ParseError(_price_reason(name, value))
    if not 0 <= k.v < _INF:
        raise ParseError(_size_reason("volume", k.v))
    vwap = k.q / k.v if k.q is not None and k.v > 0 else None
    values = {
        "source": exchange,
        "symbol": k.s,
        "timeframe": _TIMEFRAMES.get(k.i, k.i),
        "ts_open": k.t * 1000,
        "open": k.o,
        "high": k.h,
        "low": k.l,
        "close": k.c,
        "volume": k.v,
        "vwap": vwap,
        "trade_count": k.n,
    }
    return "bar", tuple(values.get(c, _BAR_DEFAULTS.get(c)) for c in _BAR_COLUMNS)


def to_values(
    msg: msgspec.Struct, recv_us: int | None, exchange: str = EXCHANGE
) -> tuple[str, tuple[Any, ...]]:
    """Normalise a decoded venue message and check it; raise ParseError when invalid."""
    if type(msg) is WireTrade:
        p, q = msg.p, msg.q
        if not 0 < p < _INF:
            raise ParseError(_price_reason("price", p))
        if not 0 <= q < _INF:
            raise ParseError(_size_reason("qty", q))
        if msg.X is not None and msg.X != "MARKET":
            raise NonMarketTrade(msg.X[:32], msg.s, msg.t, msg.T * 1000)
        return "trade", (
            exchange,
            msg.s,
            msg.t,
            p,
            q,
            msg.m,
            msg.T * 1000,
            recv_us if recv_us is not None else msg.E * 1000,
        )
    if type(msg) is WireBookTicker or type(msg) is WireFuturesBookTicker:
        for name, value in (("bid_price", msg.b), ("ask_price", msg.a)):
            if not 0 < value < _INF:
                raise ParseError(_price_reason(name, value))
        for name, value in (("bid_qty", msg.B), ("ask_qty", msg.A)):
            if not 0 <= value < _INF:
                raise ParseError(_size_reason(name, value))
        # Futures book tickers carry T (transaction) and E (event) times; the spot one
        # carries none: without a recorded receive time the replay time is the best we
        # know (the key, update_id, keeps replays idempotent).
        venue_ms = msg.T if msg.T is not None else msg.E
        ts_event = venue_ms * 1000 if venue_ms is not None else None
        if recv_us is None:
            recv_us = msg.E * 1000 if msg.E is not None else ts_event
        return "quote", (
            exchange,
            msg.s,
            msg.u,
            msg.b,
            msg.B,
            msg.a,
            msg.A,
            ts_event,
            recv_us if recv_us is not None else time.time_ns() // 1000,
        )
    if type(msg) is WireAggTrade:
        p, q = msg.p, msg.q
        if not 0 < p < _INF:
            raise ParseError(_price_reason("price", p))
        if not 0 <= q < _INF:
            raise ParseError(_size_reason("qty", q))
        return "agg_trade", (
            exchange,
            msg.s,
            msg.a,
            p,
            q,
            msg.f,
            msg.l,
            msg.m,
            msg.T * 1000,
            recv_us if recv_us is not None else msg.E * 1000,
        )
    if type(msg) is WireDepth:
        _check_levels(msg.b)
        _check_levels(msg.a)
        return "depth", (
            exchange,
            msg.s,
            msg.U,
            msg.u,
            [p for p, _ in msg.b],
            [q for _, q in msg.b],
            [p for p, _ in msg.a],
            [q for _, q in msg.a],
            msg.E * 1000,
            recv_us if recv_us is not None else msg.E * 1000,
        )
    if type(msg) is WireKline:
        return _bar(msg, exchange)
    if type(msg) is WirePartialDepth:
        return _snapshot(msg, recv_us, exchange, None, "rest")
    raise ParseError(f"unsupported message {type(msg).__name__}")
