"""``tickvault replay``: bad input, duplicates, gzip, resumption — through the real CLI."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson

from tickvault.core.records import KINDS
from tickvault.sources.binance.sample import MALFORMED_KINDS, write_recording

from .cli_helpers import tv, tv_json


def _count(data_dir: Path, table: str) -> int:
    rows = tv_json("query", f"SELECT count(*) AS n FROM {table}", "--data-dir", data_dir)
    return int(rows[0]["n"])


def _dup_keys(data_dir: Path) -> int:
    rows = tv_json(
        "query",
        "SELECT count(*) AS n FROM (SELECT exchange, symbol, trade_id FROM trades"
        " GROUP BY ALL HAVING count(*) > 1)",
        "--data-dir",
        data_dir,
    )
    return int(rows[0]["n"])


def test_malformed_lines_are_dead_lettered_and_valid_ones_stored_once(tmp_path: Path) -> None:
    rec = write_recording(tmp_path / "in.jsonl", 20_000, malformed_every=100, duplicate_share=0.05)
    assert set(rec.malformed) == set(MALFORMED_KINDS)
    data = tmp_path / "data"
    summary = tv_json("replay", rec.path, "--data-dir", data)
    assert summary["drained"] is True
    assert summary["stored"] == rec.unique_records
    assert sum(summary["dead_letters"].values()) == rec.malformed_lines
    assert _count(data, "trades") == len(rec.trade_keys)
    assert _count(data, "quotes") == len(rec.quote_keys)
    assert _count(data, "agg_trades") == len(rec.agg_keys)
    letters = tv_json("dlq", "list", "--data-dir", data)
    assert len(letters) == rec.malformed_lines
    reasons = {x["reason"] for x in letters}
    assert reasons == {
        "malformed JSON",
        "missing field `t`",
        "non-finite price",
        "negative qty",
        "missing field `k.t`",
    }
    assert all(x["payload"] for x in letters)  # the raw line is kept


def test_duplicates_within_and_across_files_are_stored_once(tmp_path: Path) -> None:
    a = write_recording(tmp_path / "a.jsonl", 5_000, duplicate_share=0.2, seed=3)
    # b repeats every line of a, shuffled, plus new ones; gzip-compressed.
    lines = a.path.read_bytes().splitlines()
    extra = write_recording(tmp_path / "extra.jsonl", 2_000, seed=4, first_id=5_000_000)
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as fh:
        fh.write(b"\n".join(reversed(lines)) + b"\n" + extra.path.read_bytes())
    data = tmp_path / "data"
    tv("replay", a.path, tmp_path / "b.jsonl.gz", "--data-dir", data)
    assert _count(data, "trades") == len(a.trade_keys | extra.trade_keys)
    assert _count(data, "quotes") == len(a.quote_keys | extra.quote_keys)
    assert _dup_keys(data) == 0


def test_rerun_of_a_finished_file_publishes_nothing_and_exits_zero(tmp_path: Path) -> None:
    rec = write_recording(tmp_path / "in.jsonl", 3_000)
    data = tmp_path / "data"
    tv("replay", rec.path, "--data-dir", data)
    again = tv_json("replay", rec.path, "--data-dir", data)
    assert again["files_already_done"] == 1
    assert again["published"] == 0
    assert again["drained"] is True
    forced = tv_json("replay", rec.path, "--data-dir", data, "--restart")
    assert forced["published"] >= rec.unique_records
    assert forced["duplicates"] == forced["published"]
    assert forced["stored"] == 0
    assert _count(data, "trades") == len(rec.trade_keys)


def test_replay_of_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = tv("replay", tmp_path / "nope.jsonl", "--data-dir", tmp_path / "d", check=False)
    assert proc.returncode == 2
    assert "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dead_letters_can_be_shown_and_requeued(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    good = {
        "e": "trade",
        "E": 1_700_000_000_005,
        "s": "BTCUSDT",
        "t": 1,
        "p": "10",
        "q": "1",
        "T": 1_700_000_000_005,
        "m": True,
    }
    bad = dict(good, t=2, p="NaN")
    path.write_bytes(orjson.dumps(good) + b"\n" + orjson.dumps(bad) + b"\n")
    data = tmp_path / "data"
    tv("replay", path, "--data-dir", data)
    (letter,) = tv_json("dlq", "list", "--data-dir", data)
    shown = orjson.loads(tv("dlq", "show", letter["id"], "--data-dir", data).stdout)
    assert shown["reason"] == "non-finite price"
    assert orjson.loads(shown["payload"])["p"] == "NaN"
    proc = tv("dlq", "requeue", letter["id"], "--data-dir", data, check=False)
    assert proc.returncode == 1
    assert "still invalid: non-finite price" in proc.stderr


def test_dead_letters_say_which_file_and_line_they_came_from(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    good = {
        "e": "trade",
        "E": 1_700_000_000_005,
        "s": "BTCUSDT",
        "t": 1,
        "p": "10",
        "q": "1",
        "T": 1_700_000_000_005,
        "m": True,
    }
    path.write_bytes(
        orjson.dumps(good) + b"\n" + b"garbage line\n" + orjson.dumps(dict(good, t=2)) + b"\n"
    )
    data = tmp_path / "data"
    tv("replay", path, "--data-dir", data)
    (letter,) = tv_json("dlq", "list", "--data-dir", data)
    assert (letter["source_file"], letter["source_line"]) == (str(path.resolve()), 2)
    shown = orjson.loads(tv("dlq", "show", letter["id"], "--data-dir", data).stdout)
    assert (shown["source_file"], shown["source_line"]) == (str(path.resolve()), 2)
    table = tv("dlq", "list", "--data-dir", data).stdout
    assert f"{path.resolve()}:2" in table.replace("\n", "").replace("│", "").replace(" ", "")


def test_data_dir_and_config_may_come_before_the_command(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    trade = {
        "e": "trade",
        "E": 1_700_000_000_005,
        "s": "BTCUSDT",
        "t": 1,
        "p": "10",
        "q": "1",
        "T": 1_700_000_000_005,
        "m": True,
    }
    path.write_bytes(orjson.dumps(trade) + b"\n")
    data = tmp_path / "data"
    summary = orjson.loads(tv("--data-dir", data, "replay", path, "--json").stdout)
    assert summary["stored"] == 1
    assert _count(data, "trades") == 1
    rows = orjson.loads(
        tv("--data-dir", data, "query", "SELECT count(*) AS n FROM trades", "--json").stdout
    )
    assert rows == [{"n": 1}]
    # --config before the command reaches nested commands too; after the command wins.
    other = tmp_path / "other"
    config = tmp_path / "tv.toml"
    config.write_text(f'data_dir = "{other}"\n')
    with_garbage = tmp_path / "g.jsonl"
    with_garbage.write_bytes(path.read_bytes() + b"garbage\n")
    tv("--config", config, "replay", with_garbage)
    assert _count(other, "trades") == 1
    (letter,) = orjson.loads(tv("--config", config, "dlq", "list", "--json").stdout)
    assert letter["source_line"] == 2
    tv("--data-dir", tmp_path / "third", "replay", path, "--data-dir", data)
    assert not (tmp_path / "third").exists()


def test_stores_from_before_markets_had_names_keep_their_rows(tmp_path: Path) -> None:
    """Rows stored before markets had names are ``binance``: they stay as they are, and the
    same files replayed with their market are stored beside them, in their own space."""
    from .binance_samples import DATA, query

    usdm = DATA / "hftbacktest-usdm-btcusdt_20240808.head800.gz"
    spot = DATA / "hftbacktest-spot-btcusdt_20240808.head800.gz"
    data = tmp_path / "data"
    tv("replay", spot, usdm, "--data-dir", data)  # what earlier versions did: all "binance"
    before = query(
        data, "SELECT exchange, count(*) AS n, sum(trade_id) AS ids FROM trades GROUP BY ALL"
    )
    assert before == [{"exchange": "binance", "n": 245, "ids": before[0]["ids"]}]
    again = tv_json("replay", spot, "--data-dir", data)
    assert again["files_already_done"] == 1  # spot checkpoints keep their key
    moved = tv_json("replay", usdm, "--exchange", "binance-usdm", "--data-dir", data)
    assert moved["stored"] == moved["read"] == 800  # every record, under its market
    after = query(
        data,
        "SELECT exchange, count(*) AS n, sum(trade_id) AS ids FROM trades GROUP BY ALL"
        " ORDER BY exchange",
    )
    assert after[0] == before[0]
    assert after[1]["exchange"] == "binance-usdm" and after[1]["n"] == 128
    # The documented spot-only view leaves the old futures copies out, deleting nothing.
    spot_only = query(
        data,
        "SELECT count(*) AS n FROM trades b WHERE b.exchange = 'binance' AND NOT EXISTS ("
        " SELECT 1 FROM trades f WHERE f.exchange = 'binance-usdm' AND f.symbol = b.symbol"
        " AND f.trade_id = b.trade_id AND f.ts_event = b.ts_event AND f.price = b.price)",
    )
    assert spot_only == [{"n": 117}]


def test_requeued_capture_line_keeps_its_market_and_receive_time(tmp_path: Path) -> None:
    """A dead-lettered line of a USD-M capture, once fixed upstream, is requeued with the
    market it was replayed as and the receive time of its prefix."""
    from tickvault.cli.dlq import requeue_payload
    from tickvault.sources.replay import letter_market

    line = (
        b'1723161255088176367 {"stream":"btcusdt@trade","data":{"e":"trade","E":1723161256322,'
        b'"T":1723161256322,"s":"BTCUSDT","t":5266583935,"p":"61800.30","q":"0.006",'
        b'"X":"MARKET","m":false}}'
    )
    path = tmp_path / "usdm.txt"
    path.write_bytes(line.replace(b'"61800.30"', b'"-1"') + b"\n")
    data = tmp_path / "data"
    tv("replay", path, "--exchange", "binance-usdm", "--data-dir", data)
    (letter,) = tv_json("dlq", "list", "--data-dir", data)
    assert letter["reason"] == "non-positive price"
    assert letter_market(letter["entry_id"]) == "binance-usdm"
    assert letter_market(None) == "binance"
    from tickvault.bus.base import DeadLetter
    from tickvault.core.codec import column_values, decode_frame

    fixed = DeadLetter(letter["id"], "ticks", None, "raw", "", line, letter["entry_id"], 0, 0.0)
    frame = decode_frame(requeue_payload(fixed))
    assert frame.kind == "trade"
    columns = [column_values(frame.cols[c]) for c in KINDS["trade"].columns]
    want = ("binance-usdm", "BTCUSDT", 5266583935, 61800.3, 0.006, False)
    assert list(zip(*columns, strict=True)) == [(*want, 1723161256322000, 1723161255088176)]
