"""PositionBook: validated, append-only changes; invalid input writes nothing."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tickvault.core.errors import (
    PositionInputError,
    PositionStateError,
    SafeModeError,
    TickvaultError,
)
from tickvault.positions import EPSILON, PositionBook, PositionStore, StateStoreSource, restore

NOW = 1_781_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PositionStore]:
    with PositionStore(tmp_path / "state.sqlite3") as s:
        yield s


@pytest.fixture
def book(store: PositionStore) -> PositionBook:
    return PositionBook(store, clock=lambda: NOW)


def _rows(store: PositionStore) -> list[dict[str, Any]]:
    return list(store.iter_rows())


def test_open_writes_one_open_row_with_notional(book: PositionBook, store: PositionStore) -> None:
    p = book.open("t1", "BTCUSDT", "LONG", 0.5, 60_000.0)
    assert (p.quantity, p.notional, p.entry_price, p.bars_held) == (0.5, 30_000.0, 60_000.0, 0)
    assert p.ts == 1_781_000_000_000_000
    [row] = _rows(store)
    assert row["status"] == "OPEN" and row["seq"] == p.seq and row["notional"] == 30_000.0
    assert book.get("t1") == p


def test_every_change_is_a_new_row_and_seq_increases(
    book: PositionBook, store: PositionStore
) -> None:
    book.open("t1", "ETHUSDT", "SHORT", 4.0, 3_000.0)
    book.mark("t1", bars_held=3)
    p = book.retract("t1", fraction=0.25)
    assert p is not None and p.quantity == 3.0 and p.notional == 9_000.0 and p.bars_held == 3
    p = book.retract("t1", quantity=1.0)
    assert p is not None and p.quantity == 2.0
    closed = book.close("t1", 2_900.0, "stop")
    assert (closed.status, closed.quantity, closed.exit_price, closed.close_reason) == (
        "CLOSED",
        0.0,
        2_900.0,
        "stop",
    )
    rows = _rows(store)
    assert [r["status"] for r in rows] == ["OPEN"] * 4 + ["CLOSED"]
    assert [r["quantity"] for r in rows] == [4.0, 4.0, 3.0, 2.0, 0.0]
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert book.get("t1") is None and len(book) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantity": 0.0}, "quantity"),
        ({"quantity": -1.0}, "quantity"),
        ({"quantity": math.nan}, "finite"),
        ({"quantity": math.inf}, "finite"),
        ({"quantity": EPSILON}, "epsilon"),
        ({"quantity": True}, "number"),
        ({"price": 0.0}, "price"),
        ({"price": math.nan}, "price"),
        ({"price": -5.0}, "price"),
        ({"side": "BUY"}, "side"),
        ({"side": "long"}, "side"),
        ({"symbol": ""}, "symbol"),
        ({"trade_id": "  "}, "trade_id"),
        ({"quantity": 1e-5, "price": 1e-5}, "notional"),
        ({"quantity": 1e300, "price": 1e300}, "notional"),
    ],
)
def test_invalid_open_raises_and_writes_nothing(
    book: PositionBook, store: PositionStore, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {
        "trade_id": "t1",
        "symbol": "BTCUSDT",
        "side": "LONG",
        "quantity": 1.0,
        "price": 100.0,
    }
    with pytest.raises(PositionInputError, match=message):
        book.open(**(args | kwargs))
    assert _rows(store) == [] and len(book) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"quantity": 1.0, "fraction": 0.5},
        {"fraction": 0.0},
        {"fraction": 1.5},
        {"fraction": math.nan},
        {"quantity": -1.0},
        {"quantity": math.inf},
        {"quantity": 2.5},
        {"quantity": 1.0, "price": -1.0},
    ],
)
def test_invalid_retract_raises_and_writes_nothing(
    book: PositionBook, store: PositionStore, kwargs: dict[str, Any]
) -> None:
    before = book.open("t1", "BTCUSDT", "LONG", 2.0, 100.0)
    with pytest.raises(PositionInputError):
        book.retract("t1", **kwargs)
    assert len(_rows(store)) == 1 and book.get("t1") == before


def test_invalid_close_and_mark_write_nothing(book: PositionBook, store: PositionStore) -> None:
    book.open("t1", "BTCUSDT", "LONG", 2.0, 100.0)
    for call in (
        lambda: book.close("t1", 0.0, "x"),
        lambda: book.close("t1", math.nan, "x"),
        lambda: book.close("t1", 100.0, ""),
        lambda: book.mark("t1", bars_held=-1),
        lambda: book.mark("t1", bars_held=1.5),  # type: ignore[arg-type]
    ):
        with pytest.raises(PositionInputError):
            call()
    assert len(_rows(store)) == 1


def test_unknown_or_closed_trade_is_a_state_error(book: PositionBook, store: PositionStore) -> None:
    with pytest.raises(PositionStateError, match="not an open position"):
        book.retract("nope", fraction=0.5)
    book.open("t1", "BTCUSDT", "LONG", 1.0, 100.0)
    book.close("t1", 101.0, "done")
    for call in (
        lambda: book.close("t1", 100.0, "again"),
        lambda: book.mark("t1", bars_held=1),
        lambda: book.retract("t1", fraction=1.0),
    ):
        with pytest.raises(PositionStateError):
            call()
    assert len(_rows(store)) == 2


def test_trade_ids_are_never_reused(book: PositionBook, store: PositionStore) -> None:
    book.open("t1", "BTCUSDT", "LONG", 1.0, 100.0)
    with pytest.raises(PositionStateError, match="already open"):
        book.open("t1", "BTCUSDT", "LONG", 1.0, 100.0)
    book.close("t1", 100.0, "done")
    # a fresh book over the same store does not know t1, the store does
    other = PositionBook(store)
    with pytest.raises(PositionStateError, match="history"):
        other.open("t1", "ETHUSDT", "SHORT", 1.0, 100.0)
    assert len(_rows(store)) == 2


def test_remainder_at_or_below_epsilon_is_a_full_close(
    book: PositionBook, store: PositionStore
) -> None:
    book.open("t1", "BTCUSDT", "LONG", 1.0, 100.0)
    assert book.retract("t1", quantity=1.0 - EPSILON / 2) is None
    book.open("t2", "DOGEUSDT", "LONG", 10.0, 1e-10 * 10)  # notional 1e-8
    # remainder 0.05 has notional 5e-11: dust by notional though quantity is not
    assert book.retract("t2", quantity=9.95) is None
    rows = _rows(store)
    assert [(r["trade_id"], r["status"]) for r in rows] == [
        ("t1", "OPEN"),
        ("t1", "CLOSED"),
        ("t2", "OPEN"),
        ("t2", "CLOSED"),
    ]
    assert rows[1]["close_reason"] == "retract: remainder at or below epsilon"


def test_over_retract_within_rounding_closes(book: PositionBook, store: PositionStore) -> None:
    book.open("t1", "BTCUSDT", "LONG", 0.1 + 0.2, 100.0)  # 0.30000000000000004
    assert book.retract("t1", quantity=0.3) is None
    book.open("t2", "BTCUSDT", "LONG", 0.3, 100.0)
    assert book.retract("t2", quantity=0.1 + 0.2) is None  # a hair more than held
    assert [r["status"] for r in _rows(store)] == ["OPEN", "CLOSED", "OPEN", "CLOSED"]


def test_safe_mode_book_writes_nothing(store: PositionStore) -> None:
    seeded = PositionBook(store)
    p = seeded.open("t1", "BTCUSDT", "LONG", 1.0, 100.0)
    safe = PositionBook(store, [p], safe_mode="crash loop")
    for call in (
        lambda: safe.open("t2", "BTCUSDT", "LONG", 1.0, 100.0),
        lambda: safe.retract("t1", fraction=0.5),
        lambda: safe.close("t1", 100.0, "x"),
        lambda: safe.mark("t1", bars_held=2),
    ):
        with pytest.raises(SafeModeError, match="crash loop"):
            call()
    assert safe.get("t1") == p
    assert len(_rows(store)) == 1
    assert PositionBook(None).safe_mode == "no writable state store"


def test_second_writer_on_the_same_trade_is_refused(store: PositionStore, tmp_path: Path) -> None:
    book_a = PositionBook(store)
    p = book_a.open("t1", "BTCUSDT", "LONG", 2.0, 100.0)
    with PositionStore(tmp_path / "state.sqlite3") as other_conn:
        book_b = PositionBook(other_conn, [p])
        book_b.retract("t1", fraction=0.5)
    with pytest.raises(PositionStateError, match="changed in the store"):
        book_a.mark("t1", bars_held=1)
    assert book_a.get("t1") == p


def test_book_view_equals_restore(book: PositionBook, store: PositionStore) -> None:
    book.open("a", "BTCUSDT", "LONG", 1.0, 100.0)
    book.open("b", "ETHUSDT", "SHORT", 2.0, 50.0)
    book.open("c", "SOLUSDT", "LONG", 3.0, 10.0)
    book.retract("b", fraction=0.5)
    book.mark("a", bars_held=7)
    book.close("c", 11.0, "tp")
    report = restore([StateStoreSource(store)])
    assert report.restored == book.positions()


def test_errors_share_one_tree() -> None:
    for cls in (PositionInputError, PositionStateError, SafeModeError):
        assert issubclass(cls, TickvaultError)
