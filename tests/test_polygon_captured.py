"""Polygon history against real captured responses (tests/data/polygon, see PROVENANCE.md):
exact values, NULL volume for index bars, next_url kept on the configured host, refusals
sent with HTTP 200 never covered."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tickvault.sources.polygon.collector import (
    CoverageStore,
    PolygonOptions,
    PolygonSource,
    day_number,
)
from tickvault.sources.polygon.wire import cursor_request
from tickvault.sources.rest import RestClient, VenueError

from .cli_helpers import cli_env, tv_json
from .fakes.collect import Collected
from .fakes.polygon import FakePolygon

DATA = Path(__file__).parent / "data" / "polygon"
TODAY = dt.date(2025, 1, 1)

# (file, ticker, first day, last day): the ranges the captured bars fall in.
CAPTURED = [
    ("stocks_AAPL_1day_2005-04-01_2005-04-04.json", "AAPL", "2005-04-01", "2005-04-04"),
    ("crypto_X-BTCUSD_1day.json", "X:BTCUSD", "2020-06-01", "2020-06-02"),
    ("forex_C-EURUSD_1day.json", "C:EURUSD", "2021-07-22", "2021-07-22"),
    ("indices_I-NDX_1day.json", "I:NDX", "2023-03-09", "2023-03-10"),
    ("options_O-RDFN211119C00025000_1day.json", "O:RDFN211119C00025000",
     "2021-09-23", "2021-09-24"),
]  # fmt: skip
UNKNOWN_KEY = {"status": "ERROR", "request_id": "r1", "error": "Unknown API Key"}
NOT_AUTHORIZED = {
    "status": "NOT_AUTHORIZED",
    "request_id": "r2",
    "message": "You are not entitled to this data. Please upgrade your plan.",
}


def captured(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((DATA / name).read_text())
    return value


@pytest.fixture
def polygon() -> Iterator[FakePolygon]:
    fake = FakePolygon(page_size=1000).start()
    yield fake
    fake.stop()


def source(
    fake: FakePolygon, ticker: str, first: str, last: str, coverage: CoverageStore | None = None
) -> PolygonSource:
    options = PolygonOptions(
        tickers=[ticker],
        start=dt.date.fromisoformat(first),
        end=dt.date.fromisoformat(last),
        timeframe="1d",
        rest_url=fake.url,
        api_key=fake.api_key,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    return PolygonSource(options, coverage, today=lambda: TODAY)


async def run(src: PolygonSource) -> Collected:
    async with Collected(src) as got:
        assert got.task is not None
        await got.task
    return got


def expected_rows(body: dict[str, Any], ticker: str) -> list[tuple[Any, ...]]:
    return [
        ("polygon", ticker, "1d", b["t"] * 1000, float(b["o"]), float(b["h"]), float(b["l"]),
         float(b["c"]), None if "v" not in b else float(b["v"]), b.get("vw"), b.get("n"), True)
        for b in body["results"]
    ]  # fmt: skip


@pytest.mark.parametrize(("name", "ticker", "first", "last"), CAPTURED)
async def test_captured_bars_are_kept_exactly(
    polygon: FakePolygon, name: str, ticker: str, first: str, last: str
) -> None:
    body = captured(name)
    polygon.recorded[ticker] = [body]
    src = source(polygon, ticker, first, last)
    got = await run(src)
    assert src.error is None
    assert got.rows["bar"] == expected_rows(body, ticker)
    # Every captured range is complete: no missing day, no gap, nothing dead-lettered.
    assert src.missing_days == {} and got.rows["gap"] == [] and got.rejects == []
    assert src.no_data_before == {} and src.quiet_sessions == {}
    (path, _, headers) = polygon.requests[0]
    assert path == f"/v2/aggs/ticker/{ticker}/range/1/day/{first}/{last}"
    assert headers["authorization"] == f"Bearer {polygon.api_key}"


async def test_a_delayed_page_is_data_and_an_unknown_status_is_not(polygon: FakePolygon) -> None:
    # No DELAYED body was found captured: the captured crypto body with its status changed.
    delayed = dict(captured("crypto_X-BTCUSD_1day.json"), status="DELAYED")
    polygon.recorded["X:BTCUSD"] = [delayed]
    src = source(polygon, "X:BTCUSD", "2020-06-01", "2020-06-02")
    got = await run(src)
    assert src.error is None and src.delayed_pages == 1
    assert got.rows["bar"] == expected_rows(delayed, "X:BTCUSD")
    odd = dict(delayed, status="PARTIAL")
    polygon.recorded["X:BTCUSD"] = [odd]
    src = source(polygon, "X:BTCUSD", "2020-06-01", "2020-06-02")
    got = await run(src)
    assert src.error is not None and "'PARTIAL'" in src.error and got.rows["bar"] == []


async def test_index_bars_keep_absent_volume_vwap_and_count_null(polygon: FakePolygon) -> None:
    body = captured("indices_I-NDX_1day.json")
    assert all(not {"v", "vw", "n"} & set(b) for b in body["results"])  # as captured
    polygon.recorded["I:NDX"] = [body]
    got = await run(source(polygon, "I:NDX", "2023-03-09", "2023-03-10"))
    assert [r[8:11] for r in got.rows["bar"]] == [(None, None, None), (None, None, None)]


async def test_captured_next_url_on_the_public_host_is_asked_of_the_configured_one(
    polygon: FakePolygon,
) -> None:
    page1 = captured("stocks_AAPL_1day_page1.json")
    assert page1["next_url"].startswith("https://api.massive.com/")  # as captured
    final = {"ticker": "AAPL", "queryCount": 0, "resultsCount": 0, "adjusted": True,
             "status": "OK", "request_id": "final"}  # fmt: skip
    polygon.recorded["AAPL"] = [page1, final]
    src = source(polygon, "AAPL", "2020-01-02", "2020-01-03")
    got = await run(src)
    assert src.error is None
    assert got.rows["bar"] == expected_rows(page1, "AAPL")
    assert [(p, q) for p, q, _ in polygon.requests][1] == (
        "/v2/aggs/ticker/AAPL/range/1/day/1578114000000/2020-01-10",
        {"cursor": "bGltaXQ9MiZzb3J0PWFzYw"},
    )
    assert all(h["authorization"] == f"Bearer {polygon.api_key}" for *_, h in polygon.requests)


async def test_a_next_url_away_from_the_series_is_refused_not_followed(
    polygon: FakePolygon, tmp_path: Path
) -> None:
    page1 = dict(captured("stocks_AAPL_1day_page1.json"))
    page1["next_url"] = "https://api.massive.com/v1/reference/anything?cursor=x"
    polygon.recorded["AAPL"] = [page1]
    coverage = CoverageStore(tmp_path / "state.sqlite3")
    src = source(polygon, "AAPL", "2020-01-02", "2020-01-03", coverage)
    await run(src)
    assert src.error is not None and "leads away" in src.error
    assert len(polygon.requests) == 1
    assert CoverageStore(tmp_path / "state.sqlite3").covered("AAPL", "1d") == []


def test_next_url_is_a_cursor_on_the_same_series_only() -> None:
    series = "/v2/aggs/ticker/X:BTCUSD/range/1/minute/"
    assert cursor_request(
        "https://api.polygon.io/v2/aggs/ticker/X%3ABTCUSD/range/1/minute/1704067200000/"
        "2024-01-02?cursor=abc&apiKey=leaked",
        series,
    ) == ("/v2/aggs/ticker/X%3ABTCUSD/range/1/minute/1704067200000/2024-01-02", {"cursor": "abc"})
    for away in (
        "https://api.polygon.io/v2/aggs/ticker/ETH/range/1/minute/a/b?cursor=x",
        "https://api.polygon.io/v2/aggs/ticker/X:BTCUSD/range/1/minute/../../../v3/x",
        "https://api.polygon.io/v2/aggs/ticker/X:BTCUSD/range/1/minute/%2e%2e/x",
        "https://api.polygon.io/v2/aggs/ticker/X:BTCUSD/range/1/minute/a%3Fb=c",
        "https://api.polygon.io/v2/aggs/ticker/X:BTCUSD/range/5/minute/a/b",
    ):
        with pytest.raises(VenueError, match="leads away"):
            cursor_request(away, series)
    with pytest.raises(VenueError, match="not a string"):
        cursor_request(["x"], series)


async def test_rest_client_never_sends_to_another_origin(polygon: FakePolygon) -> None:
    key = {"Authorization": f"Bearer {polygon.api_key}"}
    client = RestClient(polygon.url, headers=key, max_attempts=1)
    try:
        with pytest.raises(VenueError, match="refusing to send a request"):
            await client.get_json("http://127.0.0.2:9/v2/aggs/ticker/X/range/1/day/a/b")
        with pytest.raises(VenueError, match="refusing"):
            await client.get_json(polygon.url.replace("http://", "https://") + "/v2/aggs")
        assert polygon.requests == []
        # The configured origin itself is fine, absolute or not.
        body = await client.get_json(
            polygon.url + "/v2/aggs/ticker/X:BTCUSD/range/1/day/2024-01-01/2024-01-01"
        )
        assert body["status"] == "OK"
    finally:
        await client.aclose()


@pytest.mark.parametrize("refusal", [UNKNOWN_KEY, NOT_AUTHORIZED])
async def test_a_refusal_sent_with_http_200_stops_and_covers_nothing(
    polygon: FakePolygon, tmp_path: Path, refusal: dict[str, Any]
) -> None:
    polygon.refusals.append(("/v2/aggs", refusal))
    coverage = CoverageStore(tmp_path / "state.sqlite3")
    src = source(polygon, "X:BTCUSD", "2024-01-01", "2024-01-05", coverage)
    got = await run(src)
    assert src.error is not None and refusal["status"] in src.error
    said = refusal.get("error") or refusal["message"]
    assert said[:30] in src.error
    assert got.rows["bar"] == [] and got.rows["gap"] == [] and src.missing_days == {}
    assert CoverageStore(tmp_path / "state.sqlite3").covered("X:BTCUSD", "1d") == []


async def test_a_refusal_that_echoes_the_key_does_not_put_it_in_the_error(
    polygon: FakePolygon,
) -> None:
    polygon.refusals.append(("/v2/aggs", {"status": "ERROR", "error": f"bad {polygon.api_key}"}))
    src = source(polygon, "X:BTCUSD", "2024-01-01", "2024-01-02")
    await run(src)
    assert src.error is not None and "bad ***" in src.error
    assert polygon.api_key not in src.error and polygon.api_key not in src.health().detail


async def test_a_refusal_on_a_later_page_leaves_the_chunk_uncovered(
    polygon: FakePolygon, tmp_path: Path
) -> None:
    coverage = CoverageStore(tmp_path / "state.sqlite3")
    options = PolygonOptions(
        tickers=["X:BTCUSD"], start=dt.date(2024, 1, 1), end=dt.date(2024, 1, 1),
        timeframe="1m", rest_url=polygon.url, api_key=polygon.api_key,
    )  # fmt: skip
    # The first page (1000 of 1440 bars) is answered; the cursor request is refused.
    path = "/v2/aggs/ticker/X:BTCUSD/range/1/minute/2024-01-01/2024-01-01"
    polygon.refusals.append((f"{path}?cursor=", NOT_AUTHORIZED))
    src = PolygonSource(options, coverage, today=lambda: TODAY)
    got = await run(src)
    assert src.error is not None and "NOT_AUTHORIZED" in src.error
    assert len(got.rows["bar"]) == 1000 and got.rows["gap"] == []
    assert [q.get("cursor") for _, q, _ in polygon.requests] == [None, "1000"]
    assert CoverageStore(tmp_path / "state.sqlite3").covered("X:BTCUSD", "1m") == []


def backfill(data: Path, fake: FakePolygon, ticker: str, *args: str) -> Any:
    env = cli_env(POLYGON_API_KEY=fake.api_key)
    return subprocess.run(
        [
            sys.executable, "-m", "tickvault", "backfill", "polygon", "--ticker", ticker,
            "--timeframe", "1d", "--rest-url", fake.url, "--data-dir", str(data), "--json",
            *args,
        ],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_backfill_of_captured_index_bars_stores_null_volume_and_reruns_request_nothing(
    polygon: FakePolygon, tmp_path: Path
) -> None:
    polygon.recorded["I:NDX"] = [captured("indices_I-NDX_1day.json")]
    data = tmp_path / "data"
    first = backfill(data, polygon, "I:NDX", "--from", "2023-03-09", "--to", "2023-03-10")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["stored"] == 2
    rows = tv_json(
        "query",
        "SELECT symbol, timeframe, epoch_ms(ts_open) AS t, open, volume, vwap, trade_count,"
        " adjusted FROM bars ORDER BY ts_open",
        "--data-dir",
        data,
    )
    assert rows == [
        {"symbol": "I:NDX", "timeframe": "1d", "t": 1678341600000, "open": 12230.83658266843,
         "volume": None, "vwap": None, "trade_count": None, "adjusted": True},
        {"symbol": "I:NDX", "timeframe": "1d", "t": 1678428000000, "open": 12001.69552583921,
         "volume": None, "vwap": None, "trade_count": None, "adjusted": True},
    ]  # fmt: skip
    polygon.requests.clear()
    again = backfill(data, polygon, "I:NDX", "--from", "2023-03-09", "--to", "2023-03-10")
    assert again.returncode == 0 and json.loads(again.stdout)["chunks_planned"] == 0
    assert polygon.requests == []


def test_backfill_refused_with_http_200_exits_1_and_the_rerun_fetches_the_days(
    polygon: FakePolygon, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    polygon.refusals.append(("/v2/aggs", UNKNOWN_KEY))
    refused = backfill(data, polygon, "X:BTCUSD", "--from", "2024-01-01", "--to", "2024-01-03")
    assert refused.returncode == 1, refused.stderr
    result = json.loads(refused.stdout)
    assert "Unknown API Key" in result["error"] and result["stored"] == 0
    assert result["missing_days"] == {} and result["chunks_done"] == 0
    coverage = CoverageStore(data / "state.sqlite3")
    try:
        assert coverage.covered("X:BTCUSD", "1d") == []
    finally:
        coverage.close()
    polygon.requests.clear()
    rerun = backfill(data, polygon, "X:BTCUSD", "--from", "2024-01-01", "--to", "2024-01-03")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["stored"] == 3
    assert [p for p, _, _ in polygon.requests] == [
        "/v2/aggs/ticker/X:BTCUSD/range/1/day/2024-01-01/2024-01-03"
    ]
    coverage = CoverageStore(data / "state.sqlite3")
    try:
        assert coverage.covered("X:BTCUSD", "1d") == [
            (day_number(dt.date(2024, 1, 1)), day_number(dt.date(2024, 1, 3)))
        ]
    finally:
        coverage.close()
