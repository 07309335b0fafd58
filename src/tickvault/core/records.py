"""Typed market-data records, their natural keys and their validation rules.

Every record kind has a :class:`KindSpec` that is the single source of truth for its table
name, column order, column types, natural key and validation rules; the codec, the stores
and the writer all read it from :data:`KINDS`. Column types are plain names
(:data:`ColumnType`); the Arrow schema is derived from them on first use, so a process that
only parses and frames records (the replay producer) never imports Arrow.

Timestamps are integers: microseconds since the Unix epoch, UTC. Stores turn them into
timestamp columns with microsecond precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import msgspec

from tickvault.core.errors import RecordError
from tickvault.core.rules import HISTORY, Bounds, Rule, check_value

if TYPE_CHECKING:
    import pyarrow as pa


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

ColumnType = Literal["str", "i64", "f64", "bool", "ts", "f64_list"]
"""A column's type: text, 64-bit integer, double, boolean, timestamp (integer µs since the
epoch, UTC) or a list of doubles (book levels)."""


class ColumnSpec(NamedTuple):
    name: str
    type: ColumnType
    nullable: bool


def arrow_type(column_type: ColumnType) -> pa.DataType:
    """The Arrow type of a column type (imports Arrow)."""
    import pyarrow as pa

    return {
        "str": pa.string(),
        "i64": pa.int64(),
        "f64": pa.float64(),
        "bool": pa.bool_(),
        "ts": pa.timestamp("us"),
        "f64_list": pa.list_(pa.float64()),
    }[column_type]


@dataclass(frozen=True)
class KindSpec:
    """Everything the pipeline needs to know about one record kind."""

    kind: str
    record_type: type[msgspec.Struct]
    table: str
    fields: tuple[ColumnSpec, ...]
    key: tuple[str, ...]
    rules: dict[str, tuple[Rule, ...]]
    list_rules: dict[str, Rule] = field(default_factory=dict)
    added_columns: dict[str, Any] = field(default_factory=dict)
    """Columns added after frames of this kind were first written, with the value a frame
    written before then means (the codec fills them in, so old frames on a bus or in a
    spool still decode after an upgrade)."""

    @cached_property
    def schema(self) -> pa.Schema:
        """The Arrow schema (built on first use; imports Arrow)."""
        import pyarrow as pa

        return pa.schema(
            [pa.field(f.name, arrow_type(f.type), nullable=f.nullable) for f in self.fields]
        )

    @cached_property
    def columns(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @cached_property
    def timestamp_columns(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.type == "ts")


def _spec(
    kind: str,
    record_type: type[msgspec.Struct],
    table: str,
    fields: list[tuple[str, ColumnType, bool]],
    key: tuple[str, ...],
    rules: dict[str, tuple[Rule, ...]],
    list_rules: dict[str, Rule] | None = None,
    added_columns: dict[str, Any] | None = None,
) -> KindSpec:
    columns = tuple(ColumnSpec(*f) for f in fields)
    assert [c.name for c in columns] == list(record_type.__struct_fields__), kind
    return KindSpec(
        kind, record_type, table, columns, key, rules, list_rules or {}, added_columns or {}
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
                ("exchange", "str", False),
                ("symbol", "str", False),
                ("trade_id", "i64", False),
                ("price", "f64", False),
                ("qty", "f64", False),
                ("buyer_is_maker", "bool", False),
                ("ts_event", "ts", False),
                ("ts_recv", "ts", False),
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
                ("exchange", "str", False),
                ("symbol", "str", False),
                ("agg_id", "i64", False),
                ("price", "f64", False),
                ("qty", "f64", False),
                ("first_trade_id", "i64", False),
                ("last_trade_id", "i64", False),
                ("buyer_is_maker", "bool", False),
                ("ts_event", "ts", False),
                ("ts_recv", "ts", False),
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
                ("exchange", "str", False),
                ("symbol", "str", False),
                ("update_id", "i64", False),
                ("bid_price", "f64", False),
                ("bid_qty", "f64", False),
                ("ask_price", "f64", False),
                ("ask_qty", "f64", False),
                ("ts_event", "ts", True),
                ("ts_recv", "ts", False),
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
                ("source", "str", False),
                ("symbol", "str", False),
                ("timeframe", "str", False),
                ("ts_open", "ts", False),
                ("open", "f64", False),
                ("high", "f64", False),
                ("low", "f64", False),
                ("close", "f64", False),
                ("volume", "f64", True),
                ("vwap", "f64", True),
                ("trade_count", "i64", True),
                ("adjusted", "bool", False),
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
                ("exchange", "str", False),
                ("symbol", "str", False),
                ("first_update_id", "i64", False),
                ("final_update_id", "i64", False),
                ("bid_prices", "f64_list", False),
                ("bid_qtys", "f64_list", False),
                ("ask_prices", "f64_list", False),
                ("ask_qtys", "f64_list", False),
                ("ts_event", "ts", False),
                ("ts_recv", "ts", False),
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
        ("exchange", "str", False),
        ("symbol", "str", False),
        ("channel", "str", False),
        ("from_id", "i64", False),
        ("to_id", "i64", False),
        ("detected_at", "ts", False),
        ("status", "str", False),
        ("reason", "str", False),
        ("status_at", "ts", False),
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
        ("exchange", "str", False),
        ("symbol", "str", False),
        ("last_update_id", "i64", False),
        ("origin", "str", False),
        ("bid_prices", "f64_list", False),
        ("bid_qtys", "f64_list", False),
        ("ask_prices", "f64_list", False),
        ("ask_qtys", "f64_list", False),
        ("ts_recv", "ts", False),
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
    :mod:`tickvault.core.rules`), so dead letters group well. ``bounds`` is the time window's
    ``(lowest, highest)`` microseconds (default: :data:`tickvault.core.rules.HISTORY` now).
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
