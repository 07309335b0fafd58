"""The record kinds, pinned: tables, columns (type, nullability), natural keys and rules.

Every store, the codec and the writer derive their tables, frames and validation from
:data:`tickvault.core.records.KINDS`; a change there changes the public tables. This file
states what ``KINDS`` was when each kind came to be declared once (one annotated field per
column), so rewriting the declaration cannot silently move a column, drop a rule or change a
key. Each ``columns`` line is ``name type[?] rules... [each:rule]``: ``?`` marks a nullable
column and ``each:`` the rule applied to every element of a list column.
"""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

import msgspec
import pyarrow as pa
import pytest

from tickvault.core.records import (
    ADDED,
    EACH_POSITIVE,
    ID,
    KEY,
    KINDS,
    NAME,
    TIMESTAMP,
    AggTrade,
    Bar,
    BookSnapshot,
    DepthUpdate,
    Gap,
    Quote,
    Trade,
    declare,
    natural_key,
)


class Pinned(NamedTuple):
    table: str
    record_type: type[msgspec.Struct]
    key: tuple[str, ...]
    added_columns: dict[str, Any]
    columns: str


PINNED: dict[str, Pinned] = {
    "trade": Pinned(
        table="trades",
        record_type=Trade,
        key=("exchange", "symbol", "trade_id"),
        added_columns={},
        columns="""
            exchange        str       required name
            symbol          str       required name
            trade_id        i64       required id
            price           f64       required positive
            qty             f64       required positive
            buyer_is_maker  bool      required
            ts_event        ts        required timestamp
            ts_recv         ts        required timestamp
        """,
    ),
    "agg_trade": Pinned(
        table="agg_trades",
        record_type=AggTrade,
        key=("exchange", "symbol", "agg_id"),
        added_columns={},
        columns="""
            exchange        str       required name
            symbol          str       required name
            agg_id          i64       required id
            price           f64       required positive
            qty             f64       required positive
            first_trade_id  i64       required id
            last_trade_id   i64       required id
            buyer_is_maker  bool      required
            ts_event        ts        required timestamp
            ts_recv         ts        required timestamp
        """,
    ),
    "quote": Pinned(
        table="quotes",
        record_type=Quote,
        key=("exchange", "symbol", "update_id"),
        added_columns={},
        columns="""
            exchange        str       required name
            symbol          str       required name
            update_id       i64       required id
            bid_price       f64       required positive
            bid_qty         f64       required non_negative
            ask_price       f64       required positive
            ask_qty         f64       required non_negative
            ts_event        ts?       timestamp
            ts_recv         ts        required timestamp
        """,
    ),
    "bar": Pinned(
        table="bars",
        record_type=Bar,
        key=("source", "symbol", "timeframe", "ts_open"),
        added_columns={"adjusted": True},
        columns="""
            source          str       required name
            symbol          str       required name
            timeframe       str       required name
            ts_open         ts        required timestamp
            open            f64       required positive
            high            f64       required positive
            low             f64       required positive
            close           f64       required positive
            volume          f64?      non_negative
            vwap            f64?      positive
            trade_count     i64?      non_negative
            adjusted        bool      required
        """,
    ),
    "depth": Pinned(
        table="depth_updates",
        record_type=DepthUpdate,
        key=("exchange", "symbol", "final_update_id"),
        added_columns={},
        columns="""
            exchange        str       required name
            symbol          str       required name
            first_update_id i64       required id
            final_update_id i64       required id
            bid_prices      f64_list  required each:positive
            bid_qtys        f64_list  required each:non_negative
            ask_prices      f64_list  required each:positive
            ask_qtys        f64_list  required each:non_negative
            ts_event        ts        required timestamp
            ts_recv         ts        required timestamp
        """,
    ),
    "gap": Pinned(
        table="gaps",
        record_type=Gap,
        key=("exchange", "symbol", "channel", "from_id", "status"),
        added_columns={},
        columns="""
            exchange        str       required name
            symbol          str       required name
            channel         str       required name
            from_id         i64       required id
            to_id           i64       required id
            detected_at     ts        required timestamp
            status          str       required name
            reason          str       required text
            status_at       ts        required timestamp
        """,
    ),
    "book_snapshot": Pinned(
        table="book_snapshots",
        record_type=BookSnapshot,
        key=("exchange", "symbol", "last_update_id"),
        added_columns={},
        columns="""
            exchange        str       required name
            symbol          str       required name
            last_update_id  i64       required id
            origin          str       required name
            bid_prices      f64_list  required each:positive
            bid_qtys        f64_list  required each:non_negative
            ask_prices      f64_list  required each:positive
            ask_qtys        f64_list  required each:non_negative
            ts_recv         ts        required timestamp
        """,
    ),
}

ARROW = {
    "str": pa.string(),
    "i64": pa.int64(),
    "f64": pa.float64(),
    "bool": pa.bool_(),
    "ts": pa.timestamp("us"),
    "f64_list": pa.list_(pa.float64()),
}


class Column(NamedTuple):
    name: str
    type: str
    nullable: bool
    rules: tuple[str, ...]
    each: str | None


def parse(columns: str) -> list[Column]:
    out = []
    for line in columns.strip().splitlines():
        name, type_, *rules = line.split()
        each = [r.removeprefix("each:") for r in rules if r.startswith("each:")]
        out.append(
            Column(
                name,
                type_.rstrip("?"),
                type_.endswith("?"),
                tuple(r for r in rules if not r.startswith("each:")),
                each[0] if each else None,
            )
        )
    return out


def test_the_kinds_and_their_order_are_pinned() -> None:
    assert list(KINDS) == list(PINNED)
    for kind, spec in KINDS.items():
        assert spec.kind == kind


def test_every_kind_keeps_its_table_type_key_and_added_columns() -> None:
    for kind, pinned in PINNED.items():
        spec = KINDS[kind]
        assert spec.table == pinned.table, kind
        assert spec.record_type is pinned.record_type, kind
        assert spec.key == pinned.key, kind
        assert spec.added_columns == pinned.added_columns, kind


def test_every_kind_keeps_its_columns_in_order_with_types_and_nullability() -> None:
    for kind, pinned in PINNED.items():
        spec = KINDS[kind]
        expected = parse(pinned.columns)
        assert [tuple(f) for f in spec.fields] == [(c.name, c.type, c.nullable) for c in expected]
        assert spec.columns == tuple(c.name for c in expected)
        assert spec.record_type.__struct_fields__ == spec.columns
        assert spec.timestamp_columns == tuple(c.name for c in expected if c.type == "ts")


def test_every_kind_keeps_its_rules_and_list_rules_in_column_order() -> None:
    for kind, pinned in PINNED.items():
        spec = KINDS[kind]
        expected = parse(pinned.columns)
        assert list(spec.rules.items()) == [(c.name, c.rules) for c in expected if c.rules], kind
        assert list(spec.list_rules.items()) == [
            (c.name, c.each) for c in expected if c.each is not None
        ], kind


def test_the_arrow_schema_is_the_pinned_columns() -> None:
    for kind, pinned in PINNED.items():
        expected = pa.schema(
            [pa.field(c.name, ARROW[c.type], nullable=c.nullable) for c in parse(pinned.columns)]
        )
        assert KINDS[kind].schema.equals(expected), kind


def test_the_natural_key_reads_the_pinned_key_fields() -> None:
    bar = Bar(
        source="polygon",
        symbol="AAPL",
        timeframe="1d",
        ts_open=1_700_000_000_000_000,
        open=1.0,
        high=2.0,
        low=0.5,
        close=1.5,
        volume=None,
    )
    assert natural_key(bar) == ("polygon", "AAPL", "1d", 1_700_000_000_000_000)
    gap = Gap(
        exchange="binance",
        symbol="BTCUSDT",
        channel="trade",
        from_id=10,
        to_id=20,
        detected_at=1,
        status="open",
        reason="sequence jump",
        status_at=2,
    )
    assert natural_key(gap) == ("binance", "BTCUSDT", "trade", 10, "open")
    assert bar.adjusted is True and bar.vwap is None and bar.trade_count is None


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    venue: Annotated[str, NAME, KEY]
    seq: Annotated[int, ID, KEY]
    at: Annotated[int | None, TIMESTAMP]
    levels: Annotated[list[float], EACH_POSITIVE]
    note: str
    flag: Annotated[bool, ADDED] = False


class FloatTimestamp(msgspec.Struct):
    at: Annotated[float, TIMESTAMP]


class AddedWithoutDefault(msgspec.Struct):
    flag: Annotated[bool, ADDED]


class UnknownType(msgspec.Struct):
    size: bytes


def test_a_declaration_derives_columns_key_rules_and_added_columns() -> None:
    spec = declare("sample", Sample, "samples")
    assert (spec.kind, spec.table, spec.record_type) == ("sample", "samples", Sample)
    assert [tuple(f) for f in spec.fields] == [
        ("venue", "str", False),
        ("seq", "i64", False),
        ("at", "ts", True),
        ("levels", "f64_list", False),
        ("note", "str", False),
        ("flag", "bool", False),
    ]
    assert spec.key == ("venue", "seq")
    assert spec.rules == {
        "venue": ("required", "name"),
        "seq": ("required", "id"),
        "at": ("timestamp",),
        "levels": ("required",),
        "note": ("required",),
        "flag": ("required",),
    }
    assert spec.list_rules == {"levels": "positive"}
    assert spec.added_columns == {"flag": False}


@pytest.mark.parametrize(
    ("record_type", "message"),
    [
        (FloatTimestamp, "a timestamp is an int"),
        (AddedWithoutDefault, "an added column needs a default"),
        (UnknownType, "no column type"),
    ],
)
def test_a_declaration_the_columns_cannot_follow_is_refused_at_import(
    record_type: type[msgspec.Struct], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        declare("odd", record_type, "odd")
