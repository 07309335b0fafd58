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
from tickvault.records import KINDS, Record

EXCHANGE = "binance"


class ParseError(RecordError):
    """A venue message could not be turned into a valid record."""


class _Trade(msgspec.Struct, tag_field="e", tag="trade"):
    E: int
    s: str
    t: int
    p: float
    q: float
    T: int
    m: bool


class _AggTrade(msgspec.Struct, tag_field="e", tag="aggTrade"):
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


class _Depth(msgspec.Struct, tag_field="e", tag="depthUpdate"):
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
# Events with an "e" field decode in one pass through a union tagged by that field.
_EVENT = msgspec.json.Decoder(_Trade | _AggTrade | _Depth, strict=False)
_MARKERS = (
    (b'"e":"trade"', "trade"),
    (b'"e":"aggTrade"', "aggTrade"),
    (b'"e":"depthUpdate"', "depthUpdate"),
)
_STREAM_SUFFIX = {"trade": "trade", "aggTrade": "aggTrade", "bookTicker": "bookTicker"}


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
        return "depthUpdate"
    return None


def _sniff(data: bytes) -> str | None:
    if b'"e":"trade"' in data:
        return "trade"
    if b'"e":"aggTrade"' in data:
        return "aggTrade"
    if b'"e":"depthUpdate"' in data:
        return "depthUpdate"
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


def parse_values(data: bytes, recv_us: int | None = None) -> tuple[str, tuple[Any, ...]]:
    """Parse one raw websocket message (bare or combined-stream wrapped).

    Returns ``(kind, row)`` with ``row`` in the column order of ``KINDS[kind]``: the hot path
    of the collector and of replay. ``recv_us`` is the local receive time; when ``None``
    (replays of files without receive times) the venue's event time is used, so replaying
    the same file twice yields the same rows (book tickers, which carry no time, get the
    replay time). Raises :class:`ParseError`.
    """
    msg: msgspec.Struct
    if data.startswith(b'{"stream"'):
        try:
            wrapped = _WRAPPED.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            _, msg = _generic(data)
        else:
            inner = bytes(wrapped.data)
            kind = _stream_kind(wrapped.stream) or _sniff(inner)
            msg = _generic(inner)[1] if kind is None else _decode(kind, inner)
    elif data.startswith(b'{"e":'):
        try:
            msg = _EVENT.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            _, msg = _generic(data)  # the slow path finds the precise reason
    else:
        kind = _sniff(data)
        msg = _generic(data)[1] if kind is None else _decode(kind, data)
    return to_values(msg, recv_us)


def parse_message(data: bytes, recv_us: int | None = None) -> Record:
    """Like :func:`parse_values` but returns a typed record (convenient, slower)."""
    kind, row = parse_values(data, recv_us)
    spec = KINDS[kind]
    return spec.record_type(**dict(zip(spec.columns, row, strict=True)))  # type: ignore[return-value]


def to_values(msg: msgspec.Struct, recv_us: int | None) -> tuple[str, tuple[Any, ...]]:
    """Normalise a decoded venue message and check it; raise ParseError when invalid."""
    if type(msg) is _Trade:
        p, q = msg.p, msg.q
        if not 0 < p < _INF:
            raise ParseError(_price_reason("price", p))
        if not 0 <= q < _INF:
            raise ParseError(_size_reason("qty", q))
        return "trade", (
            EXCHANGE,
            msg.s,
            msg.t,
            p,
            q,
            msg.m,
            msg.T * 1000,
            recv_us if recv_us is not None else msg.E * 1000,
        )
    if type(msg) is _BookTicker:
        for name, value in (("bid_price", msg.b), ("ask_price", msg.a)):
            if not 0 < value < _INF:
                raise ParseError(_price_reason(name, value))
        for name, value in (("bid_qty", msg.B), ("ask_qty", msg.A)):
            if not 0 <= value < _INF:
                raise ParseError(_size_reason(name, value))
        # The spot book ticker carries no time at all: without a recorded receive time the
        # replay time is the best we know (the key, update_id, keeps replays idempotent).
        return "quote", (
            EXCHANGE,
            msg.s,
            msg.u,
            msg.b,
            msg.B,
            msg.a,
            msg.A,
            None,
            recv_us if recv_us is not None else time.time_ns() // 1000,
        )
    if type(msg) is _AggTrade:
        p, q = msg.p, msg.q
        if not 0 < p < _INF:
            raise ParseError(_price_reason("price", p))
        if not 0 <= q < _INF:
            raise ParseError(_size_reason("qty", q))
        return "agg_trade", (
            EXCHANGE,
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
    if type(msg) is _Depth:
        for price, qty in (*msg.b, *msg.a):
            if not 0 < price < _INF:
                raise ParseError(_price_reason("price", price))
            if not 0 <= qty < _INF:
                raise ParseError(_size_reason("qty", qty))
        return "depth", (
            EXCHANGE,
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
    raise ParseError(f"unsupported message {type(msg).__name__}")
