"""Typed market-data records, their natural keys and their validation rules.

Every record kind has a :class:`KindSpec` that is the single source of truth for its table
name, column order, Arrow schema, natural key and validation rules; the codec, the stores
and the writer all read it from :data:`KINDS`.

Timestamps are integers: microseconds since the Unix epoch, UTC. Stores turn them into
timestamp columns with microsecond precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pyarrow as pa

from tickvault.errors import RecordError
from tickvault.rules import HISTORY, Bounds, Rule, check_value


class Trade(msgspec.Struct, frozen=True, kw_only=True):
    """One exchange trade; key ``(exchange, symbol, trade_id)``."""

    exchange: str
    symbol: str
    trade_id: int
    price: float
    qty: float
    buyer_is_maker: bool
    ts_event: int
    ts_recv: int


class AggTrade(msgspec.Struct, frozen=True, kw_only=True):
    """A Binance aggregate trade; key ``(exchange, symbol, agg_id)`` (its own id space)."""

    exchange: str
    symbol: str
    agg_id: int
    price: float
    qty: float
    first_trade_id: int
    last_trade_id: int
    buyer_is_maker: bool
    ts_event: int
    ts_recv: int


class Quote(msgspec.Struct, frozen=True, kw_only=True):
    """Best bid/ask (book ticker); key ``(exchange, symbol, update_id)``.

    ``ts_event`` is ``None`` when the venue sends no event time (Binance spot bookTicker).
    """

    exchange: str
    symbol: str
    update_id: int
    bid_price: float
    bid_qty: float
    ask_price: float
    ask_qty: float
    ts_event: int | None
    ts_recv: int


class Bar(msgspec.Struct, frozen=True, kw_only=True):
    """An OHLCV bar; key ``(source, symbol, timeframe, ts_open)``.

    ``volume``, ``vwap`` and ``trade_count`` are ``None`` when the venue reports none (index
    bars carry prices only): "no volume reported" is never stored as "nothing traded".
    ``adjusted`` is the price basis of the download (split-adjusted or not); one series
    ``(source, symbol, timeframe)`` holds one basis (see ``docs/collectors.md``).
    """

    source: str
    symbol: str
    timeframe: str
    ts_open: int
    open: float
    high: float
    low: float
    close: float
    volume: float | None
    vwap: float | None = None
    trade_count: int | None = None
    adjusted: bool = True


class DepthUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """A diff-depth update; key ``(exchange, symbol, final_update_id)``.

    Levels are parallel lists; a quantity of 0 removes the level.
    """

    exchange: str
    symbol: str
    first_update_id: int
    final_update_id: int
    bid_prices: list[float]
    bid_qtys: list[float]
    ask_prices: list[float]
    ask_qtys: list[float]
    ts_event: int
    ts_recv: int


class Gap(msgspec.Struct, frozen=True, kw_only=True):
    """A status change of a gap in a venue's id sequence; key
    ``(exchange, symbol, channel, from_id, status)``.

    Stores only ever insert, so a gap's life is a series of rows: one ``open`` row when it
    is detected, then one final row: ``backfilled``, ``unrecoverable``, ``resynced`` (a
    depth book rebuilt from a snapshot) or ``missing`` (a range the venue has no data
    for). Its current state is its row with the latest ``status_at``. ``from_id`` and
    ``to_id`` are inclusive; for day-based sources they are ``YYYYMMDD`` numbers.
    """

    exchange: str
    symbol: str
    channel: str
    from_id: int
    to_id: int
    detected_at: int
    status: str
    reason: str
    status_at: int


class BookSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A full order book at ``last_update_id``; key ``(exchange, symbol, last_update_id)``.

    ``origin`` is ``rest`` (the venue's snapshot) or ``local`` (the collector's own book
    after applying every diff up to ``last_update_id``). Levels are parallel lists.
    """

    exchange: str
    symbol: str
    last_update_id: int
    origin: str
    bid_prices: list[float]
    bid_qtys: list[float]
    ask_prices: list[float]
    ask_qtys: list[float]
    ts_recv: int


Record = Trade | AggTrade | Quote | Bar | DepthUpdate | Gap | BookSnapshot

_TS = pa.timestamp("us")
_LIST = pa.list_(pa.float64())


@dataclass(frozen=True)
class KindSpec:
    """Everything the pipeline needs to know about one record kind."""

    kind: str
    record_type: type[msgspec.Struct]
    table: str
    schema: pa.Schema
    key: tuple[str, ...]
    rules: dict[str, tuple[Rule, ...]]
    list_rules: dict[str, Rule] = field(default_factory=dict)
    added_columns: dict[str, Any] = field(default_factory=dict)
    """Columns added after frames of this kind were first written, with the value a frame
    written before then means (the codec fills them in, so old frames on a bus or in a
    spool still decode after an upgrade)."""

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)

    @property
    def timestamp_columns(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema if f.type == _TS)


def _spec(
    kind: str,
    record_type: type[msgspec.Struct],
    table: str,
    fields: list[tuple[str, pa.DataType, bool]],
    key: tuple[str, ...],
    rules: dict[str, tuple[Rule, ...]],
    list_rules: dict[str, Rule] | None = None,
    added_columns: dict[str, Any] | None = None,
) -> KindSpec:
    schema = pa.schema([pa.field(n, t, nullable=nullable) for n, t, nullable in fields])
    assert schema.names == list(record_type.__struct_fields__), kind
    return KindSpec(
        kind, record_type, table, schema, key, rules, list_rules or {}, added_columns or {}
    )


_PRICE: tuple[Rule, ...] = ("required", "positive")
_QTY: tuple[Rule, ...] = ("required", "positive")
_SIZE: tuple[Rule, ...] = ("required", "non_negative")
_NAME: tuple[Rule, ...] = ("required", "name")
_TEXT: tuple[Rule, ...] = ("required", "text")
_ID: tuple[Rule, ...] = ("required", "id")
_TIME: tuple[Rule, ...] = ("required", "timestamp")

KINDS: dict[str, KindSpec] = {
    s.kind: s
    for s in (
        _spec(
            "trade",
            Trade,
            "trades",
            [
                ("exchange", pa.string(), False),
                ("symbol", pa.string(), False),
                ("trade_id", pa.int64(), False),
                ("price", pa.float64(), False),
                ("qty", pa.float64(), False),
                ("buyer_is_maker", pa.bool_(), False),
                ("ts_event", _TS, False),
                ("ts_recv", _TS, False),
            ],
            ("exchange", "symbol", "trade_id"),
            {
                "exchange": _NAME,
                "symbol": _NAME,
                "trade_id": _ID,
                "price": _PRICE,
                "qty": _QTY,
                "buyer_is_maker": ("required",),
                "ts_event": _TIME,
                "ts_recv": _TIME,
            },
        ),
        _spec(
            "agg_trade",
            AggTrade,
            "agg_trades",
            [
                ("exchange", pa.string(), False),
                ("symbol", pa.string(), False),
                ("agg_id", pa.int64(), False),
                ("price", pa.float64(), False),
                ("qty", pa.float64(), False),
                ("first_trade_id", pa.int64(), False),
                ("last_trade_id", pa.int64(), False),
                ("buyer_is_maker", pa.bool_(), False),
                ("ts_event", _TS, False),
                ("ts_recv", _TS, False),
            ],
            ("exchange", "symbol", "agg_id"),
            {
                "exchange": _NAME,
                "symbol": _NAME,
                "agg_id": _ID,
                "price": _PRICE,
                "qty": _QTY,
                "first_trade_id": _ID,
                "last_trade_id": _ID,
                "buyer_is_maker": ("required",),
                "ts_event": _TIME,
                "ts_recv": _TIME,
            },
        ),
        _spec(
            "quote",
            Quote,
            "quotes",
            [
                ("exchange", pa.string(), False),
                ("symbol", pa.string(), False),
                ("update_id", pa.int64(), False),
                ("bid_price", pa.float64(), False),
                ("bid_qty", pa.float64(), False),
                ("ask_price", pa.float64(), False),
                ("ask_qty", pa.float64(), False),
                ("ts_event", _TS, True),
                ("ts_recv", _TS, False),
            ],
            ("exchange", "symbol", "update_id"),
            {
                "exchange": _NAME,
                "symbol": _NAME,
                "update_id": _ID,
                "bid_price": _PRICE,
                "bid_qty": _SIZE,
                "ask_price": _PRICE,
                "ask_qty": _SIZE,
                "ts_event": ("timestamp",),
                "ts_recv": _TIME,
            },
        ),
        _spec(
            "bar",
            Bar,
            "bars",
            [
                ("source", pa.string(), False),
                ("symbol", pa.string(), False),
                ("timeframe", pa.string(), False),
                ("ts_open", _TS, False),
                ("open", pa.float64(), False),
                ("high", pa.float64(), False),
                ("low", pa.float64(), False),
                ("close", pa.float64(), False),
                ("volume", pa.float64(), True),
                ("vwap", pa.float64(), True),
                ("trade_count", pa.int64(), True),
                ("adjusted", pa.bool_(), False),
            ],
            ("source", "symbol", "timeframe", "ts_open"),
            {
                "source": _NAME,
                "symbol": _NAME,
                "timeframe": _NAME,
                "ts_open": _TIME,
                "open": _PRICE,
                "high": _PRICE,
                "low": _PRICE,
                "close": _PRICE,
                "volume": ("non_negative",),
                "vwap": ("positive",),
                "trade_count": ("non_negative",),
                "adjusted": ("required",),
            },
            # Every bar downloaded before the flag was stored asked for adjusted prices.
            added_columns={"adjusted": True},
        ),
        _spec(
            "depth",
            DepthUpdate,
            "depth_updates",
            [
                ("exchange", pa.string(), False),
                ("symbol", pa.string(), False),
                ("first_update_id", pa.int64(), False),
                ("final_update_id", pa.int64(), False),
                ("bid_prices", _LIST, False),
                ("bid_qtys", _LIST, False),
                ("ask_prices", _LIST, False),
                ("ask_qtys", _LIST, False),
                ("ts_event", _TS, False),
                ("ts_recv", _TS, False),
            ],
            ("exchange", "symbol", "final_update_id"),
            {
                "exchange": _NAME,
                "symbol": _NAME,
                "first_update_id": _ID,
                "final_update_id": _ID,
                "bid_prices": ("required",),
                "bid_qtys": ("required",),
                "ask_prices": ("required",),
                "ask_qtys": ("required",),
                "ts_event": _TIME,
                "ts_recv": _TIME,
            },
            {
                "bid_prices": "positive",
                "bid_qtys": "non_negative",
                "ask_prices": "positive",
                "ask_qtys": "non_negative",
            },
        ),
    )
}

KINDS["gap"] = _spec(
    "gap",
    Gap,
    "gaps",
    [
        ("exchange", pa.string(), False),
        ("symbol", pa.string(), False),
        ("channel", pa.string(), False),
        ("from_id", pa.int64(), False),
        ("to_id", pa.int64(), False),
        ("detected_at", _TS, False),
        ("status", pa.string(), False),
        ("reason", pa.string(), False),
        ("status_at", _TS, False),
    ],
    ("exchange", "symbol", "channel", "from_id", "status"),
    {
        "exchange": _NAME,
        "symbol": _NAME,
        "channel": _NAME,
        "from_id": _ID,
        "to_id": _ID,
        "detected_at": _TIME,
        "status": _NAME,
        "reason": _TEXT,
        "status_at": _TIME,
    },
)
KINDS["book_snapshot"] = _spec(
    "book_snapshot",
    BookSnapshot,
    "book_snapshots",
    [
        ("exchange", pa.string(), False),
        ("symbol", pa.string(), False),
        ("last_update_id", pa.int64(), False),
        ("origin", pa.string(), False),
        ("bid_prices", _LIST, False),
        ("bid_qtys", _LIST, False),
        ("ask_prices", _LIST, False),
        ("ask_qtys", _LIST, False),
        ("ts_recv", _TS, False),
    ],
    ("exchange", "symbol", "last_update_id"),
    {
        "exchange": _NAME,
        "symbol": _NAME,
        "last_update_id": _ID,
        "origin": _NAME,
        "bid_prices": ("required",),
        "bid_qtys": ("required",),
        "ask_prices": ("required",),
        "ask_qtys": ("required",),
        "ts_recv": _TIME,
    },
    {
        "bid_prices": "positive",
        "bid_qtys": "non_negative",
        "ask_prices": "positive",
        "ask_qtys": "non_negative",
    },
)

KIND_OF_TYPE: dict[type[msgspec.Struct], str] = {s.record_type: s.kind for s in KINDS.values()}


def spec_for(kind: str) -> KindSpec:
    """Return the spec of ``kind`` or raise :class:`RecordError` naming the known kinds."""
    try:
        return KINDS[kind]
    except KeyError:
        raise RecordError(f"unknown record kind {kind!r} (known: {', '.join(KINDS)})") from None


def kind_of(record: Record) -> str:
    return KIND_OF_TYPE[type(record)]


def natural_key(record: Record) -> tuple[Any, ...]:
    spec = KINDS[kind_of(record)]
    return tuple(getattr(record, k) for k in spec.key)


def validate(record: Record, bounds: Bounds | None = None) -> Record:
    """Check ``record`` against its kind's rules; return it unchanged or raise RecordError.

    The reasons are the same short texts as the writer's vectorised validation produces
    (``non-finite price``, ``negative qty``, ``missing symbol``...; see
    :mod:`tickvault.rules`), so dead letters group well. ``bounds`` is the time window's
    ``(lowest, highest)`` microseconds (default: :data:`tickvault.rules.HISTORY` now).
    """
    spec = KINDS[kind_of(record)]
    if bounds is None:
        bounds = HISTORY.bounds()
    for name, rules in spec.rules.items():
        value = getattr(record, name)
        for rule in rules:
            check_value(name, value, rule, bounds)
    for name, rule in spec.list_rules.items():
        for value in getattr(record, name):
            check_value(name, value, rule, bounds)
    if isinstance(record, DepthUpdate) and (
        len(record.bid_prices) != len(record.bid_qtys)
        or len(record.ask_prices) != len(record.ask_qtys)
    ):
        raise RecordError("depth level lists differ in length")
    if isinstance(record, Bar) and record.high < record.low:
        raise RecordError("high below low")
    return record


RecordFactory = Callable[..., Record]
