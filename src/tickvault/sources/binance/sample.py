"""Sample recordings of Binance websocket traffic, for tests, benchmarks and trying things out.

:func:`write_recording` writes a JSON-lines file (optionally gzip) in the exact shapes the
venue sends (bare and combined-stream wrapped), with a chosen share of duplicate lines and a
chosen set of malformed lines, and returns what a correct ingest must end up with.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass, field
from pathlib import Path

import orjson

MALFORMED_KINDS = ("bad_json", "missing_field", "nan_price", "negative_qty", "unknown_event")


@dataclass
class Recording:
    path: Path
    lines: int = 0
    trade_keys: set[tuple[str, int]] = field(default_factory=set)
    quote_keys: set[tuple[str, int]] = field(default_factory=set)
    agg_keys: set[tuple[str, int]] = field(default_factory=set)
    malformed: dict[str, int] = field(default_factory=dict)

    @property
    def unique_records(self) -> int:
        return len(self.trade_keys) + len(self.quote_keys) + len(self.agg_keys)

    @property
    def malformed_lines(self) -> int:
        return sum(self.malformed.values())


def _trade(symbol: str, tid: int, price: float, ts: int, rng: random.Random) -> dict[str, object]:
    return {
        "e": "trade",
        "E": ts + 3,
        "s": symbol,
        "t": tid,
        "p": f"{price:.2f}",
        "q": f"{rng.lognormvariate(-3, 1):.6f}",
        "T": ts,
        "m": rng.random() < 0.5,
        "M": True,
    }


def _malformed(kind: str, symbol: str, tid: int, ts: int) -> bytes:
    if kind == "bad_json":
        return b'{"e":"trade","E":' + str(ts).encode() + b',"s":"' + symbol.encode() + b'","t":'
    if kind == "missing_field":
        return orjson.dumps(
            {"e": "trade", "E": ts, "s": symbol, "p": "1.0", "q": "1", "T": ts, "m": True}
        )
    if kind == "nan_price":
        return orjson.dumps(
            {
                "e": "trade",
                "E": ts,
                "s": symbol,
                "t": tid,
                "p": "NaN",
                "q": "1",
                "T": ts,
                "m": True,
                "M": True,
            }
        )
    if kind == "negative_qty":
        return orjson.dumps(
            {
                "e": "trade",
                "E": ts,
                "s": symbol,
                "t": tid,
                "p": "10.5",
                "q": "-2",
                "T": ts,
                "m": False,
                "M": True,
            }
        )
    return orjson.dumps({"e": "kline", "E": ts, "s": symbol, "k": {}})


def write_recording(
    path: Path,
    records: int,
    *,
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "SOLUSDT"),
    duplicate_share: float = 0.02,
    malformed_every: int = 0,
    quote_share: float = 0.3,
    agg_share: float = 0.05,
    wrapped_share: float = 0.3,
    seed: int = 1,
    first_id: int = 1_000_000,
) -> Recording:
    """Write ``records`` lines (valid ones plus duplicates plus malformed ones) to ``path``.

    Every ``malformed_every``-th line (if > 0) is malformed, cycling through
    :data:`MALFORMED_KINDS`. Malformed trade lines use ids no valid line uses.
    """
    rng = random.Random(seed)
    rec = Recording(path)
    prices = dict.fromkeys(symbols, 100.0)
    next_id = dict.fromkeys(symbols, first_id)
    next_u = dict.fromkeys(symbols, first_id)
    next_a = dict.fromkeys(symbols, first_id)
    bad_id = 10**15
    ts = 1_700_000_000_000
    recent: list[bytes] = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        for i in range(records):
            ts += rng.randrange(0, 3)
            if malformed_every and i % malformed_every == malformed_every - 1:
                kind = MALFORMED_KINDS[(i // malformed_every) % len(MALFORMED_KINDS)]
                bad_id += 1
                line = _malformed(kind, rng.choice(symbols), bad_id, ts)
                rec.malformed[kind] = rec.malformed.get(kind, 0) + 1
            elif recent and rng.random() < duplicate_share:
                line = rng.choice(recent)
            else:
                symbol = rng.choice(symbols)
                prices[symbol] *= 1 + rng.gauss(0, 0.0005)
                r = rng.random()
                stream: str
                if r < quote_share:
                    u = next_u[symbol]
                    next_u[symbol] += 1
                    p = prices[symbol]
                    payload: dict[str, object] = {
                        "u": u,
                        "s": symbol,
                        "b": f"{p * 0.9999:.2f}",
                        "B": "1.5",
                        "a": f"{p * 1.0001:.2f}",
                        "A": "2.25",
                    }
                    stream = f"{symbol.lower()}@bookTicker"
                    rec.quote_keys.add((symbol, u))
                elif r < quote_share + agg_share:
                    a = next_a[symbol]
                    next_a[symbol] += 1
                    payload = {
                        "e": "aggTrade",
                        "E": ts + 2,
                        "s": symbol,
                        "a": a,
                        "p": f"{prices[symbol]:.2f}",
                        "q": "0.5",
                        "f": a * 2,
                        "l": a * 2 + 1,
                        "T": ts,
                        "m": True,
                        "M": True,
                    }
                    stream = f"{symbol.lower()}@aggTrade"
                    rec.agg_keys.add((symbol, a))
                else:
                    tid = next_id[symbol]
                    next_id[symbol] += 1
                    payload = _trade(symbol, tid, prices[symbol], ts, rng)
                    stream = f"{symbol.lower()}@trade"
                    rec.trade_keys.add((symbol, tid))
                if rng.random() < wrapped_share:
                    line = orjson.dumps({"stream": stream, "data": payload})
                else:
                    line = orjson.dumps(payload)
                recent.append(line)
                if len(recent) > 1000:
                    recent.pop(0)
            fh.write(line + b"\n")
            rec.lines += 1
    return rec
