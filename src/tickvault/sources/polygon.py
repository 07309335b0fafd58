"""``polygon``: historical aggregates (bars) from Polygon's REST API.

``GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}``, following
``next_url`` until it is absent. The API key travels in the ``Authorization: Bearer``
header (which Polygon accepts for every endpoint, ``next_url`` pages included), so it never
appears in a URL or a log line. 429 is retried after ``Retry-After`` (or with backoff), 5xx
with capped exponential backoff (:mod:`.rest`).

Contract:

- The requested day range is cut into chunks of ``chunk_days`` days. A chunk's bars are
  yielded page by page; its last batch carries the chunk as ``position`` and
  :meth:`PolygonSource.commit` (called once the bus has every row of the chunk) records the
  chunk's days as *covered* for ``(ticker, timeframe)`` in ``state.sqlite3``.
- Only uncovered days are requested, so a restart resumes at the first chunk that was not
  committed and rerunning a finished range requests nothing. Days from today (UTC) on are
  never marked covered: they are still changing.
- Every covered day that is expected to trade (Monday to Friday for stocks, indices and
  forex; every day for crypto ``X:`` tickers) but has no bar is reported: in
  :attr:`PolygonSource.missing_days` and as a ``missing`` row in ``gaps`` (channel
  ``bars:<timeframe>``, ids ``YYYYMMDD``). Market holidays show up there too, on purpose:
  the source cannot tell a holiday from an outage, the user can.
- A venue error that retries cannot fix (a refused key, retries exhausted) ends the source
  early with :attr:`PolygonSource.error` set; what was committed stays covered.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tickvault.bus.base import NewDeadLetter
from tickvault.errors import ConfigError
from tickvault.sources.base import Source, SourceBatch, SourceHealth
from tickvault.sources.rest import RestClient, Sleep, VenueError

log = logging.getLogger(__name__)

SOURCE = "polygon"
_TIMESPANS = {"m": "minute", "h": "hour", "d": "day", "w": "week"}
_DEFAULT_CHUNK_DAYS = {"minute": 7, "hour": 90, "day": 3650, "week": 3650}
_EPOCH = dt.date(1970, 1, 1)


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


def day_number(day: dt.date) -> int:
    return (day - _EPOCH).days


def day_of(number: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=number)


def yyyymmdd(number: int) -> int:
    d = day_of(number)
    return d.year * 10000 + d.month * 100 + d.day


def trades_every_day(ticker: str) -> bool:
    """Crypto (``X:``) trades every day; stocks, indices and forex not at weekends."""
    return ticker.upper().startswith("X:")


class CoverageStore:
    """Which days of ``(ticker, timeframe)`` are durably downloaded (``state.sqlite3``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS polygon_coverage (ticker TEXT NOT NULL,"
            " timeframe TEXT NOT NULL, day_from INTEGER NOT NULL, day_to INTEGER NOT NULL,"
            " PRIMARY KEY (ticker, timeframe, day_from))"
        )

    def covered(self, ticker: str, timeframe: str) -> list[tuple[int, int]]:
        rows = self._conn.execute(
            "SELECT day_from, day_to FROM polygon_coverage WHERE ticker=? AND timeframe=?"
            " ORDER BY day_from",
            (ticker, timeframe),
        ).fetchall()
        return [(int(a), int(b)) for a, b in rows]

    def add(self, ticker: str, timeframe: str, day_from: int, day_to: int) -> None:
        """Mark ``[day_from, day_to]`` covered, merging with touching intervals."""
        merged = [(day_from, day_to)]
        for a, b in self.covered(ticker, timeframe):
            lo, hi = merged[0]
            if a <= hi + 1 and b >= lo - 1:
                merged[0] = (min(a, lo), max(b, hi))
            else:
                merged.append((a, b))
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(
                "DELETE FROM polygon_coverage WHERE ticker=? AND timeframe=?", (ticker, timeframe)
            )
            self._conn.executemany(
                "INSERT INTO polygon_coverage VALUES (?,?,?,?)",
                [(ticker, timeframe, a, b) for a, b in merged],
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conn.close()


def uncovered(first: int, last: int, covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[first, last]`` outside the sorted ``covered`` intervals."""
    out: list[tuple[int, int]] = []
    cursor = first
    for a, b in covered:
        if b < cursor:
            continue
        if a > last:
            break
        if a > cursor:
            out.append((cursor, min(a - 1, last)))
        cursor = max(cursor, b + 1)
        if cursor > last:
            break
    if cursor <= last:
        out.append((cursor, last))
    return out


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
    page_limit: int = 50_000
    multiplier: int = field(init=False)
    timespan: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.tickers:
            raise ConfigError("polygon: tickers must not be empty")
        if self.end < self.start:
            raise ConfigError(f"polygon: to ({self.end}) is before from ({self.start})")
        self.multiplier, self.timespan = parse_timeframe(self.timeframe)
        if self.chunk_days is None:
            self.chunk_days = _DEFAULT_CHUNK_DAYS[self.timespan]
        if self.chunk_days < 1:
            raise ConfigError("polygon: chunk_days must be at least 1")


def _bar_reason(o: float, h: float, lo: float, c: float, v: float) -> str | None:
    for name, x in (("open", o), ("high", h), ("low", lo), ("close", c)):
        if not math.isfinite(x):
            return f"non-finite {name}"
        if x <= 0:
            return f"non-positive {name}"
    if not math.isfinite(v):
        return "non-finite volume"
    if v < 0:
        return "negative volume"
    if h < lo:
        return "high below low"
    return None


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
        self.chunks = self.plan()
        self.days_total = sum(c.days for c in self.chunks)
        self.days_done = 0
        self.chunks_done = 0
        self.bars = 0
        self.pages = 0
        self.rejected = 0
        self.missing_days: dict[str, list[str]] = {}
        self.error: str | None = None
        self._stopped = False
        self._last: float | None = None

    def stop(self) -> None:
        self._stopped = True

    def plan(self) -> list[Chunk]:
        """The chunks still to download: the requested days minus the covered ones."""
        o = self.options
        assert o.chunk_days is not None
        first, last = day_number(o.start), day_number(o.end)
        chunks: list[Chunk] = []
        for ticker in o.tickers:
            covered = self.coverage.covered(ticker, o.timeframe) if self.coverage else []
            for a, b in uncovered(first, last, covered):
                for lo in range(a, b + 1, o.chunk_days):
                    chunks.append(Chunk(ticker, lo, min(lo + o.chunk_days - 1, b)))
        return chunks

    def _first_url(self, chunk: Chunk) -> tuple[str, dict[str, Any]]:
        o = self.options
        path = (
            f"/v2/aggs/ticker/{chunk.ticker}/range/{o.multiplier}/{o.timespan}/"
            f"{day_of(chunk.first_day).isoformat()}/{day_of(chunk.last_day).isoformat()}"
        )
        params = {
            "adjusted": "true" if o.adjusted else "false",
            "sort": "asc",
            "limit": o.page_limit,
        }
        return path, params

    def _rows(
        self, chunk: Chunk, results: list[Any], batch: SourceBatch, days: set[int]
    ) -> list[tuple[Any, ...]]:
        tf = self.options.timeframe
        rows: list[tuple[Any, ...]] = []
        for bar in results:
            try:
                t = int(bar["t"])
                o, h, lo, c = (float(bar[k]) for k in ("o", "h", "l", "c"))
                v = float(bar.get("v", 0.0))
            except (KeyError, TypeError, ValueError) as exc:
                reason = f"missing field {exc}" if isinstance(exc, KeyError) else "bad value"
                key = f"polygon:{chunk.ticker}:{tf}:{bar.get('t') if isinstance(bar, dict) else ''}"
                batch.rejects.append(NewDeadLetter("raw", reason, orjson.dumps(bar), key))
                continue
            refused = _bar_reason(o, h, lo, c, v)
            if refused is not None:
                key = f"polygon:{chunk.ticker}:{tf}:{t}:{refused}"
                batch.rejects.append(NewDeadLetter("raw", refused, orjson.dumps(bar), key))
                continue
            vw = bar.get("vw")
            vwap = float(vw) if isinstance(vw, int | float) and 0 < vw < math.inf else None
            n = bar.get("n")
            count = int(n) if isinstance(n, int | float) and n >= 0 else None
            rows.append((SOURCE, chunk.ticker, tf, t * 1000, o, h, lo, c, v, vwap, count))
            days.add(t // 86_400_000)
        return rows

    def _missing(self, chunk: Chunk, days: set[int], today: int) -> list[tuple[int, int]]:
        every_day = trades_every_day(chunk.ticker)
        missing: list[int] = []
        for n in range(chunk.first_day, min(chunk.last_day, today - 1) + 1):
            if n in days:
                continue
            if not every_day and day_of(n).weekday() >= 5:
                continue
            missing.append(n)
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
                days: set[int] = set()
                url, params = self._first_url(chunk)
                params_or_none: dict[str, Any] | None = params
                while True:
                    try:
                        page = await self.rest.get_json(url, params_or_none)
                    except VenueError as exc:
                        self.error = f"{chunk.ticker} {day_of(chunk.first_day)}: {exc.reason}"
                        log.error("polygon backfill stopped: %s", self.error)
                        return
                    self.pages += 1
                    self._last = time.monotonic()
                    batch = SourceBatch()
                    results = page.get("results") if isinstance(page, dict) else None
                    rows = self._rows(chunk, results or [], batch, days)
                    if rows:
                        batch.rows["bar"] = rows
                        self.bars += len(rows)
                    batch.lines = len(results or [])
                    next_url = page.get("next_url") if isinstance(page, dict) else None
                    if not next_url:
                        today = day_number(self.today())
                        for a, b in self._missing(chunk, days, today):
                            self._report_missing(chunk, a, b, batch, tf)
                        batch.position = chunk
                        yield batch
                        break
                    yield batch
                    url, params_or_none = str(next_url), None
        finally:
            await self.rest.aclose()

    def _report_missing(
        self, chunk: Chunk, a: int, b: int, batch: SourceBatch, timeframe: str
    ) -> None:
        self.missing_days.setdefault(chunk.ticker, []).extend(
            day_of(n).isoformat() for n in range(a, b + 1)
        )
        now = time.time_ns() // 1000
        reason = "no bars on weekday(s) in range (market holiday or missing data)"
        if trades_every_day(chunk.ticker):
            reason = "no bars on day(s) in range (missing data)"
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
            self.coverage.add(chunk.ticker, self.options.timeframe, chunk.first_day, last_final)

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
