"""Typed market-data records, their natural keys and their validation rules.

Each record kind is declared once, as a msgspec Struct whose fields carry their column
declaration in ``Annotated`` metadata (:class:`Trait`: the field's rules, whether it is part
of the natural key, ...). :data:`KINDS` is derived from those declarations when this module is
imported, and it is the single source of truth the codec, the stores and the writer read: a
kind's table name, column order (the field order), column types, nullability, natural key (the
key fields, in field order) and per-field and per-element rules. Column types are plain names
(:data:`ColumnType`); the Arrow schema is derived from them on first use, so a process that
only parses and frames records (the replay producer) never imports Arrow.

How a field declares its column:

* the Python type gives the column type: ``str`` text, ``int`` 64-bit integer, ``float``
  double, ``bool`` boolean, ``list[float]`` a list of doubles (book levels); ``X | None``
  makes the column nullable, and every column that is not nullable gets the rule
  ``required`` first;
* :data:`TIMESTAMP` makes an ``int`` a timestamp column and checks it against the time
  window; :data:`NAME`, :data:`TEXT`, :data:`ID`, :data:`POSITIVE`, :data:`NON_NEGATIVE` add
  the rule of that name (:mod:`tickvault.core.rules`), :data:`EACH_POSITIVE` and
  :data:`EACH_NON_NEGATIVE` check every element of a list;
* :data:`KEY` puts the field in the natural key;
* :data:`ADDED` marks a column added after frames of the kind were first written: a frame
  without it means the field's default.

Timestamps are integers: microseconds since the Unix epoch, UTC. Stores turn them into
timestamp columns with microsecond precision.
"""

# No ``from __future__ import annotations`` here: the fields' annotations are built once, with
# their classes, instead of being parsed back from strings when KINDS is derived at import.
import functools
import types
import typing
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Literal, NamedTuple

import msgspec

from tickvault.core.errors import RecordError
from tickvault.core.rules import HISTORY, Bounds, Rule, check_value

if TYPE_CHECKING:
    import pyarrow as pa

ColumnType = Literal["str", "i64", "f64", "bool", "ts", "f64_list"]
"""A column's type: text, 64-bit integer, double, boolean, timestamp (integer µs since the
epoch, UTC) or a list of doubles (book levels)."""


@dataclass(frozen=True)
class Trait:
    """One part of a field's column declaration, attached as ``Annotated`` metadata.

    A field may carry several; their rules are applied in the order written.
    """

    rules: tuple[Rule, ...] = ()
    each: Rule | None = None
    """The rule every element of a list column must pass."""
    timestamp: bool = False
    key: bool = False
    added: bool = False

    def merge(self, other: "Trait") -> "Trait":
        """Both traits in one: the rules of ``self`` first, then those of ``other``."""
        return Trait(
            rules=self.rules + other.rules,
            each=self.each if other.each is None else other.each,
            timestamp=self.timestamp or other.timestamp,
            key=self.key or other.key,
            added=self.added or other.added,
        )


NAME = Trait(rules=("name",))
TEXT = Trait(rules=("text",))
ID = Trait(rules=("id",))
POSITIVE = Trait(rules=("positive",))
NON_NEGATIVE = Trait(rules=("non_negative",))
TIMESTAMP = Trait(rules=("timestamp",), timestamp=True)
EACH_POSITIVE = Trait(each="positive")
EACH_NON_NEGATIVE = Trait(each="non_negative")
KEY = Trait(key=True)
ADDED = Trait(added=True)


class Trade(msgspec.Struct, frozen=True, kw_only=True):
    """One exchange trade; key ``(exchange, symbol, trade_id)``."""

    exchange: Annotated[str, NAME, KEY]
    symbol: Annotated[str, NAME, KEY]
    trade_id: Annotated[int, ID, KEY]
    price: Annotated[float, POSITIVE]
    qty: Annotated[float, POSITIVE]
    buyer_is_maker: bool
    ts_event: Annotated[int, TIMESTAMP]
    ts_recv: Annotated[int, TIMESTAMP]


class AggTrade(msgspec.Struct, frozen=True, kw_only=True):
    """A Binance aggregate trade; key ``(exchange, symbol, agg_id)`` (its own id space)."""

    exchange: Annotated[str, NAME, KEY]
    symbol: Annotated[str, NAME, KEY]
    agg_id: Annotated[int, ID, KEY]
    price: Annotated[float, POSITIVE]
    qty: Annotated[float, POSITIVE]
    first_trade_id: Annotated[int, ID]
    last_trade_id: Annotated[int, ID]
    buyer_is_maker: bool
    ts_event: Annotated[int, TIMESTAMP]
    ts_recv: Annotated[int, TIMESTAMP]


class Quote(msgspec.Struct, frozen=True, kw_only=True):
    """Best bid/ask (book ticker); key ``(exchange, symbol, update_id)``.

    ``ts_event`` is ``None`` when the venue sends no event time (Binance spot bookTicker).
    """

    exchange: Annotated[str, NAME, KEY]
    symbol: Annotated[str, NAME, KEY]
    update_id: Annotated[int, ID, KEY]
    bid_price: Annotated[float, POSITIVE]
    bid_qty: Annotated[float, NON_NEGATIVE]
    ask_price: Annotated[float, POSITIVE]
    ask_qty: Annotated[float, NON_NEGATIVE]
    ts_event: Annotated[int | None, TIMESTAMP]
    ts_recv: Annotated[int, TIMESTAMP]


class Bar(msgspec.Struct, frozen=True, kw_only=True):
    """An OHLCV bar; key ``(source, symbol, timeframe, ts_open)``.

    ``volume``, ``vwap`` and ``trade_count`` are ``None`` when the venue reports none (index
    bars carry prices only): "no volume reported" is never stored as "nothing traded".
    ``adjusted`` is the price basis of the download (split-adjusted or not); one series
    ``(source, symbol, timeframe)`` holds one basis (see ``docs/collectors.md``). Every bar
    downloaded before the flag was stored asked for adjusted prices, hence its default.
    """

    source: Annotated[str, NAME, KEY]
    symbol: Annotated[str, NAME, KEY]
    timeframe: Annotated[str, NAME, KEY]
    ts_open: Annotated[int, TIMESTAMP, KEY]
    open: Annotated[float, POSITIVE]
    high: Annotated[float, POSITIVE]
    low: Annotated[float, POSITIVE]
    close: Annotated[float, POSITIVE]
    volume: Annotated[float | None, NON_NEGATIVE]
    vwap: Annotated[float | None, POSITIVE] = None
    trade_count: Annotated[int | None, NON_NEGATIVE] = None
    adjusted: Annotated[bool, ADDED] = True


class DepthUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """A diff-depth update; key ``(exchange, symbol, final_update_id)``.

    Levels are parallel lists; a quantity of 0 removes the level.
    """

    exchange: Annotated[str, NAME, KEY]
    symbol: Annotated[str, NAME, KEY]
    first_update_id: Annotated[int, ID]
    final_update_id: Annotated[int, ID, KEY]
    bid_prices: Annotated[list[float], EACH_POSITIVE]
    bid_qtys: Annotated[list[float], EACH_NON_NEGATIVE]
    ask_prices: Annotated[list[float], EACH_POSITIVE]
    ask_qtys: Annotated[list[float], EACH_NON_NEGATIVE]
    ts_event: Annotated[int, TIMESTAMP]
    ts_recv: Annotated[int, TIMESTAMP]


class Gap(msgspec.Struct, frozen=True, kw_only=True):
    """A status change of a gap in a venue's id sequence; key
    ``(exchange, symbol, channel, from_id, status)``.

    Stores only ever insert, so a gap's life is a series of rows: one ``open`` row when it
    is detected, then one final row: ``backfilled``, ``unrecoverable``, ``resynced`` (a
    depth book rebuilt from a snapshot) or ``missing`` (a range the venue has no data
    for). Its current state is its row with the latest ``status_at``. ``from_id`` and
    ``to_id`` are inclusive; for day-based sources they are ``YYYYMMDD`` numbers.
    """

    exchange: Annotated[str, NAME, KEY]
    symbol: Annotated[str, NAME, KEY]
    channel: Annotated[str, NAME, KEY]
    from_id: Annotated[int, ID, KEY]
    to_id: Annotated[int, ID]
    detected_at: Annotated[int, TIMESTAMP]
    status: Annotated[str, NAME, KEY]
    reason: Annotated[str, TEXT]
    status_at: Annotated[int, TIMESTAMP]


class BookSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A full order book at ``last_update_id``; key ``(exchange, symbol, last_update_id)``.

    ``origin`` is ``rest`` (the venue's snapshot) or ``local`` (the collector's own book
    after applying every diff up to ``last_update_id``). Levels are parallel lists.
    """

    exchange: Annotated[str, NAME, KEY]
    symbol: Annotated[str, NAME, KEY]
    last_update_id: Annotated[int, ID, KEY]
    origin: Annotated[str, NAME]
    bid_prices: Annotated[list[float], EACH_POSITIVE]
    bid_qtys: Annotated[list[float], EACH_NON_NEGATIVE]
    ask_prices: Annotated[list[float], EACH_POSITIVE]
    ask_qtys: Annotated[list[float], EACH_NON_NEGATIVE]
    ts_recv: Annotated[int, TIMESTAMP]


Record = Trade | AggTrade | Quote | Bar | DepthUpdate | Gap | BookSnapshot


class ColumnSpec(NamedTuple):
    name: str
    type: ColumnType
    nullable: bool


def arrow_type(column_type: ColumnType) -> "pa.DataType":
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
    """Everything the pipeline needs to know about one record kind (derived by :func:`declare`)."""

    kind: str
    record_type: type[msgspec.Struct]
    table: str
    fields: tuple[ColumnSpec, ...]
    key: tuple[str, ...]
    rules: dict[str, tuple[Rule, ...]]
    list_rules: dict[str, Rule] = field(default_factory=dict)
    added_columns: dict[str, object] = field(default_factory=dict)
    """Columns added after frames of this kind were first written, with the value a frame
    written before then means (the codec fills them in, so old frames on a bus or in a
    spool still decode after an upgrade)."""

    @cached_property
    def schema(self) -> "pa.Schema":
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


_PYTHON_COLUMN_TYPES: dict[object, ColumnType] = {
    str: "str",
    int: "i64",
    float: "f64",
    bool: "bool",
    list[float]: "f64_list",
}


def _column_type(annotation: object) -> tuple[ColumnType, bool]:
    """The column type of a field's Python type (metadata stripped) and whether it is nullable."""
    nullable = False
    if isinstance(annotation, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(members) == 1
        annotation = members[0] if nullable else annotation
    try:
        return _PYTHON_COLUMN_TYPES[annotation], nullable
    except KeyError:
        raise TypeError(f"no column type for a field of type {annotation!r}") from None


def _declared(kind: str, name: str, hint: object, default: object) -> tuple[ColumnSpec, Trait]:
    """One Struct field's column and its traits merged into one, its rules complete."""
    annotation, trait = hint, Trait()
    if typing.get_origin(annotation) is Annotated:
        annotation, *metadata = typing.get_args(annotation)
        trait = functools.reduce(Trait.merge, [m for m in metadata if isinstance(m, Trait)], trait)
    column_type, nullable = _column_type(annotation)
    if trait.timestamp:
        if column_type != "i64":
            raise TypeError(f"{kind}.{name}: a timestamp is an int")
        column_type = "ts"
    if trait.added and default is msgspec.NODEFAULT:
        raise TypeError(f"{kind}.{name}: an added column needs a default")
    rules: tuple[Rule, ...] = trait.rules if nullable else ("required", *trait.rules)
    return ColumnSpec(name, column_type, nullable), replace(trait, rules=rules)


def declare(kind: str, record_type: type[msgspec.Struct], table: str) -> KindSpec:
    """Derive the :class:`KindSpec` of ``kind`` from its Struct's annotated fields.

    Runs once per kind, at import; nothing here is on a per-record path.
    """
    hints = typing.get_type_hints(record_type, include_extras=True)
    names = record_type.__struct_fields__
    defaults = dict(zip(reversed(names), reversed(record_type.__struct_defaults__), strict=False))
    columns: list[ColumnSpec] = []
    key: list[str] = []
    rules: dict[str, tuple[Rule, ...]] = {}
    list_rules: dict[str, Rule] = {}
    added: dict[str, object] = {}
    for name in names:
        default = defaults.get(name, msgspec.NODEFAULT)
        column, trait = _declared(kind, name, hints[name], default)
        columns.append(column)
        if trait.rules:
            rules[name] = trait.rules
        if trait.each is not None:
            list_rules[name] = trait.each
        if trait.key:
            key.append(name)
        if trait.added:
            added[name] = default
    return KindSpec(kind, record_type, table, tuple(columns), tuple(key), rules, list_rules, added)


KINDS: dict[str, KindSpec] = {
    s.kind: s
    for s in (
        declare("trade", Trade, "trades"),
        declare("agg_trade", AggTrade, "agg_trades"),
        declare("quote", Quote, "quotes"),
        declare("bar", Bar, "bars"),
        declare("depth", DepthUpdate, "depth_updates"),
        declare("gap", Gap, "gaps"),
        declare("book_snapshot", BookSnapshot, "book_snapshots"),
    )
}

KIND_OF_TYPE: dict[type[msgspec.Struct], str] = {s.record_type: s.kind for s in KINDS.values()}


def spec_for(kind: str) -> KindSpec:
    """Return the spec of ``kind`` or raise :class:`RecordError` naming the known kinds."""
    try:
        return KINDS[kind]
    except KeyError:
        raise RecordError(f"unknown record kind {kind!r} (known: {', '.join(KINDS)})") from None


def kind_of(record: Record) -> str:
    return KIND_OF_TYPE[type(record)]


def natural_key(record: Record) -> tuple[object, ...]:
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
