"""The position book: the trading process's positions, each change written before it counts.

Contract:

- Every method validates its input first; invalid input raises
  :class:`~tickvault.core.errors.PositionInputError` (or :class:`PositionStateError` when the
  trade is not open / already exists) and writes nothing.
- A change is one appended snapshot row, committed before the in-memory view changes; when
  the store refuses (locked, disk full) the error propagates and the book is unchanged.
- No ``OPEN`` row is ever written with a quantity or notional at or below
  :data:`~tickvault.positions.model.EPSILON`: a reduce that would leave such a remainder (or
  floating-point residue, see :func:`~tickvault.positions.model.is_dust`) is a full close
  and writes a ``CLOSED`` row.
- In safe mode (crash-loop guard tripped, or no writable store) every change raises
  :class:`~tickvault.core.errors.SafeModeError`; reading works.

One book owns its trades: two processes must not change the same trade (the store detects
it through ``expected_seq`` and refuses the second writer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from tickvault.core.errors import PositionInputError, PositionStateError, SafeModeError
from tickvault.positions.backend import PositionBackend
from tickvault.positions.model import (
    EPSILON,
    RELATIVE_EPSILON,
    SIDES,
    Position,
    Side,
    StateRow,
    is_dust,
)

Clock = Callable[[], float]
"""Returns the current time in seconds since the epoch (``time.time``)."""


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PositionInputError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PositionInputError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise PositionInputError(f"{name} must be finite, got {value!r}")
    if number <= 0:
        raise PositionInputError(f"{name} must be > 0, got {value!r}")
    return number


def _size(name: str, value: Any) -> float:
    number = _positive(name, value)
    if number <= EPSILON:
        raise PositionInputError(f"{name} {value!r} is at or below the epsilon {EPSILON}")
    return number


class PositionBook:
    """Open, reduce, close and mark positions; read them with :meth:`get` / :meth:`positions`.

    Build it from a restore (:func:`tickvault.positions.start_positions` does), passing the
    restored positions; ``store=None`` or ``safe_mode="<why>"`` makes it read-only.
    """

    def __init__(
        self,
        store: PositionBackend | None,
        positions: Iterable[Position] = (),
        *,
        clock: Clock = time.time,
        safe_mode: str | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._open: dict[str, Position] = {p.trade_id: p for p in positions}
        self.safe_mode: str | None = safe_mode
        if store is None and safe_mode is None:
            self.safe_mode = "no writable state store"

    # -- reads -------------------------------------------------------------------------------

    def get(self, trade_id: str) -> Position | None:
        """The open position of ``trade_id``, or None."""
        return self._open.get(trade_id)

    def positions(self) -> list[Position]:
        """All open positions, ordered by trade id."""
        return [self._open[k] for k in sorted(self._open)]

    def __len__(self) -> int:
        return len(self._open)

    # -- changes -----------------------------------------------------------------------------

    def _writable(self) -> PositionBackend:
        if self.safe_mode is not None or self._store is None:
            raise SafeModeError(f"position book is in safe mode ({self.safe_mode}); not writing")
        return self._store

    def _held(self, trade_id: Any) -> Position:
        position = self._open.get(trade_id) if isinstance(trade_id, str) else None
        if position is None:
            raise PositionStateError(f"trade {trade_id!r} is not an open position of this book")
        return position

    def _now_us(self) -> int:
        return round(self._clock() * 1_000_000)

    def open(
        self, trade_id: str, symbol: str, side: Side, quantity: float, price: float
    ) -> Position:
        """Open a new position; ``trade_id`` must never have been used in this store."""
        store = self._writable()
        _text("trade_id", trade_id)
        _text("symbol", symbol)
        if side not in SIDES:
            raise PositionInputError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
        qty = _size("quantity", quantity)
        entry = _positive("price", price)
        notional = qty * entry
        if not math.isfinite(notional) or notional <= EPSILON:
            raise PositionInputError(
                f"notional {notional!r} (quantity x price) must be finite and above {EPSILON}"
            )
        if trade_id in self._open:
            raise PositionStateError(f"trade {trade_id!r} is already open")
        row = StateRow(
            trade_id=trade_id,
            symbol=symbol,
            side=side,
            status="OPEN",
            quantity=qty,
            notional=notional,
            entry_price=entry,
            bars_held=0,
            ts=self._now_us(),
        )
        seq = store.append(row, new_trade=True)
        position = Position(
            trade_id=trade_id,
            symbol=symbol,
            side=side,
            quantity=qty,
            notional=notional,
            entry_price=entry,
            bars_held=0,
            ts=row.ts,
            seq=seq,
        )
        self._open[trade_id] = position
        return position

    def retract(
        self,
        trade_id: str,
        *,
        quantity: float | None = None,
        fraction: float | None = None,
        price: float | None = None,
    ) -> Position | None:
        """Reduce a position by ``quantity`` or by ``fraction`` (0 < f <= 1) of its size.

        Returns the remaining position, or None when the reduce closed it: a remainder that
        is dust (quantity or notional at or below epsilon, or rounding residue) is a full
        close and writes a ``CLOSED`` row (``exit_price`` = ``price`` when given). Reducing
        by more than the position holds (beyond rounding), or by dust, is an input error.
        """
        store = self._writable()
        position = self._held(trade_id)
        if (quantity is None) == (fraction is None):
            raise PositionInputError("give exactly one of quantity or fraction")
        exit_price = None if price is None else _positive("price", price)
        if fraction is not None:
            f = _positive("fraction", fraction)
            if f > 1:
                raise PositionInputError(f"fraction must be in (0, 1], got {fraction!r}")
            cut = position.quantity * f
            if cut <= EPSILON:
                raise PositionInputError(
                    f"fraction {fraction!r} of {position.quantity!r} is {cut!r}, at or below"
                    f" the epsilon {EPSILON}"
                )
        else:
            cut = _size("quantity", quantity)
            tolerance = max(EPSILON, position.quantity * RELATIVE_EPSILON)
            if cut > position.quantity + tolerance:
                raise PositionInputError(
                    f"cannot reduce trade {trade_id!r} by {cut!r}: it holds {position.quantity!r}"
                )
        remaining = position.quantity - cut
        notional = remaining * position.entry_price
        if is_dust(remaining, position.quantity) or is_dust(notional, position.notional):
            reason = "retract: full" if remaining <= 0 else "retract: remainder at or below epsilon"
            self._close(store, position, exit_price, reason)
            return None
        row = StateRow(
            trade_id=position.trade_id,
            symbol=position.symbol,
            side=position.side,
            status="OPEN",
            quantity=remaining,
            notional=notional,
            entry_price=position.entry_price,
            bars_held=position.bars_held,
            ts=self._now_us(),
        )
        seq = store.append(row, expected_seq=position.seq)
        updated = Position(
            trade_id=position.trade_id,
            symbol=position.symbol,
            side=position.side,
            quantity=remaining,
            notional=notional,
            entry_price=position.entry_price,
            bars_held=position.bars_held,
            ts=row.ts,
            seq=seq,
        )
        self._open[position.trade_id] = updated
        return updated

    def close(self, trade_id: str, price: float, reason: str) -> StateRow:
        """Close a position at ``price`` for ``reason``; return the ``CLOSED`` row written."""
        store = self._writable()
        position = self._held(trade_id)
        exit_price = _positive("price", price)
        _text("reason", reason)
        return self._close(store, position, exit_price, reason)

    def _close(
        self, store: PositionBackend, position: Position, exit_price: float | None, reason: str
    ) -> StateRow:
        row = StateRow(
            trade_id=position.trade_id,
            symbol=position.symbol,
            side=position.side,
            status="CLOSED",
            quantity=0.0,
            notional=0.0,
            entry_price=position.entry_price,
            bars_held=position.bars_held,
            ts=self._now_us(),
            exit_price=exit_price,
            close_reason=reason,
        )
        store.append(row, expected_seq=position.seq)
        del self._open[position.trade_id]
        return row

    def mark(self, trade_id: str, *, bars_held: int) -> Position:
        """Update the marks of an open position (``bars_held``: an integer >= 0)."""
        store = self._writable()
        position = self._held(trade_id)
        if isinstance(bars_held, bool) or not isinstance(bars_held, int) or bars_held < 0:
            raise PositionInputError(f"bars_held must be an integer >= 0, got {bars_held!r}")
        row = StateRow(
            trade_id=position.trade_id,
            symbol=position.symbol,
            side=position.side,
            status="OPEN",
            quantity=position.quantity,
            notional=position.notional,
            entry_price=position.entry_price,
            bars_held=bars_held,
            ts=self._now_us(),
        )
        seq = store.append(row, expected_seq=position.seq)
        updated = Position(
            trade_id=position.trade_id,
            symbol=position.symbol,
            side=position.side,
            quantity=position.quantity,
            notional=position.notional,
            entry_price=position.entry_price,
            bars_held=bars_held,
            ts=row.ts,
            seq=seq,
        )
        self._open[position.trade_id] = updated
        return updated
