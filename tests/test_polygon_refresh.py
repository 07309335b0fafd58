"""``--refresh`` compares re-downloaded bars with the stored ones, on every store."""

from __future__ import annotations

from tickvault.codec import FrameBuilder, decode_frame, split_valid
from tickvault.records import Bar
from tickvault.sources.polygon_refresh import RefreshDigest, differing_days
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
