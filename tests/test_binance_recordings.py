"""Real Binance recordings (cryptofeed and hftbacktest captures of five markets) replayed
through the real CLI: every row stored exactly once, field by field, in its market's key
space; re-runs change nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .binance_samples import CAPTURES, DATA, TABLE_KEYS, Expected, expected, query, stored
from .cli_helpers import tv, tv_json


def _assert_tables(data: Path, market: str, want: Expected) -> None:
    for table in TABLE_KEYS:
        got = stored(data, table, market)
        wanted: dict[tuple[Any, ...], dict[str, Any]] = getattr(want, table)
        assert set(got) == set(wanted), (market, table)
        for key, row in wanted.items():
            have = got[key]
            for name, value in row.items():
                assert have[name] == value, (market, table, key, name)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """All five markets' captures replayed into one data dir, each with its market."""
    data = tmp_path_factory.mktemp("recordings") / "data"
    summaries = {}
    for market, names in CAPTURES.items():
        summaries[market] = tv_json(
            "replay", *(DATA / n for n in names), "--exchange", market, "--data-dir", data
        )
    return data, summaries


@pytest.mark.parametrize("market", list(CAPTURES))
def test_every_capture_is_stored_exactly_field_by_field(
    replayed: tuple[Path, dict[str, Any]], market: str
) -> None:
    data, summaries = replayed
    want = expected(CAPTURES[market])
    summary = summaries[market]
    assert summary["drained"] is True
    assert summary["dead_letters"] == {}
    assert summary["exchange"] == market
    assert summary["foreign_messages"] == 0
    assert summary["header_markets"] == []
    skipped = summary["skipped"]
    assert skipped.get("open kline (not final)", 0) == want.open_klines
    assert skipped.get("capture header (websocket URL)", 0) == want.headers
    total = sum(
        len(getattr(want, t))
        for t in ("trades", "agg_trades", "quotes", "depth_updates", "book_snapshots", "bars")
    )
    assert summary["stored"] == total
    _assert_tables(data, market, want)


def test_samples_cover_every_kind_in_every_market() -> None:
    """The samples are what the tests above claim to check (guards against empty files)."""
    counts = {m: expected(names) for m, names in CAPTURES.items()}
    assert len(counts["binance"].trades) == 117
    assert len(counts["binance-usdm"].trades) == 128
    assert len(counts["binance-coinm"].trades) == 16
    assert all(len(e.quotes) > 40 and len(e.depth_updates) > 50 for e in counts.values())
    assert all(len(e.agg_trades) > 0 for m, e in counts.items() if m != "binance-tr")
    assert len(counts["binance"].book_snapshots) == 3
    assert len(counts["binance-coinm"].book_snapshots) == 3
    assert len(counts["binance-tr"].bars) == 4 and len(counts["binance-us"].bars) == 1


def test_spot_and_usdm_btcusdt_are_both_kept_in_full(
    replayed: tuple[Path, dict[str, Any]],
) -> None:
    data, _ = replayed
    rows = query(
        data,
        "SELECT exchange, count(*) AS n FROM trades WHERE symbol = 'BTCUSDT'"
        " GROUP BY exchange ORDER BY exchange",
    )
    assert rows == [{"exchange": "binance", "n": 117}, {"exchange": "binance-usdm", "n": 128}]


def test_futures_book_tickers_keep_their_transaction_time(
    replayed: tuple[Path, dict[str, Any]],
) -> None:
    data, _ = replayed
    rows = query(
        data,
        "SELECT exchange, count(*) AS n, count(ts_event) AS timed,"
        " min(ts_recv) < TIMESTAMP '2025-01-01' AS recorded_time FROM quotes"
        " GROUP BY exchange ORDER BY exchange",
    )
    by_market = {r["exchange"]: r for r in rows}
    for market in ("binance-usdm", "binance-coinm"):
        assert by_market[market]["timed"] == by_market[market]["n"] > 0
    for market in ("binance", "binance-us", "binance-tr"):
        assert by_market[market]["timed"] == 0  # the spot book ticker has no time
    # Every quote carries the capture's receive time, none the time of the replay.
    assert all(r["recorded_time"] for r in rows)
    first = stored(data, "quotes", "binance-usdm")[("SUSHIUSDT", 600859600576)]
    assert first["ts_event"] == 1626992741012 * 1000  # T, the transaction time
    assert first["ts_recv"] == 1626992741062170  # cryptofeed's 1626992741.06217 s


def test_rerun_with_restart_changes_nothing(replayed: tuple[Path, dict[str, Any]]) -> None:
    data, summaries = replayed
    before = query(
        data,
        "SELECT (SELECT count(*) FROM trades) t, (SELECT count(*) FROM quotes) q,"
        " (SELECT count(*) FROM depth_updates) d, (SELECT count(*) FROM book_snapshots) s,"
        " (SELECT count(*) FROM bars) b, (SELECT count(*) FROM agg_trades) a",
    )
    names = CAPTURES["binance-coinm"]
    again = tv_json(
        "replay",
        *(DATA / n for n in names),
        "--exchange",
        "binance-coinm",
        "--restart",
        "--data-dir",
        data,
    )
    assert again["stored"] == 0
    assert again["duplicates"] == summaries["binance-coinm"]["stored"]
    after = query(
        data,
        "SELECT (SELECT count(*) FROM trades) t, (SELECT count(*) FROM quotes) q,"
        " (SELECT count(*) FROM depth_updates) d, (SELECT count(*) FROM book_snapshots) s,"
        " (SELECT count(*) FROM bars) b, (SELECT count(*) FROM agg_trades) a",
    )
    assert after == before
    _assert_tables(data, "binance-coinm", expected(names))


def test_captures_of_other_markets_replayed_as_spot_warn_once(tmp_path: Path) -> None:
    proc = tv(
        "replay",
        DATA / "hftbacktest-usdm-btcusdt_20240808.head800.gz",
        DATA / "cryptofeed-BINANCE_US.ws.1.0.gz",
        "--data-dir",
        tmp_path / "d",
    )
    warnings = [" ".join(x.split()) for x in proc.stderr.split("warning:")[1:]]
    assert len(warnings) == 2
    # 612 book tickers with E/T, 59 depth diffs with pu, 128 trades with X: 799.
    assert warnings[0].startswith("799 messages carry fields that market 'binance' does not")
    # Binance.US speaks the spot format: its capture's header names the market.
    assert warnings[1].startswith(
        "the capture's header (its websocket URL) names market 'binance-us', replayed as 'binance'"
    )
    # The right market gives no warning (the fixture's replays: foreign_messages == 0).
