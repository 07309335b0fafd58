"""What ``--refresh`` does to stored bars that differ from the venue's current ones.

Every other write inserts only new keys (the first stored version wins, and a different
version is a conflict: :mod:`tickvault.core.conflicts`). A refresh is the user asking for the
venue's current answer, so after a split (which re-adjusts all earlier history) the
stored bars of the range are *replaced*:

* :class:`HeldBack` looks each downloaded page up in the store
  (:meth:`~tickvault.stores.base.Store.stored_versions`); bars whose key is stored with
  other values are held back from the bus (so the writer never sees them as conflicts),
  new and identical bars go through it as in any download.
* Once the writer has drained, :func:`replace_held` first keeps both versions of every
  bar to replace in the ``polygon_replaced`` table of ``state.sqlite3`` (committed
  before the store changes; a rerun records the same pair once), then calls
  :meth:`~tickvault.stores.base.Store.replace` and logs the counts. With ``dry_run``
  only the counts are reported.
* Idempotent: a second refresh finds the stored bars equal to the venue's and holds
  nothing back.

:class:`RefreshDigest` keeps, per ticker and UTC day, the number and an
order-independent digest of the downloaded bars (a few bytes per day, whatever the
timeframe); :func:`differing_days` reads the same days back from the store and names the
days whose stored bars are not the downloaded ones (reported before the replacement, and
checked empty after it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from tickvault.core.conflicts import Pair, stored_conflicts
from tickvault.core.errors import StoreError
from tickvault.core.records import KINDS
from tickvault.stores.base import Store

log = logging.getLogger(__name__)

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


class HeldBack:
    """Downloaded bars whose key is stored with other values (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pairs: list[Pair] = []
        """``(stored, downloaded)`` versions, in download order."""

    async def filter(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """``rows`` (``bar`` rows in column order) less the ones held back."""
        spec = KINDS["bar"]
        table = pa.Table.from_pylist(
            [dict(zip(spec.columns, row, strict=True)) for row in rows], schema=spec.schema
        )
        stored = await self.store.stored_versions("bar", table)
        if stored is None:  # QuestDB: read the page's days back
            stored = await _stored_table(self.store, rows)
        pairs = stored_conflicts(spec, table, stored)
        if not pairs:
            return rows
        self.pairs.extend(pairs)
        held = {tuple(new[k] for k in spec.key) for _, new in pairs}
        return [
            row
            for row, offered in zip(rows, table.to_pylist(), strict=True)
            if tuple(offered[k] for k in spec.key) not in held
        ]


async def _stored_table(store: Store, rows: list[tuple[Any, ...]]) -> pa.Table:
    """The stored bars on the UTC days of ``rows`` (one ``source, symbol, timeframe`` and
    one basis per page: a series never mixes bases)."""
    source, symbol, timeframe = rows[0][:3]
    days = [row[3] // _DAY_US for row in rows]
    found = await _stored_rows(store, source, symbol, timeframe, min(days), max(days) + 1)
    spec = KINDS["bar"]
    return pa.Table.from_pylist(
        [
            dict(zip(spec.columns, (source, symbol, timeframe, _micros(ts), *values, rows[0][11]),
                     strict=True))
            for ts, *values in found
        ],
        schema=spec.schema,
    )  # fmt: skip


class ReplacedLog:
    """Both versions of every replaced bar, in ``polygon_replaced`` of ``state.sqlite3``."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(path, timeout=30)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS polygon_replaced (symbol TEXT NOT NULL,"
            " timeframe TEXT NOT NULL, ts_open_us INTEGER NOT NULL, previous TEXT NOT NULL,"
            " replacement TEXT NOT NULL, replaced_at TEXT NOT NULL,"
            " PRIMARY KEY (symbol, timeframe, ts_open_us, previous, replacement))"
        )
        self._db.commit()

    def keep(self, pairs: list[Pair]) -> None:
        """Record the pairs (committed on return; a pair already recorded stays once)."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO polygon_replaced VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (old["symbol"], old["timeframe"], _micros(old["ts_open"]),
                     _json(old), _json(new), now)
                    for old, new in pairs
                ],
            )  # fmt: skip

    def rows(self) -> list[tuple[Any, ...]]:
        """Every recorded replacement, oldest bar first."""
        return self._db.execute(
            "SELECT symbol, timeframe, ts_open_us, previous, replacement FROM polygon_replaced"
            " ORDER BY symbol, timeframe, ts_open_us, replaced_at"
        ).fetchall()

    def close(self) -> None:
        self._db.close()


def _json(row: dict[str, Any]) -> str:
    return orjson.dumps(row, option=orjson.OPT_NAIVE_UTC | orjson.OPT_SORT_KEYS).decode()


async def replace_held(
    store: Store, held: HeldBack, state_path: str | Path, *, dry_run: bool
) -> int:
    """Keep the previous versions, then replace them with the downloaded ones; answers the
    number of bars replaced (with ``dry_run``: that would be)."""
    if not held.pairs:
        return 0
    if dry_run:
        log.info("refresh dry run: %d stored bars would be replaced", len(held.pairs))
        return len(held.pairs)
    replaced_log = ReplacedLog(state_path)
    try:
        replaced_log.keep(held.pairs)
    finally:
        replaced_log.close()
    spec = KINDS["bar"]
    table = pa.Table.from_pylist([new for _, new in held.pairs], schema=spec.schema)
    written = await store.replace("bar", table)
    log.info(
        "refresh replaced %d stored bars (%d written); previous versions kept in"
        " polygon_replaced of %s",
        len(held.pairs),
        written,
        state_path,
    )
    return len(held.pairs)
