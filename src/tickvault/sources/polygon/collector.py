"""``polygon``: historical aggregates (bars) from Polygon's REST API.

``GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}``, following
``next_url`` until it is absent. The API key travels in the ``Authorization: Bearer``
header, so it never appears in a URL or a log line. 429 is retried after ``Retry-After``
(or with backoff), 5xx with capped exponential backoff (:mod:`.rest`).

Contract:

- The requested day range is cut into chunks of ``chunk_days`` days. A chunk's bars are
  yielded page by page; its last batch carries the chunk as ``position`` and
  :meth:`PolygonSource.commit` (called once the bus has every row of the chunk) records the
  chunk's days as *covered* for ``(ticker, timeframe)`` in ``state.sqlite3``.
- Only uncovered days are requested (all of them with ``refresh``, which also keeps a
  digest per day and holds back bars to replace for :mod:`.polygon_refresh`), so a
  restart resumes at the first chunk that was not committed and rerunning a finished
  range requests nothing. Days from today
  (UTC) on are never marked covered: they are still changing.
- ``next_url`` is a cursor, not a destination: only its path and query are taken, the
  path must be the same ticker's aggregates, and the request goes to the configured
  ``rest_url``. Requests (and the key) never go to another host.
- Every page's body ``status`` is checked: anything but ``OK`` or ``DELAYED`` (a refusal
  sent with HTTP 200, ``ERROR`` / ``NOT_AUTHORIZED``) ends the source with
  :attr:`PolygonSource.error` set and the chunk *not* covered, like any venue error that
  retries cannot fix. What was committed before stays covered.
- A bar without ``v`` / ``vw`` / ``n`` (index bars never have them) is stored with NULL
  volume / vwap / trade count, never 0.
- Each bar carries the ``adjusted`` flag of the download; a series already covered on the
  other basis is refused with a :class:`~tickvault.core.errors.ConfigError` (see
  :mod:`.polygon_coverage`).
- Expected days come from :mod:`.polygon_calendar` (exchange sessions for stocks, indices
  and options; the forex week; every day for crypto). A covered expected day without a
  bar is reported in :attr:`PolygonSource.missing_days` and as a ``missing`` row in
  ``gaps`` (channel ``bars:<timeframe>``, ids ``YYYYMMDD``), except the days before a
  ticker's first bar when its history starts after ``start``: those are reported once, in
  :attr:`PolygonSource.no_data_before`. Options only count their sessions without bars
  (:attr:`PolygonSource.quiet_sessions`). Bars longer than a day are not checked per day.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from tickvault.core.errors import ConfigError
from tickvault.sources.base import Source, SourceBatch, SourceHealth
from tickvault.sources.polygon.calendar import DayRule, day_number, day_of, trades_every_day
from tickvault.sources.polygon.coverage import CoverageStore, uncovered
from tickvault.sources.polygon.refresh import HeldBack, RefreshDigest
from tickvault.sources.polygon.wire import SOURCE, accepted_results, bar_rows, cursor_request
from tickvault.sources.rest import RestClient, Sleep, VenueError

__all__ = [
    "Chunk",
    "CoverageStore",
    "PolygonOptions",
    "PolygonSource",
    "day_number",
    "day_of",
    "parse_day",
    "parse_timeframe",
    "trades_every_day",
    "uncovered",
]

log = logging.getLogger(__name__)

_TICKER = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,63}")
_TIMESPANS = {"m": "minute", "h": "hour", "d": "day", "w": "week"}
_DEFAULT_CHUNK_DAYS = {"minute": 7, "hour": 90, "day": 3650, "week": 3650}


def parse_timeframe(timeframe: str) -> tuple[int, str]:
    """``"1m"`` → ``(1, "minute")``; also ``5m``, ``1h``, ``1d``, ``1w``."""
    m = re.fullmatch(r"(\d+)([mhdw])", timeframe.strip())
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"polygon: timeframe {timeframe!r} is not like 1m, 5m, 1h, 1d or 1w")
    return int(m.group(1)), _TIMESPANS[m.group(2)]


def parse_day(value: str | dt.date, what: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"polygon: {what} {value!r} is not a YYYY-MM-DD date") from None


def yyyymmdd(number: int) -> int:
    d = day_of(number)
    return d.year * 10000 + d.month * 100 + d.day


@dataclass(frozen=True)
class Chunk:
    ticker: str
    first_day: int
    last_day: int

    @property
    def days(self) -> int:
        return self.last_day - self.first_day + 1


@dataclass
class PolygonOptions:
    tickers: list[str]
    start: dt.date
    end: dt.date
    timeframe: str = "1m"
    rest_url: str = "https://api.polygon.io"
    api_key: str | None = None
    chunk_days: int | None = None
    rest_attempts: int = 8
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    adjusted: bool = True
    refresh: bool = False
    page_limit: int = 50_000
    multiplier: int = field(init=False)
    timespan: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.tickers:
            raise ConfigError("polygon: tickers must not be empty")
        for ticker in self.tickers:
            if not _TICKER.fullmatch(ticker):
                raise ConfigError(
                    f"polygon: ticker {ticker[:80]!r} is not like AAPL, BRK.A, X:BTCUSD,"
                    " C:EURUSD, I:NDX or O:SPY251219C00650000"
                )
        if self.end < self.start:
            raise ConfigError(f"polygon: to ({self.end}) is before from ({self.start})")
        self.multiplier, self.timespan = parse_timeframe(self.timeframe)
        if self.chunk_days is None:
            self.chunk_days = _DEFAULT_CHUNK_DAYS[self.timespan]
        if self.chunk_days < 1:
            raise ConfigError("polygon: chunk_days must be at least 1")

    @property
    def daily_or_finer(self) -> bool:
        """Bars no longer than a day, so every expected day should have one."""
        return self.timespan in ("minute", "hour") or (
            self.timespan == "day" and self.multiplier == 1
        )


class PolygonSource(Source):
    """Downloads bars for each ticker over the configured range (see module docstring)."""

    kind = "polygon"

    def __init__(
        self,
        options: PolygonOptions,
        coverage: CoverageStore | None = None,
        *,
        name: str = "polygon",
        today: Callable[[], dt.date] = lambda: dt.datetime.now(dt.UTC).date(),
        sleep: Sleep | None = None,
    ) -> None:
        self.options = o = options
        self.name = name
        self.coverage = coverage
        self.today = today
        self._check_basis()
        headers = {"Authorization": f"Bearer {o.api_key}"} if o.api_key else None
        kwargs: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
        self.rest = RestClient(
            o.rest_url,
            headers=headers,
            max_attempts=o.rest_attempts,
            backoff_initial_s=o.backoff_initial_s,
            backoff_max_s=o.backoff_max_s,
            **kwargs,
        )
        self._leading: dict[str, int] = {}
        self.chunks = self.plan()
        self.days_total = sum(c.days for c in self.chunks)
        self.days_done = 0
        self.chunks_done = 0
        self.bars = 0
        self.pages = 0
        self.delayed_pages = 0
        self.rejected = 0
        self.missing_days: dict[str, list[str]] = {}
        self.no_data_before: dict[str, str | None] = {}
        self.quiet_sessions: dict[str, int] = {}
        self.calendar_notes: set[str] = set()
        self.error: str | None = None
        self._rules: dict[str, DayRule] = {}
        self.refresh_digest = RefreshDigest() if o.refresh else None
        self.held_back: HeldBack | None = None
        """Set (with a store) for ``--refresh``: bars to replace are held back from the bus."""
        self._stopped = False
        self._last: float | None = None

    def stop(self) -> None:
        self._stopped = True

    def _check_basis(self) -> None:
        o = self.options
        if self.coverage is None:
            return
        for ticker in o.tickers:
            stored = self.coverage.basis(ticker, o.timeframe)
            if stored is not None and stored != o.adjusted:
                have, want = ("adjusted", "unadjusted") if stored else ("unadjusted", "adjusted")
                raise ConfigError(
                    f"polygon: {ticker} {o.timeframe} is stored with {have} prices; {want}"
                    " bars would share its keys and mix with them silently. Download them"
                    " into another store (--store / --data-dir), or keep the stored basis."
                )

    def plan(self) -> list[Chunk]:
        """The chunks to download: the requested days minus the covered ones (all of them
        with ``refresh``)."""
        o = self.options
        assert o.chunk_days is not None
        first, last = day_number(o.start), day_number(o.end)
        chunks: list[Chunk] = []
        for ticker in o.tickers:
            covered = self.coverage.covered(ticker, o.timeframe) if self.coverage else []
            todo = [(first, last)] if o.refresh else uncovered(first, last, covered)
            for a, b in todo:
                for lo in range(a, b + 1, o.chunk_days):
                    chunks.append(Chunk(ticker, lo, min(lo + o.chunk_days - 1, b)))
            if todo and not any(b < todo[0][0] for _, b in covered):
                # Nothing stored before the first day to download: the ticker's history
                # may start later, and the days before its first bar are one finding.
                self._leading[ticker] = todo[0][0]
        return chunks

    def _rule(self, ticker: str) -> DayRule:
        rule = self._rules.get(ticker)
        if rule is None:
            o = self.options
            rule = DayRule(ticker, day_number(o.start), day_number(o.end))
            if rule.note:
                self.calendar_notes.add(rule.note)
            self._rules[ticker] = rule
        return rule

    def _first_url(self, chunk: Chunk) -> tuple[str, dict[str, Any]]:
        o = self.options
        path = (
            f"{self._series_path(chunk.ticker)}"
            f"{day_of(chunk.first_day).isoformat()}/{day_of(chunk.last_day).isoformat()}"
        )
        params = {
            "adjusted": "true" if o.adjusted else "false",
            "sort": "asc",
            "limit": o.page_limit,
        }
        return path, params

    def _series_path(self, ticker: str) -> str:
        o = self.options
        return f"/v2/aggs/ticker/{ticker}/range/{o.multiplier}/{o.timespan}/"

    def _missing(self, chunk: Chunk, stamps: list[int], today: int) -> list[tuple[int, int]]:
        """Expected days of ``chunk`` without bars, as ranges (see module docstring)."""
        if not self.options.daily_or_finer:
            return []
        rule = self._rule(chunk.ticker)
        present = rule.bar_days(stamps)
        expected = [
            n
            for n in range(chunk.first_day, min(chunk.last_day, today - 1) + 1)
            if n in rule.expected
        ]
        leading_from = self._leading.get(chunk.ticker)
        if leading_from is not None:
            # No bar seen yet for this ticker: days before its first bar are not gaps.
            first_bar = min(present) if present else None
            expected = [n for n in expected if first_bar is not None and n >= first_bar]
            if first_bar is not None:
                del self._leading[chunk.ticker]
                if any(n < first_bar for n in rule.expected if n >= leading_from):
                    self.no_data_before[chunk.ticker] = day_of(first_bar).isoformat()
            elif chunk.last_day >= day_number(self.options.end):
                self.no_data_before[chunk.ticker] = None
        missing = [n for n in expected if n not in present]
        if rule.sparse:
            if missing:
                self.quiet_sessions[chunk.ticker] = self.quiet_sessions.get(chunk.ticker, 0) + len(
                    missing
                )
            return []
        ranges: list[tuple[int, int]] = []
        for n in missing:
            if ranges and ranges[-1][1] == n - 1:
                ranges[-1] = (ranges[-1][0], n)
            else:
                ranges.append((n, n))
        return ranges

    async def batches(self) -> AsyncIterator[SourceBatch]:
        tf = self.options.timeframe
        try:
            for chunk in self.chunks:
                if self._stopped:
                    return
                stamps: list[int] = []
                url, params = self._first_url(chunk)
                while True:
                    try:
                        page = await self.rest.get_json(url, params)
                        results, delayed = accepted_results(page)
                    except VenueError as exc:
                        self._stop_with(chunk, exc)
                        return
                    self.pages += 1
                    self.delayed_pages += delayed
                    self._last = time.monotonic()
                    batch = SourceBatch()
                    o = self.options
                    rows = bar_rows(
                        chunk.ticker, o.timeframe, o.adjusted, results, batch.rejects, stamps
                    )
                    self.bars += len(rows)
                    if rows and self.refresh_digest is not None:
                        for row in rows:
                            self.refresh_digest.add(chunk.ticker, row[3], row[4:11])
                        if self.held_back is not None:
                            rows = await self.held_back.filter(rows)
                    if rows:
                        batch.rows["bar"] = rows
                    batch.lines = len(results)
                    next_url = page.get("next_url")  # page is a dict: accepted_results
                    if not next_url:
                        today = day_number(self.today())
                        for a, b in self._missing(chunk, stamps, today):
                            self._report_missing(chunk, a, b, batch, tf)
                        batch.position = chunk
                        yield batch
                        break
                    yield batch
                    try:
                        url, params = cursor_request(next_url, self._series_path(chunk.ticker))
                    except VenueError as exc:
                        self._stop_with(chunk, exc)
                        return
        finally:
            await self.rest.aclose()

    def _stop_with(self, chunk: Chunk, exc: VenueError) -> None:
        """Record why the download stopped; the venue's words never carry the key."""
        reason = exc.reason
        if self.options.api_key:
            reason = reason.replace(self.options.api_key, "***")
        self.error = f"{chunk.ticker} {day_of(chunk.first_day)}: {reason}"
        log.error("polygon backfill stopped: %s", self.error)

    def _report_missing(
        self, chunk: Chunk, a: int, b: int, batch: SourceBatch, timeframe: str
    ) -> None:
        self.missing_days.setdefault(chunk.ticker, []).extend(
            day_of(n).isoformat() for n in range(a, b + 1)
        )
        now = time.time_ns() // 1000
        reason = "no bars on trading day(s) in range (missing data)"
        if self._rule(chunk.ticker).note:
            reason = "no bars on weekday(s) in range (market holiday or missing data)"
        batch.rows.setdefault("gap", []).append(
            (
                SOURCE,
                chunk.ticker,
                f"bars:{timeframe}",
                yyyymmdd(a),
                yyyymmdd(b),
                now,
                "missing",
                reason,
                now,
            )
        )

    async def commit(self, batch: SourceBatch) -> None:
        chunk = batch.position
        if not isinstance(chunk, Chunk):
            return
        self.chunks_done += 1
        self.days_done += chunk.days
        if self.coverage is None:
            return
        last_final = min(chunk.last_day, day_number(self.today()) - 1)
        if last_final >= chunk.first_day:
            self.coverage.add(
                chunk.ticker,
                self.options.timeframe,
                chunk.first_day,
                last_final,
                self.options.adjusted,
            )

    def health(self) -> SourceHealth:
        return SourceHealth(
            name=self.name,
            kind=self.kind,
            connected=self.error is None,
            last_message_age_s=None if self._last is None else time.monotonic() - self._last,
            messages=self.bars,
            gaps_open=0,
            detail=(
                f"{self.chunks_done}/{len(self.chunks)} chunks, {self.pages} pages,"
                f" {self.rest.stats.retries} retries ({self.rest.stats.throttled} throttled),"
                f" {sum(len(v) for v in self.missing_days.values())} missing days"
                + (f"; error: {self.error}" if self.error else "")
            ),
        )

    async def close(self) -> None:
        await self.rest.aclose()
        if self.coverage is not None:
            self.coverage.close()
