"""Gaps left ``open`` by an earlier run of the Binance collector, found again at start.

A gap is ``open`` while it is backfilled; when the process stops before the backfill ends
(``stop_grace_s`` ran out, the venue's REST was down), its ``open`` row is stored and no final
row follows. On start the collector asks the store for such gaps (:func:`open_gaps`): gaps of
its own market, symbols and id channels (``trade``, ``aggTrade``) whose only row is ``open``.
Each is backfilled once, through the same queue and rate-limited REST client as a live gap,
and ends ``backfilled`` or ``unrecoverable`` with the reason; one still unresolved at the next
stop stays ``open`` and is tried again at the next start.

A final row still on the bus (not yet written) when the store is asked makes a gap look open:
it is then backfilled again, which is harmless (stored rows and gap rows are keyed).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from tickvault.sources.binance.gaps import HOUR_MS, Hole
from tickvault.stores.base import Store

ID_CHANNELS = ("trade", "aggTrade")
MAX_GAP_ROWS = 1_000_000
_EPOCH = dt.datetime(1970, 1, 1)


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _micros(value: Any) -> int:
    """A timestamp from any store's query answer (datetime, naive UTC or aware) in µs."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return int((value - _EPOCH) // dt.timedelta(microseconds=1))
    return int(value)


async def open_gaps(
    store: Store, exchange: str, symbols: list[str], channels: list[str]
) -> list[Hole]:
    """The gaps of ``exchange``, ``symbols`` and the id ``channels`` whose only stored row is
    ``open``, oldest first, as holes due now. A trade hole's time window (used without an API
    key) comes from the stored neighbours of its ids, else the hour before its detection."""
    wanted = [c for c in channels if c in ID_CHANNELS]
    if not wanted or not symbols:
        return []
    result = await store.query(
        "SELECT symbol, channel, from_id, to_id, detected_at, status FROM gaps"
        f" WHERE exchange = {_text(exchange)}"
        f" AND symbol IN ({', '.join(_text(s) for s in symbols)})"
        f" AND channel IN ({', '.join(_text(c) for c in wanted)})",
        limit=MAX_GAP_ROWS,
    )
    statuses: dict[tuple[str, str, int], set[str]] = {}
    first: dict[tuple[str, str, int], tuple[int, int]] = {}
    for symbol, channel, from_id, to_id, detected_at, status in result.rows:
        key = (str(symbol), str(channel), int(from_id))
        statuses.setdefault(key, set()).add(str(status))
        if status == "open":
            first[key] = (int(to_id), _micros(detected_at))
    holes = []
    for key, seen in statuses.items():
        if seen != {"open"}:
            continue
        symbol, channel, from_id = key
        to_id, detected = first[key]
        before, after = detected - HOUR_MS * 1000, detected
        if channel == "trade":
            before, after = await _neighbour_times(
                store, exchange, symbol, from_id, to_id, detected
            )
        holes.append(Hole(symbol, channel, from_id, to_id, detected, 0.0, before, after))
    holes.sort(key=lambda h: (h.detected_at_us, h.symbol, h.channel, h.from_id))
    return holes


async def _neighbour_times(
    store: Store, exchange: str, symbol: str, from_id: int, to_id: int, detected: int
) -> tuple[int, int]:
    result = await store.query(
        "SELECT trade_id, ts_event FROM trades"
        f" WHERE exchange = {_text(exchange)} AND symbol = {_text(symbol)}"
        f" AND trade_id IN ({from_id - 1}, {to_id + 1})",
        limit=4,
    )
    times = {int(tid): _micros(ts) for tid, ts in result.rows}
    before = times.get(from_id - 1, detected - HOUR_MS * 1000)
    after = times.get(to_id + 1, max(detected, before))
    return before, after
