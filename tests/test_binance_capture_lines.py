"""Capture line formats (cryptofeed, hftbacktest, plain JSON) and market checks, line by
line on real lines of the samples; plus the CLI's handling of ``--format``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tickvault.sources.binance.capture import split_line
from tickvault.sources.binance.markets import foreign_fields, market_from_url
from tickvault.sources.binance.wire import ParseError, SkippedMessage, parse_values

from .binance_samples import DATA, lines
from .cli_helpers import tv, tv_json

CRYPTOFEED = lines("cryptofeed-BINANCE_FUTURES.ws.1.0.head400.gz")
HFT = lines("hftbacktest-usdm-btcusdt_20240808.head800.gz")


def test_cryptofeed_line_gives_its_receive_time_in_microseconds() -> None:
    line = CRYPTOFEED[1].encode()
    assert line.startswith(b"1626992741.06217: ")
    payload, recv, symbol = split_line(line)
    assert payload.startswith(b'{"stream":"sushiusdt@bookTicker"')
    assert (recv, symbol) == (1626992741062170, None)
    # Seven decimals are rounded to the nearest µs, exactly (no float on the way).
    assert split_line(b'1633998512.0633569: {"u":1}')[1] == 1633998512063357
    assert split_line(b'1633998512.0633564: {"u":1}')[1] == 1633998512063356


def test_hftbacktest_line_gives_its_receive_time_in_microseconds() -> None:
    line = HFT[0].encode()
    assert line.startswith(b"1723161255030314667 {")
    payload, recv, _ = split_line(line)
    assert recv == 1723161255030314 and payload.startswith(b'{"stream":"btcusdt@depth@0ms"')


def test_header_and_rest_lines_of_cryptofeed() -> None:
    with pytest.raises(SkippedMessage, match="capture header"):
        split_line(CRYPTOFEED[0].encode())
    rest = lines("cryptofeed-BINANCE_DELIVERY.http.0.0.head2.gz")[0].encode()
    payload, recv, symbol = split_line(rest)
    assert symbol == "BCHUSD_PERP" and recv == 1626916404543838
    kind, row = parse_values(payload, recv, "binance-coinm", symbol)
    assert kind == "book_snapshot" and row[:4] == (
        "binance-coinm",
        "BCHUSD_PERP",
        167006089178,
        "rest",
    )
    info = b'https://dapi.binance.com/dapi/v1/exchangeInfo -> 1626916402.988238: {"a":1}'
    with pytest.raises(SkippedMessage, match="other than a depth snapshot"):
        split_line(info)


@pytest.mark.parametrize(
    ("line", "fmt", "reason"),
    [
        (b"hello world", "auto", "unrecognised line: expected a JSON object, `<seconds>: "),
        (b'12ab: {"u":1}', "auto", "bad receive time"),
        (b'{"u":1}', "cryptofeed", "unrecognised line: expected `<seconds>: {json}`"),
        (b'1626992741.06217: {"u":1}', "hftbacktest", "unrecognised line: expected `<ns> {json}`"),
        (b'1723161255030314667 {"u":1}', "json", "unrecognised line: expected a JSON object"),
    ],
)
def test_lines_of_no_known_shape_get_a_reason_that_names_it(
    line: bytes, fmt: str, reason: str
) -> None:
    with pytest.raises(ParseError) as exc:
        split_line(line, fmt)  # type: ignore[arg-type]
    assert exc.value.reason.startswith(reason)


def test_closed_klines_are_bars_and_open_ones_are_skipped() -> None:
    tr = lines("cryptofeed-BINANCE_TR.ws.1.0.gz")
    closed = next(x for x in tr if '"x":true' in x).encode()
    payload, recv, _ = split_line(closed)
    kind, row = parse_values(payload, recv, "binance-tr")
    assert kind == "bar"
    assert row[:4] == ("binance-tr", "XEMUSDT", "1m", 1681153980000 * 1000)
    assert row[4:9] == (0.0411, 0.0411, 0.0411, 0.0411, 243.0)
    open_kline = next(x for x in CRYPTOFEED if '"x":false' in x).encode()
    with pytest.raises(SkippedMessage, match="open kline"):
        parse_values(split_line(open_kline)[0], None, "binance-usdm")


def test_foreign_fields_tell_futures_from_spot() -> None:
    usdm_quote = next(x for x in HFT if "@bookTicker" in x).encode()
    spot_quote = next(
        x for x in lines("hftbacktest-spot-btcusdt_20240808.head800.gz") if "@bookTicker" in x
    ).encode()
    assert foreign_fields("binance", "quote", usdm_quote)
    assert not foreign_fields("binance-usdm", "quote", usdm_quote)
    assert foreign_fields("binance-usdm", "quote", spot_quote)
    assert not foreign_fields("binance-us", "quote", spot_quote)
    assert market_from_url("https://fapi.binance.com/fapi/v1/depth") == "binance-usdm"


def test_replay_format_option_and_unknown_market(tmp_path: Path) -> None:
    path = tmp_path / "cf.txt"
    with gzip.open(DATA / "cryptofeed-BINANCE_TR.ws.1.0.gz") as fh:
        path.write_bytes(fh.read())
    data = tmp_path / "d"
    forced = tv_json("replay", path, "--format", "json", "--data-dir", data)
    assert forced["stored"] == 0
    assert forced["dead_letters"] == {"unrecognised line: expected a JSON object": 140}
    right = tv_json(
        "replay", path, "--format", "cryptofeed", "--exchange", "binance-tr", "--data-dir",
        tmp_path / "e",
    )  # fmt: skip
    assert right["stored"] == 135 and right["dead_letters"] == {}
    bad = tv("replay", path, "--exchange", "binance-futures", "--data-dir", data, check=False)
    assert bad.returncode == 2 and "unknown Binance market 'binance-futures'" in bad.stderr
    bad = tv("replay", path, "--format", "tardis", "--data-dir", data, check=False)
    assert bad.returncode == 2 and "--format must be one of" in bad.stderr


async def test_a_bad_bare_snapshot_is_a_dead_letter_not_a_crash(tmp_path: Path) -> None:
    from tickvault.sources.replay import ReplaySource

    spot = lines("hftbacktest-spot-btcusdt_20240808.head800.gz")
    bad = '1723161254206652067 {"lastUpdateId":5,"bids":[["-1","2"]],"asks":[]}'
    path = tmp_path / "x.txt"
    path.write_text("\n".join([spot[0], bad, spot[2]]) + "\n")
    source = ReplaySource([path])
    batches = [b async for b in source.batches()]
    assert [r.reason for b in batches for r in b.rejects] == ["non-positive price"]
    assert sum(len(b) for b in batches) == 2


def test_receive_times_out_of_range_are_rejected() -> None:
    for prefix in (b"9" * 5000, b"12345678901234567890", b"1234567890123.5:"):
        with pytest.raises(ParseError, match="bad receive time"):
            split_line(prefix + b' {"u":1}')


def test_snapshot_shapes_in_streams_whatever_the_key_order() -> None:
    """Partial depth in any key order, and a generated REST snapshot in a stream (Tardis'
    ``@depthSnapshot``), are snapshots with the stream's symbol."""
    spot = lines("hftbacktest-spot-btcusdt_20240808.head800.gz")
    prefix, _, snap = next(x for x in spot if '"lastUpdateId"' in x).partition(" ")
    recv = int(prefix) // 1000
    reordered = f'{{"data":{snap},"stream":"btcusdt@depth5@100ms"}}'.encode()
    kind, row = parse_values(reordered, recv)
    assert (kind, row[:4], row[-1]) == (
        "book_snapshot",
        ("binance", "BTCUSDT", 50093239218, "partial"),
        recv,
    )
    generated = f'{{"stream":"btcusdt@depthSnapshot","generated":true,"data":{snap}}}'.encode()
    kind, row = parse_values(generated, recv)
    assert row[:4] == ("binance", "BTCUSDT", 50093239218, "rest")
    doc = json.loads(snap)
    assert row[4] == [float(p) for p, _ in doc["bids"]]
    assert row[7] == [float(q) for _, q in doc["asks"]]
