"""Futures collectors use their market's REST API (``/fapi/v1``, ``/dapi/v1``) and sync rules.

The fake venue in futures mode answers only its own REST prefix (spot paths are 404), sends
depth diffs with ``pu`` and non-consecutive update ids, and streams non-market trades
(insurance fund, ADL) that its REST lists leave out, as Binance documents.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tickvault.core.config import BinanceSettings
from tickvault.sources.binance.book import GAP, STORED, BookSync, futures_prev_id
from tickvault.sources.binance.collector import BinanceOptions, BinanceSource
from tickvault.sources.binance.markets import rest_base, rest_routes
from tickvault.sources.binance.wire import NonMarketTrade, parse_values

from .cli_helpers import cli_env, tv_json
from .fakes.binance import FakeBinance
from .fakes.collect import Collected
from .polling import eventually, eventually_sync


@pytest.fixture
def usdm() -> Iterator[FakeBinance]:
    fake = FakeBinance(["BTCUSDT"], market="usdm", api_key="k-fut-1").start()
    yield fake
    fake.stop()


def _options(fake: FakeBinance, **overrides: Any) -> BinanceOptions:
    values: dict[str, Any] = {
        "symbols": ["BTCUSDT"],
        "channels": ["trade", "depth"],
        "ws_url": fake.ws_url,
        "rest_url": fake.rest_url,
        "market": "binance-usdm",
        "backoff_initial_s": 0.02,
        "backoff_max_s": 0.2,
        "gap_settle_s": 0.2,
        "tick_s": 0.02,
    }
    values.update(overrides)
    return BinanceOptions(**values)


def _subscribed(fake: FakeBinance, stream: str) -> bool:
    return bool(fake.sync(fake.subscribed(stream)))


async def _subscribed_async(fake: FakeBinance, stream: str) -> None:
    for _ in range(2000):
        if await fake.run(fake.subscribed(stream)):
            return
        await asyncio.sleep(0.01)  # a poll interval (the loop must stay free), not a wait
    raise AssertionError(f"{stream} not subscribed")


# -- routes ----------------------------------------------------------------------------------


def test_each_market_has_its_own_rest_base_and_paths() -> None:
    assert rest_routes("binance").depth == "/api/v3/depth"
    usdm = rest_routes("binance-usdm")
    assert (usdm.base, usdm.depth, usdm.agg_trades, usdm.historical_trades) == (
        "https://fapi.binance.com",
        "/fapi/v1/depth",
        "/fapi/v1/aggTrades",
        "/fapi/v1/historicalTrades",
    )
    coinm = rest_routes("binance-coinm")
    assert (coinm.base, coinm.depth, coinm.historical_trades) == (
        "https://dapi.binance.com",
        "/dapi/v1/depth",
        "/dapi/v1/historicalTrades",
    )
    # The spot default left in place follows the market; a configured URL is kept.
    assert rest_base("binance-usdm", "https://api.binance.com") == "https://fapi.binance.com"
    assert rest_base("binance", "https://api.binance.com") == "https://api.binance.com"
    assert rest_base("binance-usdm", "http://127.0.0.1:9") == "http://127.0.0.1:9"
    fut = BinanceSource(BinanceOptions(["BTCUSDT"], ["trade"], ws_url="wss://fstream.binance.com"))
    assert fut.rest.url("/fapi/v1/depth") == "https://fapi.binance.com/fapi/v1/depth"
    spot = BinanceSource(BinanceOptions(["BTCUSDT"], ["trade"]))
    assert spot.rest.url(spot.routes.depth) == "https://api.binance.com/api/v3/depth"


def test_a_config_names_the_market_and_refuses_unknown_ones() -> None:
    import msgspec

    assert msgspec.convert({"market": "binance-coinm"}, BinanceSettings).market == "binance-coinm"
    with pytest.raises(msgspec.ValidationError, match="binance-usdm"):
        msgspec.convert({"market": "binance-futures"}, BinanceSettings)


# -- futures book sync (pu) ------------------------------------------------------------------


def test_futures_continuity_follows_pu_not_consecutive_ids() -> None:
    no: list[float] = []
    spot_rule, futures_rule = BookSync("BTCUSDT"), BookSync("BTCUSDT")
    # Futures diffs: (U, u, pu); U skips past pu + 1, the chain pu == previous u holds.
    diffs = [(101, 105, 99), (108, 110, 105), (113, 113, 110)]
    assert [spot_rule.on_diff(U, u, no, no, no, no) for U, u, _ in diffs][1:] == [GAP, GAP]
    assert [futures_rule.on_diff(U, u, no, no, no, no, pu) for U, u, pu in diffs] == [STORED] * 3
    # A lost event shows as pu beyond the last u: the gap is (last u + 1, pu).
    assert futures_rule.on_diff(120, 121, no, no, no, no, 117) == GAP
    assert futures_rule.last_gap == (114, 117)


def test_a_futures_snapshot_is_bridged_by_pu() -> None:
    sync = BookSync("BTCUSDT")
    sync.on_diff(101, 105, [], [], [], [], 99)
    sync.on_diff(108, 110, [10.0], [1.0], [], [], 105)
    # Snapshot at 106: the diff 108..110 (pu 105) covers it although U > L + 1.
    assert sync.on_snapshot(106, [(9.0, 2.0)], [(11.0, 1.0)]) is True
    assert sync.book_update_id == 110 and sync.book.bids == {9.0: 2.0, 10.0: 1.0}
    assert futures_prev_id(b'{"stream":"x@depth","data":{"e":"depthUpdate","pu":42}}') == 42
    assert futures_prev_id(b'{"e":"depthUpdate","U":1,"u":2,"pu":7}') == 7
    assert futures_prev_id(b'{"data":{"pu":9,"u":10},"stream":"x@depth"}') == 9
    assert futures_prev_id(b"not json") is None
    assert futures_prev_id(b'{"e":"depthUpdate","U":1,"u":2}') is None


# -- non-market trades -------------------------------------------------------------------------


def test_non_market_futures_trades_are_skipped_with_their_id() -> None:
    line = b'{"e":"trade","E":2,"T":1,"s":"BTCUSDT","t":77,"p":"1.5","q":"2","X":"ADL","m":true}'
    with pytest.raises(NonMarketTrade) as caught:
        parse_values(line, exchange="binance-usdm")
    skip = caught.value
    assert (skip.reason, skip.symbol, skip.trade_id, skip.ts_us) == (
        "non-market trade (X=ADL)",
        "BTCUSDT",
        77,
        1000,
    )
    market = line.replace(b'"ADL"', b'"MARKET"')
    assert parse_values(market, exchange="binance-usdm")[1][:3] == ("binance-usdm", "BTCUSDT", 77)


async def test_a_usdm_collector_syncs_depth_and_skips_non_market_trades(
    usdm: FakeBinance,
) -> None:
    src = BinanceSource(_options(usdm, book_snapshot_every_s=60))
    market = usdm.markets["BTCUSDT"]

    def live() -> bool:
        sync = src.books.get("BTCUSDT")
        return sync is not None and sync.live

    async def synced_with_server() -> None:
        await usdm.run(usdm.stop_flow())
        bids, asks, u = await usdm.run(usdm.book("BTCUSDT"))
        await eventually(lambda: live() and src.books["BTCUSDT"].book_update_id == u, 20)
        book = src.books["BTCUSDT"].book
        assert book.bids == bids and book.asks == asks

    async with Collected(src) as got:
        for stream in ("btcusdt@depth@100ms", "btcusdt@trade"):
            await _subscribed_async(usdm, stream)
        await usdm.run(usdm.start_flow(50, depth=True))
        await eventually(live, 20, "first sync")
        await synced_with_server()
        skipped_from = market.update_id + 1
        await usdm.run(usdm.emit_depth("BTCUSDT", 3, deliver=False))
        # The next delivered diff's pu is the last undelivered u: the gap ends there.
        skipped_to = market.update_id
        await usdm.run(usdm.emit_trades("BTCUSDT", 2, trade_type="INSURANCE_FUND"))
        await usdm.run(usdm.start_flow(50, depth=True))
        await eventually(lambda: src.gaps_resynced == 1, 20, "resync")
        await synced_with_server()
        await eventually(lambda: len(got.rows["trade"]) == len(market.trades), 20)
        await got.stop()
    assert got.gap_state() == {("BTCUSDT", "depth", skipped_from, skipped_to): "resynced"}
    assert src.non_market_trades == 2 and "2 non-market trades skipped" in src.health().detail
    stored_ids = got.ids("trade", "BTCUSDT")
    assert stored_ids == sorted(t["id"] for t in market.trades)  # the market ones, no gap
    assert market.trades_made == len(market.trades) + 2
    finals = [r[3] for r in got.rows["depth"]]
    assert len(finals) == len(set(finals)) == market.diffs_sent
    assert {r[0] for rows in got.rows.values() for r in rows} == {"binance-usdm"}
    paths = {path for path, _ in usdm.requests}
    assert paths == {"/fapi/v1/depth"}


# -- end to end: stored rows -------------------------------------------------------------------


def _query(data: Path, sql: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "tickvault", "query", sql, "--data-dir", str(data), "--json"],
        capture_output=True,
        text=True,
        env=cli_env(),
        check=False,
    )
    return json.loads(proc.stdout) if proc.returncode == 0 else []


def test_run_on_usdm_backfills_from_fapi_and_stores_usdm_rows(
    usdm: FakeBinance, tmp_path: Path
) -> None:
    config = tmp_path / "tv.toml"
    config.write_text(
        "[[sources]]\n"
        'kind = "binance"\n'
        'market = "binance-usdm"\n'
        'symbols = ["BTCUSDT"]\n'
        'channels = ["trade", "aggTrade", "depth"]\n'
        f'ws_url = "{usdm.ws_url}"\n'
        f'rest_url = "{usdm.rest_url}"\n'
        'api_key_env = "TV_TEST_FUTURES_KEY"\n'
        "backoff_initial_s = 0.05\n"
        "backoff_max_s = 0.5\n"
        "gap_settle_s = 0.3\n"
    )
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "run", "--config", str(config), "--data-dir", data],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(TV_TEST_FUTURES_KEY="k-fut-1"),
    )
    market = usdm.markets["BTCUSDT"]
    try:
        eventually_sync(lambda: _subscribed(usdm, "btcusdt@depth@100ms"), 60, "subscribed")
        usdm.sync(usdm.emit_depth("BTCUSDT", 5))
        usdm.sync(usdm.emit_trades("BTCUSDT", 10))
        missed = usdm.sync(usdm.emit_trades("BTCUSDT", 4, deliver=False))
        usdm.sync(usdm.emit_trades("BTCUSDT", 10))
        usdm.sync(usdm.emit_depth("BTCUSDT", 5))

        def stored() -> bool:
            rows = _query(
                data,
                "SELECT (SELECT count(*) FROM trades) AS t, (SELECT count(*) FROM agg_trades)"
                " AS a, (SELECT count(*) FROM gaps WHERE status = 'backfilled') AS b,"
                " (SELECT count(*) FROM book_snapshots) AS s",
            )
            if not rows:
                return False
            r = rows[0]
            return r["s"] > 0 and (r["t"], r["a"], r["b"]) == (24, 24, 2)

        eventually_sync(stored, 120, "every trade stored, both gaps backfilled, a snapshot")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "k-fut-1" not in err
    per_table = tv_json(
        "query",
        "SELECT 'trades' AS t, exchange, count(*) AS n FROM trades GROUP BY exchange"
        " UNION ALL SELECT 'agg_trades', exchange, count(*) FROM agg_trades GROUP BY exchange"
        " UNION ALL SELECT 'depth_updates', exchange, count(*) FROM depth_updates"
        " GROUP BY exchange"
        " UNION ALL SELECT 'gaps', exchange, count(*) FROM gaps GROUP BY exchange ORDER BY 1",
        "--data-dir",
        data,
    )
    assert per_table == [
        {"t": "agg_trades", "exchange": "binance-usdm", "n": 24},
        {"t": "depth_updates", "exchange": "binance-usdm", "n": 10},
        {"t": "gaps", "exchange": "binance-usdm", "n": 4},
        {"t": "trades", "exchange": "binance-usdm", "n": 24},
    ]
    snapshots = tv_json(
        "query",
        "SELECT DISTINCT exchange, origin FROM book_snapshots WHERE origin = 'rest'",
        "--data-dir",
        data,
    )
    assert snapshots == [{"exchange": "binance-usdm", "origin": "rest"}]
    reasons = tv_json(
        "query",
        "SELECT channel, reason FROM gaps WHERE status = 'backfilled' ORDER BY channel",
        "--data-dir",
        data,
    )
    assert reasons == [
        {"channel": "aggTrade", "reason": "4 restored from aggTrades"},
        {"channel": "trade", "reason": "4 restored from historicalTrades"},
    ]
    restored = tv_json(
        "query",
        f"SELECT trade_id, price FROM trades WHERE trade_id BETWEEN {missed[0]} AND {missed[-1]}"
        " ORDER BY trade_id",
        "--data-dir",
        data,
    )
    want = [t for t in market.trades if t["id"] in missed]
    assert restored == [{"trade_id": t["id"], "price": float(t["price"])} for t in want]
    # Every REST call went to the USD-M API; the spot paths were never asked.
    paths = {path for path, _ in usdm.requests}
    assert paths == {"/fapi/v1/depth", "/fapi/v1/historicalTrades", "/fapi/v1/aggTrades"}
    assert (
        "/fapi/v1/historicalTrades",
        {"symbol": "BTCUSDT", "fromId": str(missed[0]), "limit": "1000"},
    ) in usdm.requests
    assert set(usdm.keyed_paths) == {"/fapi/v1/historicalTrades"}
