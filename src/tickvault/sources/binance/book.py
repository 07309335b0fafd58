"""A local order book per symbol, kept correct by Binance's documented sync procedure.

The procedure (spot diff-depth stream):

1. Open the stream and buffer its events.
2. GET ``/api/v3/depth?symbol=&limit=`` (``/fapi/v1/depth``, ``/dapi/v1/depth`` on
   futures) → ``lastUpdateId`` ``L`` and the levels.
3. Drop buffered events with ``u <= L``.
4. The first event applied must straddle the snapshot: ``U <= L + 1 <= u``. If the first
   remaining event starts after ``L + 1`` the snapshot is older than the stream: fetch a
   new one (this is not a gap; the stream itself is continuous).
5. After that every event must have ``U == previous u + 1``. Anything else breaks the book:
   a gap ``[previous u + 1, U - 1]`` is reported and the book resyncs from step 2.

Futures diffs carry ``pu``, the ``u`` of the previous event, and their ``U`` need not be
``previous u + 1`` (update ids are not consecutive there): continuity is ``pu == previous
u``, and the first diff after a snapshot must have ``pu <= L < u``. Both rules are the spot
ones with ``U - 1`` read as "the update id before this diff", which is what
:meth:`BookSync.on_diff` takes as ``prev`` (default ``U - 1``; the collector passes ``pu``
on futures, read by :func:`futures_prev_id`).

:class:`BookSync` is that state machine for one symbol, pure and synchronous: it is told
about diffs (:meth:`BookSync.on_diff`) and snapshots (:meth:`BookSync.on_snapshot`) and
says what happened; the collector does the I/O. Diffs whose ``u`` is not above the last
one seen are duplicates (the overlap of a connection rollover) and are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from tickvault.sources.binance.wire import EXCHANGE
from tickvault.sources.rest import RestClient, VenueError

Levels = list[tuple[float, float]]

DUPLICATE = 0
"""on_diff: a diff already seen; ignore it (do not store it)."""
STORED = 1
"""on_diff: a new diff; store it."""
GAP = 2
"""on_diff: a new diff after missing update ids (``BookSync.last_gap``); store it, resync."""


@dataclass
class OrderBook:
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)

    def reset(self, bids: Levels, asks: Levels) -> None:
        self.bids = {p: q for p, q in bids if q > 0}
        self.asks = {p: q for p, q in asks if q > 0}

    def apply(
        self, bid_p: list[float], bid_q: list[float], ask_p: list[float], ask_q: list[float]
    ) -> None:
        for side, prices, qtys in ((self.bids, bid_p, bid_q), (self.asks, ask_p, ask_q)):
            for p, q in zip(prices, qtys, strict=True):
                if q == 0:
                    side.pop(p, None)
                else:
                    side[p] = q

    def sorted_levels(self, depth: int | None = None) -> tuple[Levels, Levels]:
        """Bids best (highest) first, asks best (lowest) first; ``depth`` levels each."""
        bids = sorted(self.bids.items(), key=lambda kv: -kv[0])[:depth]
        asks = sorted(self.asks.items())[:depth]
        return bids, asks


@dataclass
class _Diff:
    prev: int
    final: int
    bid_p: list[float]
    bid_q: list[float]
    ask_p: list[float]
    ask_q: list[float]


class BookSync:
    """The sync state machine of one symbol (see the module docstring).

    ``live`` is True while the book is correct; ``book_update_id`` is then the ``u`` of the
    last diff applied. ``wants_snapshot`` is True while the collector should fetch one.
    """

    def __init__(self, symbol: str, *, max_buffer: int = 50_000) -> None:
        self.symbol = symbol
        self.book = OrderBook()
        self.live = False
        self.wants_snapshot = True
        self.last_seen: int | None = None
        self.book_update_id: int | None = None
        self.last_gap: tuple[int, int] | None = None
        self.resyncs = 0
        self.max_buffer = max_buffer
        self._buffer: list[_Diff] = []
        self._snapshot_id: int | None = None  # applied snapshot awaiting its straddling diff

    def on_diff(
        self,
        first: int,
        final: int,
        bid_p: list[float],
        bid_q: list[float],
        ask_p: list[float],
        ask_q: list[float],
        prev: int | None = None,
    ) -> int:
        """Feed one diff; return :data:`DUPLICATE`, :data:`STORED` or :data:`GAP`.

        ``prev`` is the update id just before this diff: ``first - 1`` on spot (the
        default), the diff's ``pu`` on futures.
        """
        if prev is None:
            prev = first - 1
        last = self.last_seen
        if last is not None and final <= last:
            return DUPLICATE
        outcome = STORED
        if last is not None and prev > last:
            self.last_gap = (last + 1, prev)
            outcome = GAP
        self.last_seen = final
        diff = _Diff(prev, final, bid_p, bid_q, ask_p, ask_q)
        if self.live:
            if outcome == GAP:
                self._break()
                self._buffer.append(diff)
            else:
                self.book.apply(bid_p, bid_q, ask_p, ask_q)
                self.book_update_id = final
            return outcome
        if outcome == GAP:
            # The stream itself broke while syncing: what is buffered cannot bridge it.
            self._break()
        if self._snapshot_id is not None:
            self._bridge(diff)
        else:
            self._buffer.append(diff)
            if len(self._buffer) > self.max_buffer:
                del self._buffer[: len(self._buffer) - self.max_buffer]
        return outcome

    def _break(self) -> None:
        self.live = False
        self.wants_snapshot = True
        self._snapshot_id = None
        self._buffer.clear()
        self.book = OrderBook()
        self.book_update_id = None

    def _bridge(self, diff: _Diff) -> None:
        """A snapshot is applied and no buffered diff straddled it yet: try ``diff``."""
        snap = self._snapshot_id
        assert snap is not None
        if diff.final <= snap:
            return
        if diff.prev <= snap:
            self.book.apply(diff.bid_p, diff.bid_q, diff.ask_p, diff.ask_q)
            self.book_update_id = diff.final
            self._snapshot_id = None
            self.live = True
            self.wants_snapshot = False
            self.resyncs += 1
            return
        # The stream moved past the snapshot without a straddling diff: snapshot too old.
        self._snapshot_id = None
        self._buffer = [diff]
        self.wants_snapshot = True

    def snapshot_requested(self) -> None:
        """The collector started fetching a snapshot."""
        self.wants_snapshot = False

    def snapshot_failed(self) -> None:
        self.wants_snapshot = True

    def on_snapshot(self, last_update_id: int, bids: Levels, asks: Levels) -> bool:
        """Apply a REST snapshot. Returns True when the book is live afterwards.

        False means either that no diff after the snapshot has arrived yet (the next diff
        decides) or that the snapshot was too old (``wants_snapshot`` is True again).
        """
        if self.live:
            return True
        self.book.reset(bids, asks)
        self.book_update_id = last_update_id
        buffered = [d for d in self._buffer if d.final > last_update_id]
        self._buffer = []
        if not buffered:
            self._snapshot_id = last_update_id
            return False
        first = buffered[0]
        if not first.prev <= last_update_id < first.final:
            self._buffer = buffered
            self.book = OrderBook()
            self.book_update_id = None
            self.wants_snapshot = True
            return False
        previous = None
        for d in buffered:
            if previous is not None and d.prev != previous:  # pragma: no cover
                # on_diff already turns such a break into a GAP and clears the buffer
                self._break()
                return False
            self.book.apply(d.bid_p, d.bid_q, d.ask_p, d.ask_q)
            previous = d.final
        self.book_update_id = previous
        self.live = True
        self.wants_snapshot = False
        self.resyncs += 1
        return True

    @property
    def bridging(self) -> bool:
        return self._snapshot_id is not None


class Snapshot(msgspec.Struct):
    """``GET /api/v3/depth`` answer (prices and quantities arrive as decimal strings); the
    futures answer's extra ``E``/``T`` are not needed."""

    lastUpdateId: int
    bids: Levels
    asks: Levels


async def fetch_snapshot(
    rest: RestClient, symbol: str, limit: int, path: str = "/api/v3/depth"
) -> Snapshot:
    """The venue's book of ``symbol`` from ``path`` (the market's depth route); raises
    VenueError, also for an answer of the wrong shape."""
    raw = await rest.get_json(path, {"symbol": symbol, "limit": limit})
    try:
        return msgspec.convert(raw, Snapshot, strict=False)
    except msgspec.ValidationError as exc:
        raise VenueError(f"depth snapshot of {symbol} malformed: {exc}") from None


class _PrevId(msgspec.Struct):
    pu: int | None = None


class _WrappedPrevId(msgspec.Struct):
    data: _PrevId


_PREV = msgspec.json.Decoder(_PrevId)
_WRAPPED_PREV = msgspec.json.Decoder(_WrappedPrevId)


def futures_prev_id(data: bytes) -> int | None:
    """The ``pu`` of a futures diff-depth message (bare or stream-wrapped); ``None`` when it
    has none or cannot be read (the spot rule then applies)."""
    try:
        if not data.startswith(b'{"stream"'):
            prev = _PREV.decode(data).pu
            if prev is not None or b'"data"' not in data:
                return prev
        return _WRAPPED_PREV.decode(data).data.pu  # wrapped, keys in any order
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def snapshot_row(
    symbol: str,
    last_update_id: int,
    origin: str,
    bids: Levels,
    asks: Levels,
    recv_us: int,
    exchange: str = EXCHANGE,
) -> tuple[Any, ...]:
    """A ``book_snapshot`` row (column order of ``KINDS["book_snapshot"]``)."""
    return (
        exchange,
        symbol,
        last_update_id,
        origin,
        [p for p, _ in bids],
        [q for _, q in bids],
        [p for p, _ in asks],
        [q for _, q in asks],
        recv_us,
    )
