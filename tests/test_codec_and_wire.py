"""Frames, record validation and Binance message parsing."""

from __future__ import annotations

import math
from array import array
from typing import Any

import msgspec
import orjson
import pyarrow as pa
import pytest

from tickvault.core.codec import (
    B1,
    F64,
    I64,
    Const,
    Dict,
    FrameBuilder,
    decode_frame,
    encode_frame,
    encode_records,
    split_valid,
    split_valid_many,
)
from tickvault.core.errors import DecodeError, RecordError
from tickvault.core.records import KINDS, Bar, Quote, Trade, natural_key, validate
from tickvault.sources.binance.wire import ParseError, parse_message, parse_values

T0 = 1_700_000_000_000_000  # 2023-11-14, microseconds

TRADE = {
    "e": "trade",
    "E": 1700000000123,
    "s": "BTCUSDT",
    "t": 12345,
    "p": "43000.10",
    "q": "0.0015",
    "T": 1700000000120,
    "m": True,
    "M": True,
}


def test_frame_round_trip_keeps_every_value() -> None:
    records = [
        Trade(
            exchange="binance",
            symbol="BTCUSDT",
            trade_id=i,
            price=1.5 + i,
            qty=0.25,
            buyer_is_maker=bool(i % 2),
            ts_event=T0 + 10 + i,
            ts_recv=T0 + 20 + i,
        )
        for i in range(3)
    ]
    (payload,) = encode_records(records)
    table, rejects = split_valid(decode_frame(payload))
    assert rejects == []
    assert table.column("trade_id").to_pylist() == [0, 1, 2]
    assert table.column("price").to_pylist() == [1.5, 2.5, 3.5]
    assert table.column("buyer_is_maker").to_pylist() == [False, True, False]


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\xc1", "undecodable frame"),
        (
            msgspec.msgpack.encode({"v": 9, "kind": "trade", "cols": {}}),
            "unsupported frame version",
        ),
        (msgspec.msgpack.encode({"v": 1, "kind": "trade", "cols": {"price": [1]}}), "lacks column"),
        (msgspec.msgpack.encode({"v": 1, "kind": "zzz", "cols": {}}), "unknown record kind"),
    ],
)
def test_broken_frames_raise_decode_error(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_frame(payload)


def test_frame_with_mismatched_column_lengths_is_refused() -> None:
    cols: dict[str, Any] = {c: ["x"] for c in KINDS["trade"].columns}
    cols["price"] = [1.0, 2.0]
    with pytest.raises(DecodeError, match="differ in length"):
        decode_frame(encode_frame("trade", cols))


def test_builder_packs_columns_and_keeps_odd_ones_as_lists() -> None:
    b = FrameBuilder("quote")
    b.add_values(["binance", "A", 1, 1.0, 2.0, 1.5, 3.0, None, T0 + 10])
    b.add_values(["binance", "B", 2, 1.0, 2.0, 1.5, 3.0, T0 + 5, T0 + 11])
    frame = decode_frame(b.take())
    assert isinstance(frame.cols["exchange"], Const)
    assert isinstance(frame.cols["symbol"], Dict)
    assert isinstance(frame.cols["bid_price"], F64)
    assert isinstance(frame.cols["update_id"], I64)
    assert frame.cols["ts_event"] == [None, T0 + 5]  # a null keeps the plain form
    table, rejects = split_valid(frame)
    assert rejects == []
    assert table.column("symbol").to_pylist() == ["A", "B"]
    assert table.column("ts_event").cast(pa.int64()).to_pylist() == [None, T0 + 5]


def test_corrupt_packed_columns_are_decode_errors() -> None:
    n = 2
    cols: dict[str, Any] = {
        "exchange": Const("binance", n),
        "symbol": Dict(["A"], array("i", [0, 7]).tobytes()),  # index 7 does not exist
        "trade_id": I64(array("q", [1, 2]).tobytes()),
        "price": F64(array("d", [1.0, 2.0]).tobytes()),
        "qty": F64(array("d", [1.0, 2.0]).tobytes()),
        "buyer_is_maker": B1(bytes([1, 0])),
        "ts_event": I64(array("q", [1, 2]).tobytes()),
        "ts_recv": I64(array("q", [1, 2]).tobytes()),
    }
    with pytest.raises(DecodeError, match="corrupt packed column"):
        split_valid(decode_frame(encode_frame("trade", cols)))
    cols["symbol"] = Const("A", n)
    cols["price"] = F64(b"\x00" * 12)  # 1.5 values
    with pytest.raises(DecodeError):
        split_valid(decode_frame(encode_frame("trade", cols)))


@pytest.mark.parametrize(
    "record, reason",
    [
        (
            Trade(
                exchange="binance",
                symbol="X",
                trade_id=1,
                price=math.inf,
                qty=1,
                buyer_is_maker=True,
                ts_event=T0,
                ts_recv=T0,
            ),
            "non-finite price",
        ),
        (
            Trade(
                exchange="binance",
                symbol="X",
                trade_id=1,
                price=0.0,
                qty=1,
                buyer_is_maker=True,
                ts_event=T0,
                ts_recv=T0,
            ),
            "non-positive price",
        ),
        (
            Quote(
                exchange="binance",
                symbol="X",
                update_id=1,
                bid_price=1,
                bid_qty=-1,
                ask_price=2,
                ask_qty=1,
                ts_event=None,
                ts_recv=T0,
            ),
            "negative bid_qty",
        ),
        (
            Bar(
                source="p",
                symbol="X",
                timeframe="1m",
                ts_open=T0,
                open=1,
                high=1,
                low=2,
                close=1,
                volume=0,
            ),
            "high below low",
        ),
    ],
)
def test_validate_gives_stable_reasons(record: Trade | Quote | Bar, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        validate(record)
    assert info.value.reason == reason


def test_natural_keys() -> None:
    t = Trade(
        exchange="binance",
        symbol="X",
        trade_id=7,
        price=1,
        qty=1,
        buyer_is_maker=True,
        ts_event=T0,
        ts_recv=T0,
    )
    assert natural_key(t) == ("binance", "X", 7)


def test_trade_bare_and_wrapped_parse_the_same() -> None:
    bare = orjson.dumps(TRADE)
    wrapped = orjson.dumps({"stream": "btcusdt@trade", "data": TRADE})
    spaced = b'{"e": "trade", ' + bare[1:].split(b",", 1)[1]  # other whitespace: slow path
    expected = (
        "trade",
        ("binance", "BTCUSDT", 12345, 43000.10, 0.0015, True, 1700000000120000, 1700000000123000),
    )
    assert parse_values(bare) == expected
    assert parse_values(wrapped) == expected
    assert parse_values(spaced) == expected
    record = parse_message(bare)
    assert isinstance(record, Trade) and record.trade_id == 12345


def test_book_ticker_and_agg_trade_and_depth() -> None:
    kind, row = parse_values(
        b'{"u":400900217,"s":"BNBUSDT","b":"25.35","B":"31.21","a":"25.36","A":"40.66"}', recv_us=99
    )
    assert kind == "quote" and row == (
        "binance",
        "BNBUSDT",
        400900217,
        25.35,
        31.21,
        25.36,
        40.66,
        None,
        99,
    )
    kind, row = parse_values(
        orjson.dumps(
            {
                "stream": "x@aggTrade",
                "data": {
                    "e": "aggTrade",
                    "E": 2,
                    "s": "X",
                    "a": 5,
                    "p": "1",
                    "q": "2",
                    "f": 10,
                    "l": 12,
                    "T": 1,
                    "m": False,
                    "M": True,
                },
            }
        )
    )
    assert kind == "agg_trade" and row[2] == 5 and row[5:7] == (10, 12)
    kind, row = parse_values(
        b'{"e":"depthUpdate","E":3,"s":"X","U":1,"u":4,"b":[["1.0","2"]],"a":[["1.1","0"]]}'
    )
    assert kind == "depth" and row[2:8] == (1, 4, [1.0], [2.0], [1.1], [0.0])


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"e":"trade","E":1', "malformed JSON"),
        (b"[1,2]", "not a JSON object"),
        (orjson.dumps({k: v for k, v in TRADE.items() if k != "t"}), "missing field `t`"),
        (orjson.dumps(TRADE | {"p": "NaN"}), "non-finite price"),
        (orjson.dumps(TRADE | {"p": "-3"}), "non-positive price"),
        (orjson.dumps(TRADE | {"q": "-1"}), "negative qty"),
        (orjson.dumps(TRADE | {"p": "abc"}), "bad value: Expected `float`, got `str` - at `$.p`"),
        (orjson.dumps({"e": "kline", "E": 1}), "missing field `s`"),
        (orjson.dumps({"stream": "x@trade", "data": TRADE | {"q": "inf"}}), "non-finite qty"),
        (b'{"hello":"world"}', "unknown message type"),
    ],
)
def test_bad_messages_have_precise_reasons(line: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_values(line)
    assert info.value.reason == reason


def test_split_valid_many_checks_once_and_isolates_bad_rows() -> None:
    def frame(start: int, bad: int | None = None) -> Any:
        b = FrameBuilder("trade")
        for i in range(start, start + 50):
            price = float("nan") if i == bad else 10.0
            b.add_values(["binance", "X", i, price, 1.0, True, T0, T0 + 1])
        return decode_frame(b.take())

    clean = split_valid_many([frame(0), frame(50)])
    assert [len(r) for _, r in clean] == [0, 0]
    assert sum(t.num_rows for t, _ in clean) == 100
    mixed = split_valid_many([frame(0), frame(50, bad=77), frame(100)])
    assert [t.num_rows for t, _ in mixed] == [50, 49, 50]
    assert [r.reason for _, rs in mixed for r in rs] == ["non-finite price"]
    assert split_valid_many([]) == []
