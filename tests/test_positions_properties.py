"""Property tests: the write invariant and restore, over random operation sequences and
random (mostly broken) stored history."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tickvault.core.errors import PositionInputError
from tickvault.positions import (
    EPSILON,
    PositionBook,
    PositionStore,
    StateStoreSource,
    import_jsonl,
    reconcile,
    restore,
)
from tickvault.positions.model import to_epoch_us

REL = 1e-12
# The properties are about logic, not durability: keep the many small databases in memory
# backed storage when there is some, so fsyncs do not dominate the run time.
FAST_TMP = "/dev/shm" if Path("/dev/shm").is_dir() else None
SIZES = st.floats(min_value=1e-7, max_value=1e7, allow_nan=False, allow_infinity=False)
PRICES = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)
FRACTIONS = st.one_of(
    st.sampled_from([1.0, 0.5, 1 - 1e-15, 1 - 1e-9, 1e-12, 0.999999]),
    st.floats(min_value=1e-15, max_value=1.0, exclude_min=False),
)
GARBAGE = st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, 1e-300])


def _dust(remaining: float, reference: float) -> bool:
    """The documented rule, written out independently of the implementation."""
    return remaining <= EPSILON or remaining <= abs(reference) * REL


class PositionMachine(RuleBasedStateMachine):
    """Random open / retract / close / mark sequences against a plain dict model."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="tv-pos-", dir=FAST_TMP))
        self.path = self.dir / "state.sqlite3"
        self.store = PositionStore(self.path)
        self.book = PositionBook(self.store)
        self.model: dict[str, tuple[float, float, float]] = {}  # id -> qty, notional, price
        self.next_id = 0

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _rows(self) -> int:
        return self.store.row_count()

    @rule(qty=SIZES, price=PRICES, side=st.sampled_from(["LONG", "SHORT"]))
    def open(self, qty: float, price: float, side: Any) -> None:
        trade_id = f"t{self.next_id}"
        self.next_id += 1
        notional = qty * price
        if notional <= EPSILON:
            before = self._rows()
            try:
                self.book.open(trade_id, "SYM", side, qty, price)
            except PositionInputError:
                assert self._rows() == before
                return
            raise AssertionError("open with dust notional was accepted")
        self.book.open(trade_id, "SYM", side, qty, price)
        self.model[trade_id] = (qty, notional, price)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), fraction=FRACTIONS)
    def retract_fraction(self, data: st.DataObject, fraction: float) -> None:
        trade_id = data.draw(st.sampled_from(sorted(self.model)))
        qty = self.model[trade_id][0]
        self._apply_retract(trade_id, qty * fraction, fraction=fraction)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), share=st.sampled_from([1.0, 0.5, 1 / 3, 0.999999999999, 1e-6]))
    def retract_quantity(self, data: st.DataObject, share: float) -> None:
        trade_id = data.draw(st.sampled_from(sorted(self.model)))
        qty, _, _ = self.model[trade_id]
        cut = qty * share
        assume(cut > EPSILON)
        self._apply_retract(trade_id, cut, quantity=cut)

    def _apply_retract(self, trade_id: str, cut: float, **kwargs: float) -> None:
        qty, notional, price = self.model[trade_id]
        if cut <= EPSILON:
            before = self._rows()
            try:
                self.book.retract(trade_id, **kwargs)
            except PositionInputError:
                assert self._rows() == before
                return
            raise AssertionError(f"retract of dust {cut!r} was accepted")
        remaining = qty - cut
        left = self.book.retract(trade_id, **kwargs)
        if _dust(remaining, qty) or _dust(remaining * price, notional):
            assert left is None
            del self.model[trade_id]
        else:
            assert left is not None
            assert math.isclose(left.quantity, remaining, rel_tol=1e-12)
            self.model[trade_id] = (left.quantity, left.notional, price)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), price=PRICES)
    def close(self, data: st.DataObject, price: float) -> None:
        trade_id = data.draw(st.sampled_from(sorted(self.model)))
        self.book.close(trade_id, price, "rule")
        del self.model[trade_id]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), bars=st.integers(min_value=0, max_value=10_000))
    def mark(self, data: st.DataObject, bars: int) -> None:
        trade_id = data.draw(st.sampled_from(sorted(self.model)))
        assert self.book.mark(trade_id, bars_held=bars).bars_held == bars

    @rule(data=st.data(), bad=GARBAGE)
    def invalid_input_writes_nothing(self, data: st.DataObject, bad: float) -> None:
        before = self._rows()
        if self.model and data.draw(st.booleans()):
            trade_id = data.draw(st.sampled_from(sorted(self.model)))
            kind = data.draw(st.sampled_from(["quantity", "fraction"]))
            try:
                self.book.retract(trade_id, **{kind: bad})
            except PositionInputError:
                pass
            else:
                raise AssertionError(f"retract {kind}={bad!r} was accepted")
        else:
            try:
                self.book.open(f"x{self.next_id}", "SYM", "LONG", bad, 100.0)
            except PositionInputError:
                pass
            else:
                raise AssertionError(f"open quantity={bad!r} was accepted")
        assert self._rows() == before

    @invariant()
    def no_open_row_is_dust(self) -> None:
        for row in self.store.iter_rows():
            if row["status"] == "OPEN":
                assert math.isfinite(row["quantity"]) and row["quantity"] > EPSILON, row
                assert math.isfinite(row["notional"]) and row["notional"] > EPSILON, row

    @invariant()
    def restore_returns_exactly_the_open_positions(self) -> None:
        with PositionStore(self.path, read_only=True) as fresh:
            report = restore([StateStoreSource(fresh)], dry_run=True)
        assert report.quarantined == []
        got = {p.trade_id: p.quantity for p in report.restored}
        assert got.keys() == self.model.keys()
        for trade_id, (qty, _, _) in self.model.items():
            assert got[trade_id] == qty
        assert report.restored == self.book.positions()


TestPositionMachine = PositionMachine.TestCase
TestPositionMachine.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, database=None
)


# -- random stored history ---------------------------------------------------------------------

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=5),
    st.integers(min_value=2**63, max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "abc", "1.5", "NaN"]),
    st.lists(st.integers(), max_size=2),
)
ROW = st.fixed_dictionaries(
    {
        "trade_id": st.sampled_from(["a", "b", "c", "d"]),
        "status": st.sampled_from(["OPEN", "OPEN", "CLOSED", "open", None, "PARTIAL"]),
        "quantity": st.one_of(SIZES, ANY_VALUE),
        "notional": st.one_of(SIZES, ANY_VALUE),
        "seq": st.one_of(st.integers(min_value=0, max_value=50), st.integers(0, 50), ANY_VALUE),
    },
    optional={
        "symbol": st.sampled_from(["BTCUSDT", "", None]),
        "side": st.sampled_from(["LONG", "SHORT", "BUY", None]),
        "entry_price": st.one_of(PRICES, ANY_VALUE),
        "bars_held": st.one_of(st.integers(0, 100), ANY_VALUE),
        "ts": st.one_of(st.just("2026-06-11T00:00:00Z"), st.integers(0, 2**40), ANY_VALUE),
    },
)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63


def _is_number(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _ts_ok(v: Any) -> bool:
    try:
        return v is not None and _is_int(to_epoch_us(v))
    except ValueError:
        return False


def _oracle(rows: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """(restored, quarantined) trade ids by the documented rules, written out plainly.

    Latest row: highest integer seq, then last written; rows without an integer seq rank
    below those, by position. Any such row makes an open trade undecidable.
    """
    restored, quarantined = set(), set()
    for trade_id in {r["trade_id"] for r in rows}:
        own = [(i, r) for i, r in enumerate(rows) if r["trade_id"] == trade_id]
        ordered = [(r["seq"], i, r) for i, r in own if _is_int(r["seq"])]
        unordered = len(own) - len(ordered)
        latest = max(ordered, key=lambda t: (t[0], t[1]))[2] if ordered else own[-1][1]
        if latest["status"] == "CLOSED":
            continue
        ok = (
            latest["status"] == "OPEN"
            and unordered == 0
            and latest.get("symbol") not in (None, "")
            and latest.get("side") in ("LONG", "SHORT")
            and all(_is_number(latest.get(k)) for k in ("quantity", "notional", "entry_price"))
            and latest["quantity"] > EPSILON
            and latest["notional"] > EPSILON
            and latest["entry_price"] > 0
            and _is_int(latest.get("bars_held"))
            and latest["bars_held"] >= 0
            and _ts_ok(latest.get("ts"))
        )
        (restored if ok else quarantined).add(trade_id)
    return restored, quarantined


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rows=st.lists(ROW, min_size=1, max_size=30))
def test_restore_over_random_history_never_raises_and_follows_the_rules(
    tmp_path: Path, rows: list[dict[str, Any]]
) -> None:
    work = Path(tempfile.mkdtemp(dir=FAST_TMP or tmp_path))
    try:
        lines = work / "history.jsonl"
        # unique line text per row, so the import's duplicate check keeps every row
        lines.write_text("".join(json.dumps(r | {"n": i}) + "\n" for i, r in enumerate(rows)))
        with PositionStore(work / "state.sqlite3") as store:
            imported = import_jsonl(store, lines)
            assert imported.imported == len(rows)
            report = restore([StateStoreSource(store)], quarantine_store=store)
            restored = {p.trade_id for p in report.restored}
            quarantined = {q.trade_id for q in report.quarantined}
            assert (restored, quarantined) == _oracle(rows)
            for p in report.restored:
                assert p.quantity > EPSILON and p.notional > EPSILON
            assert len(store.quarantined()) == len(quarantined)
            # reconcile settles every quarantined trade; the restored ones are untouched
            reconcile(store, apply=True)
            after = restore([StateStoreSource(store)], dry_run=True)
            assert after.quarantined == []
            assert after.restored == report.restored
    finally:
        shutil.rmtree(work, ignore_errors=True)
