"""data.binance.vision trades/aggTrades CSVs through ``tickvault replay``: exact counts and
values (the CSV samples hold the real trades of the captures, see PROVENANCE.md)."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

from .binance_samples import DATA, expected, query, stored
from .cli_helpers import tv, tv_json

SPOT_ZIP = DATA / "BTCUSDT-trades-2024-08-08.zip"
USDM_CSV = DATA / "BTCUSDT-trades-2024-08-08-usdm.csv"
AGG_CSV = DATA / "SUSHIUSDT-aggTrades-2021-07-22.csv"


def _spot_lines() -> list[bytes]:
    with zipfile.ZipFile(SPOT_ZIP) as z:
        return z.read("BTCUSDT-trades-2024-08-08.csv").splitlines(keepends=True)


def _same_as_capture(got: dict, capture: str) -> None:
    want = expected([capture]).trades
    assert set(got) == set(want)
    for key, row in want.items():
        have = got[key]
        for name in ("price", "qty", "buyer_is_maker", "ts_event"):
            assert have[name] == row[name], (key, name)
        assert have["ts_recv"] == have["ts_event"]  # the dumps carry no receive time


def test_spot_zip_without_header_and_usdm_csv_with_header_load_exactly(tmp_path: Path) -> None:
    data = tmp_path / "d"
    spot = tv_json("replay", SPOT_ZIP, "--data-dir", data)
    usdm = tv_json("replay", USDM_CSV, "--exchange", "binance-usdm", "--data-dir", data)
    assert (spot["stored"], spot["dead_letters"]) == (117, {})
    assert (usdm["stored"], usdm["dead_letters"]) == (128, {})
    _same_as_capture(
        stored(data, "trades", "binance"), "hftbacktest-spot-btcusdt_20240808.head800.gz"
    )
    _same_as_capture(
        stored(data, "trades", "binance-usdm"), "hftbacktest-usdm-btcusdt_20240808.head800.gz"
    )
    # The same history loaded again (another file, same trades) stores nothing new.
    again = tv_json("replay", USDM_CSV, "--exchange", "binance-usdm", "--data-dir", data)
    assert again["stored"] == 0 and again["files_already_done"] == 1


def test_same_ids_in_two_markets_are_two_histories(tmp_path: Path) -> None:
    """Trade ids are per market: the same (symbol, id) in spot and USD-M are both kept."""
    data = tmp_path / "d"
    tv_json("replay", SPOT_ZIP, "--data-dir", data)
    other = tv_json("replay", SPOT_ZIP, "--exchange", "binance-usdm", "--data-dir", data)
    assert other["stored"] == 117 and other["duplicates"] == 0
    rows = query(
        data,
        "SELECT exchange, count(*) AS n, count(DISTINCT trade_id) AS ids FROM trades"
        " GROUP BY exchange ORDER BY exchange",
    )
    assert rows == [
        {"exchange": "binance", "n": 117, "ids": 117},
        {"exchange": "binance-usdm", "n": 117, "ids": 117},
    ]


async def test_agg_trades_csv_with_header() -> None:
    from tickvault.sources.replay import ReplaySource

    source = ReplaySource([AGG_CSV], exchange="binance-usdm")
    got = {
        (row[1], row[2]): row
        for batch in [b async for b in source.batches()]
        for row in batch.rows.get("agg_trade", [])
    }
    want = {
        k: v
        for k, v in expected(["cryptofeed-BINANCE_FUTURES.ws.1.0.head400.gz"]).agg_trades.items()
        if k[0] == "SUSHIUSDT"
    }
    assert set(got) == set(want) and len(want) == 10
    for key, w in want.items():
        exchange, _, _, price, qty, first, last, maker, ts_event, ts_recv = got[key]
        assert exchange == "binance-usdm"
        assert (price, qty, first, last, maker) == (
            w["price"],
            w["qty"],
            w["first_trade_id"],
            w["last_trade_id"],
            w["buyer_is_maker"],
        )
        assert ts_event == ts_recv == w["ts_event"]


def test_microsecond_times_gzip_and_bad_rows(tmp_path: Path) -> None:
    """Newer dumps give times in µs; a bad row is dead-lettered with its line, its
    neighbours are stored."""
    lines = _spot_lines()
    fields = [line.split(b",") for line in lines]
    us = [b",".join([*f[:4], f[4] + b"000", *f[5:]]) for f in fields]
    us.insert(10, b"3735683999,not-a-price,0.1,1.0,1723161255342000,True,True\n")
    us.insert(20, b"3735684000,-5.0,0.1,1.0,1723161255342000,True,True\n")
    us.insert(30, b"\n")
    path = tmp_path / "BTCUSDT-trades-2025-01-02.csv.gz"
    with gzip.open(path, "wb") as fh:
        fh.writelines(us)
    data = tmp_path / "d"
    summary = tv_json("replay", path, "--data-dir", data)
    assert summary["stored"] == 117
    assert summary["dead_letters"] == {"bad price: 'not-a-price'": 1, "non-positive price": 1}
    _same_as_capture(
        stored(data, "trades", "binance"), "hftbacktest-spot-btcusdt_20240808.head800.gz"
    )
    letters = {x["reason"]: x for x in tv_json("dlq", "list", "--data-dir", data)}
    assert letters["non-positive price"]["source_line"] == 21
    assert letters["bad price: 'not-a-price'"]["source_line"] == 11
    assert letters["non-positive price"]["source_file"] == str(path.resolve())


def test_a_csv_that_does_not_name_its_symbol_needs_one(tmp_path: Path) -> None:
    path = tmp_path / "trades.csv"
    path.write_bytes(b"".join(_spot_lines()))
    data = tmp_path / "d"
    proc = tv("replay", path, "--data-dir", data, check=False)
    assert proc.returncode == 2
    assert "does not say its symbol" in proc.stderr and "--symbol" in proc.stderr
    summary = tv_json("replay", path, "--symbol", "btcusdt", "--data-dir", data)
    assert summary["stored"] == 117
    assert set(stored(data, "trades", "binance")) == {
        ("BTCUSDT", tid)
        for _, tid in expected(["hftbacktest-spot-btcusdt_20240808.head800.gz"]).trades
    }


def test_hostile_rows_are_dead_lettered_one_by_one(tmp_path: Path) -> None:
    """Missing cells, ids beyond int64, NaN and short rows: each row alone is rejected
    with its reason; the real rows around them are stored."""
    from tickvault.sources.binance.vision import CsvChunks, detect_layout

    lines = _spot_lines()
    hostile = [
        b",61837.63,0.02,1.0,1723161255342,True,True\n",
        b"9" * 5000 + b",61837.63,0.02,1.0,1723161255342,True,True\n",
        b"3735683999,nan,0.02,1.0,1723161255342,True,True\n",
        b"3735684000,61837.63,-0.5,1.0,1723161255342,True,True\n",
        b"3735684001,61837.63\n",
        b"3735684002,61837.63,0.02,1.0,1723161255342,maybe,True\n",
    ]
    mixed = lines[:3] + hostile + lines[3:]
    parser = CsvChunks(detect_layout(SPOT_ZIP, lines[0], None), "binance")
    rows, rejects = parser.parse(list(enumerate(mixed, start=1)))
    assert len(rows) == 117
    assert [(n, reason) for n, reason, _ in rejects] == [
        (4, "bad id: ''"),
        (5, "bad id: '" + "9" * 40 + "'"),
        (6, "non-finite price"),
        (7, "negative qty"),
        (8, "expected 7 columns, got 2"),
        (9, "bad is_buyer_maker: 'maybe'"),
    ]
    # A chunk Arrow reads whole: empty cells are nulls, named in the reason.
    rows, rejects = parser.parse(
        [(1, lines[0]), (2, b"3735684003,,0.02,1.0,1723161255342,True,True\n"), (3, lines[1])]
    )
    assert len(rows) == 2 and [(n, r) for n, r, _ in rejects] == [(2, "missing price")]
