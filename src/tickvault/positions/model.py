"""Position rows, their validation, and the one rule that decides what a stored row means.

Every change to a position is an append-only *snapshot row* (:class:`StateRow`): the state of
one trade after the change. Columns: ``trade_id, symbol, side, status, quantity, notional,
entry_price, bars_held, ts, seq`` (plus ``exit_price`` and ``close_reason`` on closes).

- ``status`` is ``OPEN`` or ``CLOSED``; ``side`` is ``LONG`` or ``SHORT``.
- ``ts`` is microseconds since the Unix epoch (UTC), like every tickvault timestamp.
- ``seq`` orders the rows of one trade: the row with the highest ``seq`` is the trade's state.
- A ``CLOSED`` row records the size *after* the change: quantity and notional are 0.

Two invariants hold for every row written through :class:`~tickvault.positions.PositionBook`:
an ``OPEN`` row has a finite quantity and notional both above :data:`EPSILON`, and a change
that would leave a remainder at or below it is written as a ``CLOSED`` row instead.

Rows that did not come through the book (imported history, secondary snapshots, old
versions) can violate that; :func:`assess_latest` is the single judge used by restore,
``show``, ``import`` and ``reconcile``: it returns the open :class:`Position`, ``None``
for flat, or a :class:`Malformed` with a short reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec

Side = Literal["LONG", "SHORT"]
Status = Literal["OPEN", "CLOSED"]

SIDES: Final = ("LONG", "SHORT")
STATUSES: Final = ("OPEN", "CLOSED")

EPSILON: Final = 1e-9
"""Sizes (quantity, notional) at or below this are dust: never written as ``OPEN``."""

RELATIVE_EPSILON: Final = 1e-12
"""A remainder this small relative to the position is floating-point residue: a full close."""

COLUMNS: Final = (
    "trade_id",
    "symbol",
    "side",
    "status",
    "quantity",
    "notional",
    "entry_price",
    "bars_held",
    "ts",
    "seq",
)
"""The snapshot columns every source provides (extra columns are carried along)."""


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """An open position as restored or as held by the book (always valid)."""

    trade_id: str
    symbol: str
    side: Side
    quantity: float
    notional: float
    entry_price: float
    bars_held: int
    ts: int
    """Time of the last change, microseconds since the epoch."""
    seq: int
    """``seq`` of the row this state comes from."""

    def as_row(self) -> dict[str, Any]:
        """This position as an ``OPEN`` snapshot row (for secondary snapshots)."""
        data: dict[str, Any] = msgspec.structs.asdict(self)
        data["status"] = "OPEN"
        return data


class StateRow(msgspec.Struct, frozen=True, kw_only=True):
    """One snapshot row to append; the store assigns ``seq``."""

    trade_id: str
    symbol: str | None
    side: str | None
    status: Status
    quantity: float
    notional: float
    entry_price: float | None
    bars_held: int | None
    ts: int
    exit_price: float | None = None
    close_reason: str | None = None


class Malformed(msgspec.Struct, frozen=True):
    """A latest row that must not be trusted; ``reason`` is short and stable."""

    reason: str


def is_dust(remaining: float, reference: float) -> bool:
    """True when ``remaining`` (what a reduce leaves of ``reference``) is not a real size.

    Covers exact zero, negatives from over-reduction by rounding, anything at or below
    :data:`EPSILON`, and residue below :data:`RELATIVE_EPSILON` x ``reference``.
    """
    return not math.isfinite(remaining) or remaining <= max(
        EPSILON, abs(reference) * RELATIVE_EPSILON
    )


def _number_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not a finite number, or None."""
    if value is None:
        return f"missing {name}"
    if isinstance(value, bool):
        return f"non-numeric {name} {value!r}"
    if isinstance(value, int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"non-finite {name} {value!r}"
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return f"non-numeric {name} {value!r}"
        if not math.isfinite(parsed):
            return f"non-finite {name} {value!r}"
    return f"non-numeric {name} {value!r}"


def _size_problem(name: str, value: Any) -> str | None:
    problem = _number_problem(name, value)
    if problem is not None:
        return problem
    if value <= 0:
        return f"non-positive {name} {value!r}"
    if value <= EPSILON:
        return f"dust {name} {value!r} (at or below {EPSILON})"
    return None


def _price_problem(value: Any) -> str | None:
    problem = _number_problem("entry_price", value)
    if problem is None and value <= 0:
        return f"non-positive entry_price {value!r}"
    return problem


def _int_problem(name: str, value: Any, *, minimum: int | None = None) -> str | None:
    if value is None:
        return f"missing {name}"
    if isinstance(value, bool) or not isinstance(value, int):
        return f"non-integer {name} {value!r}"
    if minimum is not None and value < minimum:
        return f"negative {name} {value!r}"
    return None


def _text_problem(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return f"missing {name}"
    if not isinstance(value, str):
        return f"non-text {name} {value!r}"
    return None


def assess_latest(row: Mapping[str, Any]) -> Position | Malformed | None:
    """Judge the latest row of a trade: open :class:`Position`, ``None`` (flat) or Malformed.

    A ``CLOSED`` row means flat whatever its other fields hold. An ``OPEN`` row must have
    every column: text ``trade_id`` and ``symbol``, a known ``side``, finite ``quantity`` and
    ``notional`` above :data:`EPSILON`, a finite ``entry_price > 0``, integer
    ``bars_held >= 0``, ``ts`` and ``seq``. Any other status is malformed. Never raises for
    any mapping of any values.
    """
    status = row.get("status")
    if status == "CLOSED":
        return None
    fast = _fast_open(row) if status == "OPEN" else None
    if fast is not None:
        return fast
    if status != "OPEN":
        return Malformed("missing status" if status is None else f"unknown status {status!r}")
    for problem in (
        _text_problem("trade_id", row.get("trade_id")),
        _text_problem("symbol", row.get("symbol")),
        _side_problem(row.get("side")),
        _size_problem("quantity", row.get("quantity")),
        _size_problem("notional", row.get("notional")),
        _price_problem(row.get("entry_price")),
        _int_problem("bars_held", row.get("bars_held"), minimum=0),
        _int_problem("ts", row.get("ts")),
        _int_problem("seq", row.get("seq")),
    ):
        if problem is not None:
            return Malformed(problem)
    return Position(
        trade_id=row["trade_id"],
        symbol=row["symbol"],
        side=row["side"],
        quantity=float(row["quantity"]),
        notional=float(row["notional"]),
        entry_price=float(row["entry_price"]),
        bars_held=row["bars_held"],
        ts=row["ts"],
        seq=row["seq"],
    )


def _fast_open(row: Mapping[str, Any]) -> Position | None:
    """The common case, a well-typed valid OPEN row, checked without building reasons.
    None means "look closer" (the row may still be valid, e.g. integer sizes)."""
    q, n, p = row.get("quantity"), row.get("notional"), row.get("entry_price")
    trade_id, symbol, bars, ts, seq = (
        row.get("trade_id"),
        row.get("symbol"),
        row.get("bars_held"),
        row.get("ts"),
        row.get("seq"),
    )
    side = row.get("side")
    if (
        type(q) is float
        and type(n) is float
        and type(p) is float
        and EPSILON < q < math.inf
        and EPSILON < n < math.inf
        and 0 < p < math.inf
        and type(trade_id) is str
        and trade_id
        and type(symbol) is str
        and symbol
        and (side == "LONG" or side == "SHORT")
        and type(bars) is int
        and bars >= 0
        and type(ts) is int
        and type(seq) is int
    ):
        return Position(
            trade_id=trade_id,
            symbol=symbol,
            side=side,
            quantity=q,
            notional=n,
            entry_price=p,
            bars_held=bars,
            ts=ts,
            seq=seq,
        )
    return None


def _side_problem(value: Any) -> str | None:
    if value is None:
        return "missing side"
    if value not in SIDES:
        return f"unknown side {value!r}"
    return None


def to_epoch_us(value: Any) -> int:
    """A timestamp as integer microseconds since the epoch (UTC); raise ValueError if it is
    not one (or does not fit 64 bits).

    Accepts ISO-8601 text (a missing offset means UTC) and epoch numbers, whose unit is
    told by magnitude: below 1e11 seconds, below 1e14 milliseconds, below 1e17
    microseconds, else nanoseconds (any date between 1973 and 5138 is read right).
    """
    try:
        us = _epoch_us(value)
    except OverflowError:
        raise ValueError(f"timestamp out of range: {value!r}") from None
    if not -(2**63) <= us < 2**63:
        raise ValueError(f"timestamp out of range: {value!r}")
    return us


def _epoch_us(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"not a timestamp: {value!r}")
        if number < 1e11:
            return round(number * 1_000_000)
        if number < 1e14:
            return round(number * 1_000)
        if number < 1e17:
            return int(value) if isinstance(value, int) else round(number)
        return int(value) // 1_000 if isinstance(value, int) else round(number / 1_000)
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        delta = parsed - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise ValueError(f"not a timestamp: {value!r}")


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
