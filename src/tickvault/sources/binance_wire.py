"""Binance spot wire messages → tickvault records.

Parsing is the hot path of both the live collector and ``tickvault replay``: each message
kind is decoded straight into a typed msgspec struct (prices arrive as decimal strings and
are converted in C with ``strict=False``), about four times faster than ``orjson.loads``
followed by dict look-ups. The message kind is sniffed from a byte marker first; anything
the fast path cannot place falls back to a generic JSON decode, so key order and
whitespace do not matter for correctness.

Every failure raises :class:`ParseError` whose ``reason`` is short and stable (it becomes
the dead-letter reason): ``malformed JSON``, ``missing field `p```, ``unknown event type
'foo'``, ``non-finite price``, ``negative qty``...
"""

from __future__ import annotations

import math
import time
from typing import Any

import msgspec
import orjson

from tickvault.errors import RecordError
from tickvault.records import AggTrade, DepthUpdate, Quote, Record, Trade

EXCHANGE = "binance"


class ParseError(RecordError):
    """A venue message could not be turned into a valid record."""


class _Trade(msgspec.Struct):
    E: int
    s: str
    t: int
    p: float
    q: float
    T: int
    m: bool


class _AggTrade(msgspec.Struct):
    E: int
    s: str
    a: int
    p: float
    q: float
    f: int
    l: int  # noqa: E741 - the venue's field name
    T: int
    m: bool


class _BookTicker(msgspec.Struct):
    u: int
    s: str
    b: float
    B: float
    a: float
    A: float


class _Depth(msgspec.Struct):
    E: int
    s: str
    U: int
    u: int
    b: list[tuple[float, float]]
    a: list[tuple[float, float]]


class _Wrapped(msgspec.Struct):
    stream: str
    data: msgspec.Raw


_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "trade": msgspec.json.Decoder(_Trade, strict=False),
    "aggTrade": msgspec.json.Decoder(_AggTrade, strict=False),
    "bookTicker": msgspec.json.Decoder(_BookTicker, strict=False),
    "depthUpdate": msgspec.json.Decoder(_Depth, strict=False),
}
_TYPES: dict[str, type[msgspec.Struct]] = {
    "trade": _Trade,
    "aggTrade": _AggTrade,
    "bookTicker": _BookTicker,
    "depthUpdate": _Depth,
}
_WRAPPED = msgspec.json.Decoder(_Wrapped)
_MARKERS = (
    (b'"e":"trade"', "trade"),
    (b'"e":"aggTrade"', "aggTrade"),
    (b'"e":"depthUpdate"', "depthUpdate"),
)
_STREAM_SUFFIX = {"trade": "trade", "aggTrade": "aggTrade", "bookTicker": "bookTicker"}


def _positive(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ParseError(f"non-finite {name}")
    if value <= 0:
        raise ParseError(f"non-positive {name}")


def _non_negative(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ParseError(f"non-finite {name}")
    if value < 0:
        raise ParseError(f"negative {name}")


def _stream_kind(stream: str) -> str | None:
    _, _, channel = stream.partition("@")
    if channel in _STREAM_SUFFIX:
        return _STREAM_SUFFIX[channel]
    if channel.startswith("depth"):
        return "depthUpdate"
    return None


def _sniff(data: bytes) -> str | None:
    for marker, kind in _MARKERS:
        if marker in data:
            return kind
    if b'"e"' not in data and b'"u"' in data and b'"b"' in data:
        return "bookTicker"
    return None


def _reason(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if text.startswith("Object missing required field"):
        return "missing field " + text.split("field", 1)[1].strip()
    return f"bad value: {text}"


def _decode(kind: str, data: bytes) -> msgspec.Struct:
    try:
        return _DECODERS[kind].decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise ParseError(_reason(exc)) from None
    except msgspec.DecodeError:
        raise ParseError("malformed JSON") from None


def _generic(data: bytes) -> tuple[str, msgspec.Struct]:
    """Slow path: decode to a dict, find the message kind, convert."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ParseError("malformed JSON") from None
    if not isinstance(doc, dict):
        raise ParseError("not a JSON object")
    if "stream" in doc and "data" in doc:
        inner = doc["data"]
        kind = _stream_kind(str(doc["stream"]))
        if kind is None and isinstance(inner, dict):
            kind = inner.get("e")
        doc = inner
        if not isinstance(doc, dict):
            raise ParseError("not a JSON object")
    else:
        kind = doc.get("e")
        if kind is None and {"u", "s", "b", "a"} <= doc.keys():
            kind = "bookTicker"
    if kind not in _TYPES:
        raise ParseError(f"unknown event type {kind!r}" if kind else "unknown message type")
    try:
        return kind, msgspec.convert(doc, _TYPES[kind], strict=False)
    except msgspec.ValidationError as exc:
        raise ParseError(_reason(exc)) from None


def parse_message(data: bytes, recv_us: int | None = None) -> Record:
    """Parse one raw websocket message (bare or combined-stream wrapped) into a record.

    ``recv_us`` is the local receive time; when ``None`` (replays of files without receive
    times) the venue's event time is used, so replaying the same file twice yields the same
    rows (book tickers, which carry no time, get the replay time). Raises
    :class:`ParseError`.
    """
    kind = _sniff(data)
    msg: msgspec.Struct
    if kind is not None and not data.lstrip().startswith(b'{"stream"'):
        msg = _decode(kind, data)
    elif data.lstrip().startswith(b'{"stream"'):
        try:
            wrapped = _WRAPPED.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            kind, msg = _generic(data)
        else:
            inner = bytes(wrapped.data)
            kind = _stream_kind(wrapped.stream) or _sniff(inner)
            if kind is None:
                kind, msg = _generic(inner)
            else:
                msg = _decode(kind, inner)
    else:
        kind, msg = _generic(data)
    return to_record(msg, recv_us)


def to_record(msg: msgspec.Struct, recv_us: int | None) -> Record:
    """Normalise a decoded venue message and check it; raise ParseError when invalid."""
    if isinstance(msg, _Trade):
        _positive("price", msg.p)
        _non_negative("qty", msg.q)
        return Trade(
            exchange=EXCHANGE, symbol=msg.s, trade_id=msg.t, price=msg.p, qty=msg.q,
            buyer_is_maker=msg.m, ts_event=msg.T * 1000,
            ts_recv=recv_us if recv_us is not None else msg.E * 1000,
        )
    if isinstance(msg, _AggTrade):
        _positive("price", msg.p)
        _non_negative("qty", msg.q)
        return AggTrade(
            exchange=EXCHANGE, symbol=msg.s, agg_id=msg.a, price=msg.p, qty=msg.q,
            first_trade_id=msg.f, last_trade_id=msg.l, buyer_is_maker=msg.m,
            ts_event=msg.T * 1000, ts_recv=recv_us if recv_us is not None else msg.E * 1000,
        )
    if isinstance(msg, _BookTicker):
        _positive("bid_price", msg.b)
        _non_negative("bid_qty", msg.B)
        _positive("ask_price", msg.a)
        _non_negative("ask_qty", msg.A)
        # The spot book ticker carries no time at all: without a recorded receive time the
        # replay time is the best we know (the key, update_id, keeps replays idempotent).
        return Quote(
            exchange=EXCHANGE, symbol=msg.s, update_id=msg.u, bid_price=msg.b, bid_qty=msg.B,
            ask_price=msg.a, ask_qty=msg.A, ts_event=None,
            ts_recv=recv_us if recv_us is not None else time.time_ns() // 1000,
        )
    if isinstance(msg, _Depth):
        for price, qty in (*msg.b, *msg.a):
            _positive("price", price)
            _non_negative("qty", qty)
        return DepthUpdate(
            exchange=EXCHANGE, symbol=msg.s, first_update_id=msg.U, final_update_id=msg.u,
            bid_prices=[p for p, _ in msg.b], bid_qtys=[q for _, q in msg.b],
            ask_prices=[p for p, _ in msg.a], ask_qtys=[q for _, q in msg.a],
            ts_event=msg.E * 1000, ts_recv=recv_us if recv_us is not None else msg.E * 1000,
        )
    raise ParseError(f"unsupported message {type(msg).__name__}")
