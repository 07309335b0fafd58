"""Message parse + normalise rate of the Binance collector, against ``orjson.loads``.

Measured in one run, on the same frames (combined-stream wrapped, as the venue sends them:
trades, aggregate trades, book tickers and depth diffs on a few symbols, consecutive ids):

* **orjson.loads**: decoding each frame to Python objects and nothing else — the reference
  a naive collector starts from (it would still have to look fields up and convert prices).
* **naive**: ``orjson.loads`` plus the dict look-ups and float conversions that turn each
  frame into the same row tuple, without any validation — a straightforward collector.
* **parse_values**: :func:`tickvault.sources.binance.wire.parse_values` alone (decode,
  convert the decimal strings, validate, build the row tuple).
* **source hot path**: what :class:`tickvault.sources.binance.collector.BinanceSource` does per
  received frame: take it off its queue, parse, track trade/aggregate ids for gaps, keep
  the depth book in sync, route the row into the batch.

Prints one ``name value`` line per figure (best of ``--repeat`` runs); ratios are
figure / orjson.loads. Usage: ``python bench/binance_parse.py [--frames N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections.abc import Callable

import orjson

from tickvault.sources.base import SourceBatch
from tickvault.sources.binance.book import BookSync
from tickvault.sources.binance.collector import BinanceOptions, BinanceSource
from tickvault.sources.binance.wire import parse_values

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"]
MIX = (("trade", 0.60), ("aggTrade", 0.20), ("bookTicker", 0.15), ("depth", 0.05))
FIRST_DEPTH = 1_000


def make_frames(n: int, seed: int = 3) -> list[bytes]:
    rng = random.Random(seed)
    trade_id = dict.fromkeys(SYMBOLS, 10_000_000)
    agg_id = dict.fromkeys(SYMBOLS, 5_000_000)
    update_id = dict.fromkeys(SYMBOLS, 0)
    depth_id = dict.fromkeys(SYMBOLS, FIRST_DEPTH)
    price = dict.fromkeys(SYMBOLS, 100.0)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    frames: list[bytes] = []
    ts = 1_700_000_000_000
    for _ in range(n):
        s = rng.choice(SYMBOLS)
        low = s.lower()
        ts += rng.randint(0, 3)
        price[s] = round(price[s] * (1 + rng.gauss(0, 0.0002)), 2)
        p, q = f"{price[s]:.2f}", f"{rng.uniform(0.001, 3):.5f}"
        kind = rng.choices(kinds, weights)[0]
        data: dict[str, object]
        if kind == "trade":
            trade_id[s] += 1
            data = {"e": "trade", "E": ts + 1, "s": s, "t": trade_id[s], "p": p, "q": q,
                    "T": ts, "m": rng.random() < 0.5, "M": True}  # fmt: skip
            stream = f"{low}@trade"
        elif kind == "aggTrade":
            agg_id[s] += 1
            data = {"e": "aggTrade", "E": ts + 1, "s": s, "a": agg_id[s], "p": p, "q": q,
                    "f": trade_id[s], "l": trade_id[s], "T": ts, "m": False, "M": True}  # fmt: skip
            stream = f"{low}@aggTrade"
        elif kind == "bookTicker":
            update_id[s] += 1
            data = {"u": update_id[s], "s": s, "b": p, "B": q, "a": f"{price[s] + 0.01:.2f}",
                    "A": q}  # fmt: skip
            stream = f"{low}@bookTicker"
        else:
            first = depth_id[s] + 1
            depth_id[s] = first + rng.randint(0, 3)
            levels = [[f"{price[s] - 0.01 * k:.2f}", f"{rng.uniform(0, 5):.4f}"] for k in range(5)]
            asks = [[f"{price[s] + 0.01 * k:.2f}", f"{rng.uniform(0, 5):.4f}"] for k in range(5)]
            data = {"e": "depthUpdate", "E": ts, "s": s, "U": first, "u": depth_id[s],
                    "b": levels, "a": asks}  # fmt: skip
            stream = f"{low}@depth@100ms"
        frames.append(orjson.dumps({"stream": stream, "data": data}))
    return frames


def best(fn: Callable[[], float], repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def time_orjson(frames: list[bytes]) -> float:
    loads = orjson.loads
    t0 = time.perf_counter()
    for f in frames:
        loads(f)
    return time.perf_counter() - t0


def time_naive(frames: list[bytes]) -> float:
    loads = orjson.loads
    recv = 1
    t0 = time.perf_counter()
    for f in frames:
        d = loads(f)["data"]
        e = d.get("e")
        if e == "trade":
            row: tuple[object, ...] = (
                "binance", d["s"], d["t"], float(d["p"]), float(d["q"]), d["m"], d["T"] * 1000,
                recv,
            )  # fmt: skip
        elif e == "aggTrade":
            row = (
                "binance", d["s"], d["a"], float(d["p"]), float(d["q"]), d["f"], d["l"], d["m"],
                d["T"] * 1000, recv,
            )  # fmt: skip
        elif e == "depthUpdate":
            row = (
                "binance", d["s"], d["U"], d["u"], [float(p) for p, _ in d["b"]],
                [float(q) for _, q in d["b"]], [float(p) for p, _ in d["a"]],
                [float(q) for _, q in d["a"]], d["E"] * 1000, recv,
            )  # fmt: skip
        else:
            row = (
                "binance", d["s"], d["u"], float(d["b"]), float(d["B"]), float(d["a"]),
                float(d["A"]), None, recv,
            )  # fmt: skip
        del row
    return time.perf_counter() - t0


def time_parse(frames: list[bytes]) -> float:
    t0 = time.perf_counter()
    for f in frames:
        parse_values(f, 1)
    return time.perf_counter() - t0


def time_source(frames: list[bytes]) -> float:
    async def run() -> float:
        src = BinanceSource(
            BinanceOptions(symbols=SYMBOLS, channels=["trade", "aggTrade", "bookTicker", "depth"])
        )
        for s in SYMBOLS:  # books already live, as in steady state
            sync = src.books[s] = BookSync(s)
            sync.snapshot_requested()
            sync.on_snapshot(FIRST_DEPTH, [(1.0, 1.0)], [(2.0, 1.0)])
        queue = src.inbox.frames
        elapsed = 0.0
        chunk = src.options.batch_max_records  # frames per yielded batch, as live
        rows = 0
        recv = time.time_ns() // 1000
        for start in range(0, len(frames), chunk):
            for i, f in enumerate(frames[start : start + chunk]):
                queue.append(("0.1", i, recv, f))
            batch = SourceBatch()
            t0 = time.perf_counter()
            await src._collect(batch, drain=True, limit=chunk)
            elapsed += time.perf_counter() - t0
            rows += len(batch)
        await src.close()
        assert rows == len(frames), (rows, len(frames))
        assert not src.trades.holes and not src.aggs.holes
        assert all(b.live for b in src.books.values())
        return elapsed

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--frames", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    frames = make_frames(args.frames)
    n = len(frames)
    print(f"frames {n} ({', '.join(f'{k} {w:.0%}' for k, w in MIX)}), cpus {os.cpu_count()}")
    ref = n / best(lambda: time_orjson(frames), args.repeat)
    naive = n / best(lambda: time_naive(frames), args.repeat)
    parse = n / best(lambda: time_parse(frames), args.repeat)
    source = n / best(lambda: time_source(frames), args.repeat)
    print(f"orjson.loads_per_s {ref:,.0f}")
    print(f"naive_orjson_normalise_per_s {naive:,.0f}")
    print(f"parse_values_per_s {parse:,.0f}")
    print(f"source_hot_path_records_per_s {source:,.0f}")
    print(f"ratio_naive_vs_orjson {naive / ref:.2f}")
    print(f"ratio_parse_values_vs_orjson {parse / ref:.2f}")
    print(f"ratio_source_vs_orjson {source / ref:.2f}")


if __name__ == "__main__":
    main()
