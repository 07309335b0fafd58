"""The shortcuts of the replay hot path agree with the exact checks they stand in for.

- :func:`tickvault.core.rules.values_valid` (the producer's rule check on packed columns,
  without Arrow) says what :func:`tickvault.core.rules.columns_valid` (pyarrow.compute) says,
  except that it may say "no" to huge finite values whose sum overflows (those rows then
  take the per-row check, which stores them).
- :func:`tickvault.core.conflicts._keys_distinct` never says "distinct" when a key repeats,
  and :func:`tickvault.core.conflicts.first_versions` keeps the same rows either way.
- A frame built by ``take_checked`` through the shortcut holds the same rows as one built
  row by row.
- Combined-stream messages decoded in one pass give what the two-pass decoding gives.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickvault.core.codec import I64, FrameBuilder, decode_frame, pack_column, split_valid
from tickvault.core.conflicts import _keys_distinct, first_versions
from tickvault.core.records import KINDS
from tickvault.core.rules import HISTORY, columns_valid, values_valid

BOUNDS = (HISTORY.bounds()[0], HISTORY.bounds()[1])
FLOAT_EDGES = [0.0, -0.0, -1.0, 1e-300, 1e308, math.inf, -math.inf, math.nan, 5.5]


def _arrow_verdict(rules: tuple[str, ...], values: list[object], arrow_type: pa.DataType) -> bool:
    table = pa.table({"c": pa.array(values, type=arrow_type)})
    return columns_valid({"c": rules}, table, BOUNDS)  # type: ignore[dict-item]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(FLOAT_EDGES)),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([("required", "positive"), ("required", "non_negative")]),
)
def test_float_rules_agree_with_arrow(values: list[float], rules: tuple[str, ...]) -> None:
    fast = values_valid(rules, values, False, BOUNDS)  # type: ignore[arg-type]
    exact = _arrow_verdict(rules, values, pa.float64())
    overflow = all(math.isfinite(v) for v in values) and not math.isfinite(sum(values))
    assert fast == exact or (overflow and not fast)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=1, max_size=40),
    st.sampled_from([("non_negative",), ("required", "id")]),  # the integer rules in KINDS
)
def test_integer_rules_agree_with_arrow(values: list[int], rules: tuple[str, ...]) -> None:
    assert values_valid(rules, values, True, BOUNDS) == _arrow_verdict(  # type: ignore[arg-type]
        rules, values, pa.int64()
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=1, max_size=20))
def test_timestamp_rule_agrees_with_arrow(values: list[int]) -> None:
    rules = ("required", "timestamp")
    assert values_valid(rules, values, True, BOUNDS) == _arrow_verdict(  # type: ignore[arg-type]
        rules, values, pa.timestamp("us")
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=70),
            st.sampled_from(["BTCUSDT", "", "A" * 64, "A" * 65, "BTC USDT", "x\x00", "é"]),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_name_rule_agrees_with_arrow(values: list[str]) -> None:
    rules = ("required", "name")
    assert values_valid(rules, values, False, BOUNDS) == _arrow_verdict(  # type: ignore[arg-type]
        rules, values, pa.string()
    )


def test_packed_integer_column_is_what_the_check_is_told() -> None:
    assert isinstance(pack_column([1, 2, 3], "i64"), I64)


def _trades(keys: list[tuple[str, int]], prices: list[float]) -> pa.Table:
    n = len(keys)
    return pa.table(
        {
            "exchange": ["binance"] * n,
            "symbol": [s for s, _ in keys],
            "trade_id": [t for _, t in keys],
            "price": prices,
            "qty": [1.0] * n,
            "buyer_is_maker": [False] * n,
            "ts_event": pa.array([1_700_000_000_000_000] * n, pa.timestamp("us")),
            "ts_recv": pa.array([1_700_000_000_000_000] * n, pa.timestamp("us")),
        },
        schema=KINDS["trade"].schema,
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["BTCUSDT", "ETHUSDT", "X"]), st.integers(0, 30)),
        min_size=2,
        max_size=40,
    )
)
def test_distinct_keys_are_never_claimed_wrongly(keys: list[tuple[str, int]]) -> None:
    prices = [float(i + 1) for i in range(len(keys))]
    table = _trades(keys, prices)
    if len(set(keys)) < len(keys):
        assert not _keys_distinct(table, KINDS["trade"].key)
    kept, pairs = first_versions(KINDS["trade"], table)
    firsts: dict[tuple[str, int], float] = {}
    for key, price in zip(keys, prices, strict=True):
        firsts.setdefault(key, price)
    assert sorted(
        zip(
            kept.column("symbol").to_pylist(),
            kept.column("trade_id").to_pylist(),
            kept.column("price").to_pylist(),
            strict=True,
        )
    ) == sorted((s, t, p) for (s, t), p in firsts.items())
    assert len(pairs) == len(keys) - len(firsts)  # every later version differs in price


def test_same_trade_id_in_two_symbols_is_not_a_duplicate() -> None:
    table = _trades([("BTCUSDT", 7), ("ETHUSDT", 7)], [1.0, 2.0])
    assert _keys_distinct(table, KINDS["trade"].key)
    kept, pairs = first_versions(KINDS["trade"], table)
    assert kept.num_rows == 2 and pairs == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["BTCUSDT", "ETH USDT", ""]),
            st.one_of(st.integers(-5, 2**64), st.just(3)),
            st.sampled_from(FLOAT_EDGES),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_take_checked_matches_the_row_by_row_rules(rows: list[tuple[str, int, float]]) -> None:
    builder = FrameBuilder("trade")
    t0 = 1_700_000_000_000_000
    for symbol, trade_id, price in rows:
        builder.add_values(("binance", symbol, trade_id, price, 1.0, False, t0, t0))
    frame, rejects = builder.take_checked(BOUNDS)
    stored = split_valid(decode_frame(frame), BOUNDS)[0].num_rows if frame else 0
    expected = sum(
        1
        for symbol, trade_id, price in rows
        if symbol == "BTCUSDT" and 0 <= trade_id < 2**63 and 0 < price < math.inf
    )
    assert stored == expected
    assert stored + len(rejects) == len(rows)


def _recorded_messages() -> list[bytes]:
    """Every message of the real recordings in tests/data/binance (see PROVENANCE.md)."""
    from tickvault.sources.binance.capture import split_line
    from tickvault.sources.binance.wire import ParseError

    messages = []
    for path in sorted((Path(__file__).parent / "data" / "binance").iterdir()):
        if path.suffix not in (".gz", ".jsonl", ".txt", ".json"):
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            for line in fh:
                try:
                    messages.append(split_line(line)[0])
                except ParseError:
                    continue
    return messages


def test_one_pass_decoding_gives_the_two_pass_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """Combined-stream messages decoded in one pass equal the two-pass decoding, message by
    message, over every real recording (and raise the same errors)."""
    from tickvault.sources.binance import wire as binance_wire

    messages = [m for m in _recorded_messages() if m.startswith(b'{"stream":"')]
    assert len(messages) > 500
    # spot book tickers without a time get the replay time: make it one value
    monkeypatch.setattr(binance_wire.time, "time_ns", lambda: 1_700_000_000_000_000_000)

    def outcomes() -> list[object]:
        out: list[object] = []
        for m in messages:
            try:
                out.append(binance_wire.parse_values(m))
            except binance_wire.ParseError as exc:
                out.append((type(exc).__name__, str(exc)))
        return out

    fast = outcomes()
    one_pass_used = sum(binance_wire._one_pass(m) is not None for m in messages)
    monkeypatch.setattr(binance_wire, "_one_pass", lambda data: None)
    assert fast == outcomes()
    assert one_pass_used > 100


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.just(1_700_000_000_000_000)),
            st.sampled_from(FLOAT_EDGES),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_take_checked_on_a_nullable_column(rows: list[tuple[int | None, float]]) -> None:
    """Quotes whose optional event time is missing in some rows (spot book tickers)."""
    builder = FrameBuilder("quote")
    t0 = 1_700_000_000_000_000
    for i, (ts_event, bid) in enumerate(rows):
        builder.add_values(("binance", "BTCUSDT", i, bid, 1.0, 101.0, 1.0, ts_event, t0))
    frame, rejects = builder.take_checked(BOUNDS)
    stored = split_valid(decode_frame(frame), BOUNDS)[0].num_rows if frame else 0
    expected = sum(
        1
        for ts_event, bid in rows
        if 0 < bid < math.inf and (ts_event is None or BOUNDS[0] <= ts_event <= BOUNDS[1])
    )
    assert stored == expected
    assert stored + len(rejects) == len(rows)
