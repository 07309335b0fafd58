"""The real Binance samples of ``tests/data/binance`` and what a replay must store from them.

The expected rows are computed here independently of tickvault's parser (``json``,
``Decimal`` and the venue's documented field meanings), so a test can compare every stored
field with the file. Keys are the tables' natural keys; the first occurrence of a key wins
(that is the row an idempotent store keeps).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb

DATA = Path(__file__).parent / "data" / "binance"

# (file, market) of every websocket/REST capture here.
CAPTURES: dict[str, list[str]] = {
    "binance": [
        "cryptofeed-BINANCE.ws.1.0.gz",
        "cryptofeed-BINANCE.http.0.0.head2.gz",
        "hftbacktest-spot-btcusdt_20240808.head800.gz",
    ],
    "binance-usdm": [
        "cryptofeed-BINANCE_FUTURES.ws.1.0.head400.gz",
        "hftbacktest-usdm-btcusdt_20240808.head800.gz",
    ],
    "binance-coinm": [
        "cryptofeed-BINANCE_DELIVERY.ws.1.0.head400.gz",
        "cryptofeed-BINANCE_DELIVERY.http.0.0.head2.gz",
        "hftbacktest-cm-btcusd_perp_20240808.head800.gz",
    ],
    "binance-us": ["cryptofeed-BINANCE_US.ws.1.0.gz"],
    "binance-tr": ["cryptofeed-BINANCE_TR.ws.1.0.gz"],
}


def lines(name: str) -> list[str]:
    with gzip.open(DATA / name, "rt") as fh:
        return fh.read().splitlines()


def recv_us(prefix: str) -> int:
    """A capture's receive-time prefix in µs (cryptofeed: seconds, hftbacktest: ns)."""
    if "." in prefix:
        return int((Decimal(prefix) * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return int(prefix) // 1000


def _levels(pairs: list[list[str]]) -> tuple[list[float], list[float]]:
    return [float(p) for p, _ in pairs], [float(q) for _, q in pairs]


@dataclass
class Expected:
    """Rows per table, keyed by natural key (minus the market, which is the same for all)."""

    trades: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    agg_trades: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    quotes: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    depth_updates: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    book_snapshots: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    bars: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    open_klines: int = 0
    headers: int = 0


def _messages(name: str) -> Iterator[tuple[int, dict[str, Any], str | None, str | None]]:
    """``(receive µs, message, stream name, symbol named by a REST URL)`` per line."""
    for line in lines(name):
        if not line.strip():
            continue
        url = None
        if line.startswith("wss://"):
            yield -1, {}, None, None  # the capture's header
            continue
        if line.startswith("https://"):
            url, _, line = line.partition(" -> ")
        brace = line.index("{")
        prefix = line[:brace].strip().rstrip(":")
        doc = json.loads(line[brace:])
        stream = doc.get("stream")
        data = doc["data"] if stream else doc
        symbol = None
        if url:
            symbol = parse_qs(urlsplit(url).query)["symbol"][0]
        yield recv_us(prefix), data, stream, symbol


def expected(names: list[str]) -> Expected:
    out = Expected()
    for name in names:
        file_symbols: set[str] = set()
        for recv, m, _stream, url_symbol in _messages(name):
            if recv < 0:
                out.headers += 1
                continue
            event = m.get("e")
            if event == "trade":
                file_symbols.add(m["s"])
                out.trades.setdefault(
                    (m["s"], m["t"]),
                    {
                        "price": float(m["p"]),
                        "qty": float(m["q"]),
                        "buyer_is_maker": m["m"],
                        "ts_event": m["T"] * 1000,
                        "ts_recv": recv,
                    },
                )
            elif event == "aggTrade":
                out.agg_trades.setdefault(
                    (m["s"], m["a"]),
                    {
                        "price": float(m["p"]),
                        "qty": float(m["q"]),
                        "first_trade_id": m["f"],
                        "last_trade_id": m["l"],
                        "buyer_is_maker": m["m"],
                        "ts_event": m["T"] * 1000,
                        "ts_recv": recv,
                    },
                )
            elif "lastUpdateId" in m:
                symbol = m.get("symbol") or url_symbol or next(iter(file_symbols))
                bids, asks = m["bids"], m["asks"]
                out.book_snapshots.setdefault(
                    (symbol, m["lastUpdateId"]), _snapshot("rest", bids, asks, recv)
                )
            elif event == "depthUpdate":
                file_symbols.add(m["s"])
                (bp, bq), (ap, aq) = _levels(m["b"]), _levels(m["a"])
                out.depth_updates.setdefault(
                    (m["s"], m["u"]),
                    {
                        "first_update_id": m["U"],
                        "bid_prices": bp,
                        "bid_qtys": bq,
                        "ask_prices": ap,
                        "ask_qtys": aq,
                        "ts_event": m["E"] * 1000,
                        "ts_recv": recv,
                    },
                )
            elif event == "kline":
                k = m["k"]
                if not k["x"]:
                    out.open_klines += 1
                    continue
                volume = float(k["v"])
                out.bars.setdefault(
                    (k["s"], k["i"], k["t"] * 1000),
                    {
                        "open": float(k["o"]),
                        "high": float(k["h"]),
                        "low": float(k["l"]),
                        "close": float(k["c"]),
                        "volume": volume,
                        "vwap": float(k["q"]) / volume if volume > 0 else None,
                        "trade_count": k["n"],
                        "adjusted": True,  # one price basis on Binance
                    },
                )
            else:  # book ticker: spot without times, futures with T (transaction) and E
                file_symbols.add(m["s"])
                venue = m.get("T", m.get("E"))
                out.quotes.setdefault(
                    (m["s"], m["u"]),
                    {
                        "bid_price": float(m["b"]),
                        "bid_qty": float(m["B"]),
                        "ask_price": float(m["a"]),
                        "ask_qty": float(m["A"]),
                        "ts_event": venue * 1000 if venue is not None else None,
                        "ts_recv": recv,
                    },
                )
    return out


def _snapshot(
    origin: str, bids: list[list[str]], asks: list[list[str]], recv: int
) -> dict[str, Any]:
    (bp, bq), (ap, aq) = _levels(bids), _levels(asks)
    return {
        "origin": origin,
        "bid_prices": bp,
        "bid_qtys": bq,
        "ask_prices": ap,
        "ask_qtys": aq,
        "ts_recv": recv,
    }


TABLE_KEYS = {
    "trades": ("symbol", "trade_id"),
    "agg_trades": ("symbol", "agg_id"),
    "quotes": ("symbol", "update_id"),
    "depth_updates": ("symbol", "final_update_id"),
    "book_snapshots": ("symbol", "last_update_id"),
    "bars": ("symbol", "timeframe", "ts_open"),
}
TIME_COLUMNS = {"ts_event", "ts_recv", "ts_open"}


def query(data: Path, sql: str) -> list[dict[str, Any]]:
    """Read the replay's DuckDB store directly (no process owns the data dir after it)."""
    with duckdb.connect(str(data / "ticks.duckdb"), read_only=True) as conn:
        cursor = conn.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def stored(data: Path, table: str, market: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Every row of ``table`` for ``market``, keyed like :class:`Expected`, times in µs."""
    column = "source" if table == "bars" else "exchange"
    names = [
        r["column_name"]
        for r in query(
            data,
            "SELECT column_name FROM information_schema.columns"
            f" WHERE table_name = '{table}' ORDER BY ordinal_position",
        )
    ]
    select = ", ".join(f"epoch_us({n}) AS {n}" if n in TIME_COLUMNS else n for n in names)
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in query(data, f"SELECT {select} FROM {table} WHERE {column} = '{market}'"):
        key = tuple(row.pop(k) for k in TABLE_KEYS[table])
        row.pop(column)
        out[key] = row
    return out
