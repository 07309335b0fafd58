"""The Binance collector against a fake venue on loopback that misbehaves on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tickvault.sources.binance.collector import BinanceOptions, BinanceSource
from tickvault.sources.replay import ReplaySource

from .fakes.binance import FakeBinance, Fault
from .fakes.collect import Collected, OffsetClock
from .polling import eventually

FIRST_TRADE = 1_000_000
FIRST_AGG = 500_000

MakeFake = Callable[..., FakeBinance]


@pytest.fixture
def fakes() -> Iterator[MakeFake]:
    made: list[FakeBinance] = []

    def make(symbols: list[str] | None = None, **kwargs: Any) -> FakeBinance:
        fake = FakeBinance(symbols or ["BTCUSDT"], **kwargs).start()
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.stop()


def options(fake: FakeBinance, **overrides: Any) -> BinanceOptions:
    values: dict[str, Any] = {
        "symbols": list(fake.markets),
        "channels": ["trade"],
        "ws_url": fake.ws_url,
        "rest_url": fake.rest_url,
        "backoff_initial_s": 0.02,
        "backoff_max_s": 0.2,
        "gap_settle_s": 0.2,
        "overlap_s": 0.3,
        "tick_s": 0.02,
    }
    values.update(overrides)
    return BinanceOptions(**values)


async def subscribed(fake: FakeBinance, stream: str, n: int = 1) -> None:
    for _ in range(1000):
        if await fake.run(fake.subscribed(stream)) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{stream} not subscribed")


def full_range(first: int, count: int) -> list[int]:
    return list(range(first, first + count))


async def test_streams_are_split_across_connections_and_every_message_arrives(
    fakes: MakeFake,
) -> None:
    fake = fakes(["BTCUSDT", "ETHUSDT"])
    src = BinanceSource(
        options(fake, channels=["trade", "aggTrade", "bookTicker"], max_streams_per_connection=4)
    )
    async with Collected(src) as got:
        for stream in ("btcusdt@trade", "ethusdt@bookTicker"):
            await subscribed(fake, stream)
        for symbol in ("BTCUSDT", "ETHUSDT"):
            await fake.run(fake.emit_trades(symbol, 50))
            await fake.run(fake.emit_book_ticker(symbol))
        await eventually(
            lambda: (
                len(got.rows["trade"]) == 100
                and len(got.rows["agg_trade"]) == 100
                and len(got.rows["quote"]) == 2
            ),
            10,
            "every message",
        )
        health = src.health()
        assert health.connected and src.open_connections == 2
        assert health.messages == 202 and health.reconnects == 0
    groups = [p.split("=", 1)[1].split("/") for p in fake.handshake_paths]
    assert sorted(len(g) for g in groups) == [2, 4]
    assert sorted(s for g in groups for s in g) == sorted(src.streams)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        assert got.ids("trade", symbol) == full_range(FIRST_TRADE, 50)
        assert got.ids("agg_trade", symbol) == full_range(FIRST_AGG, 50)
    assert got.rows["gap"] == []


async def test_trades_missed_during_a_disconnect_are_backfilled_and_the_gap_recorded(
    fakes: MakeFake,
) -> None:
    fake = fakes(api_key="k-123")
    src = BinanceSource(options(fake, api_key="k-123"))
    async with Collected(src) as got:
        await subscribed(fake, "btcusdt@trade")
        await fake.run(fake.emit_trades("BTCUSDT", 20))
        await eventually(lambda: len(got.rows["trade"]) == 20, 10)
        await fake.run(fake.set(refuse_next=3))
        assert await fake.run(fake.drop_connections()) == 1
        missed = await fake.run(fake.emit_trades("BTCUSDT", 7))  # nobody is connected
        await subscribed(fake, "btcusdt@trade")
        await fake.run(fake.emit_trades("BTCUSDT", 20))
        await eventually(lambda: src.gaps_backfilled == 1, 10, "backfill")
        await eventually(lambda: len(got.rows["trade"]) == 47, 10)
        health = src.health()
        assert health.reconnects == 1 and health.gaps_open == 0 and health.gaps_backfilled == 1
        assert health.connected
    market = fake.markets["BTCUSDT"]
    assert sorted(set(full_range(FIRST_TRADE, 47)) - market.delivered_trades) == missed
    assert sorted(got.ids("trade", "BTCUSDT")) == full_range(FIRST_TRADE, 47)  # once each
    assert got.gap_state() == {("BTCUSDT", "trade", missed[0], missed[-1]): "backfilled"}
    final = next(g for g in got.gaps() if g[6] == "backfilled")
    assert final[7] == "7 restored from historicalTrades"
    assert final[8] >= final[5]  # status time after detection time
    # Restored rows carry the venue's values.
    restored = {r[2]: r for r in got.rows["trade"] if r[2] in missed}
    for trade in market.trades[20:27]:
        row = restored[trade["id"]]
        assert row[3] == float(trade["price"]) and row[4] == float(trade["qty"])
        assert row[6] == trade["time"] * 1000
    assert fake.refused == 3
    assert set(fake.keyed_paths) == {"/api/v3/historicalTrades"}  # the key goes nowhere else
    assert (
        "/api/v3/historicalTrades",
        {"symbol": "BTCUSDT", "fromId": str(missed[0]), "limit": "1000"},
    ) in fake.requests


async def test_without_a_key_trades_are_rebuilt_from_aggregates_where_possible(
    fakes: MakeFake,
) -> None:
    fake = fakes(agg_size=2)
    src = BinanceSource(options(fake, channels=["trade", "aggTrade"]))
    async with Collected(src) as got:
        await subscribed(fake, "btcusdt@aggTrade")
        await fake.run(fake.emit_trades("BTCUSDT", 10))  # aggregates of two trades
        await fake.run(fake.set(agg_size=1))
        await fake.run(fake.emit_trades("BTCUSDT", 2, deliver=False))  # two 1-trade aggregates
        await fake.run(fake.set(agg_size=2))
        await fake.run(fake.emit_trades("BTCUSDT", 2, deliver=False))  # one 2-trade aggregate
        await fake.run(fake.emit_trades("BTCUSDT", 10))
        await eventually(lambda: src.gaps_backfilled + src.gaps_unrecoverable == 2, 10)
    state = got.gap_state()
    assert state == {
        ("BTCUSDT", "trade", FIRST_TRADE + 10, FIRST_TRADE + 13): "unrecoverable",
        ("BTCUSDT", "aggTrade", FIRST_AGG + 5, FIRST_AGG + 7): "backfilled",
    }
    reason = next(g[7] for g in got.gaps("trade") if g[6] == "unrecoverable")
    assert reason.startswith("2 of 4 restored from aggTrades; 2 inside multi-trade aggregates")
    assert sorted(got.ids("trade", "BTCUSDT")) == [
        *full_range(FIRST_TRADE, 12),
        *full_range(FIRST_TRADE + 14, 10),
    ]
    assert sorted(got.ids("agg_trade", "BTCUSDT")) == full_range(FIRST_AGG, 13)
    assert src.health().gaps_unrecoverable == 1


async def test_a_refused_key_falls_back_to_aggregates(fakes: MakeFake) -> None:
    fake = fakes(api_key="the-right-key")
    src = BinanceSource(options(fake, api_key="a-revoked-key"))
    async with Collected(src) as got:
        await subscribed(fake, "btcusdt@trade")
        await fake.run(fake.emit_trades("BTCUSDT", 3))
        await fake.run(fake.emit_trades("BTCUSDT", 3, deliver=False))
        await fake.run(fake.emit_trades("BTCUSDT", 3))
        await eventually(lambda: src.gaps_backfilled == 1, 10)
    (final,) = [g for g in got.gaps() if g[6] != "open"]
    assert final[6] == "backfilled"
    assert final[7] == "3 restored from aggTrades (historicalTrades refused: HTTP 401)"
    assert sorted(got.ids("trade", "BTCUSDT")) == full_range(FIRST_TRADE, 9)
    assert [path for path, _ in fake.requests] == [
        "/api/v3/historicalTrades",
        "/api/v3/aggTrades",
    ]


async def test_rate_limits_are_honoured_and_server_errors_retried(fakes: MakeFake) -> None:
    fake = fakes()
    fake.faults += [
        Fault("/api/v3/aggTrades", 429, {"Retry-After": "1"}),
        Fault("/api/v3/aggTrades", 503),
    ]
    src = BinanceSource(options(fake, channels=["aggTrade"]))
    async with Collected(src) as got:
        await subscribed(fake, "btcusdt@aggTrade")
        await fake.run(fake.emit_trades("BTCUSDT", 3))
        await fake.run(fake.emit_trades("BTCUSDT", 3, deliver=False))
        await fake.run(fake.emit_trades("BTCUSDT", 3))
        await eventually(lambda: src.gaps_backfilled == 1, 15)
    answers = [(t, status) for t, path, status in fake.request_times if path.endswith("aggTrades")]
    assert [s for _, s in answers] == [429, 503, 200]
    assert answers[1][0] - answers[0][0] >= 0.95  # waited as Retry-After said
    assert src.rest.stats.throttled == 1 and src.rest.stats.server_errors == 1
    assert sorted(got.ids("agg_trade", "BTCUSDT")) == full_range(FIRST_AGG, 9)


async def test_a_gap_rest_cannot_repair_is_marked_unrecoverable_with_the_reason(
    fakes: MakeFake,
) -> None:
    fake = fakes()
    fake.faults.append(Fault("/api/v3/aggTrades", 500, times=100))
    src = BinanceSource(options(fake, rest_attempts=3))
    async with Collected(src) as got:
        await subscribed(fake, "btcusdt@trade")
        await fake.run(fake.emit_trades("BTCUSDT", 2))
        await fake.run(fake.emit_trades("BTCUSDT", 4, deliver=False))
        await fake.run(fake.emit_trades("BTCUSDT", 2))
        await eventually(lambda: src.gaps_unrecoverable == 1, 10)
    (final,) = [g for g in got.gaps() if g[6] != "open"]
    assert final[6] == "unrecoverable"
    assert "HTTP 500" in final[7] and "after 3 attempts" in final[7]
    assert "gap BTCUSDT trade" in src.health().detail


async def test_a_stalled_connection_is_replaced_and_what_it_missed_backfilled(
    fakes: MakeFake,
) -> None:
    fake = fakes()
    clock = OffsetClock()
    src = BinanceSource(options(fake), clock=clock)  # default stall timeout: 60 s
    async with Collected(src) as got:
        await subscribed(fake, "btcusdt@trade")
        await fake.run(fake.emit_trades("BTCUSDT", 5))
        await eventually(lambda: len(got.rows["trade"]) == 5, 10)
        await fake.run(fake.set(stalled=True))  # open, silent, no close
        await fake.run(fake.emit_trades("BTCUSDT", 5))
        clock.advance(30)
        await asyncio.sleep(0.1)  # the supervisor ticks every 20 ms: it must not react yet
        assert src.stalls == 0 and fake.connections_total == 1
        clock.advance(31)
        await eventually(lambda: src.stalls == 1 and fake.connections_total == 2, 10)
        await fake.run(fake.set(stalled=False))
        await fake.run(fake.emit_trades("BTCUSDT", 5))
        await eventually(lambda: src.gaps_backfilled == 1, 10)
        assert "1 stalls" in src.health().detail and src.health().reconnects == 1
    assert sorted(got.ids("trade", "BTCUSDT")) == full_range(FIRST_TRADE, 15)
    assert got.gap_state() == {("BTCUSDT", "trade", FIRST_TRADE + 5, FIRST_TRADE + 9): "backfilled"}


async def test_reconnecting_never_gives_up(fakes: MakeFake) -> None:
    fake = fakes()
    fake.refuse_next = 15  # the peer gives up after 10
    src = BinanceSource(options(fake, backoff_initial_s=0.005, backoff_max_s=0.03))
    async with Collected(src) as got:
        assert not src.health().connected
        await subscribed(fake, "btcusdt@trade")
        await fake.run(fake.emit_trades("BTCUSDT", 3))
        await eventually(lambda: len(got.rows["trade"]) == 3, 10)
        assert src.health().connected
    assert fake.refused == 15 and fake.connections_total == 1
    assert "InvalidStatus" in src.last_error or "503" in src.last_error


async def test_venue_pings_are_answered(fakes: MakeFake) -> None:
    fake = fakes()
    fake.ping_every_s = 0.05
    fake.ping_timeout_s = 1.0  # the fake closes a connection whose pong is late, like the venue
    src = BinanceSource(options(fake))
    async with Collected(src) as got:
        await subscribed(fake, "btcusdt@trade")
        await eventually(lambda: fake.pongs >= 10, 10, "pongs")
        await fake.run(fake.emit_trades("BTCUSDT", 2))
        await eventually(lambda: len(got.rows["trade"]) == 2, 10)
    assert fake.ping_failures == 0 and fake.connections_total == 1 and src.reconnects == 0


async def test_rollover_overlaps_connections_so_nothing_is_missed(fakes: MakeFake) -> None:
    fake = fakes()
    clock = OffsetClock()
    src = BinanceSource(options(fake), clock=clock)  # default rollover: after 23 h
    async with Collected(src) as got:
        await subscribed(fake, "btcusdt@trade")
        await fake.run(fake.start_flow(200))
        await eventually(lambda: len(got.rows["trade"]) >= 20, 10)
        clock.advance(23 * 3600)
        await eventually(lambda: src.rollovers == 1, 10, "rollover")
        count = len(got.rows["trade"])
        await eventually(lambda: len(got.rows["trade"]) >= count + 20, 10)
        await fake.run(fake.stop_flow())
        total = len(fake.markets["BTCUSDT"].trades)
        await eventually(lambda: len(got.rows["trade"]) == total, 10)
        await asyncio.sleep(0.3)  # longer than gap_settle_s: a hole would have shown by now
    assert fake.max_concurrent == 2 and fake.connections_total == 2
    assert src.reconnects == 0 and got.rows["gap"] == []
    ids = got.ids("trade", "BTCUSDT")
    assert len(ids) == total and sorted(ids) == full_range(FIRST_TRADE, total)  # each once


async def test_rollover_beats_the_venue_connection_age_limit(fakes: MakeFake) -> None:
    fake = fakes()
    fake.max_age_s = 1.2  # the venue's 24 h, shrunk
    src = BinanceSource(options(fake, rollover_after_s=0.6, overlap_s=0.2))
    async with Collected(src) as got:
        await subscribed(fake, "btcusdt@trade")
        await fake.run(fake.start_flow(100))
        await eventually(lambda: src.rollovers >= 3, 15, "three rollovers")
        await fake.run(fake.stop_flow())
        total = len(fake.markets["BTCUSDT"].trades)
        await eventually(lambda: len(got.rows["trade"]) == total, 10)
    assert src.reconnects == 0  # the venue never had to cut a connection
    assert got.rows["gap"] == []
    ids = got.ids("trade", "BTCUSDT")
    assert len(ids) == total and sorted(ids) == full_range(FIRST_TRADE, total)


async def test_malformed_frames_become_dead_letters_and_the_stream_goes_on(
    fakes: MakeFake,
) -> None:
    fake = fakes()
    src = BinanceSource(options(fake))
    bad = [
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":',
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":5,'
        '"p":"1.0","q":"-2","T":1,"m":true,"M":true}}',
        '{"stream":"btcusdt@mystery","data":{"e":"mystery","E":1}}',
        "hello",
    ]
    async with Collected(src) as got:
        await subscribed(fake, "btcusdt@trade")
        await fake.run(fake.emit_trades("BTCUSDT", 2))
        for text in bad:
            assert await fake.run(fake.send_raw("btcusdt@trade", text))
        await fake.run(fake.emit_trades("BTCUSDT", 2))
        await eventually(lambda: len(got.rows["trade"]) == 4 and len(got.rejects) == 4, 10)
    assert [r.reason for r in got.rejects] == [
        "malformed JSON",
        "negative qty",
        "unknown event type 'mystery'",
        "malformed JSON",
    ]
    assert [r.payload for r in got.rejects] == [t.encode() for t in bad]
    assert all(r.kind == "raw" and r.key.startswith("binance:0.1:") for r in got.rejects)
    assert len({r.key for r in got.rejects}) == 4
    assert got.ids("trade", "BTCUSDT") == full_range(FIRST_TRADE, 4)


async def test_depth_book_stays_correct_through_broken_sequences(fakes: MakeFake) -> None:
    fake = fakes()
    src = BinanceSource(options(fake, channels=["depth"], book_snapshot_every_s=0.2))
    market = fake.markets["BTCUSDT"]

    def live() -> bool:
        sync = src.books.get("BTCUSDT")
        return sync is not None and sync.live

    async def synced_with_server() -> None:
        await fake.run(fake.stop_flow())
        bids, asks, u = await fake.run(fake.book("BTCUSDT"))
        await eventually(lambda: live() and src.books["BTCUSDT"].book_update_id == u, 10)
        book = src.books["BTCUSDT"].book
        assert book.bids == bids and book.asks == asks

    async with Collected(src) as got:
        await subscribed(fake, "btcusdt@depth@100ms")
        await fake.run(fake.start_flow(50, depth=True))
        await eventually(live, 10, "first sync")
        await synced_with_server()
        skipped_from = market.update_id + 1
        skipped_to = await fake.run(fake.emit_depth("BTCUSDT", 3, deliver=False))
        fake.stale_snapshots = 1  # the first resync snapshot is older than the stream
        await fake.run(fake.start_flow(50, depth=True))
        await eventually(lambda: src.gaps_resynced == 1, 10, "resync")
        await synced_with_server()
        await eventually(lambda: any(r[3] == "local" for r in got.rows["book_snapshot"]), 10)
    assert got.gap_state() == {("BTCUSDT", "depth", skipped_from, skipped_to): "resynced"}
    finals = [r[3] for r in got.rows["depth"]]
    assert len(finals) == len(set(finals)) == market.diffs_sent
    origins = [r[3] for r in got.rows["book_snapshot"]]
    assert origins.count("rest") >= 3  # first sync, the stale one, the good one
    # A local snapshot is the book at its update id, best levels first.
    local = next(r for r in got.rows["book_snapshot"] if r[3] == "local")
    assert local[4] == sorted(local[4], reverse=True) and local[6] == sorted(local[6])
    assert len(local[4]) == len(local[5]) and len(local[6]) == len(local[7])


async def test_recorded_frames_replay_to_the_same_records(fakes: MakeFake, tmp_path: Path) -> None:
    fake = fakes()
    src = BinanceSource(options(fake, record_dir=str(tmp_path / "rec")))
    async with Collected(src) as got:
        await subscribed(fake, "btcusdt@trade")
        await fake.run(fake.emit_trades("BTCUSDT", 30))
        await fake.run(fake.send_raw("btcusdt@trade", "not json"))
        await eventually(lambda: len(got.rows["trade"]) == 30 and len(got.rejects) == 1, 10)
        await got.stop()
    files = sorted((tmp_path / "rec").iterdir())
    assert len(files) == 1 and files[0].name.endswith(".jsonl.gz")
    async with Collected(ReplaySource(files)) as replayed:
        assert replayed.task is not None
        await replayed.task
    assert [r[:7] for r in replayed.rows["trade"]] == [r[:7] for r in got.rows["trade"]]
    # The live collector saw a frame that is not JSON; in a file, such a line is neither a
    # message nor a capture line with a receive time, and the reason says what was expected.
    assert [r.reason for r in got.rejects] == ["malformed JSON"]
    assert [r.reason for r in replayed.rejects] == [
        "unrecognised line: expected a JSON object, `<seconds>: {json}` (cryptofeed) or"
        " `<ns> {json}` (hftbacktest)"
    ]


async def test_every_row_is_stamped_with_the_collectors_market(fakes: MakeFake) -> None:
    """Spot and USD-M BTCUSDT are two key spaces: a collector names its market in every
    row (from its endpoint; here, on loopback, given explicitly)."""
    fake = fakes()
    src = BinanceSource(
        options(fake, channels=["trade", "bookTicker"], market="binance-usdm", gap_settle_s=0.1)
    )
    async with Collected(src) as got:
        await subscribed(fake, "btcusdt@bookTicker")
        await fake.run(fake.emit_trades("BTCUSDT", 5))
        await fake.run(fake.emit_book_ticker("BTCUSDT"))
        await eventually(lambda: len(got.rows["trade"]) == 5 and len(got.rows["quote"]) == 1, 10)
        await got.stop()
    assert {r[0] for rows in got.rows.values() for r in rows} == {"binance-usdm"}
    assert [r[2] for r in got.rows["trade"]] == full_range(FIRST_TRADE, 5)


def test_the_market_comes_from_the_endpoint() -> None:
    def market(url: str) -> str:
        return BinanceSource(BinanceOptions(["BTCUSDT"], ["trade"], ws_url=url)).exchange

    assert market("wss://stream.binance.com:9443") == "binance"
    assert market("wss://fstream.binance.com") == "binance-usdm"
    assert market("wss://dstream.binance.com") == "binance-coinm"
    assert market("wss://stream.binance.us:9443") == "binance-us"
    assert market("wss://stream-cloud.trbinance.com") == "binance-tr"
    assert market("ws://127.0.0.1:9000") == "binance"  # not Binance's own host: spot


async def test_a_gap_open_at_shutdown_is_backfilled_after_a_restart(
    fakes: MakeFake, tmp_path: Path
) -> None:
    import pyarrow as pa

    from tickvault.core.records import KINDS
    from tickvault.stores.duckdb.store import DuckDBStore

    async def store_rows(store: DuckDBStore, got: Collected) -> None:
        for kind in ("trade", "gap"):
            rows = got.rows[kind]
            columns = list(zip(*rows, strict=True))
            table = pa.Table.from_arrays(
                [pa.array(c, f.type) for c, f in zip(columns, KINDS[kind].schema, strict=True)],
                schema=KINDS[kind].schema,
            )
            await store.write(kind, table)

    fake = fakes()
    store = DuckDBStore(tmp_path / "t.duckdb")
    # The venue's REST asks for a minute's pause: the backfill is in flight at shutdown.
    fake.faults.append(Fault("/api/v3/aggTrades", 429, headers={"Retry-After": "60"}))
    first = BinanceSource(options(fake, stop_grace_s=0.2))
    async with Collected(first) as got:
        await subscribed(fake, "btcusdt@trade")
        await fake.run(fake.emit_trades("BTCUSDT", 3))
        missed = await fake.run(fake.emit_trades("BTCUSDT", 5, deliver=False))
        await fake.run(fake.emit_trades("BTCUSDT", 3))
        await eventually(lambda: any(g[6] == "open" for g in got.gaps()), 10, "gap open")
        await eventually(lambda: len(fake.request_times) == 1, 10, "REST asked")
        await got.stop()
    await first.close()
    assert got.gap_state() == {("BTCUSDT", "trade", missed[0], missed[-1]): "open"}
    assert first.gaps_backfilled == 0 and len(got.rows["trade"]) == 6
    await store_rows(store, got)

    # Restart: the open gap is found in the store and backfilled once, nothing else.
    fake.requests.clear()
    second = BinanceSource(options(fake))
    second.use_store(store)
    async with Collected(second) as again:
        await eventually(lambda: second.gaps_backfilled == 1, 15, "resumed backfill")
    await second.close()
    assert second.gaps_resumed == 1 and second.gaps_unrecoverable == 0
    assert sorted(again.ids("trade", "BTCUSDT")) == missed
    assert again.gap_state() == {("BTCUSDT", "trade", missed[0], missed[-1]): "backfilled"}
    (final,) = again.gaps()
    assert final[5] == got.gaps()[0][5]  # the original detection time
    assert final[7] == "5 restored from aggTrades"
    assert [p for p, _ in fake.requests] == ["/api/v3/aggTrades"]
    await store_rows(store, again)
    stored = await store.query("SELECT trade_id FROM trades ORDER BY 1")
    assert [r[0] for r in stored.rows] == full_range(FIRST_TRADE, 11)

    # A third start finds no open gap: nothing is fetched again.
    fake.requests.clear()
    third = BinanceSource(options(fake))
    third.use_store(store)
    async with Collected(third) as idle:
        await subscribed(fake, "btcusdt@trade")
        await eventually(lambda: third._tasks[-1].done(), 10, "resume looked")
    await third.close()
    await store.close()
    assert third.gaps_resumed == 0 and idle.rows["gap"] == []
    assert fake.requests == []
