"""``tickvault run`` recording a fake Binance venue across a forced disconnect."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cli_helpers import cli_env, tv, tv_json
from .fakes.binance import FakeBinance
from .polling import eventually_sync

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


@pytest.fixture
def venue() -> Iterator[FakeBinance]:
    fake = FakeBinance(SYMBOLS, api_key="test-key-1").start()
    yield fake
    fake.stop()


def _ranges(ids: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in sorted(ids):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _query(data: Path, sql: str) -> list[dict[str, Any]]:
    proc = tv("query", sql, "--data-dir", data, "--json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else []


CURRENT_GAPS = """
SELECT exchange, symbol, channel, from_id, to_id, status, reason FROM gaps
QUALIFY row_number() OVER (
    PARTITION BY exchange, symbol, channel, from_id
    ORDER BY status_at DESC, status = 'open'
) = 1
ORDER BY symbol, channel, from_id
"""


def test_run_records_every_trade_across_a_forced_disconnect(
    venue: FakeBinance, tmp_path: Path
) -> None:
    config = tmp_path / "tv.toml"
    config.write_text(
        "[[sources]]\n"
        'kind = "binance"\n'
        f"symbols = {json.dumps(SYMBOLS)}\n"
        'channels = ["trade", "aggTrade"]\n'
        f'ws_url = "{venue.ws_url}"\n'
        f'rest_url = "{venue.rest_url}"\n'
        'api_key_env = "TV_TEST_BINANCE_KEY"\n'
        "backoff_initial_s = 0.05\n"
        "backoff_max_s = 0.5\n"
        "gap_settle_s = 0.3\n"
    )
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tickvault",
            "run",
            "--config",
            str(config),
            "--data-dir",
            str(data),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(TV_TEST_BINANCE_KEY="test-key-1"),
    )
    try:
        eventually_sync(
            lambda: venue.sync(venue.subscribed("ethusdt@aggTrade")) == 1, 60, "subscribed"
        )
        venue.sync(venue.start_flow(100))
        eventually_sync(
            lambda: (_query(data, "SELECT count(*) AS n FROM trades") or [{"n": 0}])[0]["n"] > 50,
            what="trades stored before the disconnect",
        )
        venue.sync(venue.set(refuse_next=4))  # reconnects fail a few times first
        assert venue.sync(venue.drop_connections()) == 1
        eventually_sync(
            lambda: venue.sync(venue.subscribed("btcusdt@trade")) == 1, 60, "reconnected"
        )
        count = len(venue.markets["BTCUSDT"].trades)
        eventually_sync(lambda: len(venue.markets["BTCUSDT"].trades) > count + 50)
        venue.sync(venue.stop_flow())
        trades = {s: len(venue.markets[s].trades) for s in SYMBOLS}
        aggs = {s: len(venue.markets[s].aggs) for s in SYMBOLS}

        def stored() -> bool:
            rows = _query(
                data,
                "SELECT (SELECT count(*) FROM trades) AS t, (SELECT count(*) FROM agg_trades)"
                " AS a, (SELECT count(*) FROM gaps WHERE status = 'open') AS opened,"
                " (SELECT count(*) FROM gaps WHERE status <> 'open') AS closed",
            )
            if not rows:
                return False
            r = rows[0]
            return (
                r["t"] == sum(trades.values())
                and r["a"] == sum(aggs.values())
                and r["opened"] > 0
                and r["opened"] == r["closed"]
            )

        eventually_sync(stored, 90, "every trade stored and every gap closed")
        status = tv_json("status", "--data-dir", data)
        (source,) = status["sources"]
        assert source["kind"] == "binance" and source["connected"] is True
        assert source["reconnects"] == 1 and source["gaps_open"] == 0
        assert source["gaps_backfilled"] >= 2 and source["gaps_unrecoverable"] == 0
        assert source["last_message_age_s"] is not None
        text = tv("status", "--data-dir", data).stdout
        assert "source binance (binance): connected True" in text
        assert "1 reconnects" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "test-key-1" not in err  # secrets never reach the logs

    # Every trade the venue made is stored exactly once...
    for symbol in SYMBOLS:
        rows = tv_json(
            "query",
            f"SELECT count(*) AS n, count(DISTINCT trade_id) AS d, min(trade_id) AS lo,"
            f" max(trade_id) AS hi FROM trades WHERE symbol = '{symbol}'",
            "--data-dir",
            data,
        )
        first = venue.markets[symbol].first_trade_id
        assert rows == [
            {
                "n": trades[symbol],
                "d": trades[symbol],
                "lo": first,
                "hi": first + trades[symbol] - 1,
            }
        ]
    # ... and the gaps table tells the truth: exactly the ids the venue never delivered.
    current = tv_json("query", CURRENT_GAPS, "--data-dir", data)
    expected = []
    for symbol in SYMBOLS:
        m = venue.markets[symbol]
        sent_trades = range(m.first_trade_id, m.first_trade_id + trades[symbol])
        sent_aggs = range(m.first_agg_id, m.first_agg_id + aggs[symbol])
        # The stream baseline is the first id delivered; earlier ids are not gaps.
        first_t = min(m.delivered_trades)
        first_a = min(m.delivered_aggs)
        missed_t = [i for i in sent_trades if i > first_t and i not in m.delivered_trades]
        missed_a = [i for i in sent_aggs if i > first_a and i not in m.delivered_aggs]
        expected += [(symbol, "aggTrade", a, b) for a, b in _ranges(missed_a)]
        expected += [(symbol, "trade", a, b) for a, b in _ranges(missed_t)]
    assert expected, "the disconnect must have cost some trades"
    assert [(g["symbol"], g["channel"], g["from_id"], g["to_id"]) for g in current] == expected
    assert {g["status"] for g in current} == {"backfilled"}
    assert all(g["reason"].endswith(("from historicalTrades", "from aggTrades")) for g in current)


def test_bad_collector_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[sources]]\nkind = "binance"\nchannels = ["trades"]\n')
    proc = tv("run", "--config", config, "--data-dir", tmp_path / "d", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "channels ['trades'] not among trade, aggTrade, bookTicker, depth" in proc.stderr
    config.write_text(
        '[[sources]]\nkind = "polygon"\ntickers = ["C:EURUSD"]\nfrom = "2024-01-01"\n'
    )
    proc = tv("run", "--config", config, "--data-dir", tmp_path / "d", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "set the environment variable POLYGON_API_KEY" in proc.stderr


def test_run_with_a_polygon_source_downloads_its_range_and_stops(tmp_path: Path) -> None:
    from .fakes.polygon import FakePolygon

    fake = FakePolygon(page_size=50).start()
    try:
        config = tmp_path / "tv.toml"
        config.write_text(
            "[[sources]]\n"
            'kind = "polygon"\n'
            'tickers = ["C:EURUSD", "X:BTCUSD"]\n'
            'timeframe = "1h"\n'
            'from = "2024-03-01"\n'
            'to = "2024-03-04"\n'
            f'rest_url = "{fake.url}"\n'
            'api_key_env = "TV_TEST_POLYGON_KEY"\n'
        )
        data = tmp_path / "data"
        proc = subprocess.run(
            [sys.executable, "-m", "tickvault", "run", "--config", str(config),
             "--data-dir", str(data)],
            capture_output=True, text=True, timeout=120,
            env=cli_env(TV_TEST_POLYGON_KEY=fake.api_key),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    finally:
        fake.stop()
    rows = tv_json(
        "query",
        "SELECT symbol, count(*) AS n FROM bars GROUP BY symbol ORDER BY symbol",
        "--data-dir",
        data,
    )
    # Forex: Friday 1st and Monday 4th; crypto: all four days. 24 hourly bars a day.
    assert rows == [{"symbol": "C:EURUSD", "n": 2 * 24}, {"symbol": "X:BTCUSD", "n": 4 * 24}]
    assert tv_json("query", "SELECT count(*) AS n FROM gaps", "--data-dir", data) == [{"n": 0}]


def test_a_gap_left_open_by_a_stopped_run_is_backfilled_by_the_next(tmp_path: Path) -> None:
    from .fakes.binance import Fault

    venue = FakeBinance(["BTCUSDT"]).start()
    config = tmp_path / "tv.toml"
    config.write_text(
        "[[sources]]\n"
        'kind = "binance"\n'
        'symbols = ["BTCUSDT"]\n'
        'channels = ["trade"]\n'
        f'ws_url = "{venue.ws_url}"\n'
        f'rest_url = "{venue.rest_url}"\n'
        "gap_settle_s = 0.2\n"
    )
    data = tmp_path / "data"

    def start() -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "tickvault", "run", "--config", str(config)]
        return subprocess.Popen(
            [*argv, "--data-dir", str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )

    def stop(proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert "Traceback" not in err

    def gaps() -> list[tuple[str, int, int]]:
        rows = _query(data, "SELECT status, from_id, to_id FROM gaps ORDER BY status_at")
        return [(r["status"], r["from_id"], r["to_id"]) for r in rows]

    try:
        # The venue's REST asks for a minute's pause: the backfill is in flight at SIGTERM.
        venue.faults.append(Fault("/api/v3/aggTrades", 429, headers={"Retry-After": "60"}))
        proc = start()
        try:
            eventually_sync(lambda: venue.sync(venue.subscribed("btcusdt@trade")) == 1, 60)
            venue.sync(venue.emit_trades("BTCUSDT", 3))
            missed = venue.sync(venue.emit_trades("BTCUSDT", 5, deliver=False))
            venue.sync(venue.emit_trades("BTCUSDT", 3))
            eventually_sync(lambda: len(venue.request_times) == 1, 60, "backfill asked")
        finally:
            stop(proc)
        assert gaps() == [("open", missed[0], missed[-1])]
        ids = _query(data, "SELECT trade_id FROM trades ORDER BY 1")
        assert len(ids) == 6

        proc = start()
        try:
            eventually_sync(lambda: len(gaps()) == 2, 60, "the open gap closed")
        finally:
            stop(proc)
        assert gaps() == [("open", missed[0], missed[-1]), ("backfilled", missed[0], missed[-1])]
        first = venue.markets["BTCUSDT"].first_trade_id
        rows = _query(data, "SELECT trade_id FROM trades ORDER BY 1")
        assert [r["trade_id"] for r in rows] == list(range(first, first + 11))
        assert [p for p, _ in venue.requests].count("/api/v3/aggTrades") == 2
    finally:
        venue.stop()
