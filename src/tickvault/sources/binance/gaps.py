"""Trade-id gap tracking and REST backfill for the Binance collector.

Trade ids (``trade`` channel) and aggregate ids (``aggTrade`` channel) are consecutive per
symbol, so a jump is a gap. :class:`IdTracker` sees every id once, in arrival order:

- ``id == last + 1``: the normal case, one dict look-up;
- ``id <= last``: a duplicate (the overlap of a connection rollover) unless it falls into a
  recent *hole*, in which case it is a late arrival and fills it;
- ``id > last + 1``: a hole ``[last + 1, id - 1]`` opens. It *settles* after ``settle_s``
  (late arrivals from an overlapping connection may still fill it); whatever is still
  missing then is a gap: one ``open`` row in ``gaps``, then a REST backfill, then one
  ``backfilled`` or ``unrecoverable`` row with the reason.

The first id seen for a symbol after start is the baseline: what happened before the
collector started is not a gap. State survives reconnects, so the trades missed while
disconnected surface as a jump at the first trade after the reconnect.

:class:`TradeBackfiller` fetches the missing ids:

- ``aggTrade`` gaps: ``/api/v3/aggTrades?fromId=`` (exact, paged by 1000).
- ``trade`` gaps with an API key: ``/api/v3/historicalTrades?fromId=`` with the
  ``X-MBX-APIKEY`` header (exact). A 4xx (key refused) falls back to aggregates.
- ``trade`` gaps otherwise: ``/api/v3/aggTrades`` over the time window around the hole.
  An aggregate of one trade (``f == l``) gives that trade exactly; ids inside multi-trade
  aggregates cannot be rebuilt (the venue publishes only their summed quantity), so the
  gap is marked ``unrecoverable`` with that reason, while every trade that *could* be
  restored still is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tickvault.sources.binance.markets import rest_routes
from tickvault.sources.binance.wire import EXCHANGE
from tickvault.sources.rest import RestClient, VenueError

_INF = float("inf")
PAGE = 1000
HOUR_MS = 3_600_000


@dataclass
class Hole:
    """Missing ids ``[from_id, to_id]`` of one symbol and channel."""

    symbol: str
    channel: str
    from_id: int
    to_id: int
    detected_at_us: int
    due_at: float
    before_ts_us: int
    """Event time of the last id before the hole."""
    after_ts_us: int
    """Event time of the first id after the hole."""
    late: set[int] = field(default_factory=set)

    def missing_ranges(self) -> list[tuple[int, int]]:
        """The sub-ranges no late arrival filled, in order."""
        if not self.late:
            return [(self.from_id, self.to_id)]
        ranges: list[tuple[int, int]] = []
        start: int | None = None
        for i in range(self.from_id, self.to_id + 1):
            if i in self.late:
                if start is not None:
                    ranges.append((start, i - 1))
                    start = None
            elif start is None:
                start = i
        if start is not None:
            ranges.append((start, self.to_id))
        return ranges


class IdTracker:
    """Consecutive-id tracking for one channel (``trade`` or ``aggTrade``), all symbols.

    ``clock`` is monotonic seconds (injectable); ``wall_us`` gives the ``detected_at`` time.
    """

    def __init__(
        self,
        channel: str,
        *,
        settle_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self.channel = channel
        self.settle_s = settle_s
        self.clock = clock
        self.wall_us = wall_us
        self.last: dict[str, int] = {}
        self.last_ts: dict[str, int] = {}
        self.holes: dict[str, list[Hole]] = {}
        self.duplicates = 0
        self.late_fills = 0

    def observe(self, symbol: str, ident: int, ts_us: int) -> bool:
        """Record ``ident``; True when it is new (emit it), False for a duplicate."""
        last = self.last.get(symbol)
        if last is None or ident == last + 1:
            self.last[symbol] = ident
            self.last_ts[symbol] = ts_us
            return True
        if ident > last:
            hole = Hole(
                symbol,
                self.channel,
                last + 1,
                ident - 1,
                self.wall_us(),
                self.clock() + self.settle_s,
                self.last_ts.get(symbol, ts_us),
                ts_us,
            )
            self.holes.setdefault(symbol, []).append(hole)
            self.last[symbol] = ident
            self.last_ts[symbol] = ts_us
            return True
        for hole in self.holes.get(symbol, ()):
            if hole.from_id <= ident <= hole.to_id:
                if ident in hole.late:
                    break
                hole.late.add(ident)
                self.late_fills += 1
                return True
        self.duplicates += 1
        return False

    @property
    def pending(self) -> int:
        """Holes not settled yet."""
        return sum(len(h) for h in self.holes.values())

    def settled(self) -> list[Hole]:
        """Holes whose settle time passed, each cut to what is still missing (possibly
        several pieces, possibly none); they are forgotten here."""
        now = self.clock()
        out: list[Hole] = []
        for symbol in list(self.holes):
            keep: list[Hole] = []
            for hole in self.holes[symbol]:
                if hole.due_at > now:
                    keep.append(hole)
                    continue
                for a, b in hole.missing_ranges():
                    out.append(
                        Hole(
                            symbol,
                            hole.channel,
                            a,
                            b,
                            hole.detected_at_us,
                            hole.due_at,
                            hole.before_ts_us,
                            hole.after_ts_us,
                        )
                    )
            if keep:
                self.holes[symbol] = keep
            else:
                del self.holes[symbol]
        return out


@dataclass
class BackfillResult:
    kind: str
    rows: list[tuple[Any, ...]]
    status: str
    reason: str


def _kind(hole: Hole) -> str:
    return "agg_trade" if hole.channel == "aggTrade" else "trade"


def _num(value: Any) -> float:
    return float(value)


class TradeBackfiller:
    """Fetches the trades of a :class:`Hole` from the venue's REST API (see module doc)."""

    def __init__(
        self,
        rest: RestClient,
        *,
        api_key: str | None = None,
        wall_us: Callable[[], int] = lambda: time.time_ns() // 1000,
        exchange: str = EXCHANGE,
    ) -> None:
        self.rest = rest
        self.api_key = api_key
        self.wall_us = wall_us
        self.exchange = exchange
        self.routes = rest_routes(exchange)  # futures: /fapi/v1/..., /dapi/v1/...

    async def backfill(self, hole: Hole) -> BackfillResult:
        try:
            if hole.channel == "aggTrade":
                return await self._agg_ids(hole)
            if self.api_key:
                try:
                    return await self._historical(hole)
                except VenueError as exc:
                    if exc.status is None or not 400 <= exc.status < 500:
                        raise
                    result = await self._trades_from_aggregates(hole)
                    result.reason += f" (historicalTrades refused: HTTP {exc.status})"
                    return result
            return await self._trades_from_aggregates(hole)
        except VenueError as exc:
            return BackfillResult(_kind(hole), [], "unrecoverable", f"REST failed: {exc.reason}")
        except (KeyError, TypeError, ValueError) as exc:
            reason = f"REST answer malformed: {type(exc).__name__}: {exc}"
            return BackfillResult(_kind(hole), [], "unrecoverable", reason)

    def _verdict(
        self, kind: str, hole: Hole, rows: list[tuple[Any, ...]], source: str, extra: str = ""
    ) -> BackfillResult:
        wanted = hole.to_id - hole.from_id + 1
        if len(rows) == wanted:
            return BackfillResult(kind, rows, "backfilled", f"{wanted} restored from {source}")
        reason = f"{len(rows)} of {wanted} restored from {source}"
        return BackfillResult(kind, rows, "unrecoverable", reason + (f"; {extra}" if extra else ""))

    async def _historical(self, hole: Hole) -> BackfillResult:
        rows: dict[int, tuple[Any, ...]] = {}
        bad = 0
        next_id = hole.from_id
        recv = self.wall_us()
        while next_id <= hole.to_id:
            page = await self.rest.get_json(
                self.routes.historical_trades,
                {"symbol": hole.symbol, "fromId": next_id, "limit": PAGE},
                headers={"X-MBX-APIKEY": self.api_key or ""},
            )
            if not isinstance(page, list) or not page:
                break
            top = next_id
            for t in page:
                tid = int(t["id"])
                top = max(top, tid)
                if not hole.from_id <= tid <= hole.to_id:
                    continue
                price, qty = _num(t["price"]), _num(t["qty"])
                if not (0 < price < _INF and 0 <= qty < _INF):
                    bad += 1
                    continue
                rows[tid] = (
                    self.exchange,
                    hole.symbol,
                    tid,
                    price,
                    qty,
                    bool(t["isBuyerMaker"]),
                    int(t["time"]) * 1000,
                    recv,
                )
            if top < next_id:
                break
            next_id = top + 1
        extra = f"{bad} invalid rows refused" if bad else "the venue did not return the rest"
        return self._verdict("trade", hole, list(rows.values()), "historicalTrades", extra)

    async def _agg_ids(self, hole: Hole) -> BackfillResult:
        rows: dict[int, tuple[Any, ...]] = {}
        bad = 0
        next_id = hole.from_id
        recv = self.wall_us()
        while next_id <= hole.to_id:
            page = await self.rest.get_json(
                self.routes.agg_trades, {"symbol": hole.symbol, "fromId": next_id, "limit": PAGE}
            )
            if not isinstance(page, list) or not page:
                break
            top = next_id
            for a in page:
                aid = int(a["a"])
                top = max(top, aid)
                if not hole.from_id <= aid <= hole.to_id:
                    continue
                price, qty = _num(a["p"]), _num(a["q"])
                if not (0 < price < _INF and 0 <= qty < _INF):
                    bad += 1
                    continue
                rows[aid] = (
                    self.exchange,
                    hole.symbol,
                    aid,
                    price,
                    qty,
                    int(a["f"]),
                    int(a["l"]),
                    bool(a["m"]),
                    int(a["T"]) * 1000,
                    recv,
                )
            if top < next_id:
                break
            next_id = top + 1
        extra = f"{bad} invalid rows refused" if bad else "the venue did not return the rest"
        return self._verdict("agg_trade", hole, list(rows.values()), "aggTrades", extra)

    async def _trades_from_aggregates(self, hole: Hole) -> BackfillResult:
        """Rebuild trades from aggregates found by the time window around the hole."""
        rows: dict[int, tuple[Any, ...]] = {}
        merged = 0
        recv = self.wall_us()
        start_ms = hole.before_ts_us // 1000
        end_ms = max(hole.after_ts_us // 1000, start_ms)
        params: dict[str, Any] = {
            "symbol": hole.symbol,
            "startTime": start_ms,
            "endTime": min(end_ms, start_ms + HOUR_MS - 1),
            "limit": PAGE,
        }
        while True:
            page = await self.rest.get_json(self.routes.agg_trades, params)
            if not isinstance(page, list):
                break
            top_trade = -1
            for a in page:
                first, last = int(a["f"]), int(a["l"])
                top_trade = max(top_trade, last)
                lo, hi = max(first, hole.from_id), min(last, hole.to_id)
                if lo > hi:
                    continue
                if first != last:
                    merged += hi - lo + 1
                    continue
                price, qty = _num(a["p"]), _num(a["q"])
                if 0 < price < _INF and 0 <= qty < _INF:
                    rows[first] = (
                        self.exchange,
                        hole.symbol,
                        first,
                        price,
                        qty,
                        bool(a["m"]),
                        int(a["T"]) * 1000,
                        recv,
                    )
            if top_trade >= hole.to_id:
                break
            if len(page) >= PAGE:
                params = {"symbol": hole.symbol, "fromId": int(page[-1]["a"]) + 1, "limit": PAGE}
                continue
            if params.get("endTime", end_ms) < end_ms:
                window_start = int(params["endTime"]) + 1
                params = {
                    "symbol": hole.symbol,
                    "startTime": window_start,
                    "endTime": min(end_ms, window_start + HOUR_MS - 1),
                    "limit": PAGE,
                }
                continue
            break
        extra = (
            f"{merged} inside multi-trade aggregates (per-trade quantities need"
            " historicalTrades: set api_key_env)"
            if merged
            else "the venue returned no aggregate for the rest"
        )
        return self._verdict("trade", hole, list(rows.values()), "aggTrades", extra)
