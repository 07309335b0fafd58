"""Hostile input: no line stops a job, no bad record takes a good one with it, and every
refusal names its rule (a generated file with every known kind of poison, replayed through
the real command line; the live collector against the fake venue; the publisher and the
writer on a real bus and store)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tickvault.bus.sqlite.bus import SqliteBus
from tickvault.core.codec import FrameBuilder, decode_frame, encode_frame, split_valid
from tickvault.core.config import ValidationSettings
from tickvault.core.errors import ConfigError
from tickvault.core.records import Trade
from tickvault.core.rules import TimeWindow
from tickvault.delivery.publisher import FramePublisher
from tickvault.delivery.writer import Writer, WriterConfig
from tickvault.sources.binance.collector import BinanceOptions, BinanceSource
from tickvault.sources.binance.hostile import HOSTILE_KINDS, TS_MS, write_hostile
from tickvault.stores.duckdb.store import DuckDBStore

from .cli_helpers import tv, tv_json
from .fakes.binance import FakeBinance
from .fakes.collect import Collected
from .polling import eventually

S = "ticks"
T0 = TS_MS * 1000


def _trade(tid: int, **changes: object) -> Trade:
    values: dict[str, object] = {
        "exchange": "binance",
        "symbol": "BTCUSDT",
        "trade_id": tid,
        "price": 100.0,
        "qty": 1.0,
        "buyer_is_maker": False,
        "ts_event": T0 + tid,
        "ts_recv": T0 + tid + 5,
    }
    values.update(changes)
    return Trade(**values)  # type: ignore[arg-type]


def _trade_row(tid: int, **changes: object) -> tuple[object, ...]:
    t = _trade(0)
    row = {f: getattr(t, f) for f in t.__struct_fields__} | {"trade_id": tid} | changes
    return tuple(row.values())


def test_every_hostile_kind_is_dead_lettered_with_its_rule_and_every_valid_trade_stored(
    tmp_path: Path,
) -> None:
    n_kinds = len(HOSTILE_KINDS)
    rec = write_hostile(tmp_path / "hostile.jsonl", valid=4_000, hostile=3 * n_kinds)
    assert set(rec.kinds) == {k.name for k in HOSTILE_KINDS}
    data = tmp_path / "data"
    summary = tv_json("replay", rec.path, "--data-dir", data)
    assert summary["drained"] is True
    assert summary["stored"] == len(rec.valid_trades)
    assert summary["dead_letters"] == dict(rec.reasons)
    rows = tv_json(
        "query",
        "SELECT count(*) AS n, min(trade_id) AS lo, max(trade_id) AS hi,"
        " count(DISTINCT symbol) AS symbols FROM trades",
        "--data-dir",
        data,
    )
    assert rows == [
        {"n": len(rec.valid_trades), "lo": 1, "hi": len(rec.valid_trades), "symbols": 1}
    ]
    letters = tv_json("dlq", "list", "--limit", "1000", "--data-dir", data)
    assert len(letters) == rec.hostile_lines
    kept = [x["payload"] or x["payload_base64"] for x in letters]
    assert all(kept)  # the raw line (or record) is kept; invalid UTF-8 in base64
    # A 10 MB value is kept cut short, with its length, never whole.
    assert max(len(x) for x in kept) < 100_000
    # Reruns, even from the start, record nothing twice and still exit 0.
    again = tv_json("replay", rec.path, "--restart", "--data-dir", data)
    assert again["drained"] is True and again["stored"] == 0
    counts = tv_json("dlq", "list", "--limit", "1000", "--data-dir", data)
    assert len(counts) == rec.hostile_lines


def test_replay_window_is_configurable(tmp_path: Path) -> None:
    rec = write_hostile(tmp_path / "h.jsonl", valid=50, hostile=0)
    config = tmp_path / "tv.toml"
    config.write_text('[validation]\nreplay_earliest = "2024-01-01"\n')
    summary = tv_json("replay", rec.path, "--config", config, "--data-dir", tmp_path / "d")
    assert summary["stored"] == 0
    assert summary["dead_letters"] == {"ts_event outside the time window": 50}
    config.write_text('[validation]\nreplay_earliest = "yesterday"\n')
    proc = tv("replay", rec.path, "--config", config, "--data-dir", tmp_path / "e", check=False)
    assert proc.returncode == 2
    assert "replay_earliest must be a day like 2017-07-01" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validation_windows() -> None:
    v = ValidationSettings(future_s=60, live_max_age_s=3600)
    now = time.time_ns() // 1000
    low, high = v.live.bounds(now)
    assert (low, high) == (now - 3_600_000_000, now + 60_000_000)
    assert v.replay.bounds(now)[0] == 1_498_867_200_000_000  # 2017-07-01
    assert v.history.bounds(now)[0] == 631_152_000_000_000  # 1990-01-01
    with pytest.raises(ConfigError, match="live_max_age_s"):
        ValidationSettings(live_max_age_s=0)


def test_one_bad_value_never_spoils_its_frame() -> None:
    builder = FrameBuilder("trade")
    builder.rows = [_trade_row(i) for i in range(5_000)]
    builder.rows[10] = _trade_row(2**63 + 1)
    builder.rows[20] = _trade_row(2**64 + 1)  # msgpack cannot even encode this one
    builder.rows[30] = _trade_row(31, qty=0.0)
    builder.rows[40] = _trade_row(41, symbol="BTC\x00")
    payload, rejects = builder.take_checked()
    assert payload is not None
    assert len(decode_frame(payload)) == 4_996
    assert [r.reason for r in rejects] == [
        "trade_id out of range",
        "trade_id out of range",
        "non-positive qty",
        "bad characters in symbol",
    ]
    assert orjson.loads(rejects[1].payload)["trade_id"] == str(2**64 + 1)
    # A frame from another producer, unchecked, with an id beyond int64: the writer's
    # check refuses that row only (it used to fail the frame as a whole).
    cols = {name: list(values) for name, values in zip(*_columns(5_000), strict=True)}
    cols["trade_id"][7] = 2**63 + 7
    table, rejects = split_valid(decode_frame(encode_frame("trade", cols)))
    assert table.num_rows == 4_999
    assert [r.reason for r in rejects] == ["trade_id out of range"]


def _columns(n: int) -> tuple[list[str], list[list[object]]]:
    rows = [_trade_row(i) for i in range(n)]
    names = list(Trade.__struct_fields__)
    return names, [list(col) for col in zip(*rows, strict=True)]


@pytest.fixture
async def bus(tmp_path: Path):  # type: ignore[no-untyped-def]
    b = SqliteBus(tmp_path / "bus.sqlite3")
    yield b
    await b.close()


async def test_publisher_dead_letters_bad_records_and_publishes_the_rest(bus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    live = TimeWindow(future_s=60, max_age_s=3600)
    publisher = FramePublisher(bus, S, live_window=live)
    now = time.time_ns() // 1000
    publisher.add_nowait(_trade(1, ts_event=now - 86_400_000_000, ts_recv=now), live=True)
    publisher.add_nowait(_trade(2, ts_event=now - 86_400_000_000, ts_recv=now))
    publisher.add_nowait(_trade(3, ts_event=now, ts_recv=now), live=True)
    publisher.add_nowait(_trade(-4))
    publisher.add_rows_nowait("trade", [_trade_row(2**64)])
    await publisher.flush()
    assert publisher.stats.records == 2
    assert dict(publisher.stats.refused) == {
        "ts_event outside the time window": 1,
        "negative trade_id": 1,
        "trade_id out of range": 1,
    }
    assert await bus.dead_letter_counts(S) == dict(publisher.stats.refused)
    store = DuckDBStore(tmp_path / "t.duckdb")
    try:
        stop, done = asyncio.Event(), asyncio.Event()
        done.set()
        writer = Writer(bus, store, WriterConfig(consumer="w", linger_ms=10))
        await asyncio.wait_for(writer.run(stop, until_drained=done), 60)
        result = await store.query("SELECT trade_id FROM trades ORDER BY trade_id")
        assert result.rows == [(2,), (3,)]
    finally:
        await store.close()


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    venue = FakeBinance(["BTCUSDT"]).start()
    yield venue
    venue.stop()


async def _subscribed(fake: FakeBinance) -> None:
    deadline = time.monotonic() + 30
    while await fake.run(fake.subscribed("btcusdt@trade")) < 1:
        assert time.monotonic() < deadline, "btcusdt@trade not subscribed"
        await asyncio.sleep(0.01)


async def test_live_collector_dead_letters_poison_and_goes_on(fake: FakeBinance) -> None:
    src = BinanceSource(
        BinanceOptions(
            symbols=["BTCUSDT"],
            channels=["trade"],
            ws_url=fake.ws_url,
            rest_url=fake.rest_url,
            backoff_initial_s=0.02,
            backoff_max_s=0.2,
            gap_settle_s=0.2,
            tick_s=0.02,
        )
    )
    poison = {
        k.name: k.make(1).decode("utf-8", "replace")
        for k in HOSTILE_KINDS
        if k.name in ("nested_1000", "wrapped_nested", "huge_line")
    }
    async with Collected(src) as got:
        await _subscribed(fake)
        await fake.run(fake.emit_trades("BTCUSDT", 2))
        for text in poison.values():
            assert await fake.run(fake.send_raw("btcusdt@trade", text))
        await fake.run(fake.emit_trades("BTCUSDT", 2))
        await eventually(lambda: len(got.rows["trade"]) == 4 and len(got.rejects) == 3, 15)
    assert [r.reason for r in got.rejects] == [
        "nested too deep",
        "nested too deep",
        "message too large",
    ]
    assert all(len(r.payload) < 70_000 for r in got.rejects)
