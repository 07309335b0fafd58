"""Rebuild the data.binance.vision-layout CSVs of this folder from the real captures here.

The public captures contain no data.binance.vision files, so the CSV samples are the real
trades of the captures written in the dumps' column layout (documented in
github.com/binance/binance-public-data, README.md): same ids, prices, quantities, times and
sides as the websocket messages. Run: ``python tests/data/binance/derive_vision_csv.py``.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).parent


def _messages(name: str, stream_suffix: str) -> list[dict[str, object]]:
    out = []
    with gzip.open(HERE / name, "rt") as fh:
        for line in fh:
            brace = line.find("{")
            if brace < 0:
                continue
            doc = json.loads(line[brace:])
            if str(doc.get("stream", "")).endswith(stream_suffix):
                out.append(doc["data"])
    return out


def _quote(price: str, qty: str) -> str:
    return format((Decimal(price) * Decimal(qty)).normalize(), "f")


def main() -> None:
    spot = _messages("hftbacktest-spot-btcusdt_20240808.head800.gz", "@trade")
    lines = [
        f"{m['t']},{m['p']},{m['q']},{_quote(str(m['p']), str(m['q']))},{m['T']},"
        f"{'True' if m['m'] else 'False'},True\n"
        for m in spot
    ]
    with zipfile.ZipFile(HERE / "BTCUSDT-trades-2024-08-08.zip", "w", zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo("BTCUSDT-trades-2024-08-08.csv", date_time=(2024, 8, 9, 0, 0, 0))
        z.writestr(info, "".join(lines), zipfile.ZIP_DEFLATED)
    usdm = _messages("hftbacktest-usdm-btcusdt_20240808.head800.gz", "@trade")
    with open(HERE / "BTCUSDT-trades-2024-08-08-usdm.csv", "w") as fh:
        fh.write("id,price,qty,quote_qty,time,is_buyer_maker\n")
        for m in usdm:
            fh.write(
                f"{m['t']},{m['p']},{m['q']},{_quote(str(m['p']), str(m['q']))},{m['T']},"
                f"{'true' if m['m'] else 'false'}\n"
            )
    aggs = _messages("cryptofeed-BINANCE_FUTURES.ws.1.0.head400.gz", "@aggTrade")
    sushi = [m for m in aggs if m["s"] == "SUSHIUSDT"]
    with open(HERE / "SUSHIUSDT-aggTrades-2021-07-22.csv", "w") as fh:
        fh.write(
            "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,"
            "is_buyer_maker\n"
        )
        for m in sushi:
            fh.write(
                f"{m['a']},{m['p']},{m['q']},{m['f']},{m['l']},{m['T']},"
                f"{'true' if m['m'] else 'false'}\n"
            )


if __name__ == "__main__":
    main()
