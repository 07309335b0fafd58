"""``--refresh`` compares re-downloaded bars with the stored ones and replaces the ones
that differ, on every store."""

from __future__ import annotations

import json
from pathlib import Path

from tickvault.core.codec import FrameBuilder, decode_frame, split_valid
from tickvault.core.records import Bar
from tickvault.sources.polygon.refresh import (
    HeldBack,
    RefreshDigest,
    ReplacedLog,
    differing_days,
    replace_held,
)
from tickvault.stores.base import Store

DAY = 86_400_000_000
T0 = 19_900 * DAY + 14 * 3_600_000_000  # 2024-06-26 14:00 UTC, in µs


def bars(scale_second_day: float = 1.0) -> list[Bar]:
    out = []
    for day in range(3):
        for minute in range(3):
            price = (100.0 + minute) * (scale_second_day if day == 1 else 1.0)
            out.append(
                Bar(source="polygon", symbol="AAPL", timeframe="1m",
                    ts_open=T0 + day * DAY + minute * 60_000_000, open=price, high=price + 1,
                    low=price - 1, close=price, volume=None if day == 2 else 10.0 + minute,
                    vwap=price if day == 0 else None, trade_count=3 if day == 0 else None)
            )  # fmt: skip
    return out


def digest_of(records: list[Bar]) -> RefreshDigest:
    digest = RefreshDigest()
    for b in records:
        digest.add(b.symbol, b.ts_open, (b.open, b.high, b.low, b.close, b.volume, b.vwap,
                                         b.trade_count))  # fmt: skip
    return digest


async def test_differing_days_names_exactly_the_changed_days(store: Store) -> None:
    await store.ensure_schema()
    builder = FrameBuilder("bar")
    for b in bars():
        builder.add(b)
    table, rejects = split_valid(decode_frame(builder.take()))
    assert rejects == [] and await store.write("bar", table) == 9
    assert await differing_days(store, digest_of(bars()), "polygon", "1m") == {}
    changed = await differing_days(store, digest_of(bars(0.25)), "polygon", "1m")
    assert changed == {"AAPL": ["2024-06-27"]}
    # A day the store lacks entirely differs too.
    extra = digest_of(bars())
    extra.add("AAPL", T0 + 5 * DAY, (1.0, 1.0, 1.0, 1.0, None, None, None))
    assert await differing_days(store, extra, "polygon", "1m") == {"AAPL": ["2024-07-01"]}


def rows_of(records: list[Bar]) -> list[tuple[object, ...]]:
    return [
        (b.source, b.symbol, b.timeframe, b.ts_open, b.open, b.high, b.low, b.close, b.volume,
         b.vwap, b.trade_count, b.adjusted)
        for b in records
    ]  # fmt: skip


async def stored_closes(store: Store) -> list[float]:
    result = await store.query("SELECT ts_open, close FROM bars ORDER BY ts_open")
    return [row[1] for row in result.rows]


async def test_a_split_adjusted_refresh_replaces_keeps_the_old_versions_and_is_idempotent(
    store: Store, tmp_path: Path
) -> None:
    await store.ensure_schema()
    builder = FrameBuilder("bar")
    for b in bars():
        builder.add(b)
    table, _ = split_valid(decode_frame(builder.take()))
    assert await store.write("bar", table) == 9
    old = await stored_closes(store)
    state = tmp_path / "state.sqlite3"

    # The venue re-adjusted one day and added a bar: only the changed bars are held back
    # (the new one goes to the bus as usual).
    venue = bars(0.25)
    added = Bar(source="polygon", symbol="AAPL", timeframe="1m", ts_open=T0 + 4 * DAY,
                open=1.0, high=1.0, low=1.0, close=1.0, volume=None, vwap=None,
                trade_count=None)  # fmt: skip
    held = HeldBack(store)
    passed = await held.filter(rows_of([*venue, added]))
    assert [r[3] for r in passed] == [b.ts_open for b in venue if b.ts_open < T0 + DAY] + [
        b.ts_open for b in venue if b.ts_open >= T0 + 2 * DAY
    ] + [added.ts_open]
    assert [new["close"] for _, new in held.pairs] == [25.0, 25.25, 25.5]

    assert await replace_held(store, held, state, dry_run=True) == 3
    assert await stored_closes(store) == old and not state.exists()

    assert await replace_held(store, held, state, dry_run=False) == 3
    assert await stored_closes(store) == [c * 0.25 if 3 <= i < 6 else c for i, c in enumerate(old)]
    assert await differing_days(store, digest_of(venue), "polygon", "1m") == {}
    log = ReplacedLog(state)
    kept = log.rows()
    assert [(json.loads(p)["close"], json.loads(r)["close"]) for *_, p, r in kept] == [
        (100.0, 25.0), (101.0, 25.25), (102.0, 25.5)
    ]  # fmt: skip
    # Replaying the replacement (a rerun after a crash) changes neither store nor log.
    assert await replace_held(store, held, state, dry_run=False) == 3
    assert await stored_closes(store) == [c * 0.25 if 3 <= i < 6 else c for i, c in enumerate(old)]
    assert len(log.rows()) == 3
    log.close()
    # A second refresh finds nothing to replace.
    again = HeldBack(store)
    assert len(await again.filter(rows_of(venue))) == 9 and again.pairs == []
    assert (await store.counts())["bars"] == 9
