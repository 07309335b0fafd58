"""Polygon expected days (exchange calendar, forex week, crypto every day), history that
starts late, options without trades, the adjusted basis and ``--refresh``."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tickvault.core.errors import ConfigError
from tickvault.sources.polygon.calendar import DayRule, asset_class
from tickvault.sources.polygon.collector import (
    CoverageStore,
    PolygonOptions,
    PolygonSource,
    day_number,
)

from .cli_helpers import cli_env, tv_json
from .fakes.collect import Collected
from .fakes.polygon import FakePolygon

TODAY = dt.date(2025, 1, 1)


@pytest.fixture
def polygon() -> Iterator[FakePolygon]:
    fake = FakePolygon(page_size=5000).start()
    yield fake
    fake.stop()


def source(
    fake: FakePolygon,
    ticker: str,
    first: str,
    last: str,
    timeframe: str = "1m",
    coverage: CoverageStore | None = None,
    **kw: Any,
) -> PolygonSource:
    options = PolygonOptions(
        tickers=[ticker],
        start=dt.date.fromisoformat(first),
        end=dt.date.fromisoformat(last),
        timeframe=timeframe,
        rest_url=fake.url,
        api_key=fake.api_key,
        **kw,
    )
    return PolygonSource(options, coverage, today=lambda: TODAY)


async def run(src: PolygonSource) -> Collected:
    async with Collected(src) as got:
        assert got.task is not None
        await got.task
    return got


def test_asset_classes_and_their_expected_days() -> None:
    assert [asset_class(t) for t in ("AAPL", "I:NDX", "O:SPY251219C00650000", "C:EURUSD")] == [
        "stock", "index", "option", "forex",
    ]  # fmt: skip
    assert asset_class("X:BTCUSD") == "crypto"
    first, last = day_number(dt.date(2024, 12, 23)), day_number(dt.date(2024, 12, 29))
    days = lambda rule: sorted(dt.date(1970, 1, 1) + dt.timedelta(n) for n in rule.expected)  # noqa: E731
    # NYSE: Christmas (Wednesday 25th) is a holiday; the weekend is not a session.
    assert days(DayRule("AAPL", first, last)) == [
        dt.date(2024, 12, 23), dt.date(2024, 12, 24), dt.date(2024, 12, 26), dt.date(2024, 12, 27),
    ]  # fmt: skip
    assert len(DayRule("X:BTCUSD", first, last).expected) == 7
    assert len(DayRule("C:EURUSD", first, last).expected) == 5  # its week: Monday to Friday
    # A stock's after-hours bar at 19:59 New York time (00:59 UTC next day) is its session's.
    late = int(dt.datetime(2024, 12, 24, 0, 59, tzinfo=dt.UTC).timestamp() * 1000)
    assert DayRule("AAPL", first, last).bar_days([late]) == {day_number(dt.date(2024, 12, 23))}
    assert DayRule("C:EURUSD", first, last).bar_days([late]) == {day_number(dt.date(2024, 12, 24))}


async def test_exchange_holidays_are_not_gaps_but_missing_sessions_are(
    polygon: FakePolygon,
) -> None:
    # Independence Day 2024 (Thursday 4th) has no bars, as on the real API.
    polygon.missing_days = {"2024-07-04"}
    stock = source(polygon, "AAPL", "2024-07-01", "2024-07-07")
    got = await run(stock)
    assert stock.missing_days == {} and got.rows["gap"] == []
    assert len(got.rows["bar"]) == 4 * 7 * 60
    polygon.missing_days = {"2024-07-04", "2024-07-03"}
    index = source(polygon, "I:NDX", "2024-07-01", "2024-07-07")
    got = await run(index)
    assert index.missing_days == {"I:NDX": ["2024-07-03"]}
    (gap,) = got.rows["gap"]
    assert gap[1:7] == ("I:NDX", "bars:1m", 20240703, 20240703, gap[5], "missing")


async def test_history_that_starts_late_is_reported_once(polygon: FakePolygon) -> None:
    # No bars before Tuesday 16 January 2024 (Monday 15th is Martin Luther King Day).
    polygon.missing_days = {f"2024-01-{d:02d}" for d in range(1, 16)}
    src = source(polygon, "I:NDX", "2024-01-01", "2024-01-31", "1d", chunk_days=7)
    got = await run(src)
    assert src.no_data_before == {"I:NDX": "2024-01-16"}
    assert src.missing_days == {} and got.rows["gap"] == []
    assert len(got.rows["bar"]) == 12  # the sessions from the 16th to the 31st
    # A gap after the first bar is still a gap.
    polygon.missing_days |= {"2024-01-24"}
    later = source(polygon, "I:NDX", "2024-01-01", "2024-01-31", "1d", chunk_days=7)
    await run(later)
    assert later.no_data_before == {"I:NDX": "2024-01-16"}
    assert later.missing_days == {"I:NDX": ["2024-01-24"]}


async def test_a_ticker_without_any_bar_in_range_is_reported_once(polygon: FakePolygon) -> None:
    polygon.missing_days = {f"2024-03-{d:02d}" for d in range(1, 32)}
    src = source(polygon, "O:SPY240315C00500000", "2024-03-01", "2024-03-29", "1d", chunk_days=7)
    got = await run(src)
    assert src.no_data_before == {"O:SPY240315C00500000": None}
    assert src.missing_days == {} and got.rows["gap"] == [] and got.rows["bar"] == []


def test_tickers_are_checked_before_they_reach_a_url() -> None:
    for bad in ("AAPL/../../v3", "AAPL?x=1", "'; DROP", "", "A" * 65):
        with pytest.raises(ConfigError, match="ticker"):
            PolygonOptions(tickers=[bad], start=TODAY, end=TODAY)
    ok = ["AAPL", "BRK.A", "X:BTCUSD", "C:EURUSD", "I:NDX", "O:SPY251219C00650000"]
    assert PolygonOptions(tickers=ok, start=TODAY, end=TODAY).tickers == ok


async def test_options_count_sessions_without_trades(polygon: FakePolygon) -> None:
    polygon.missing_days = {"2024-03-05", "2024-03-06", "2024-03-07"}
    src = source(polygon, "O:SPY240315C00500000", "2024-03-04", "2024-03-08", "1d")
    got = await run(src)
    assert src.missing_days == {} and got.rows["gap"] == []
    assert src.quiet_sessions == {"O:SPY240315C00500000": 3}
    assert len(got.rows["bar"]) == 2


async def test_bars_carry_their_basis_and_a_series_keeps_one(
    polygon: FakePolygon, tmp_path: Path
) -> None:
    state = tmp_path / "state.sqlite3"
    src = source(polygon, "AAPL", "2024-07-01", "2024-07-02", "1d", CoverageStore(state),
                 adjusted=False)  # fmt: skip
    got = await run(src)
    assert [r[-1] for r in got.rows["bar"]] == [False, False]
    assert polygon.requests[0][1]["adjusted"] == "false"
    assert CoverageStore(state).basis("AAPL", "1d") is False
    with pytest.raises(ConfigError, match="stored with unadjusted prices"):
        source(polygon, "AAPL", "2024-07-03", "2024-07-05", "1d", CoverageStore(state))
    # Other series are free to use either basis.
    assert source(polygon, "AAPL", "2024-07-01", "2024-07-02", "1h", CoverageStore(state)).chunks


def test_a_state_file_from_before_the_flag_reads_as_adjusted(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite3"
    with sqlite3.connect(state) as conn:
        conn.execute(
            "CREATE TABLE polygon_coverage (ticker TEXT NOT NULL, timeframe TEXT NOT NULL,"
            " day_from INTEGER NOT NULL, day_to INTEGER NOT NULL,"
            " PRIMARY KEY (ticker, timeframe, day_from))"
        )
        conn.execute("INSERT INTO polygon_coverage VALUES ('AAPL', '1d', 19000, 19010)")
    coverage = CoverageStore(state)
    assert coverage.covered("AAPL", "1d") == [(19000, 19010)]
    assert coverage.basis("AAPL", "1d") is True
    coverage.add("AAPL", "1d", 19011, 19012)
    assert coverage.covered("AAPL", "1d") == [(19000, 19012)]


def backfill(data: Path, fake: FakePolygon, *args: str) -> Any:
    return subprocess.run(
        [
            sys.executable, "-m", "tickvault", "backfill", "polygon", "--ticker", "AAPL",
            "--timeframe", "1h", "--from", "2024-07-01", "--to", "2024-07-05",
            "--rest-url", fake.url, "--data-dir", str(data), "--json", *args,
        ],
        capture_output=True, text=True, timeout=120,
        env=cli_env(POLYGON_API_KEY=fake.api_key),
    )  # fmt: skip


def state_tables(data: Path) -> set[str]:
    db = sqlite3.connect(data / "state.sqlite3")
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


def test_backfill_refresh_redownloads_and_the_other_basis_is_refused(
    polygon: FakePolygon, tmp_path: Path
) -> None:
    polygon.missing_days = {"2024-07-04"}
    data = tmp_path / "data"
    first = backfill(data, polygon)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["stored"] == 4 * 7 and result["missing_days"] == {}
    assert result["adjusted"] is True and result["calendar_notes"] == []

    polygon.requests.clear()
    assert json.loads(backfill(data, polygon).stdout)["chunks_planned"] == 0
    assert polygon.requests == []

    refreshed = backfill(data, polygon, "--refresh")
    assert refreshed.returncode == 0, refreshed.stderr
    again = json.loads(refreshed.stdout)
    assert again["bars"] == 4 * 7 and again["stored"] == 0 and again["refresh"] is True
    assert again["refresh_differs"] == {}
    assert [p for p, _, _ in polygon.requests] == [
        "/v2/aggs/ticker/AAPL/range/1/hour/2024-07-01/2024-07-05"
    ]

    # A 4:1 split re-adjusts the venue's history. A dry run names the stale days and
    # replaces nothing; the refresh replaces them, keeping both versions in state.sqlite3,
    # and is not taken for conflicting duplicates; a second refresh changes nothing.
    polygon.scale = 0.25
    stale = {"AAPL": ["2024-07-01", "2024-07-02", "2024-07-03", "2024-07-05"]}
    dry = backfill(data, polygon, "--refresh", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    dry_result = json.loads(dry.stdout)
    assert dry_result["refresh_differs"] == stale and dry_result["refresh_would_replace"] == 28
    assert dry_result["refresh_replaced"] == 0
    closes = "SELECT min(close) AS lo, max(close) AS hi FROM bars"
    before = tv_json("query", closes, "--data-dir", data)
    assert "polygon_replaced" not in state_tables(data)
    split = backfill(data, polygon, "--refresh")
    assert split.returncode == 0, split.stderr
    split_result = json.loads(split.stdout)
    assert split_result["refresh_differs"] == stale and split_result["refresh_replaced"] == 28
    assert split_result["refresh_differs_after"] == {} and split_result["dead_letters"] == {}
    after = tv_json("query", closes, "--data-dir", data)
    assert after[0]["lo"] == pytest.approx(before[0]["lo"] * 0.25, abs=1e-6)
    assert after[0]["hi"] == pytest.approx(before[0]["hi"] * 0.25, abs=1e-6)
    db = sqlite3.connect(data / "state.sqlite3")
    kept = db.execute("SELECT previous, replacement FROM polygon_replaced").fetchall()
    db.close()
    assert len(kept) == 28
    assert all(
        json.loads(new)["close"] == pytest.approx(json.loads(old)["close"] * 0.25, abs=1e-6)
        for old, new in kept
    )
    second = json.loads(backfill(data, polygon, "--refresh").stdout)
    assert second["refresh_differs"] == {} and second["refresh_replaced"] == 0
    assert second["stored"] == 0 and second["dead_letters"] == {}
    assert tv_json("query", closes, "--data-dir", data) == after
    assert backfill(data, polygon, "--dry-run").returncode == 2

    other = backfill(data, polygon, "--unadjusted")
    assert other.returncode == 2
    assert "stored with adjusted prices" in other.stderr and "Traceback" not in other.stderr
    # Another data directory (no coverage of its own) writing into the same store.
    polygon.requests.clear()
    elsewhere = backfill(
        tmp_path / "other", polygon, "--unadjusted", "--store", f"duckdb:///{data}/ticks.duckdb"
    )
    assert elsewhere.returncode == 2, elsewhere.stdout
    assert "holds adjusted 1h bars of AAPL" in elsewhere.stderr
    assert polygon.requests == []
    rows = tv_json(
        "query",
        "SELECT count(*) AS n, count(DISTINCT ts_open) AS d, bool_and(adjusted) AS a FROM bars",
        "--data-dir",
        data,
    )
    assert rows == [{"n": 28, "d": 28, "a": True}]
