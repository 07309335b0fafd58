"""What ``--refresh`` found: stored bars that differ from the venue's current ones.

Stores only ever insert (a bar's key is stored once), so re-downloading a range stores the
bars that were missing and keeps every stored bar as it is. When the venue's bars have
changed since (a split re-adjusts all earlier history), the stored series is stale; that
must not pass unnoticed. :class:`RefreshDigest` keeps, per ticker and UTC day, the number
and an order-independent digest of the downloaded bars (a few bytes per day, whatever the
timeframe); :func:`differing_days` reads the same days back from the store once the
writer has drained and names the days whose stored bars are not the downloaded ones.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tickvault.errors import StoreError
from tickvault.stores.base import Store

_DAY_US = 86_400_000_000
_EPOCH = dt.datetime(1970, 1, 1)
_MASK = (1 << 64) - 1


def _bar_digest(values: Iterable[Any]) -> int:
    text = "|".join("" if v is None else repr(float(v)) for v in values)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _micros(value: Any) -> int:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return int((value - _EPOCH) // dt.timedelta(microseconds=1))
    return int(value)


@dataclass
class RefreshDigest:
    """Per ``(ticker, UTC day)``: bar count and the sum of the bars' digests."""

    days: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def add(self, ticker: str, ts_us: int, values: Iterable[Any]) -> None:
        """One downloaded bar: ``values`` are open, high, low, close, volume, vwap, count."""
        key = (ticker, ts_us // _DAY_US)
        n, total = self.days.get(key, (0, 0))
        self.days[key] = (n + 1, (total + _bar_digest([ts_us, *values])) & _MASK)


async def differing_days(
    store: Store, digest: RefreshDigest, source: str, timeframe: str
) -> dict[str, list[str]]:
    """Days (ISO dates) per ticker whose stored bars differ from the downloaded ones.

    Tickers and the timeframe are validated by the caller (no quotes can occur).
    """
    found: dict[str, list[str]] = {}
    for ticker in sorted({t for t, _ in digest.days}):
        days = sorted(d for t, d in digest.days if t == ticker)
        stored: dict[int, tuple[int, int]] = {}
        rows = await _stored_rows(store, source, ticker, timeframe, days[0], days[-1] + 1)
        for ts, *values in rows:
            micros = _micros(ts)
            n, total = stored.get(micros // _DAY_US, (0, 0))
            stored[micros // _DAY_US] = (n + 1, (total + _bar_digest([micros, *values])) & _MASK)
        changed = [d for d in days if stored.get(d) != digest.days[(ticker, d)]]
        if changed:
            found[ticker] = [(_EPOCH + dt.timedelta(days=d)).date().isoformat() for d in changed]
    return found


async def _stored_rows(
    store: Store, source: str, ticker: str, timeframe: str, first_day: int, end_day: int
) -> list[tuple[Any, ...]]:
    """The stored bars of ``[first_day, end_day)``. Timestamp columns compare with a
    timestamp literal; tables that keep them as integer microseconds (ClickHouse before
    20.1) with a number, which is tried when the literal is refused."""
    select = (
        "SELECT ts_open, open, high, low, close, volume, vwap, trade_count FROM bars"
        f" WHERE source = '{source}' AND symbol = '{ticker}' AND timeframe = '{timeframe}'"
    )
    first = _EPOCH + dt.timedelta(days=first_day)
    end = _EPOCH + dt.timedelta(days=end_day)
    try:
        result = await store.query(
            f"{select} AND ts_open >= '{first:%Y-%m-%d %H:%M:%S}'"
            f" AND ts_open < '{end:%Y-%m-%d %H:%M:%S}'",
            limit=5_000_000,
        )
    except StoreError:
        result = await store.query(
            f"{select} AND ts_open >= {first_day * _DAY_US} AND ts_open < {end_day * _DAY_US}",
            limit=5_000_000,
        )
    return result.rows
