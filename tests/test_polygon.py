"""Polygon history against a fake aggregates API: pages, retries, missing days, resume."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tickvault.core.errors import ConfigError
from tickvault.sources.polygon.collector import (
    CoverageStore,
    PolygonOptions,
    PolygonSource,
    day_number,
    parse_timeframe,
    uncovered,
)

from .cli_helpers import cli_env, tv_json
from .fakes.binance import Fault
from .fakes.collect import Collected
from .fakes.polygon import FakePolygon, bar_at

TODAY = dt.date(2025, 1, 1)


@pytest.fixture
def polygon() -> Iterator[FakePolygon]:
    fake = FakePolygon(page_size=1000).start()
    yield fake
    fake.stop()


def source(fake: FakePolygon, coverage: CoverageStore | None = None, **kw: Any) -> PolygonSource:
    values: dict[str, Any] = {
        "tickers": ["C:EURUSD"],
        "start": dt.date(2024, 1, 5),
        "end": dt.date(2024, 1, 8),
        "rest_url": fake.url,
        "api_key": fake.api_key,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
    }
    values.update(kw)
    return PolygonSource(PolygonOptions(**values), coverage, today=lambda: TODAY)


def test_timeframes_and_interval_arithmetic() -> None:
    assert parse_timeframe("1m") == (1, "minute")
    assert parse_timeframe("15m") == (15, "minute")
    assert parse_timeframe("4h") == (4, "hour")
    assert parse_timeframe("1d") == (1, "day")
    with pytest.raises(ConfigError, match="timeframe"):
        parse_timeframe("1 minute")
    assert uncovered(1, 10, []) == [(1, 10)]
    assert uncovered(1, 10, [(3, 4), (7, 20)]) == [(1, 2), (5, 6)]
    assert uncovered(5, 6, [(1, 10)]) == []


async def test_pages_are_followed_with_the_key_in_a_header(polygon: FakePolygon) -> None:
    # Friday 5th and Monday 8th trade; the weekend does not (forex). Like the real API,
    # next_url names another host (here a second server that must never be asked).
    foreign = FakePolygon(api_key=polygon.api_key).start()
    polygon.next_url_base = foreign.url
    try:
        async with Collected(source(polygon)) as got:
            assert got.task is not None
            await got.task
    finally:
        foreign.stop()
    assert foreign.requests == []
    bars = got.rows["bar"]
    assert len(bars) == 2 * 1440
    assert len({b[3] for b in bars}) == len(bars)
    first = bars[0]
    t0 = int(dt.datetime(2024, 1, 5, tzinfo=dt.UTC).timestamp() * 1000)
    ref = bar_at("C:EURUSD", t0)
    assert first == (
        "polygon", "C:EURUSD", "1m", t0 * 1000, ref["o"], ref["h"], ref["l"], ref["c"],
        ref["v"], ref["vw"], ref["n"], True,
    )  # fmt: skip
    paths = [(p, q) for p, q, _ in polygon.requests]
    assert len(paths) == 3  # 2880 bars at 1000 per page
    assert paths[0][0] == "/v2/aggs/ticker/C:EURUSD/range/1/minute/2024-01-05/2024-01-08"
    assert paths[0][1] == {"adjusted": "true", "sort": "asc", "limit": "50000"}
    assert [q.get("cursor") for _, q in paths[1:]] == ["1000", "2000"]
    for _, query, headers in polygon.requests:
        assert "apiKey" not in query  # never in a URL
        assert headers["authorization"] == f"Bearer {polygon.api_key}"
    assert got.rows["gap"] == []


async def test_rate_limits_are_honoured_and_server_errors_retried(polygon: FakePolygon) -> None:
    polygon.faults += [
        Fault("/v2/aggs", 429, {"Retry-After": "1"}),
        Fault("/v2/aggs", 502),
        Fault("/v2/aggs", 500),
    ]
    src = source(polygon, end=dt.date(2024, 1, 5))
    async with Collected(src) as got:
        assert got.task is not None
        await got.task
    statuses = [s for _, s in polygon.request_times]
    assert statuses == [429, 502, 500, 200, 200]
    assert polygon.request_times[1][0] - polygon.request_times[0][0] >= 0.95
    assert len(got.rows["bar"]) == 1440
    assert src.rest.stats.throttled == 1 and src.rest.stats.server_errors == 2
    assert src.error is None


async def test_missing_days_are_reported_beyond_weekends(polygon: FakePolygon) -> None:
    polygon.missing_days = {"2024-01-09", "2024-01-10", "2024-01-13"}
    fx = source(polygon, start=dt.date(2024, 1, 8), end=dt.date(2024, 1, 14))
    async with Collected(fx) as got:
        assert got.task is not None
        await got.task
    assert fx.missing_days == {"C:EURUSD": ["2024-01-09", "2024-01-10"]}  # not the weekend
    (gap,) = got.rows["gap"]
    assert gap[:7] == ("polygon", "C:EURUSD", "bars:1m", 20240109, 20240110, gap[5], "missing")
    assert "missing data" in gap[7]
    crypto = source(
        polygon, tickers=["X:BTCUSD"], start=dt.date(2024, 1, 8), end=dt.date(2024, 1, 14)
    )
    async with Collected(crypto) as got_c:
        assert got_c.task is not None
        await got_c.task
    # Crypto trades every day: the missing Saturday counts.
    assert crypto.missing_days == {"X:BTCUSD": ["2024-01-09", "2024-01-10", "2024-01-13"]}
    assert len(got_c.rows["bar"]) == 4 * 1440


async def test_a_refused_key_ends_the_source_with_the_reason(polygon: FakePolygon) -> None:
    src = source(polygon, api_key="wrong")
    async with Collected(src) as got:
        assert got.task is not None
        await got.task
    assert src.error is not None and "HTTP 401" in src.error
    assert got.rows["bar"] == [] and len(polygon.requests) == 1


def backfill(data: Path, fake: FakePolygon, *args: str, key: str | None = None) -> Any:
    env = cli_env()
    env.pop("POLYGON_API_KEY", None)
    if key is not None:
        env["POLYGON_API_KEY"] = key
    return subprocess.run(
        [
            sys.executable, "-m", "tickvault", "backfill", "polygon", "--ticker", "C:EURUSD",
            "--timeframe", "1m", "--from", "2024-01-01", "--to", "2024-01-10",
            "--rest-url", fake.url, "--chunk-days", "2", "--data-dir", str(data), *args,
        ],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_backfill_command_resumes_and_never_downloads_a_finished_range_twice(
    polygon: FakePolygon, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    missing_key = backfill(data, polygon)
    assert missing_key.returncode == 2 and "POLYGON_API_KEY" in missing_key.stderr
    assert "Traceback" not in missing_key.stderr

    # The venue refuses the third chunk (Jan 5-6): the first two are stored and covered.
    polygon.faults.append(Fault("/v2/aggs/ticker/C:EURUSD/range/1/minute/2024-01-05", 403))
    first = backfill(data, polygon, "--json", key=polygon.api_key)
    assert first.returncode == 1, first.stderr
    result = json.loads(first.stdout)
    assert result["chunks_planned"] == 5 and result["chunks_done"] == 2
    assert "HTTP 403" in result["error"]
    assert result["stored"] == 4 * 1440  # Jan 1-4 are weekdays
    assert polygon.api_key not in first.stdout + first.stderr

    polygon.requests.clear()
    second = backfill(data, polygon, key=polygon.api_key)
    assert second.returncode == 0, second.stderr
    asked = {p.rsplit("/", 2)[-2] for p, q, _ in polygon.requests if "cursor" not in q}
    assert asked == {"2024-01-05", "2024-01-07", "2024-01-09"}  # resumed, nothing redone
    expected = polygon.expected_bars("C:EURUSD", "2024-01-01", "2024-01-10")
    assert expected == 8 * 1440
    rows = tv_json(
        "query",
        "SELECT count(*) AS n, count(DISTINCT ts_open) AS d FROM bars WHERE symbol = 'C:EURUSD'",
        "--data-dir",
        data,
    )
    assert rows == [{"n": expected, "d": expected}]

    polygon.requests.clear()
    third = backfill(data, polygon, "--json", key=polygon.api_key)
    assert third.returncode == 0
    assert json.loads(third.stdout)["chunks_planned"] == 0
    assert polygon.requests == []

    coverage = CoverageStore(data / "state.sqlite3")
    try:
        assert coverage.covered("C:EURUSD", "1m") == [
            (day_number(dt.date(2024, 1, 1)), day_number(dt.date(2024, 1, 10)))
        ]
    finally:
        coverage.close()
