"""Partial-depth streams and REST depth snapshots become book snapshots, never diffs.

The public captures here hold no partial-depth stream, so its messages are built from the
real REST snapshots of the captures in the venue's partial-depth shapes (VENUES.md): spot
``{"lastUpdateId","bids","asks"}`` (top N), futures the diff shape with ``"e":"depthUpdate"``
(``U``/``u``/``pu`` set to the snapshot's update id), next to the real diff stream.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from .binance_samples import lines, query, recv_us, stored
from .cli_helpers import tv_json

SPOT = "hftbacktest-spot-btcusdt_20240808.head800.gz"
USDM = "hftbacktest-usdm-btcusdt_20240808.head800.gz"


def _snapshot_line(name: str) -> tuple[str, dict[str, Any]]:
    line = next(x for x in lines(name) if '"lastUpdateId"' in x)
    prefix, _, doc = line.partition(" ")
    return prefix, json.loads(doc)


def _levels(pairs: list[list[str]]) -> tuple[list[float], list[float]]:
    return [float(p) for p, _ in pairs], [float(q) for _, q in pairs]


def _write(path: Path, rows: list[str]) -> Path:
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    return path


def test_partial_depth_is_stored_as_snapshots_and_diffs_stay_diffs(tmp_path: Path) -> None:
    prefix, snap = _snapshot_line(SPOT)
    spot_partial = {"lastUpdateId": snap["lastUpdateId"], "bids": snap["bids"][:20],
                    "asks": snap["asks"][:20]}  # fmt: skip
    diffs = [x for x in lines(SPOT) if "@depth@100ms" in x]
    spot_file = _write(
        tmp_path / "spot.gz",
        [
            *diffs[:30],
            f'{prefix} {{"stream":"btcusdt@depth20@100ms","data":{json.dumps(spot_partial)}}}',
            f'{prefix} {{"stream":"btcusdt@depth5","data":{json.dumps(spot_partial)}}}',
            *diffs[30:],
        ],
    )
    uprefix, usnap = _snapshot_line(USDM)
    uid = usnap["lastUpdateId"]
    futures_partial = {"e": "depthUpdate", "E": usnap["E"], "T": usnap["T"], "s": "BTCUSDT",
                       "U": uid, "u": uid, "pu": uid, "b": usnap["bids"][:10],
                       "a": usnap["asks"][:10]}  # fmt: skip
    udiffs = [x for x in lines(USDM) if "@depth@0ms" in x]
    usdm_file = _write(
        tmp_path / "usdm.gz",
        [
            *udiffs[:20],
            f'{uprefix} {{"stream":"btcusdt@depth10@500ms","data":{json.dumps(futures_partial)}}}',
            *udiffs[20:],
        ],
    )
    data = tmp_path / "d"
    spot = tv_json("replay", spot_file, "--data-dir", data)
    usdm = tv_json("replay", usdm_file, "--exchange", "binance-usdm", "--data-dir", data)
    assert spot["dead_letters"] == {} and usdm["dead_letters"] == {}
    # Every diff of the real streams is a diff; no partial-depth message is.
    assert len(stored(data, "depth_updates", "binance")) == len(diffs) == 76
    assert len(stored(data, "depth_updates", "binance-usdm")) == len(udiffs) == 59
    assert query(
        data, f"SELECT count(*) AS n FROM depth_updates WHERE final_update_id IN ({uid}, "
        f"{snap['lastUpdateId']})"
    ) == [{"n": 0}]  # fmt: skip
    # Spot: depth20 and depth5 carry the same update id; the first one is kept.
    got = stored(data, "book_snapshots", "binance")
    assert list(got) == [("BTCUSDT", snap["lastUpdateId"])]
    row = got[("BTCUSDT", snap["lastUpdateId"])]
    assert row["origin"] == "partial"
    assert (row["bid_prices"], row["bid_qtys"]) == _levels(snap["bids"][:20])
    assert (row["ask_prices"], row["ask_qtys"]) == _levels(snap["asks"][:20])
    assert row["ts_recv"] == recv_us(prefix)
    fut = stored(data, "book_snapshots", "binance-usdm")[("BTCUSDT", uid)]
    assert fut["origin"] == "partial"
    assert (fut["bid_prices"], fut["bid_qtys"]) == _levels(usnap["bids"][:10])
    assert (fut["ask_prices"], fut["ask_qtys"]) == _levels(usnap["asks"][:10])
    assert fut["ts_recv"] == recv_us(uprefix)


def test_rest_snapshots_keep_all_their_levels(tmp_path: Path) -> None:
    """A REST depth snapshot line (cryptofeed's REST capture, hftbacktest's bare line) is a
    ``rest`` book snapshot with every level, not an "unknown message type"."""
    data = tmp_path / "d"
    name = "cryptofeed-BINANCE.http.0.0.head2.gz"
    summary = tv_json("replay", Path(__file__).parent / "data/binance" / name, "--data-dir", data)
    assert summary["stored"] == 2 and summary["dead_letters"] == {}
    got = stored(data, "book_snapshots", "binance")
    url, _, rest = lines(name)[0].partition(" -> ")
    t, _, doc = rest.partition(": ")
    first = json.loads(doc)
    row = got[("NKNUSDT", first["lastUpdateId"])]
    assert row["origin"] == "rest" and row["ts_recv"] == recv_us(t)
    assert (row["bid_prices"], row["bid_qtys"]) == _levels(first["bids"])
    assert (row["ask_prices"], row["ask_qtys"]) == _levels(first["asks"])
    assert len(row["bid_prices"]) == len(first["bids"]) > 100
    assert url.endswith("symbol=NKNUSDT&limit=1000")


def test_a_bare_snapshot_whose_symbol_is_unknown_is_dead_lettered_with_the_fix(
    tmp_path: Path,
) -> None:
    prefix, snap = _snapshot_line(SPOT)
    path = _write(tmp_path / "bare.gz", [f"{prefix} {json.dumps(snap)}"])
    data = tmp_path / "d"
    summary = tv_json("replay", path, "--data-dir", data)
    reason = "depth snapshot names no symbol (a bare REST snapshot line): replay it with --symbol"
    assert summary["dead_letters"] == {reason: 1}
    again = tv_json("replay", path, "--symbol", "BTCUSDT", "--restart", "--data-dir", data)
    assert again["stored"] == 1
    assert list(stored(data, "book_snapshots", "binance")) == [("BTCUSDT", snap["lastUpdateId"])]
