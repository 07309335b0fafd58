"""``binance``: the live Binance collector (websocket market streams + REST repair).

One collector records one market (spot, USD-M, COIN-M, Binance.US, Binance TR): its
endpoint (or ``market``) names it, stamps every row with it and picks its REST API
(:data:`~tickvault.sources.binance.markets.REST_ROUTES`).

Contract:

- **Connections.** The configured ``<symbol>@<channel>`` streams are split into
  combined-stream connections (``/stream?streams=a/b/...``) of at most
  ``max_streams_per_connection`` streams each, kept open forever by
  :class:`~tickvault.sources.binance.conn.StreamConnections`: reconnects with capped
  backoff and jitter and no retry limit, stall detection, answered pings, and an
  overlapping rollover before the venue's 24-hour cut. Messages received twice during an
  overlap are dropped by the id trackers (and would be harmless anyway: natural keys).
- **Gaps.** Trade and aggregate ids are tracked per symbol (:mod:`.binance_gaps`); every
  gap is written to ``gaps`` (``open``), backfilled from REST, and closed as ``backfilled``
  or ``unrecoverable`` with the reason. Backfilled rows travel in this source's batches,
  through the same publisher, bus and writer as live rows.
- **Depth.** Diffs are stored in ``depth_updates``; a book per symbol is kept with the
  venue's sync procedure (:mod:`.binance_book`). A break is a ``depth`` gap row, then a
  resync from a REST snapshot and a ``resynced`` row. REST snapshots, and the local book
  every ``book_snapshot_every_s``, go to ``book_snapshots``.
- **Bad frames** become dead letters keyed ``binance:<connection>:<recv µs>:<n>``.
- **Recording.** With ``record_dir`` every frame is also written to rotating ``.jsonl.gz``
  files (:mod:`.recorder`) that ``tickvault replay`` accepts.

Timing uses an injectable monotonic ``clock``; the supervisors look at it at least every
``tick_s``, so a test can move the clock forward (stall, rollover) without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from tickvault.core.backoff import Backoff
from tickvault.core.errors import TickvaultError
from tickvault.sources.base import Source, SourceBatch, SourceHealth
from tickvault.sources.binance.book import (
    DUPLICATE,
    GAP,
    BookSync,
    fetch_snapshot,
    futures_prev_id,
    snapshot_row,
)
from tickvault.sources.binance.conn import (
    CHANNELS,
    BinanceOptions,
    FrameInbox,
    StreamConnections,
    split_streams,
    stream_names,
)
from tickvault.sources.binance.gaps import Hole, IdTracker, TradeBackfiller
from tickvault.sources.binance.markets import (
    FUTURES,
    check_market,
    market_from_url,
    rest_base,
    rest_routes,
)
from tickvault.sources.binance.resume import open_gaps
from tickvault.sources.binance.wire import NonMarketTrade, SkippedMessage, parse_values
from tickvault.sources.poison import raw_dead_letter
from tickvault.sources.recorder import FrameRecorder
from tickvault.sources.rest import RestClient, VenueError
from tickvault.stores.base import Store

log = logging.getLogger(__name__)

__all__ = ["CHANNELS", "BinanceOptions", "BinanceSource", "split_streams", "stream_names"]


class BinanceSource(Source):
    """The live collector; see the module docstring for its contract."""

    kind = "binance"
    live = True

    def __init__(
        self,
        options: BinanceOptions,
        *,
        name: str = "binance",
        clock: Callable[[], float] = time.monotonic,
        wall_us: Callable[[], int] = lambda: time.time_ns() // 1000,
        rng: random.Random | None = None,
    ) -> None:
        self.options = o = options
        self.name = name
        self.clock = clock
        self.wall_us = wall_us
        self.rng = rng or random.Random()
        # Each market is its own key space: the endpoint says which one this is.
        self.exchange = check_market(o.market) if o.market else market_from_url(o.ws_url)
        self.routes = rest_routes(self.exchange)
        self.futures = self.exchange in FUTURES
        self.non_market_trades = 0
        self.streams = stream_names(o.symbols, o.channels)
        self.groups = split_streams(self.streams, o.max_streams_per_connection)
        self.trades = IdTracker("trade", settle_s=o.gap_settle_s, clock=clock, wall_us=wall_us)
        self.aggs = IdTracker("aggTrade", settle_s=o.gap_settle_s, clock=clock, wall_us=wall_us)
        self.books: dict[str, BookSync] = {}
        self.messages = 0
        self.gaps_open = 0
        self.gaps_backfilled = 0
        self.gaps_unrecoverable = 0
        self.gaps_resynced = 0
        self.last_error = ""
        self.recorder: FrameRecorder | None = None
        if o.record_dir:
            self.recorder = FrameRecorder(
                o.record_dir,
                prefix=f"binance-{name}",
                rotate_s=o.record_rotate_s,
                rotate_bytes=o.record_rotate_bytes,
            )
        # The key goes only where it is needed (historicalTrades), never on public calls.
        self.rest = RestClient(
            rest_base(self.exchange, o.rest_url),
            max_attempts=o.rest_attempts,
            backoff_initial_s=o.backoff_initial_s,
            backoff_max_s=o.backoff_max_s,
            rng=self.rng,
        )
        self.backfiller = TradeBackfiller(
            self.rest, api_key=o.api_key, wall_us=wall_us, exchange=self.exchange
        )
        self._stopping = asyncio.Event()
        self.inbox = FrameInbox()
        self.connections = StreamConnections(
            o,
            self.groups,
            self.inbox,
            self._stopping,
            clock=clock,
            rng=self.rng,
            note_error=self._note_error,
        )
        self._emit: dict[str, list[tuple[Any, ...]]] = {}
        self._backfills: asyncio.Queue[Hole] = asyncio.Queue()
        self._depth_gaps: dict[str, list[tuple[int, int, int]]] = {}
        self._snapshot_tasks: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._next_book_snapshot = 0.0
        self._next_flush = 0.0
        self._started = False
        self._store: Store | None = None
        self.gaps_resumed = 0

    # -- public surface ---------------------------------------------------------------------

    def use_store(self, store: Store) -> None:
        """At start, backfill this collector's gaps an earlier run left ``open``
        (:mod:`.binance_resume`)."""
        self._store = store

    def stop(self) -> None:
        """Finish: close the connections, let in-flight backfills end (``stop_grace_s``),
        yield the last batch."""
        self._stopping.set()

    @property
    def open_connections(self) -> int:
        return self.connections.open_connections

    @property
    def reconnects(self) -> int:
        return self.connections.reconnects

    @property
    def rollovers(self) -> int:
        return self.connections.rollovers

    @property
    def stalls(self) -> int:
        return self.connections.stalls

    def _note_error(self, text: str) -> None:
        self.last_error = text

    def health(self) -> SourceHealth:
        now = self.clock()
        pending = self.trades.pending + self.aggs.pending
        last = self.connections.last_message_at
        return SourceHealth(
            name=self.name,
            kind=self.kind,
            connected=self.connections.connected,
            last_message_age_s=None if last is None else max(0.0, now - last),
            messages=self.messages,
            reconnects=self.reconnects,
            gaps_open=self.gaps_open + pending,
            gaps_backfilled=self.gaps_backfilled,
            gaps_unrecoverable=self.gaps_unrecoverable,
            detail=(
                f"{self.open_connections}/{len(self.groups)} connections,"
                f" {self.rollovers} rollovers, {self.stalls} stalls,"
                f" {self.gaps_resynced} depth resyncs"
                + (f", {self.non_market_trades} non-market trades skipped" if self.futures else "")
                + (f"; last error: {self.last_error}" if self.last_error else "")
            ),
        )

    # -- the batch loop ---------------------------------------------------------------------

    async def batches(self) -> AsyncIterator[SourceBatch]:
        self._start()
        try:
            while True:
                batch = SourceBatch()
                self._ingest(batch, await self._collect(batch, drain=False))
                if self._stopping.is_set():
                    # The pump stops asking after the batch it gets once stop() was called,
                    # so that batch is the final one.
                    yield await self._final_batch(batch)
                    return
                self._housekeeping()
                self._take_emitted(batch)
                if len(batch) or batch.rejects or batch.lines:
                    yield batch
                self._check_tasks()
        finally:
            await self.close()

    def _ingest(self, batch: SourceBatch, frames: list[bytes]) -> None:
        if self.recorder is not None and frames:
            self.recorder.write(frames)

    def _take_emitted(self, batch: SourceBatch) -> None:
        if self._emit:
            for kind, rows in self._emit.items():
                batch.rows.setdefault(kind, []).extend(rows)
            self._emit = {}

    def _check_tasks(self) -> None:
        for task in self._tasks:
            if task.done() and not task.cancelled():
                exc = task.exception()
                if exc is not None:
                    raise exc

    async def _collect(
        self, batch: SourceBatch, *, drain: bool, limit: int | None = None
    ) -> list[bytes]:
        """Parse queued frames into ``batch``: for up to ``batch_linger_s`` (``drain``: only
        what is queued now), at most ``limit`` frames (default ``batch_max_records``)."""
        o = self.options
        frames: list[bytes] = []
        record = self.recorder is not None
        deadline = time.monotonic() + o.batch_linger_s
        queued = self.inbox.frames
        pop = queued.popleft
        arrived = self.inbox.arrived
        trades, aggs = self.trades, self.aggs
        exchange = self.exchange
        rows = batch.rows
        count = 0
        limit = o.batch_max_records if limit is None else limit
        while count < limit:
            if not queued:
                if drain:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), timeout=remaining)
                except TimeoutError:
                    break
                continue
            tag, seq, recv_us, data = pop()
            count += 1
            if record:
                frames.append(data)
            try:
                kind, row = parse_values(data, recv_us, exchange)
            except NonMarketTrade as skip:
                self.non_market_trades += 1
                trades.observe(skip.symbol, skip.trade_id, skip.ts_us)
                continue
            except SkippedMessage:
                continue
            except Exception as exc:  # any message at all: see sources.poison
                batch.rejects.append(raw_dead_letter(exc, data, f"binance:{tag}:{recv_us}:{seq}"))
                continue
            if kind == "trade":
                if not trades.observe(row[1], row[2], row[6]):
                    continue
            elif kind == "agg_trade":
                if not aggs.observe(row[1], row[2], row[8]):
                    continue
            elif kind == "depth" and not self._on_depth(row, data):
                continue
            bucket = rows.get(kind)
            if bucket is None:
                bucket = rows[kind] = []
            bucket.append(row)
        batch.lines += count
        self.messages += count
        self.inbox.release()
        return frames

    # -- depth --------------------------------------------------------------------------------

    def _on_depth(self, row: tuple[Any, ...], data: bytes) -> bool:
        symbol = row[1]
        sync = self.books.get(symbol)
        if sync is None:
            sync = self.books[symbol] = BookSync(symbol)
        was_live = sync.live
        prev = futures_prev_id(data) if self.futures else None
        outcome = sync.on_diff(row[2], row[3], row[4], row[5], row[6], row[7], prev)
        if outcome == DUPLICATE:
            return False
        if outcome == GAP and sync.last_gap is not None:
            a, b = sync.last_gap
            now = self.wall_us()
            self._depth_gaps.setdefault(symbol, []).append((a, b, now))
            self.gaps_open += 1
            self._add_gap(symbol, "depth", a, b, now, "open", "depth diff sequence broke", now)
        if not was_live and sync.live:
            self._book_live(sync)
        if sync.wants_snapshot and symbol not in self._snapshot_tasks:
            self._fetch_snapshot(sync)
        return True

    def _fetch_snapshot(self, sync: BookSync) -> None:
        sync.snapshot_requested()
        task = asyncio.create_task(self._snapshot(sync), name=f"binance-snapshot-{sync.symbol}")
        self._snapshot_tasks[sync.symbol] = task

    async def _snapshot(self, sync: BookSync) -> None:
        symbol = sync.symbol
        o = self.options
        failed = Backoff(o.backoff_initial_s, o.backoff_max_s, jitter="equal", rng=self.rng.random)
        stale = Backoff(0.05, o.backoff_max_s, jitter="equal", rng=self.rng.random)
        attempt = 0  # one count for both schedules: failures and stale snapshots in a row
        try:
            while not self._stopping.is_set():
                sync.snapshot_requested()
                try:
                    snap = await fetch_snapshot(
                        self.rest, symbol, self.options.depth_snapshot_limit, self.routes.depth
                    )
                except VenueError as exc:
                    attempt += 1
                    self.last_error = f"depth snapshot {symbol}: {exc}"
                    log.warning("%s", self.last_error)
                    await asyncio.sleep(failed.delay(attempt - 1))
                    continue
                self._emit_row(
                    "book_snapshot",
                    snapshot_row(
                        symbol,
                        snap.lastUpdateId,
                        "rest",
                        snap.bids,
                        snap.asks,
                        self.wall_us(),
                        self.exchange,
                    ),
                )
                was_live = sync.live
                sync.on_snapshot(snap.lastUpdateId, snap.bids, snap.asks)
                if not was_live and sync.live:
                    self._book_live(sync)
                if not sync.wants_snapshot:
                    return  # live, or waiting for the diff that straddles the snapshot
                # The snapshot is older than the buffered stream: take another.
                attempt += 1
                await asyncio.sleep(stale.delay(attempt - 1))
        finally:
            self._snapshot_tasks.pop(symbol, None)
            if not sync.live and not sync.bridging:
                sync.snapshot_failed()

    def _book_live(self, sync: BookSync) -> None:
        """The book of ``sync.symbol`` became correct: close its open depth gaps."""
        gaps = self._depth_gaps.pop(sync.symbol, [])
        now = self.wall_us()
        for a, b, detected in gaps:
            self.gaps_open -= 1
            self.gaps_resynced += 1
            self._add_gap(
                sync.symbol,
                "depth",
                a,
                b,
                detected,
                "resynced",
                f"book rebuilt from a REST snapshot, live again at update {sync.book_update_id}",
                now,
            )

    def _local_snapshots(self) -> None:
        now = self.wall_us()
        for sync in self.books.values():
            if not sync.live or sync.book_update_id is None:
                continue
            bids, asks = sync.book.sorted_levels(self.options.depth_snapshot_limit)
            self._emit_row(
                "book_snapshot",
                snapshot_row(
                    sync.symbol, sync.book_update_id, "local", bids, asks, now, self.exchange
                ),
            )

    # -- gaps and backfill ----------------------------------------------------------------------

    def _emit_row(self, kind: str, row: tuple[Any, ...]) -> None:
        self._emit.setdefault(kind, []).append(row)

    def _add_gap(
        self,
        symbol: str,
        channel: str,
        from_id: int,
        to_id: int,
        detected_us: int,
        status: str,
        reason: str,
        status_us: int,
    ) -> None:
        row = (self.exchange, symbol, channel, from_id, to_id, detected_us, status, reason)
        self._emit_row("gap", (*row, status_us))
        log.log(
            logging.WARNING if status in ("open", "unrecoverable") else logging.INFO,
            "gap %s %s [%d, %d] %s: %s",
            symbol,
            channel,
            from_id,
            to_id,
            status,
            reason,
        )

    def _housekeeping(self, *, final: bool = False) -> None:
        for tracker in (self.trades, self.aggs):
            for hole in tracker.settled():
                n = hole.to_id - hole.from_id + 1
                self.gaps_open += 1
                self._add_gap(
                    hole.symbol,
                    hole.channel,
                    hole.from_id,
                    hole.to_id,
                    hole.detected_at_us,
                    "open",
                    f"{n} id(s) missing from the stream",
                    hole.detected_at_us,
                )
                self._backfills.put_nowait(hole)
        now = self.clock()
        if self.books and now >= self._next_book_snapshot:
            if self._next_book_snapshot:
                self._local_snapshots()
            self._next_book_snapshot = now + self.options.book_snapshot_every_s
        if self.recorder is not None and (final or now >= self._next_flush):
            self.recorder.flush()
            self._next_flush = now + 1.0

    async def _backfill_worker(self) -> None:
        while True:
            hole = await self._backfills.get()
            try:
                result = await self.backfiller.backfill(hole)
            finally:
                self._backfills.task_done()
            if result.rows:
                self._emit.setdefault(result.kind, []).extend(result.rows)
            self.gaps_open -= 1
            if result.status == "backfilled":
                self.gaps_backfilled += 1
            else:
                self.gaps_unrecoverable += 1
                self.last_error = f"gap {hole.symbol} {hole.channel}: {result.reason}"
            self._add_gap(
                hole.symbol,
                hole.channel,
                hole.from_id,
                hole.to_id,
                hole.detected_at_us,
                result.status,
                result.reason,
                self.wall_us(),
            )
            self._wake()

    # -- tasks --------------------------------------------------------------------------------

    def _wake(self) -> None:
        self.inbox.arrived.set()

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._next_flush = self.clock() + 1.0
        self._tasks.extend(self.connections.start())
        self._tasks.append(asyncio.create_task(self._backfill_worker(), name="binance-backfill"))
        if self._store is not None:
            self._tasks.append(asyncio.create_task(self._resume_gaps(), name="binance-resume"))

    async def _resume_gaps(self) -> None:
        """Queue the gaps an earlier run left ``open`` (once per start, behind live gaps'
        rate limits); a store that cannot answer is logged and the collector goes on."""
        assert self._store is not None
        o = self.options
        try:
            holes = await open_gaps(self._store, self.exchange, o.symbols, o.channels)
        except TickvaultError as exc:
            self._note_error(f"open gaps of an earlier run not resumed: {exc}")
            log.warning("%s", self.last_error)
            return
        for hole in holes:
            log.info(
                "gap %s %s [%d, %d] left open by an earlier run: backfilling",
                hole.symbol,
                hole.channel,
                hole.from_id,
                hole.to_id,
            )
            self.gaps_open += 1
            self.gaps_resumed += 1
            self._backfills.put_nowait(hole)

    # -- shutdown -----------------------------------------------------------------------------

    async def _final_batch(self, batch: SourceBatch) -> SourceBatch:
        """Stop reading; parse what is queued; settle every hole at once; give backfills
        ``stop_grace_s`` to complete. Gaps still unresolved then stay ``open`` in ``gaps``."""
        for task in self._tasks[: len(self.groups)]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout=5.0)
        self._ingest(batch, await self._collect(batch, drain=True, limit=1 << 62))
        for tracker in (self.trades, self.aggs):
            for holes in tracker.holes.values():
                for hole in holes:
                    hole.due_at = 0.0
        self._housekeeping(final=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._backfills.join(), timeout=self.options.stop_grace_s)
        self._take_emitted(batch)
        return batch

    async def close(self) -> None:
        self._stopping.set()
        tasks = [*self._tasks, *self._snapshot_tasks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.connections.close_all()
        await self.rest.aclose()
        if self.recorder is not None:
            self.recorder.close()
