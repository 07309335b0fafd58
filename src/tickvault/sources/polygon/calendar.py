"""Which days a Polygon ticker is expected to have bars on, by asset class.

- Crypto (``X:``) trades every day (UTC days).
- Forex (``C:``) trades its week, Sunday evening to Friday evening UTC: Monday to Friday are
  expected; a Sunday bar is stored when there is one but never expected.
- Stocks (no prefix), indices (``I:``) and options (``O:``) trade on the sessions of the New
  York Stock Exchange, taken from ``exchange_calendars`` (the maintained calendar library
  the Python market-data field uses; holidays and early closes are hand-kept there, not
  here). Their bars are counted on the exchange's local date, so an after-hours bar at
  19:59 New York time belongs to its session, not to the next UTC day. The library pulls
  in pandas, so it is imported on first use, only by the backfill; without it (``pip
  install tickvault[polygon]``) weekdays stand in and :attr:`DayRule.note` says so.
- Options trade on few sessions: an option without trades has no bar, which is not missing
  data, so their sessions without bars are counted, never reported one by one.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from zoneinfo import ZoneInfo

log = logging.getLogger(__name__)

EPOCH = dt.date(1970, 1, 1)
EXCHANGE = "XNYS"
_EXCHANGE_TZ = ZoneInfo("America/New_York")
_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000


def day_number(day: dt.date) -> int:
    return (day - EPOCH).days


def day_of(number: int) -> dt.date:
    return EPOCH + dt.timedelta(days=number)


def asset_class(ticker: str) -> str:
    """``crypto``, ``forex``, ``index``, ``option`` or ``stock``, from the ticker's prefix."""
    prefix = ticker.upper().split(":", 1)[0] if ":" in ticker else ""
    return {"X": "crypto", "C": "forex", "I": "index", "O": "option"}.get(prefix, "stock")


def trades_every_day(ticker: str) -> bool:
    """Crypto (``X:``) trades every day; every other asset class has days off."""
    return asset_class(ticker) == "crypto"


@lru_cache(maxsize=8)
def exchange_sessions(first: int, last: int) -> frozenset[int] | None:
    """Day numbers of the exchange's sessions in ``[first, last]``; None without the library."""
    try:
        import exchange_calendars
    except ImportError:
        return None
    start, end = day_of(first), day_of(last)
    try:
        with warnings.catch_warnings():
            # The library's own deprecation notices about pandas internals, not ours.
            warnings.simplefilter("ignore")
            # A calendar's own range must start and end on sessions: pad, then filter.
            pad = dt.timedelta(days=14)
            calendar = exchange_calendars.get_calendar(
                EXCHANGE, start=(start - pad).isoformat(), end=(end + pad).isoformat()
            )
            sessions = [ts.date() for ts in calendar.sessions]
    except Exception as exc:  # the library's own errors (dates outside its bounds) vary
        log.warning("exchange calendar %s unavailable for %s..%s: %s", EXCHANGE, start, end, exc)
        return None
    return frozenset(day_number(d) for d in sessions if start <= d <= end)


@dataclass
class DayRule:
    """The expected days of one ticker over ``[first, last]`` and how to date its bars."""

    ticker: str
    first: int
    last: int
    asset: str = field(init=False)
    expected: frozenset[int] = field(init=False)
    note: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.asset = asset_class(self.ticker)
        days = range(self.first, self.last + 1)
        if self.asset == "crypto":
            self.expected = frozenset(days)
            return
        if self.asset in ("stock", "index", "option"):
            sessions = exchange_sessions(self.first, self.last)
            if sessions is not None:
                self.expected = sessions
                return
            self.note = (
                "no exchange calendar (install tickvault[polygon]): weekdays stand in for"
                " sessions, so exchange holidays show up as missing days"
            )
        self.expected = frozenset(n for n in days if day_of(n).weekday() < 5)

    @property
    def local_dates(self) -> bool:
        return self.asset in ("stock", "index", "option")

    @property
    def sparse(self) -> bool:
        """Sessions without bars are normal (options without trades): count, do not report."""
        return self.asset == "option"

    def bar_days(self, timestamps_ms: list[int]) -> set[int]:
        """The days (day numbers) the bars opening at ``timestamps_ms`` belong to."""
        if not self.local_dates:
            return {t // _DAY_MS for t in timestamps_ms}
        days: set[int] = set()
        for hour in {t // _HOUR_MS for t in timestamps_ms}:
            moment = dt.datetime.fromtimestamp(hour * 3600, dt.UTC).astimezone(_EXCHANGE_TZ)
            days.add(day_number(moment.date()))
        return days
